//! `backorderctl schema fingerprints` and `backorderctl decode`: what an
//! operator needs when a producer's events land in a dead-letter topic.
//!
//! Fingerprints are printed as the 8 bytes that follow `C3 01` in Avro
//! single-object encoding, hex, in the order they are written (the
//! CRC-64-AVRO value, little-endian), in both forms the codec reads (see
//! `backorder_core::codec::FingerprintForm`).

use std::io::{Read, Write};
use std::path::PathBuf;

use backorder_core::codec::{Codec, DecodedMessage, FingerprintForm, Fingerprints, WriterSchema};
use backorder_core::config::Settings;
use backorder_core::events::wire_time::days_to_date;
use clap::{Args, Subcommand};
use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{ContentArrangement, Table};
use serde::Serialize;
use serde_json::{Map, Value as Json};

use crate::CtlError;

/// `schema` subcommands.
#[derive(Debug, Subcommand)]
pub enum SchemaCommand {
    /// Print the single-object fingerprints of the known schemas, or of
    /// schema files given, in both forms.
    #[command(long_about = FINGERPRINTS_ABOUT)]
    Fingerprints(FingerprintsArgs),
}

const FINGERPRINTS_ABOUT: &str = "\
Print the single-object fingerprints of every schema in schemas/ (today's and
history/), or of the .avsc files given (a producer's own schema, to compare).

Each fingerprint is the 8 bytes that follow C3 01 in Avro single-object
encoding, hex, as written (the CRC-64-AVRO value, little-endian). Two forms
are in circulation and both are accepted:
  specification  the specification's parsing canonical form: Apache Avro for
                 Java (BinaryMessageEncoder, SchemaNormalization) and fastavro
  apache-avro    the Rust crate apache-avro (0.21) and Apache's Python `avro`,
                 which keep {\"type\":\"long\"} where a logical type was stripped
They differ for every schema with a timestamp or a date. Java's
SchemaNormalization.parsingFingerprint64 returns the specification value as a
long: its bytes little-endian are the column shown. BACKORDER_AVRO_FINGERPRINT
says which form this deployment writes (default: specification).";

/// Arguments of `schema fingerprints`.
#[derive(Debug, Args)]
pub struct FingerprintsArgs {
    /// Schema files (.avsc) to fingerprint instead of the known schemas.
    #[arg(value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// One row of `schema fingerprints`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FingerprintRow {
    /// The record's full name.
    pub record: String,
    /// The schema file (relative to schemas/ for known ones).
    pub file: String,
    /// Specification form, hex as written.
    pub specification: String,
    /// apache-avro form, hex as written.
    pub apache_avro: String,
    /// For a file given: the known schema with the same fingerprint, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub known_as: Option<String>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn row(record: String, file: String, fingerprints: &Fingerprints, known_as: Option<String>) -> FingerprintRow {
    FingerprintRow {
        record,
        file,
        specification: hex(&fingerprints.specification),
        apache_avro: hex(&fingerprints.apache_avro),
        known_as,
    }
}

/// The rows for the known schemas (no files) or for `files`.
pub fn fingerprint_rows(codec: &Codec, files: &[PathBuf]) -> Result<Vec<FingerprintRow>, CtlError> {
    if files.is_empty() {
        return Ok(codec
            .known_schemas()
            .map(|k| {
                let file = if k.current {
                    k.path.to_string()
                } else {
                    format!("{} (history)", k.path)
                };
                row(k.full_name.clone(), file, &k.fingerprints, None)
            })
            .collect());
    }
    files
        .iter()
        .map(|path| {
            let input = path.display().to_string();
            let text = std::fs::read_to_string(path).map_err(|e| CtlError::ReadInput {
                input: input.clone(),
                reason: e.to_string(),
            })?;
            let schema = apache_avro::Schema::parse_str(&text).map_err(|e| CtlError::ReadInput {
                input: input.clone(),
                reason: format!("not an Avro schema: {e}"),
            })?;
            let fingerprints = Fingerprints::of(&schema);
            let known_as = codec
                .known_schemas()
                .find(|k| k.fingerprints == fingerprints)
                .map(|k| k.path.to_string());
            let record = schema
                .name()
                .map(|n| n.fullname(None))
                .unwrap_or_else(|| "<unnamed>".to_string());
            Ok(row(record, input, &fingerprints, known_as))
        })
        .collect()
}

/// The table `schema fingerprints` prints.
pub fn render_fingerprints(rows: &[FingerprintRow], with_known_as: bool) -> String {
    let mut table = Table::new();
    let mut header = vec![
        "record",
        "file",
        "specification (Java, fastavro)",
        "apache-avro (Rust, Python avro)",
    ];
    if with_known_as {
        header.push("same as");
    }
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header);
    for r in rows {
        let mut cells = vec![
            r.record.clone(),
            r.file.clone(),
            r.specification.clone(),
            r.apache_avro.clone(),
        ];
        if with_known_as {
            cells.push(r.known_as.clone().unwrap_or_else(|| "(no known schema)".to_string()));
        }
        table.add_row(cells);
    }
    table.to_string()
}

/// Runs `schema ...`.
pub async fn run(command: SchemaCommand, out: &mut impl Write) -> Result<(), CtlError> {
    match command {
        SchemaCommand::Fingerprints(args) => {
            let settings = Settings::load()?;
            let codec = Codec::new(None)
                .map_err(CtlError::Codec)?
                .with_fingerprint_form(settings.avro_fingerprint);
            let rows = fingerprint_rows(&codec, &args.files)?;
            if args.json {
                serde_json::to_writer_pretty(&mut *out, &rows).map_err(std::io::Error::from)?;
                writeln!(out)?;
                return Ok(());
            }
            writeln!(out, "{}", render_fingerprints(&rows, !args.files.is_empty()))?;
            writeln!(
                out,
                "Bytes after C3 01, hex, as written. This deployment writes the {} form \
                 (BACKORDER_AVRO_FINGERPRINT); both are accepted.",
                codec.fingerprint_form()
            )?;
            Ok(())
        }
    }
}

pub(crate) const DECODE_ABOUT: &str = "\
Decode one raw Kafka message value (Avro single-object encoding, C3 01 + the
fingerprint, or Confluent framing, 00 + a schema id) the way the consumers do,
and print which writer schema it matched and the record.

The message is given as hex on the command line (spaces, colons, 0x and \\x are
ignored), or with --file as a file holding the raw bytes or their hex (`-`
reads stdin). Confluent-framed messages need SCHEMA_REGISTRY_URL. The record is
printed as JSON the way `backorderctl publish` reads it (with \"type\", instants
RFC 3339, dates YYYY-MM-DD). A message that matches no schema fails with the
same reason a dead-letter header carries: the fingerprint in both byte orders
and the known schemas' fingerprints.

Exit codes: 0 decoded; 1 schema registry or configuration failure; 2 the
message could not be read or decoded.";

/// Arguments of `decode`.
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("input").required(true).args(["hex", "file"]))]
pub struct DecodeArgs {
    /// The message as hex (e.g. `c3 01 24 61 5b ...`).
    #[arg(value_name = "HEX", num_args = 1.., allow_hyphen_values = false)]
    pub hex: Vec<String>,
    /// A file with the message: its raw bytes, or hex text; `-` reads stdin.
    #[arg(long, value_name = "FILE|-")]
    pub file: Option<PathBuf>,
    /// Print one JSON object (record, writer, value) instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Hex text to bytes; `None` unless every character is a hex digit or a
/// separator (whitespace, `:`, `0x`, `\x`).
pub fn parse_hex(text: &str) -> Option<Vec<u8>> {
    let cleaned: String = text
        .replace("0x", "")
        .replace("0X", "")
        .replace("\\x", "")
        .chars()
        .filter(|c| !c.is_whitespace() && *c != ':' && *c != ',')
        .collect();
    if cleaned.is_empty() || !cleaned.len().is_multiple_of(2) || !cleaned.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    (0..cleaned.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&cleaned[i..i + 2], 16).ok())
        .collect()
}

/// The message bytes the arguments name.
fn read_message(args: &DecodeArgs) -> Result<Vec<u8>, CtlError> {
    if let Some(path) = &args.file {
        let input = path.display().to_string();
        let mut raw = Vec::new();
        let read = if input == "-" {
            std::io::stdin().read_to_end(&mut raw)
        } else {
            std::fs::File::open(path).and_then(|mut f| f.read_to_end(&mut raw))
        };
        read.map_err(|e| CtlError::ReadInput {
            input: input.clone(),
            reason: e.to_string(),
        })?;
        // Binary Avro framing starts with 0xC3 or 0x00, never with text:
        // a file that is all hex digits is the hex of a message.
        return Ok(std::str::from_utf8(&raw).ok().and_then(parse_hex).unwrap_or(raw));
    }
    let text = args.hex.join(" ");
    parse_hex(&text).ok_or_else(|| CtlError::ReadInput {
        input: "the command line".into(),
        reason: "not hex: expected pairs of hex digits, e.g. c3 01 24 61 5b ee ...".into(),
    })
}

/// An Avro value as the JSON `backorderctl publish` reads: unions
/// unwrapped, enums as their symbol, instants RFC 3339, dates YYYY-MM-DD.
pub fn avro_to_json(value: &apache_avro::types::Value) -> Json {
    use apache_avro::types::Value as V;
    match value {
        V::Null => Json::Null,
        V::Boolean(b) => Json::Bool(*b),
        V::Int(i) => Json::from(*i),
        V::Long(l) => Json::from(*l),
        V::Float(f) => serde_json::Number::from_f64(f64::from(*f)).map_or(Json::Null, Json::Number),
        V::Double(d) => serde_json::Number::from_f64(*d).map_or(Json::Null, Json::Number),
        V::String(s) | V::Enum(_, s) => Json::String(s.clone()),
        V::Bytes(b) | V::Fixed(_, b) => Json::String(hex(b)),
        V::Union(_, inner) => avro_to_json(inner),
        V::Array(items) => Json::Array(items.iter().map(avro_to_json).collect()),
        V::Map(entries) => Json::Object(entries.iter().map(|(k, v)| (k.clone(), avro_to_json(v))).collect()),
        V::Record(fields) => Json::Object(fields.iter().map(|(k, v)| (k.clone(), avro_to_json(v))).collect()),
        V::Date(days) => days_to_date(i64::from(*days))
            .map_or_else(|| Json::from(*days), |d| Json::String(d.format("%Y-%m-%d").to_string())),
        V::TimestampMillis(ms) => chrono::DateTime::from_timestamp_millis(*ms).map_or_else(
            || Json::from(*ms),
            |t| Json::String(t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)),
        ),
        other => serde_json::to_value(format!("{other:?}")).unwrap_or(Json::Null),
    }
}

/// The record as `publish` reads it, with `"type"` (the short name).
pub fn record_json(decoded: &DecodedMessage) -> Json {
    let short = decoded.full_name.rsplit('.').next().unwrap_or(&decoded.full_name);
    let mut object = Map::new();
    object.insert("type".into(), Json::String(short.to_string()));
    if let Json::Object(fields) = avro_to_json(&decoded.value) {
        object.extend(fields);
    }
    Json::Object(object)
}

fn writer_json(writer: &WriterSchema) -> Json {
    match writer {
        WriterSchema::Known {
            path,
            fingerprint,
            form,
        } => serde_json::json!({
            "schema_file": format!("schemas/{path}"),
            "fingerprint": hex(fingerprint),
            "fingerprint_form": form.as_str(),
        }),
        WriterSchema::Registry { id } => serde_json::json!({ "schema_id": id }),
    }
}

/// Runs `decode`.
pub async fn run_decode(args: DecodeArgs, out: &mut impl Write) -> Result<(), CtlError> {
    let bytes = read_message(&args)?;
    let settings = Settings::load()?;
    let codec = Codec::from_settings(&settings).map_err(CtlError::Codec)?;
    let decoded = codec.decode_value(&bytes).await.map_err(|source| {
        if source.is_transient() {
            CtlError::Codec(source)
        } else {
            CtlError::Undecodable(source)
        }
    })?;
    if args.json {
        let all = serde_json::json!({
            "record": decoded.full_name,
            "writer": writer_json(&decoded.writer),
            "value": record_json(&decoded),
        });
        serde_json::to_writer_pretty(&mut *out, &all).map_err(std::io::Error::from)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(out, "record: {}", decoded.full_name)?;
    writeln!(out, "writer: {}", decoded.writer)?;
    if let WriterSchema::Known {
        form: FingerprintForm::ApacheAvro,
        ..
    } = decoded.writer
    {
        writeln!(
            out,
            "note:   the producer wrote the apache-avro form of the fingerprint (Rust apache-avro, Python avro); \
             JVM consumers expect the specification's"
        )?;
    }
    serde_json::to_writer_pretty(&mut *out, &record_json(&decoded)).map_err(std::io::Error::from)?;
    writeln!(out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_accepts_the_usual_separators_and_rejects_anything_else() {
        assert_eq!(parse_hex("c3 01 ff"), Some(vec![0xc3, 0x01, 0xff]));
        assert_eq!(parse_hex("0xC3:0x01"), Some(vec![0xc3, 0x01]));
        assert_eq!(parse_hex("\\xc3\\x01\n"), Some(vec![0xc3, 0x01]));
        assert_eq!(parse_hex("c30"), None);
        assert_eq!(parse_hex("hello"), None);
        assert_eq!(parse_hex(""), None);
    }

    #[test]
    fn the_known_schemas_are_listed_with_both_fingerprints() {
        let codec = Codec::new(None).unwrap();
        let rows = fingerprint_rows(&codec, &[]).unwrap();
        let placed = rows.iter().find(|r| r.file == "orders.v1/OrderPlaced.avsc").unwrap();
        assert_eq!(placed.specification, "24615bee6fc204ed");
        assert_eq!(placed.apache_avro, "b179a5944f43e33e");
        assert!(rows.iter().any(|r| r.file.ends_with("(history)")));
        let table = render_fingerprints(&rows, false);
        assert!(
            table.contains("24615bee6fc204ed") && table.contains("b179a5944f43e33e"),
            "{table}"
        );
    }

    #[test]
    fn a_schema_file_given_is_matched_to_the_known_one() {
        let path = PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../schemas/orders.v1/OrderPlaced.avsc"
        ));
        let rows = fingerprint_rows(&Codec::new(None).unwrap(), &[path]).unwrap();
        assert_eq!(rows[0].known_as.as_deref(), Some("orders.v1/OrderPlaced.avsc"));
        assert_eq!(rows[0].record, "com.backorder.orders.OrderPlaced");
    }

    #[test]
    fn the_fingerprints_in_the_producers_guide_are_the_codecs() {
        let guide = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/producers.md")).unwrap();
        let rows = fingerprint_rows(&Codec::new(None).unwrap(), &[]).unwrap();
        let mut checked = 0;
        for line in guide.lines().filter(|l| l.starts_with("| `") && l.contains(".avsc`")) {
            let cells: Vec<&str> = line.split('|').map(|c| c.trim().trim_matches('`')).collect();
            let (file, specification, apache_avro) = (cells[1], cells[2], cells[3]);
            let row = rows
                .iter()
                .find(|r| r.file.trim_end_matches(" (history)") == file)
                .unwrap_or_else(|| panic!("docs/producers.md lists {file}, which is not a known schema"));
            assert_eq!(
                (specification, apache_avro),
                (row.specification.as_str(), row.apache_avro.as_str()),
                "{file}"
            );
            checked += 1;
        }
        assert!(checked >= 2, "the guide's fingerprint table was found");
    }

    #[tokio::test]
    async fn a_decoded_record_prints_as_publish_input() {
        use backorder_core::events::stock::StockArrival;
        let codec = Codec::new(None).unwrap();
        let arrival: StockArrival = serde_json::from_value(serde_json::json!({
            "event_id": "e-1", "occurred_at": "2026-12-20T08:00:00Z", "arrival_id": "a-1",
            "sku": "LAMP-01", "quantity": 4, "warehouse": "BER-1"
        }))
        .unwrap();
        let bytes = codec.encode("stock.v1", &arrival).await.unwrap();
        let decoded = codec.decode_value(&bytes).await.unwrap();
        let json = record_json(&decoded);
        assert_eq!(json["type"], "StockArrival");
        assert_eq!(json["occurred_at"], "2026-12-20T08:00:00Z");
        assert_eq!(json["quantity"], 4);
    }
}
