//! Avro on the wire.
//!
//! Writes Avro single-object encoding (`C3 01`, the writer schema's 8-byte
//! CRC-64-AVRO fingerprint, the datum) by default, or Confluent framing
//! (`00`, a 4-byte schema id, the datum) when a schema registry is
//! configured. Reads both. The writer schema is looked up by fingerprint
//! (every version in `schemas/`, old ones included) or by id through the
//! registry, and resolved against today's reader schema, so events written
//! by older producers still decode.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use apache_avro::Schema;
use apache_avro::rabin::Rabin;
use apache_avro::types::Value;

use crate::events::{AvroRecord, DecodeError, TopicEvent};

/// One schema file of `schemas/`: current or a historic version.
struct SchemaFile {
    path: &'static str,
    json: &'static str,
    /// Historic versions are only ever writer schemas.
    current: bool,
}

macro_rules! schema_files {
    ($($path:literal => $current:expr),+ $(,)?) => {
        &[$(SchemaFile {
            path: $path,
            json: include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../schemas/", $path)),
            current: $current,
        }),+]
    };
}

const SCHEMA_FILES: &[SchemaFile] = schema_files! {
    "orders.v1/OrderPlaced.avsc" => true,
    "orders.v1/history/OrderPlaced.1.avsc" => false,
    "orders.v1/OrderCancelled.avsc" => true,
    "orders.v1/CartAbandoned.avsc" => true,
    "stock.v1/ProductUpserted.avsc" => true,
    "stock.v1/SupplierEtaChanged.avsc" => true,
    "stock.v1/StockArrival.avsc" => true,
    "shipments.v1/ShipmentDispatched.avsc" => true,
    "shipments.v1/ShipmentDelivered.avsc" => true,
    "offer-responses.v1/OfferResponse.avsc" => true,
    "backorder-delays.v1/BackorderDelayed.avsc" => true,
    "email-requests.v1/EmailRequested.avsc" => true,
    "backorder-decisions.v1/BackorderDecision.avsc" => true,
};

const SINGLE_OBJECT_MAGIC: [u8; 2] = [0xC3, 0x01];
const CONFLUENT_MAGIC: u8 = 0x00;

/// Why bytes could not become an event, or an event bytes. The `Display`
/// text is what lands in a dead-letter header, so it says what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("schema file {path} is invalid: {source}")]
    BadSchemaFile {
        path: &'static str,
        #[source]
        source: Box<apache_avro::Error>,
    },
    #[error("message is empty")]
    Empty,
    #[error("message starts with 0x{0:02x}: neither Avro single-object (C3 01) nor Confluent (00) framing")]
    UnknownFraming(u8),
    #[error("message is shorter than its framing header")]
    Truncated,
    #[error("no known schema has fingerprint {0}")]
    UnknownFingerprint(String),
    #[error("schema id {id} could not be fetched from the registry: {reason}")]
    Registry { id: u32, reason: String },
    #[error("schema registry rejected {subject}: {reason}")]
    Register { subject: String, reason: String },
    /// The registry could not answer (down, overloaded, a proxy's error
    /// page): infrastructure, never the message's fault.
    #[error("schema registry unavailable while {doing}: {reason}")]
    RegistryUnavailable { doing: String, reason: String },
    #[error("Avro datum does not match writer schema {record}: {source}")]
    Datum {
        record: String,
        #[source]
        source: Box<apache_avro::Error>,
    },
    #[error("no current reader schema for record {0}")]
    NoReaderSchema(String),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("could not encode {record}: {source}")]
    Encode {
        record: &'static str,
        #[source]
        source: Box<apache_avro::Error>,
    },
}

impl CodecError {
    /// True for failures of infrastructure (the registry unreachable) as
    /// opposed to bad bytes: the caller retries instead of dead-lettering.
    pub fn is_transient(&self) -> bool {
        matches!(self, CodecError::RegistryUnavailable { .. })
    }
}

/// All known schemas, indexed for both directions.
struct SchemaSet {
    /// Writer schemas by single-object fingerprint, old versions included.
    by_fingerprint: HashMap<[u8; 8], Arc<Schema>>,
    /// Today's schema per record full name (reader and writer).
    current: HashMap<String, (Arc<Schema>, [u8; 8], &'static str)>,
}

fn fingerprint(schema: &Schema) -> [u8; 8] {
    let bytes = schema.fingerprint::<Rabin>().bytes;
    let mut out = [0u8; 8];
    for (slot, byte) in out.iter_mut().zip(bytes) {
        *slot = byte;
    }
    out
}

fn full_name(schema: &Schema) -> String {
    schema
        .name()
        .map(|n| n.fullname(None))
        .unwrap_or_else(|| "<unnamed>".to_string())
}

impl SchemaSet {
    fn load() -> Result<Self, CodecError> {
        let mut set = SchemaSet {
            by_fingerprint: HashMap::new(),
            current: HashMap::new(),
        };
        for file in SCHEMA_FILES {
            let schema = Schema::parse_str(file.json).map_err(|source| CodecError::BadSchemaFile {
                path: file.path,
                source: Box::new(source),
            })?;
            let fp = fingerprint(&schema);
            let schema = Arc::new(schema);
            set.by_fingerprint.insert(fp, schema.clone());
            if file.current {
                set.current.insert(full_name(&schema), (schema, fp, file.json));
            }
        }
        Ok(set)
    }
}

/// A minimal client of the Confluent schema registry REST API.
struct Registry {
    url: String,
    http: reqwest::Client,
    /// Schemas by id: ids are immutable, so cached forever.
    by_id: RwLock<HashMap<u32, Arc<Schema>>>,
    /// Our ids per subject, registered once per process.
    ids: RwLock<HashMap<String, u32>>,
}

/// Encodes and decodes every record type of the project.
#[derive(Clone)]
pub struct Codec {
    schemas: Arc<SchemaSet>,
    registry: Option<Arc<Registry>>,
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Codec")
            .field("registry", &self.registry.as_ref().map(|r| r.url.as_str()))
            .finish()
    }
}

impl Codec {
    /// `registry_url`: when set, encode with Confluent framing.
    pub fn new(registry_url: Option<&str>) -> Result<Self, CodecError> {
        Ok(Self {
            schemas: Arc::new(SchemaSet::load()?),
            registry: registry_url.map(|url| {
                Arc::new(Registry {
                    url: url.trim_end_matches('/').to_string(),
                    http: reqwest::Client::new(),
                    by_id: RwLock::default(),
                    ids: RwLock::default(),
                })
            }),
        })
    }

    /// Encodes `record` for `topic`.
    pub async fn encode<T: AvroRecord>(&self, topic: &str, record: &T) -> Result<Vec<u8>, CodecError> {
        let (schema, fp, json) = self
            .schemas
            .current
            .get(T::FULL_NAME)
            .ok_or_else(|| CodecError::NoReaderSchema(T::FULL_NAME.to_string()))?;
        let encode_err = |source| CodecError::Encode {
            record: T::FULL_NAME,
            source: Box::new(source),
        };
        let value = apache_avro::to_value(record)
            .and_then(|v| v.resolve(schema))
            .map_err(encode_err)?;
        let datum = apache_avro::to_avro_datum(schema, value).map_err(encode_err)?;
        let mut out = Vec::with_capacity(datum.len() + 10);
        match &self.registry {
            None => {
                out.extend_from_slice(&SINGLE_OBJECT_MAGIC);
                out.extend_from_slice(fp);
            }
            Some(registry) => {
                let subject = format!("{topic}-{}", T::FULL_NAME);
                let id = registry.register(&subject, json).await?;
                out.push(CONFLUENT_MAGIC);
                out.extend_from_slice(&id.to_be_bytes());
            }
        }
        out.extend_from_slice(&datum);
        Ok(out)
    }

    /// Decodes one message of a topic into its event enum.
    pub async fn decode<E: TopicEvent>(&self, payload: &[u8]) -> Result<E, CodecError> {
        let (writer, mut datum) = self.writer_schema(payload).await?;
        let name = full_name(&writer);
        let (reader, _, _) = self
            .schemas
            .current
            .get(&name)
            .ok_or_else(|| CodecError::NoReaderSchema(name.clone()))?;
        let value: Value =
            apache_avro::from_avro_datum(&writer, &mut datum, Some(reader)).map_err(|source| CodecError::Datum {
                record: name.clone(),
                source: Box::new(source),
            })?;
        Ok(E::from_avro(&name, &value)?)
    }

    /// Finds the writer schema from the framing; returns it and the datum.
    async fn writer_schema<'a>(&self, payload: &'a [u8]) -> Result<(Arc<Schema>, &'a [u8]), CodecError> {
        let first = *payload.first().ok_or(CodecError::Empty)?;
        if payload.starts_with(&SINGLE_OBJECT_MAGIC) {
            let fp: [u8; 8] = payload
                .get(2..10)
                .and_then(|s| s.try_into().ok())
                .ok_or(CodecError::Truncated)?;
            let schema = self
                .schemas
                .by_fingerprint
                .get(&fp)
                .cloned()
                .ok_or_else(|| CodecError::UnknownFingerprint(hex(&fp)))?;
            return Ok((schema, &payload[10..]));
        }
        if first == CONFLUENT_MAGIC {
            let id_bytes: [u8; 4] = payload
                .get(1..5)
                .and_then(|s| s.try_into().ok())
                .ok_or(CodecError::Truncated)?;
            let id = u32::from_be_bytes(id_bytes);
            let Some(registry) = &self.registry else {
                return Err(CodecError::Registry {
                    id,
                    reason: "Confluent-framed message but SCHEMA_REGISTRY_URL is not set".into(),
                });
            };
            let schema = registry.schema_by_id(id).await?;
            return Ok((schema, &payload[5..]));
        }
        Err(CodecError::UnknownFraming(first))
    }
}

impl Registry {
    async fn schema_by_id(&self, id: u32) -> Result<Arc<Schema>, CodecError> {
        if let Some(schema) = self.by_id.read().ok().and_then(|m| m.get(&id).cloned()) {
            return Ok(schema);
        }
        let fail = |reason: String| CodecError::Registry { id, reason };
        let unavailable = |reason: String| CodecError::RegistryUnavailable {
            doing: format!("fetching schema id {id}"),
            reason,
        };
        #[derive(serde::Deserialize)]
        struct SchemaById {
            schema: String,
        }
        let response = self
            .http
            .get(format!("{}/schemas/ids/{id}", self.url))
            .send()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        if response.status().is_server_error() || response.status() == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return Err(unavailable(format!("HTTP {}", response.status())));
        }
        if !response.status().is_success() {
            return Err(fail(format!("HTTP {}", response.status())));
        }
        let body: SchemaById = response.json().await.map_err(|e| unavailable(e.to_string()))?;
        let schema = Arc::new(Schema::parse_str(&body.schema).map_err(|e| fail(e.to_string()))?);
        if let Ok(mut cache) = self.by_id.write() {
            cache.insert(id, schema.clone());
        }
        Ok(schema)
    }

    async fn register(&self, subject: &str, json: &str) -> Result<u32, CodecError> {
        if let Some(id) = self.ids.read().ok().and_then(|m| m.get(subject).copied()) {
            return Ok(id);
        }
        let fail = |reason: String| CodecError::Register {
            subject: subject.to_string(),
            reason,
        };
        let unavailable = |reason: String| CodecError::RegistryUnavailable {
            doing: format!("registering {subject}"),
            reason,
        };
        #[derive(serde::Deserialize)]
        struct Registered {
            id: u32,
        }
        let response = self
            .http
            .post(format!("{}/subjects/{subject}/versions", self.url))
            .header("content-type", "application/vnd.schemaregistry.v1+json")
            .json(&serde_json::json!({ "schema": json }))
            .send()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        if response.status().is_server_error() || response.status() == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return Err(unavailable(format!("HTTP {}", response.status())));
        }
        if !response.status().is_success() {
            return Err(fail(format!("HTTP {}", response.status())));
        }
        let Registered { id } = response.json().await.map_err(|e| unavailable(e.to_string()))?;
        if let Ok(mut ids) = self.ids.write() {
            ids.insert(subject.to_string(), id);
        }
        Ok(id)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::orders::{Availability, Customer, OrderEvent, OrderLine, OrderPlaced};
    use crate::events::stock::{StockEvent, SupplierEtaChanged};
    use chrono::{NaiveDate, TimeZone, Utc};

    fn order() -> OrderPlaced {
        OrderPlaced {
            event_id: "e-1".into(),
            occurred_at: Utc.with_ymd_and_hms(2026, 11, 24, 10, 0, 0).unwrap(),
            order_id: "o-1".into(),
            customer: Customer {
                customer_id: "c-1".into(),
                email: "jane@example.com".into(),
                name: "Jane".into(),
                locale: "de-DE".into(),
                country: Some("DE".into()),
            },
            lines: vec![OrderLine {
                line_id: "l-1".into(),
                sku: "SKU-1".into(),
                product_name: "Lamp".into(),
                category: Some("lighting".into()),
                quantity: 2,
                unit_price_minor: 1999,
                availability: Availability::Backordered,
            }],
            currency: "EUR".into(),
            total_minor: 3998,
        }
    }

    #[tokio::test]
    async fn single_object_round_trip() {
        let codec = Codec::new(None).unwrap();
        let bytes = codec.encode("orders.v1", &order()).await.unwrap();
        assert_eq!(&bytes[..2], &[0xC3, 0x01]);
        let decoded: OrderEvent = codec.decode(&bytes).await.unwrap();
        assert_eq!(decoded, OrderEvent::Placed(order()));
    }

    #[tokio::test]
    async fn fingerprint_matches_the_avro_library_single_object_writer() {
        let schema = Schema::parse_str(SCHEMA_FILES[0].json).unwrap();
        let mut writer = apache_avro::GenericSingleObjectWriter::new_with_capacity(&schema, 1024).unwrap();
        let value = apache_avro::to_value(order()).unwrap().resolve(&schema).unwrap();
        let mut theirs = Vec::new();
        writer.write_value(value, &mut theirs).unwrap();
        let ours = Codec::new(None).unwrap().encode("orders.v1", &order()).await.unwrap();
        assert_eq!(ours, theirs);
    }

    #[tokio::test]
    async fn nullable_dates_round_trip() {
        let codec = Codec::new(None).unwrap();
        for (from, to) in [
            (None, None),
            (NaiveDate::from_ymd_opt(2027, 1, 2), NaiveDate::from_ymd_opt(2027, 1, 9)),
        ] {
            let eta = SupplierEtaChanged {
                event_id: "e".into(),
                occurred_at: Utc.with_ymd_and_hms(2026, 11, 24, 10, 0, 0).unwrap(),
                sku: "S".into(),
                eta_from: from,
                eta_to: to,
                reason: "port strike".into(),
                remedy: "rerouted".into(),
            };
            let bytes = codec.encode("stock.v1", &eta).await.unwrap();
            let back: StockEvent = codec.decode(&bytes).await.unwrap();
            assert_eq!(back, StockEvent::SupplierEtaChanged(eta));
        }
    }

    #[tokio::test]
    async fn garbage_is_a_clear_error() {
        let codec = Codec::new(None).unwrap();
        let err = codec.decode::<OrderEvent>(b"\xffnot avro").await.err().unwrap();
        assert!(err.to_string().contains("neither Avro single-object"), "{err}");
        let err = codec
            .decode::<OrderEvent>(&[0xC3, 0x01, 1, 2, 3, 4, 5, 6, 7, 8, 0])
            .await
            .err()
            .unwrap();
        assert!(matches!(err, CodecError::UnknownFingerprint(_)), "{err}");
    }

    #[tokio::test]
    async fn an_order_written_with_schema_version_1_decodes_into_todays_type() {
        // An old producer: OrderPlaced v1 had no customer.country and no
        // line.category. Encode with that writer schema, exactly as it would.
        let old = SCHEMA_FILES.iter().find(|f| !f.current).unwrap();
        let old_schema = Schema::parse_str(old.json).unwrap();
        let mut value = apache_avro::to_value(order()).unwrap();
        if let Value::Record(fields) = &mut value {
            for (name, field) in fields.iter_mut() {
                if name == "customer"
                    && let Value::Record(c) = field
                {
                    c.retain(|(n, _)| n != "country");
                }
                if name == "lines"
                    && let Value::Array(lines) = field
                {
                    for line in lines {
                        if let Value::Record(l) = line {
                            l.retain(|(n, _)| n != "category");
                        }
                    }
                }
            }
        }
        let value = value.resolve(&old_schema).unwrap();
        let mut bytes = SINGLE_OBJECT_MAGIC.to_vec();
        bytes.extend_from_slice(&fingerprint(&old_schema));
        bytes.extend_from_slice(&apache_avro::to_avro_datum(&old_schema, value).unwrap());

        let decoded: OrderEvent = Codec::new(None).unwrap().decode(&bytes).await.unwrap();
        let mut expected = order();
        expected.customer.country = None;
        expected.lines[0].category = None;
        assert_eq!(decoded, OrderEvent::Placed(expected));
    }

    /// A minimal stand-in for a Confluent schema registry (its two REST
    /// calls), because no registry can run on this machine: it registers
    /// schemas and serves them by id, counting lookups.
    async fn fake_registry() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use axum::extract::{Path, State};
        use axum::routing::{get, post};
        use std::sync::atomic::{AtomicUsize, Ordering};
        type Shared = (
            std::sync::Arc<std::sync::Mutex<Vec<String>>>,
            std::sync::Arc<AtomicUsize>,
        );
        let lookups = std::sync::Arc::new(AtomicUsize::new(0));
        let state: Shared = (Default::default(), lookups.clone());
        let app = axum::Router::new()
            .route(
                "/subjects/{subject}/versions",
                post(
                    |State((schemas, _)): State<Shared>, body: axum::Json<serde_json::Value>| async move {
                        let mut schemas = schemas.lock().unwrap();
                        schemas.push(body["schema"].as_str().unwrap().to_string());
                        axum::Json(serde_json::json!({ "id": schemas.len() + 100 }))
                    },
                ),
            )
            .route(
                "/schemas/ids/{id}",
                get(
                    |State((schemas, lookups)): State<Shared>, Path(id): Path<usize>| async move {
                        lookups.fetch_add(1, Ordering::SeqCst);
                        let schema = schemas.lock().unwrap()[id - 101].clone();
                        axum::Json(serde_json::json!({ "schema": schema }))
                    },
                ),
            )
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, lookups)
    }

    #[tokio::test]
    async fn confluent_framing_round_trips_through_the_registry_and_ids_are_cached() {
        let (url, lookups) = fake_registry().await;
        let with_registry = Codec::new(Some(&url)).unwrap();
        let bytes = with_registry.encode("orders.v1", &order()).await.unwrap();
        assert_eq!(bytes[0], 0x00, "Confluent magic byte");
        assert_eq!(u32::from_be_bytes(bytes[1..5].try_into().unwrap()), 101);
        for _ in 0..3 {
            let decoded: OrderEvent = with_registry.decode(&bytes).await.unwrap();
            assert_eq!(decoded, OrderEvent::Placed(order()));
        }
        assert_eq!(
            lookups.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "schema ids are cached"
        );
        // A decoder without a registry still reads single-object encoding,
        // and says clearly why it cannot read Confluent framing.
        let plain = Codec::new(None).unwrap();
        let err = plain.decode::<OrderEvent>(&bytes).await.err().unwrap();
        assert!(err.to_string().contains("SCHEMA_REGISTRY_URL"), "{err}");
        let single = plain.encode("orders.v1", &order()).await.unwrap();
        assert_eq!(
            with_registry.decode::<OrderEvent>(&single).await.unwrap(),
            OrderEvent::Placed(order())
        );
    }

    #[tokio::test]
    async fn a_registry_that_cannot_answer_is_transient_for_encoding_and_decoding() {
        // Nothing listens on port 1: refused at once.
        let down = Codec::new(Some("http://127.0.0.1:1")).unwrap();
        let encoded = down.encode("orders.v1", &order()).await.err().unwrap();
        assert!(encoded.is_transient(), "{encoded}");
        let framed = [0x00, 0, 0, 0, 7, 0];
        let decoded = down.decode::<OrderEvent>(&framed).await.err().unwrap();
        assert!(decoded.is_transient(), "{decoded}");
        // Bad bytes stay permanent.
        let garbage = down.decode::<OrderEvent>(b"\x01junk").await.err().unwrap();
        assert!(!garbage.is_transient(), "{garbage}");
    }
}
