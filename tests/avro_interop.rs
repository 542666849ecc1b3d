//! Avro conformance: this pipeline and the reference implementations its
//! producers and consumers use — Apache Avro for Java (Debian's
//! `libavro-java`) and fastavro — understand each other, for every schema
//! in `schemas/` (today's and every `history/` version, whatever files are
//! there) and every record the pipeline writes. The helpers are
//! `tests/interop/`; `make up` installs both implementations.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::disallowed_methods)]

use std::time::Duration;

use apache_avro::types::Value;
use backorder_core::codec::{Codec, FingerprintForm, WriterSchema};
use backorder_core::events::AvroRecord;
use backorder_core::events::internal::{BackorderDecision, BackorderDelayed, EmailRequested};
use backorder_core::events::offers::OfferResponse;
use backorder_core::events::orders::Availability::{Backordered, InStock};
use backorder_core::events::orders::{CartAbandoned, OrderCancelled, OrderPlaced};
use backorder_core::events::shipments::{ShipmentDelivered, ShipmentDispatched};
use backorder_core::events::stock::{ProductUpserted, StockArrival, SupplierEtaChanged};
use backorder_core::kafka::Topics;
use backorder_core::kafka::dead_letter;
use backorder_core::kafka::topics::ORDERS;
use backorder_tests::interop::{
    FakeRegistry, Implementation, SchemaFile, avro_json, decode_candidates, files_of, fit_to_schema, hex, request,
    sample_values, schema_files, unhex,
};
use backorder_tests::process::binary;
use backorder_tests::{TestApp, order_placed, wait_until};
use serde_json::Value as Json;

/// Sample values per schema: enough to reach every corner of
/// [`sample_values`] (null and non-null branches, array lengths, extremes).
const SAMPLES: usize = 4;

const PATIENCE: Duration = Duration::from_secs(60);

fn parse_json(text: &str) -> Json {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("helper JSON {text:?}: {e}"))
}

#[tokio::test]
async fn every_schema_file_is_known_to_the_codec_with_the_fingerprints_java_and_fastavro_compute() {
    let codec = Codec::new(None).unwrap();
    let files = schema_files();
    assert!(files.iter().any(|f| !f.current), "history/ versions are covered");
    for implementation in Implementation::ALL {
        let requests: Vec<_> = files
            .iter()
            .map(|f| request("fingerprint", &f.absolute.display().to_string(), "-", "-"))
            .collect();
        for (file, answer) in files.iter().zip(implementation.run(&requests)) {
            let known = codec.known_schemas().find(|k| k.path == file.path).unwrap_or_else(|| {
                panic!(
                    "schemas/{} is not in the codec's SCHEMA_FILES (services/core/src/codec.rs)",
                    file.path
                )
            });
            assert_eq!(known.current, file.current, "{}", file.path);
            let theirs = answer.unwrap_or_else(|e| panic!("{} on {}: {e}", implementation.name(), file.path));
            assert_eq!(
                hex(&known.fingerprints.specification),
                theirs,
                "{}: the specification fingerprint is what {} computes",
                file.path,
                implementation.name()
            );
            let rust = file.schema.fingerprint::<apache_avro::rabin::Rabin>();
            assert_eq!(known.fingerprints.apache_avro.to_vec(), rust.bytes, "{}", file.path);
        }
    }
}

#[tokio::test]
async fn every_schema_encoded_by_java_and_fastavro_decodes_in_the_project_to_the_same_values() {
    let codec = Codec::new(None).unwrap();
    let files = schema_files();
    for implementation in Implementation::ALL {
        let mut requests = Vec::new();
        let mut expected: Vec<(&SchemaFile, Value)> = Vec::new();
        for file in &files {
            for value in sample_values(&file.schema, SAMPLES) {
                let text = avro_json(&value, &file.schema).to_string();
                requests.push(request("encode", &file.absolute.display().to_string(), "-", &text));
                expected.push((file, value));
            }
        }
        for ((file, value), answer) in expected.into_iter().zip(implementation.run(&requests)) {
            let what = format!("{} written by {}", file.path, implementation.name());
            let bytes = unhex(&answer.unwrap_or_else(|e| panic!("{what}: {e}")));
            let decoded = codec
                .decode_value(&bytes)
                .await
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(decoded.full_name, file.full_name, "{what}");
            let WriterSchema::Known { path, form, .. } = &decoded.writer else {
                panic!("{what}: {:?}", decoded.writer)
            };
            assert_eq!(*path, file.path, "{what}: the writer schema is recognised");
            assert_eq!(*form, FingerprintForm::Specification, "{what}");
            // Today's schema of the record reads every version.
            let reader = &files_of(&files, &file.full_name)[0].schema;
            let want = if file.current {
                value.clone()
            } else {
                fit_to_schema(value.clone(), reader)
            };
            assert_eq!(
                decoded.value, want,
                "{what}: same values (timestamps and dates included)"
            );
            // Byte for byte what the project writes for the same value
            // with the same writer schema.
            let mut ours = bytes[..10].to_vec();
            ours.extend(apache_avro::to_avro_datum(&file.schema, value).unwrap());
            assert_eq!(hex(&bytes), hex(&ours), "{what}: the same bytes as apache-avro's");
        }
    }
}

/// A sample of record `T` from its schema file: every field set, the
/// corners of [`sample_values`] included.
fn samples<T: AvroRecord>(files: &[SchemaFile]) -> Vec<T> {
    let file = files_of(files, T::FULL_NAME)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no schema file for {}", T::FULL_NAME));
    sample_values(&file.schema, SAMPLES)
        .iter()
        .map(|v| apache_avro::from_value::<T>(v).unwrap_or_else(|e| panic!("{}: {e}", T::FULL_NAME)))
        .collect()
}

/// One message the project wrote, and the Avro JSON it should decode to.
struct Written {
    what: String,
    full_name: String,
    bytes: Vec<u8>,
    expected: Json,
}

async fn written_by_project<T: AvroRecord>(codec: &Codec, files: &[SchemaFile], topic: &str) -> Vec<Written> {
    let schema = &files_of(files, T::FULL_NAME)[0].schema;
    let mut out = Vec::new();
    for record in samples::<T>(files) {
        let bytes = codec.encode(topic, &record).await.unwrap();
        let value = apache_avro::to_value(&record).unwrap().resolve(schema).unwrap();
        out.push(Written {
            what: format!("{} on {topic}", T::FULL_NAME),
            full_name: T::FULL_NAME.to_string(),
            bytes,
            expected: avro_json(&value, schema),
        });
    }
    out
}

/// Everything the pipeline writes, encoded by the project's own encoders:
/// the records the services produce, every record type `backorderctl
/// publish` writes, the demo's input files through `publish`'s own
/// parsing, and every current schema through the generic encoder.
async fn everything_the_project_writes(codec: &Codec, files: &[SchemaFile]) -> Vec<Written> {
    let mut all = Vec::new();
    all.extend(written_by_project::<EmailRequested>(codec, files, "email-requests.v1").await);
    all.extend(written_by_project::<BackorderDelayed>(codec, files, "backorder-delays.v1").await);
    all.extend(written_by_project::<BackorderDecision>(codec, files, "backorder-decisions.v1").await);
    all.extend(written_by_project::<OrderPlaced>(codec, files, "orders.v1").await);
    all.extend(written_by_project::<OrderCancelled>(codec, files, "orders.v1").await);
    all.extend(written_by_project::<CartAbandoned>(codec, files, "orders.v1").await);
    all.extend(written_by_project::<ProductUpserted>(codec, files, "stock.v1").await);
    all.extend(written_by_project::<SupplierEtaChanged>(codec, files, "stock.v1").await);
    all.extend(written_by_project::<StockArrival>(codec, files, "stock.v1").await);
    all.extend(written_by_project::<ShipmentDispatched>(codec, files, "shipments.v1").await);
    all.extend(written_by_project::<ShipmentDelivered>(codec, files, "shipments.v1").await);
    all.extend(written_by_project::<OfferResponse>(codec, files, "offer-responses.v1").await);

    // `backorderctl publish` on the demo's input files.
    let topics = Topics::new("");
    for demo in ["demo-scenario.jsonl", "demo-week-later.jsonl", "demo-restock.jsonl"] {
        let text = std::fs::read_to_string(backorder_tests::interop::repo().join("infra/local").join(demo)).unwrap();
        let lines = backorderctl::publish::parse_lines(&text).unwrap_or_else(|e| panic!("{demo}: {e:?}"));
        let records = backorderctl::publish::encode_all(&lines, codec, &topics).await.unwrap();
        for record in records {
            let decoded = codec.decode_value(&record.payload).await.unwrap();
            let schema = &files_of(files, &decoded.full_name)[0].schema;
            all.push(Written {
                what: format!("{demo}: {} (backorderctl publish)", decoded.full_name),
                full_name: decoded.full_name.clone(),
                expected: avro_json(&decoded.value, schema),
                bytes: record.payload,
            });
        }
    }

    // Every current schema, records of types added later included.
    for file in files.iter().filter(|f| f.current) {
        for value in sample_values(&file.schema, SAMPLES) {
            all.push(Written {
                what: format!("{} (generic encoder)", file.path),
                full_name: file.full_name.clone(),
                bytes: codec.encode_value("any", &file.full_name, value.clone()).await.unwrap(),
                expected: avro_json(&value, &file.schema),
            });
        }
    }
    all
}

#[tokio::test]
async fn every_record_the_pipeline_writes_decodes_in_java_and_fastavro() {
    let codec = Codec::new(None).unwrap();
    let files = schema_files();
    let written = everything_the_project_writes(&codec, &files).await;
    for internal in ["EmailRequested", "BackorderDelayed", "BackorderDecision"] {
        assert!(written.iter().any(|w| w.full_name.ends_with(internal)), "{internal}");
    }
    for implementation in Implementation::ALL {
        let requests: Vec<_> = written
            .iter()
            .map(|w| request("decode", &decode_candidates(&files, &w.full_name), "-", &hex(&w.bytes)))
            .collect();
        for (w, answer) in written.iter().zip(implementation.run(&requests)) {
            let what = format!("{} read by {}", w.what, implementation.name());
            let answer = answer.unwrap_or_else(|e| panic!("{what}: {e}"));
            let (name, json) = answer.split_once('\t').unwrap();
            assert_eq!(name, w.full_name, "{what}");
            assert_eq!(parse_json(json), w.expected, "{what}");
        }
    }

    // With the apache-avro fingerprint (BACKORDER_AVRO_FINGERPRINT), the
    // reference implementations do not recognise the schema: the reason
    // the specification's is the default.
    let rust_form = codec.clone().with_fingerprint_form(FingerprintForm::ApacheAvro);
    let decision = samples::<BackorderDecision>(&files).remove(0);
    let bytes = rust_form.encode("backorder-decisions.v1", &decision).await.unwrap();
    let candidates = decode_candidates(&files, BackorderDecision::FULL_NAME);
    for implementation in Implementation::ALL {
        let answer = implementation.run_one("decode", &candidates, "-", &hex(&bytes));
        assert!(answer.is_err(), "{}: {answer:?}", implementation.name());
    }
}

#[tokio::test]
async fn confluent_framing_works_both_ways_with_java_and_fastavro() {
    let registry = FakeRegistry::start().await;
    let codec = Codec::new(Some(&registry.url)).unwrap();
    let files = schema_files();

    // The project writes with schema ids; Java and fastavro read with the
    // schema file the id stands for.
    let mut written = Vec::new();
    written.extend(written_by_project::<BackorderDecision>(&codec, &files, "backorder-decisions.v1").await);
    written.extend(written_by_project::<EmailRequested>(&codec, &files, "email-requests.v1").await);
    written.extend(written_by_project::<OrderPlaced>(&codec, &files, "orders.v1").await);
    for implementation in Implementation::ALL {
        let requests: Vec<_> = written
            .iter()
            .map(|w| {
                assert_eq!(w.bytes[0], 0, "{}: Confluent framing", w.what);
                let id = u32::from_be_bytes(w.bytes[1..5].try_into().unwrap());
                let file = files_of(&files, &w.full_name)[0];
                request(
                    "decode-confluent",
                    &file.absolute.display().to_string(),
                    &id.to_string(),
                    &hex(&w.bytes),
                )
            })
            .collect();
        for (w, answer) in written.iter().zip(implementation.run(&requests)) {
            let what = format!("{} read by {}", w.what, implementation.name());
            assert_eq!(
                parse_json(&answer.unwrap_or_else(|e| panic!("{what}: {e}"))),
                w.expected,
                "{what}"
            );
        }
    }

    // Java and fastavro write with the id their schema registered under;
    // the project fetches it from the registry and decodes, every version.
    for implementation in Implementation::ALL {
        let mut requests = Vec::new();
        let mut expected = Vec::new();
        for file in &files {
            let id = registry.register(&file.json);
            for value in sample_values(&file.schema, 2) {
                let text = avro_json(&value, &file.schema).to_string();
                requests.push(request(
                    "encode-confluent",
                    &file.absolute.display().to_string(),
                    &id.to_string(),
                    &text,
                ));
                expected.push((file, id, value));
            }
        }
        for ((file, id, value), answer) in expected.into_iter().zip(implementation.run(&requests)) {
            let what = format!("{} framed by {}", file.path, implementation.name());
            let bytes = unhex(&answer.unwrap_or_else(|e| panic!("{what}: {e}")));
            let decoded = codec
                .decode_value(&bytes)
                .await
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(decoded.writer, WriterSchema::Registry { id }, "{what}");
            let reader = &files_of(&files, &file.full_name)[0].schema;
            let want = if file.current {
                value
            } else {
                fit_to_schema(value, reader)
            };
            assert_eq!(decoded.value, want, "{what}");
        }
    }
}

#[tokio::test]
async fn backorderctl_decode_names_the_writer_schema_of_a_java_message() {
    let files = schema_files();
    let today = files
        .iter()
        .find(|f| f.current && f.full_name == OrderPlaced::FULL_NAME)
        .unwrap();
    let value = sample_values(&today.schema, 1).remove(0);
    let text = avro_json(&value, &today.schema).to_string();
    let hex_message = Implementation::Java
        .run_one("encode", &today.absolute.display().to_string(), "-", &text)
        .unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(binary("backorderctl"))
            .args(args)
            .env("BACKORDER_STACK_ENV", "/nonexistent")
            .env_remove("SCHEMA_REGISTRY_URL")
            .output()
            .unwrap()
    };
    let out = run(&["decode", &hex_message]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("schemas/orders.v1/OrderPlaced.avsc"), "{stdout}");
    assert!(stdout.contains("specification fingerprint"), "{stdout}");
    assert!(stdout.contains("\"type\": \"OrderPlaced\""), "{stdout}");

    // The same message from a file of raw bytes; and an unknown fingerprint.
    let path = std::env::temp_dir().join(format!("avro-interop-{}.bin", uuid::Uuid::new_v4()));
    std::fs::write(&path, unhex(&hex_message)).unwrap();
    let out = run(&["decode", "--file", &path.display().to_string(), "--json"]);
    std::fs::remove_file(&path).unwrap();
    let json: Json = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["writer"]["schema_file"], "schemas/orders.v1/OrderPlaced.avsc");
    assert_eq!(json["writer"]["fingerprint_form"], "specification");
    let mut unknown = unhex(&hex_message);
    unknown[2..10].copy_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
    let out = run(&["decode", &hex(&unknown)]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("0102030405060708") && stderr.contains("24615bee6fc204ed"),
        "{stderr}"
    );

    let out = run(&["schema", "fingerprints", "--json"]);
    let rows: Json = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        rows.as_array().unwrap().len(),
        files.len(),
        "every schema file is listed"
    );
}

/// An `OrderPlaced` for `recipient` in Avro's JSON encoding for `file`
/// (today's schema or an old version), as a producer would build it.
fn order_json(order: &OrderPlaced, file: &SchemaFile) -> String {
    let value = fit_to_schema(apache_avro::to_value(order).unwrap(), &file.schema);
    avro_json(&value, &file.schema).to_string()
}

/// The oldest version of a record: the lowest version number in history/.
fn oldest<'a>(files: &'a [SchemaFile], full_name: &str) -> &'a SchemaFile {
    let version = |f: &SchemaFile| -> u32 {
        f.path
            .rsplit('/')
            .next()
            .and_then(|name| name.split('.').nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(u32::MAX)
    };
    files_of(files, full_name)
        .into_iter()
        .min_by_key(|f| version(f))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_from_java_and_fastavro_producers_are_confirmed_and_an_unknown_fingerprint_is_dead_lettered() {
    let app = TestApp::spawn().await;
    let _orders = app.start_service("orders-consumer").await;
    let _sender = app.start_service("sender").await;
    let files = schema_files();
    let today = files_of(&files, OrderPlaced::FULL_NAME)[0];
    let oldest = oldest(&files, OrderPlaced::FULL_NAME);
    assert!(!oldest.current, "OrderPlaced has a historic version");

    let mut expected = Vec::new();
    for implementation in Implementation::ALL {
        for file in [today, oldest] {
            let tag = format!(
                "{}-{}",
                implementation.name().to_lowercase(),
                if file.current { "today" } else { "oldest" }
            );
            let recipient = app.recipient(&tag);
            let order_id = format!("o-{tag}");
            let order = order_placed(
                &order_id,
                &recipient,
                "de-DE",
                &[("LAMP-01", Backordered), ("MUG-01", InStock)],
            );
            let bytes = implementation
                .run_one(
                    "encode",
                    &file.absolute.display().to_string(),
                    "-",
                    &order_json(&order, file),
                )
                .unwrap_or_else(|e| panic!("{tag}: {e}"));
            app.publish_raw(ORDERS, &order_id, &unhex(&bytes)).await;
            expected.push((tag, recipient, order_id));
        }
    }

    // A producer whose schema this pipeline does not know.
    let stranger = app.recipient("stranger");
    let mut unknown = app
        .codec
        .encode(ORDERS, &order_placed("o-stranger", &stranger, "en", &[("X", InStock)]))
        .await
        .unwrap();
    unknown[2..10].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef, 0, 1, 2, 3]);
    app.publish_raw(ORDERS, "o-stranger", &unknown).await;

    for (tag, recipient, order_id) in &expected {
        let sent = wait_until(
            &format!("the confirmation of the {tag} order at SES"),
            PATIENCE,
            || async {
                let sent = app.emails_to(recipient).await;
                (!sent.is_empty()).then_some(sent)
            },
        )
        .await;
        assert_eq!(sent.len(), 1, "{tag}");
        assert!(
            sent[0].subject.contains(order_id.as_str()),
            "{tag}: {}",
            sent[0].subject
        );
    }

    // The four orders were confirmed, so only the stranger's message is
    // on the dead-letter topic.
    let letters = app.dead_letters(ORDERS, 1).await;
    let (payload, headers) = &letters[0];
    assert_eq!(payload, &unknown, "the original bytes");
    let reason = &headers[dead_letter::REASON];
    assert!(reason.contains("deadbeef00010203"), "as written: {reason}");
    assert!(reason.contains("03020100efbeadde"), "the other byte order: {reason}");
    let codec = Codec::new(None).unwrap();
    for known in codec.known_schemas().filter(|k| k.full_name == OrderPlaced::FULL_NAME) {
        assert!(reason.contains(&hex(&known.fingerprints.specification)), "{reason}");
        assert!(reason.contains(&hex(&known.fingerprints.apache_avro)), "{reason}");
    }
    assert!(app.emails_to(&stranger).await.is_empty());
}

/// The fenced code block of `language` in the producer's guide.
fn guide_snippet(language: &str) -> String {
    let guide = std::fs::read_to_string(backorder_tests::interop::repo().join("docs/producers.md")).unwrap();
    let fence = format!("```{language}\n");
    let start = guide.find(&fence).unwrap_or_else(|| panic!("a {language} snippet")) + fence.len();
    let end = start + guide[start..].find("```").unwrap();
    guide[start..end].to_string()
}

#[tokio::test]
async fn the_producers_guide_snippets_write_orders_the_pipeline_decodes() {
    use std::process::Command;
    let scratch = backorder_tests::interop::repo()
        .join("target/interop-java")
        .join(format!("guide-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&scratch).unwrap();

    // Java: the snippet as the body of a main method, printing the hex.
    let java = guide_snippet("java");
    let (imports, body): (Vec<&str>, Vec<&str>) = java.lines().partition(|l| l.starts_with("import "));
    let source = format!(
        "{}\npublic class GuideSnippet {{ public static void main(String[] args) throws Exception {{\n{}\n\
         byte[] out = new byte[value.remaining()]; value.get(out);\n\
         StringBuilder hex = new StringBuilder(); for (byte b : out) hex.append(String.format(\"%02x\", b & 0xff));\n\
         System.out.println(hex); }} }}\n",
        imports.join("\n"),
        body.join("\n")
    );
    std::fs::write(scratch.join("GuideSnippet.java"), source).unwrap();
    let classpath = backorder_tests::interop::java_classpath();
    let javac = Command::new("javac")
        .arg("-d")
        .arg(&scratch)
        .args(["-cp", &classpath])
        .arg(scratch.join("GuideSnippet.java"))
        .output()
        .unwrap();
    assert!(javac.status.success(), "{}", String::from_utf8_lossy(&javac.stderr));
    let java_out = Command::new("java")
        .args(["-cp", &format!("{}:{classpath}", scratch.display()), "GuideSnippet"])
        .current_dir(backorder_tests::interop::repo())
        .output()
        .unwrap();
    assert!(
        java_out.status.success(),
        "{}",
        String::from_utf8_lossy(&java_out.stderr)
    );

    // Python: the snippet, printing the hex.
    let python = format!("{}\nprint(value.hex())\n", guide_snippet("python"));
    let python_out = Command::new(backorder_tests::interop::fastavro_python())
        .args(["-c", &python])
        .current_dir(backorder_tests::interop::repo())
        .output()
        .unwrap();
    assert!(
        python_out.status.success(),
        "{}",
        String::from_utf8_lossy(&python_out.stderr)
    );
    std::fs::remove_dir_all(&scratch).unwrap();

    let codec = Codec::new(None).unwrap();
    for (who, out) in [("Java", java_out.stdout), ("Python", python_out.stdout)] {
        let bytes = unhex(String::from_utf8(out).unwrap().trim());
        let order: backorder_core::events::orders::OrderEvent = codec
            .decode(&bytes)
            .await
            .unwrap_or_else(|e| panic!("the guide's {who} snippet: {e}"));
        let backorder_core::events::orders::OrderEvent::Placed(order) = order else {
            panic!("{who}: {order:?}")
        };
        assert_eq!(order.lines[0].availability, Backordered, "{who}");
        assert_eq!(order.total_minor, 8900, "{who}");
    }
}
