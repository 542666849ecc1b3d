//! Avro on the wire.
//!
//! Writes Avro single-object encoding (`C3 01`, the writer schema's 8-byte
//! CRC-64-AVRO fingerprint, the datum) by default, or Confluent framing
//! (`00`, a 4-byte schema id, the datum) when a schema registry is
//! configured. Reads both. The writer schema is looked up by fingerprint
//! (every version in `schemas/`, old ones included, by both fingerprint
//! forms: see [`FingerprintForm`]) or by id through the registry, and
//! resolved against today's reader schema, so events written by older
//! producers still decode.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, RwLock};

use apache_avro::Schema;
use apache_avro::rabin::Rabin;
use apache_avro::types::Value;
use digest::Digest;
use serde::{Deserialize, Serialize};

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
    "stock.v1/history/SupplierEtaChanged.1.avsc" => false,
    "stock.v1/StockArrival.avsc" => true,
    "shipments.v1/ShipmentDispatched.avsc" => true,
    "shipments.v1/ShipmentDelivered.avsc" => true,
    "offer-responses.v1/OfferResponse.avsc" => true,
    "offer-responses.v1/CancellationRequested.avsc" => true,
    "backorder-delays.v1/BackorderDelayed.avsc" => true,
    "backorder-delays.v1/history/BackorderDelayed.1.avsc" => false,
    "email-requests.v1/EmailRequested.avsc" => true,
    "backorder-decisions.v1/BackorderDecision.avsc" => true,
};

const SINGLE_OBJECT_MAGIC: [u8; 2] = [0xC3, 0x01];

/// The most apache-avro may allocate for one string, bytes or array while
/// decoding. It allocates what a length prefix claims before reading, and
/// its own default is 512 MiB, so a 20-byte hostile message could ask for
/// half a gigabyte (and, where memory is not overcommitted, abort the
/// process). No message the broker delivers is anywhere near 16 MiB
/// (Kafka's default `message.max.bytes` is 1 MiB). The setting is
/// process-wide and the first call wins: [`Codec::new`] makes it.
const MAX_DECODE_ALLOCATION: usize = 16 * 1024 * 1024;

/// The largest message the decoder accepts. Events are small (an order of
/// a hundred lines is about 20 KiB); a message far larger is hostile or a
/// bug upstream, and decoding it would carry its strings into the database
/// and every email. Rejected before any parsing, so it is dead-lettered
/// with the reason like any other bad input.
pub const MAX_MESSAGE_BYTES: usize = 512 * 1024;
const CONFLUENT_MAGIC: u8 = 0x00;

/// Which of the two CRC-64-AVRO fingerprints in circulation single-object
/// encoding writes (`BACKORDER_AVRO_FINGERPRINT`). Both are always read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FingerprintForm {
    /// The specification's parsing canonical form, as the Java reference
    /// implementation and fastavro compute it: what JVM consumers expect.
    #[default]
    Specification,
    /// The form apache-avro (Rust, 0.21) and Apache's Python `avro`
    /// library compute, for consumers built on those.
    ApacheAvro,
}

impl FingerprintForm {
    pub fn as_str(self) -> &'static str {
        match self {
            FingerprintForm::Specification => "specification",
            FingerprintForm::ApacheAvro => "apache-avro",
        }
    }
}

impl std::fmt::Display for FingerprintForm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A schema's single-object fingerprints: the 8 bytes that follow `C3 01`,
/// in the order they are written (the CRC-64-AVRO value little-endian).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprints {
    pub specification: [u8; 8],
    pub apache_avro: [u8; 8],
}

impl Fingerprints {
    /// Both fingerprints of `schema`.
    pub fn of(schema: &Schema) -> Self {
        Self {
            specification: crc64_avro(&specification_canonical_form(schema)),
            apache_avro: crc64_avro(&schema.canonical_form()),
        }
    }

    pub fn get(&self, form: FingerprintForm) -> [u8; 8] {
        match form {
            FingerprintForm::Specification => self.specification,
            FingerprintForm::ApacheAvro => self.apache_avro,
        }
    }
}

/// The specification's Parsing Canonical Form of `schema`: the text whose
/// CRC-64-AVRO is the single-object fingerprint.
///
/// This is the one place where the project departs from apache-avro, and
/// why: the specification's [PRIMITIVES] step reduces a primitive written
/// as an object to its name, and [STRIP] drops `logicalType`
/// (<https://avro.apache.org/docs/1.11.1/specification/#parsing-canonical-form-for-schemas>).
/// The Java reference implementation (`SchemaNormalization`) and fastavro
/// therefore turn `{"type": "long", "logicalType": "timestamp-millis"}`
/// into `"long"`. apache-avro 0.21 strips the logical type but leaves
/// `{"type":"long"}`, so every schema with a timestamp or a date gets a
/// different fingerprint there, and a JVM producer's events would match no
/// schema (Apache's Python library agrees with the Rust crate, so the
/// ecosystem is split). apache-avro's form is otherwise the specification's
/// (full names, field order, stripped attributes, no whitespace), so the
/// step it misses is applied to its output: in a canonical form every
/// object `{"type":"<primitive>"}` is exactly such a left-over (names and
/// symbols cannot contain braces or quotes). The decoder accepts both
/// forms; the encoder writes the one [`FingerprintForm`] selects.
pub fn specification_canonical_form(schema: &Schema) -> String {
    const PRIMITIVES: [&str; 8] = ["null", "boolean", "int", "long", "float", "double", "bytes", "string"];
    let mut form = schema.canonical_form();
    for primitive in PRIMITIVES {
        form = form.replace(&format!(r#"{{"type":"{primitive}"}}"#), &format!(r#""{primitive}""#));
    }
    form
}

/// CRC-64-AVRO (Rabin) of `text`, little-endian as single-object encoding
/// writes it.
fn crc64_avro(text: &str) -> [u8; 8] {
    Rabin::digest(text.as_bytes()).into()
}

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
    #[error("message is {len} bytes, more than the {max} bytes an event may have")]
    TooLarge { len: usize, max: usize },
    #[error(
        "no known schema has fingerprint {as_written} (the 8 bytes after C3 01 as written, \
         little-endian as the specification says; byte-swapped: {swapped}, which is also the \
         64-bit value in hex as Java's SchemaNormalization.parsingFingerprint64 gives it){swapped_match}; \
         known fingerprints (as written; specification form, as Java and fastavro write it / \
         apache-avro form): {known}"
    )]
    UnknownFingerprint {
        /// The 8 bytes as they are in the message, hex.
        as_written: String,
        /// The bytes reversed: the fingerprint as a big-endian number, and
        /// what a producer that wrote the number big-endian by mistake meant.
        swapped: String,
        /// Says which schema the reversed bytes are, when they are one.
        swapped_match: String,
        /// Every schema the message could have been, with both fingerprints.
        known: String,
    },
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
        record: String,
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

/// One schema of `schemas/` as the codec knows it.
#[derive(Debug)]
pub struct KnownSchema {
    /// The file, relative to `schemas/` (`orders.v1/history/OrderPlaced.1.avsc`).
    pub path: &'static str,
    /// The record's full name (`com.backorder.orders.OrderPlaced`).
    pub full_name: String,
    /// Today's version of the record (reader and writer), or a historic one
    /// (writer only).
    pub current: bool,
    pub fingerprints: Fingerprints,
    pub schema: Schema,
    json: &'static str,
}

/// All known schemas, indexed for both directions.
struct SchemaSet {
    /// Every schema file, in the order of [`SCHEMA_FILES`].
    known: Vec<Arc<KnownSchema>>,
    /// Writer schemas by either single-object fingerprint, old versions
    /// included, with the form that fingerprint is.
    by_fingerprint: HashMap<[u8; 8], (Arc<KnownSchema>, FingerprintForm)>,
    /// Today's schema per record full name.
    current: HashMap<String, Arc<KnownSchema>>,
}

fn full_name(schema: &Schema) -> String {
    schema
        .name()
        .map(|n| n.fullname(None))
        .unwrap_or_else(|| "<unnamed>".to_string())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

impl SchemaSet {
    fn load() -> Result<Self, CodecError> {
        let mut set = SchemaSet {
            known: Vec::new(),
            by_fingerprint: HashMap::new(),
            current: HashMap::new(),
        };
        for file in SCHEMA_FILES {
            let schema = Schema::parse_str(file.json).map_err(|source| CodecError::BadSchemaFile {
                path: file.path,
                source: Box::new(source),
            })?;
            let known = Arc::new(KnownSchema {
                path: file.path,
                full_name: full_name(&schema),
                current: file.current,
                fingerprints: Fingerprints::of(&schema),
                schema,
                json: file.json,
            });
            // The apache-avro form first, so that a schema whose two forms
            // are the same (no logical types) is recorded as the
            // specification's.
            for form in [FingerprintForm::ApacheAvro, FingerprintForm::Specification] {
                set.by_fingerprint
                    .insert(known.fingerprints.get(form), (known.clone(), form));
            }
            if file.current {
                set.current.insert(known.full_name.clone(), known.clone());
            }
            set.known.push(known);
        }
        Ok(set)
    }

    /// The error for a fingerprint that matches nothing, listing the
    /// schemas of `records` (all when `None`).
    fn unknown_fingerprint(&self, fp: [u8; 8], records: Option<&[&str]>) -> CodecError {
        let mut swapped = fp;
        swapped.reverse();
        let swapped_match = self
            .by_fingerprint
            .get(&swapped)
            .map(|(known, form)| {
                format!(
                    " (reversed, they are the {form} fingerprint of {} ({}): the producer wrote the \
                     fingerprint big-endian, the specification says little-endian)",
                    known.full_name, known.path
                )
            })
            .unwrap_or_default();
        let known = self
            .known
            .iter()
            .filter(|k| records.is_none_or(|names| names.contains(&k.full_name.as_str())))
            .map(|k| {
                format!(
                    "{} ({}) {} / {}",
                    k.full_name,
                    k.path,
                    hex(&k.fingerprints.specification),
                    hex(&k.fingerprints.apache_avro)
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        CodecError::UnknownFingerprint {
            as_written: hex(&fp),
            swapped: hex(&swapped),
            swapped_match,
            known,
        }
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

/// How the writer schema of a decoded message was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriterSchema {
    /// A schema file of `schemas/`, by one of its fingerprints.
    Known {
        path: &'static str,
        fingerprint: [u8; 8],
        form: FingerprintForm,
    },
    /// Confluent framing: the registry's schema with this id.
    Registry { id: u32 },
}

impl std::fmt::Display for WriterSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriterSchema::Known {
                path,
                fingerprint,
                form,
            } => write!(f, "schemas/{path}, by its {form} fingerprint {}", hex(fingerprint)),
            WriterSchema::Registry { id } => write!(f, "schema id {id} of the schema registry"),
        }
    }
}

/// One message decoded without knowing its topic.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedMessage {
    /// The record's full name.
    pub full_name: String,
    /// Where the writer schema came from.
    pub writer: WriterSchema,
    /// The datum, resolved against today's schema of the record.
    pub value: Value,
}

/// Encodes and decodes every record type of the project.
#[derive(Clone)]
pub struct Codec {
    schemas: Arc<SchemaSet>,
    registry: Option<Arc<Registry>>,
    /// The fingerprint single-object encoding writes.
    form: FingerprintForm,
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Codec")
            .field("registry", &self.registry.as_ref().map(|r| r.url.as_str()))
            .field("form", &self.form)
            .finish()
    }
}

impl Codec {
    /// `registry_url`: when set, encode with Confluent framing. Single-object
    /// encoding writes the specification's fingerprint.
    pub fn new(registry_url: Option<&str>) -> Result<Self, CodecError> {
        apache_avro::util::max_allocation_bytes(MAX_DECODE_ALLOCATION);
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
            form: FingerprintForm::default(),
        })
    }

    /// The codec the settings describe: `SCHEMA_REGISTRY_URL` and
    /// `BACKORDER_AVRO_FINGERPRINT`.
    pub fn from_settings(settings: &crate::config::Settings) -> Result<Self, CodecError> {
        Ok(Self::new(settings.schema_registry_url.as_deref())?.with_fingerprint_form(settings.avro_fingerprint))
    }

    /// Writes `form`'s fingerprint in single-object encoding.
    pub fn with_fingerprint_form(mut self, form: FingerprintForm) -> Self {
        self.form = form;
        self
    }

    /// The fingerprint form single-object encoding writes.
    pub fn fingerprint_form(&self) -> FingerprintForm {
        self.form
    }

    /// Every schema file the codec reads, today's and historic, in a fixed order.
    pub fn known_schemas(&self) -> impl Iterator<Item = &KnownSchema> {
        self.schemas.known.iter().map(|k| k.as_ref())
    }

    /// Encodes `record` for `topic`.
    pub async fn encode<T: AvroRecord>(&self, topic: &str, record: &T) -> Result<Vec<u8>, CodecError> {
        let value = apache_avro::to_value(record).map_err(|source| CodecError::Encode {
            record: T::FULL_NAME.to_string(),
            source: Box::new(source),
        })?;
        self.encode_value(topic, T::FULL_NAME, value).await
    }

    /// Encodes an Avro value of record `full_name` with today's schema.
    pub async fn encode_value(&self, topic: &str, full_name: &str, value: Value) -> Result<Vec<u8>, CodecError> {
        let known = self
            .schemas
            .current
            .get(full_name)
            .ok_or_else(|| CodecError::NoReaderSchema(full_name.to_string()))?;
        let encode_err = |source| CodecError::Encode {
            record: full_name.to_string(),
            source: Box::new(source),
        };
        let value = value.resolve(&known.schema).map_err(encode_err)?;
        let datum = apache_avro::to_avro_datum(&known.schema, value).map_err(encode_err)?;
        let mut out = Vec::with_capacity(datum.len() + 10);
        match &self.registry {
            None => {
                out.extend_from_slice(&SINGLE_OBJECT_MAGIC);
                out.extend_from_slice(&known.fingerprints.get(self.form));
            }
            Some(registry) => {
                let subject = format!("{topic}-{full_name}");
                let id = registry.register(&subject, known.json).await?;
                out.push(CONFLUENT_MAGIC);
                out.extend_from_slice(&id.to_be_bytes());
            }
        }
        out.extend_from_slice(&datum);
        Ok(out)
    }

    /// Decodes one message of a topic into its event enum.
    pub async fn decode<E: TopicEvent>(&self, payload: &[u8]) -> Result<E, CodecError> {
        let decoded = self.decode_message(payload, Some(E::RECORDS)).await?;
        Ok(E::from_avro(&decoded.full_name, &decoded.value)?)
    }

    /// Decodes any message of any known record, saying which writer schema
    /// it matched (`backorderctl decode`, conformance tests).
    pub async fn decode_value(&self, payload: &[u8]) -> Result<DecodedMessage, CodecError> {
        self.decode_message(payload, None).await
    }

    /// `records`: the records the message may be, for the error message.
    async fn decode_message(&self, payload: &[u8], records: Option<&[&str]>) -> Result<DecodedMessage, CodecError> {
        let (schema, writer, mut datum) = self.writer_schema(payload, records).await?;
        let name = full_name(&schema);
        let reader = self
            .schemas
            .current
            .get(&name)
            .ok_or_else(|| CodecError::NoReaderSchema(name.clone()))?;
        let value = apache_avro::from_avro_datum(&schema, &mut datum, Some(&reader.schema)).map_err(|source| {
            CodecError::Datum {
                record: name.clone(),
                source: Box::new(source),
            }
        })?;
        Ok(DecodedMessage {
            full_name: name,
            writer,
            value,
        })
    }

    /// Finds the writer schema from the framing; returns it, how it was
    /// found, and the datum.
    async fn writer_schema<'a>(
        &self,
        payload: &'a [u8],
        records: Option<&[&str]>,
    ) -> Result<(WriterSchemaRef, WriterSchema, &'a [u8]), CodecError> {
        let first = *payload.first().ok_or(CodecError::Empty)?;
        if payload.len() > MAX_MESSAGE_BYTES {
            return Err(CodecError::TooLarge {
                len: payload.len(),
                max: MAX_MESSAGE_BYTES,
            });
        }
        if payload.starts_with(&SINGLE_OBJECT_MAGIC) {
            let fp: [u8; 8] = payload
                .get(2..10)
                .and_then(|s| s.try_into().ok())
                .ok_or(CodecError::Truncated)?;
            let (known, form) = self
                .schemas
                .by_fingerprint
                .get(&fp)
                .ok_or_else(|| self.schemas.unknown_fingerprint(fp, records))?;
            let writer = WriterSchema::Known {
                path: known.path,
                fingerprint: fp,
                form: *form,
            };
            return Ok((WriterSchemaRef::Known(known.clone()), writer, &payload[10..]));
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
            return Ok((
                WriterSchemaRef::Registry(schema),
                WriterSchema::Registry { id },
                &payload[5..],
            ));
        }
        Err(CodecError::UnknownFraming(first))
    }
}

/// A writer schema without copying it: a known file or a registry entry.
enum WriterSchemaRef {
    Known(Arc<KnownSchema>),
    Registry(Arc<Schema>),
}

impl std::ops::Deref for WriterSchemaRef {
    type Target = Schema;
    fn deref(&self) -> &Schema {
        match self {
            WriterSchemaRef::Known(known) => &known.schema,
            WriterSchemaRef::Registry(schema) => schema,
        }
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
        let ours = Codec::new(None)
            .unwrap()
            .with_fingerprint_form(FingerprintForm::ApacheAvro)
            .encode("orders.v1", &order())
            .await
            .unwrap();
        assert_eq!(ours, theirs);
        // Both forms are read whatever the encoder writes.
        let decoded: OrderEvent = Codec::new(None).unwrap().decode(&ours).await.unwrap();
        assert_eq!(decoded, OrderEvent::Placed(order()));
    }

    #[test]
    fn the_canonical_form_reduces_logical_types_to_their_primitive_as_the_specification_says() {
        let schema = Schema::parse_str(
            r#"{"type": "record", "name": "Eta", "namespace": "x.y", "doc": "d", "fields": [
                {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
                {"name": "on", "type": ["null", {"type": "int", "logicalType": "date"}], "default": null},
                {"name": "id", "type": {"type": "string", "logicalType": "uuid"}},
                {"name": "kind", "type": {"type": "enum", "name": "Kind", "symbols": ["A", "B"]}},
                {"name": "plain", "type": {"type": "long"}}
            ]}"#,
        )
        .unwrap();
        // What Java's SchemaNormalization.toParsingForm and fastavro's
        // to_parsing_canonical_form give for this schema.
        assert_eq!(
            specification_canonical_form(&schema),
            r#"{"name":"x.y.Eta","type":"record","fields":[{"name":"at","type":"long"},{"name":"on","type":["null","int"]},{"name":"id","type":"string"},{"name":"kind","type":{"name":"x.y.Kind","type":"enum","symbols":["A","B"]}},{"name":"plain","type":"long"}]}"#
        );
        assert!(
            schema.canonical_form().contains(r#"{"type":"long"}"#),
            "apache-avro's own form differs"
        );
    }

    #[test]
    fn order_placed_has_the_fingerprints_java_and_fastavro_compute() {
        // Measured with Apache Avro for Java 1.8.2 and fastavro 1.13
        // (tests/avro_interop.rs checks every schema against both).
        let codec = Codec::new(None).unwrap();
        let find = |path: &str| codec.known_schemas().find(|k| k.path == path).unwrap().fingerprints;
        let today = find("orders.v1/OrderPlaced.avsc");
        assert_eq!(hex(&today.specification), "24615bee6fc204ed");
        assert_eq!(hex(&today.apache_avro), "b179a5944f43e33e");
        assert_eq!(
            hex(&find("orders.v1/history/OrderPlaced.1.avsc").specification),
            "22ad8e07119f0d2d"
        );
    }

    #[tokio::test]
    async fn the_encoder_writes_the_specification_fingerprint_unless_configured_otherwise() {
        let codec = Codec::new(None).unwrap();
        let fps = codec
            .known_schemas()
            .find(|k| k.current && k.full_name.ends_with(".OrderPlaced"))
            .unwrap()
            .fingerprints;
        let spec = codec.encode("orders.v1", &order()).await.unwrap();
        assert_eq!(spec[2..10], fps.specification);
        let rust = codec
            .clone()
            .with_fingerprint_form(FingerprintForm::ApacheAvro)
            .encode("orders.v1", &order())
            .await
            .unwrap();
        assert_eq!(rust[2..10], fps.apache_avro);
        assert_eq!(spec[10..], rust[10..], "only the fingerprint differs");
        for bytes in [&spec, &rust] {
            let decoded = codec.decode_value(bytes).await.unwrap();
            assert_eq!(decoded.full_name, "com.backorder.orders.OrderPlaced");
            let WriterSchema::Known { path, form, .. } = decoded.writer else {
                panic!("{:?}", decoded.writer)
            };
            assert_eq!(path, "orders.v1/OrderPlaced.avsc");
            assert_eq!(form == FingerprintForm::Specification, bytes == &spec);
        }
    }

    #[tokio::test]
    async fn an_unknown_fingerprint_is_named_in_both_byte_orders_with_the_known_ones() {
        let codec = Codec::new(None).unwrap();
        let unknown = [0xC3, 0x01, 1, 2, 3, 4, 5, 6, 7, 8, 0];
        let err = codec.decode::<OrderEvent>(&unknown).await.err().unwrap().to_string();
        assert!(err.contains("0102030405060708"), "{err}");
        assert!(err.contains("0807060504030201"), "{err}");
        for known in codec.known_schemas().filter(|k| k.path.starts_with("orders.v1/")) {
            assert!(err.contains(&hex(&known.fingerprints.specification)), "{err}");
            assert!(err.contains(&hex(&known.fingerprints.apache_avro)), "{err}");
            assert!(err.contains(known.path), "{err}");
        }
        assert!(
            !err.contains("StockArrival"),
            "only the topic's records are listed: {err}"
        );

        // A producer that wrote the fingerprint big-endian is told so.
        let mut reversed = codec.encode("orders.v1", &order()).await.unwrap();
        reversed[2..10].reverse();
        let err = codec.decode::<OrderEvent>(&reversed).await.err().unwrap().to_string();
        assert!(err.contains("big-endian"), "{err}");
        assert!(err.contains("orders.v1/OrderPlaced.avsc"), "{err}");
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
                reason_code: Some(crate::events::stock::DelayReasonCode::CustomsHold),
                reason_locale: Some("en".into()),
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
        assert!(matches!(err, CodecError::UnknownFingerprint { .. }), "{err}");
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
        bytes.extend_from_slice(&Fingerprints::of(&old_schema).specification);
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

/// Hostile input: whatever bytes arrive on a topic, decoding ends in an
/// event or a [`CodecError`] (the dead-letter reason), never a panic, and a
/// length prefix that lies cannot make the decoder allocate without bound.
#[cfg(test)]
mod hostile_input {
    use super::*;
    use crate::events::internal::{BackorderDecisionEvent, BackorderDelayEvent, EmailRequestEvent};
    use crate::events::offers::OfferResponseEvent;
    use crate::events::orders::{Availability, Customer, OrderEvent, OrderLine, OrderPlaced};
    use crate::events::shipments::ShipmentEvent;
    use crate::events::stock::StockEvent;
    use chrono::{TimeZone, Utc};
    use proptest::prelude::*;

    /// The decoder is async only for the registry; one small runtime per
    /// property runs it.
    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// Decodes `bytes` as every topic's event type and as any record; an
    /// event that decodes is validated too (its checks see hostile values).
    /// Returns whether the any-record decode succeeded.
    async fn decode_everywhere(codec: &Codec, bytes: &[u8]) -> bool {
        async fn as_topic<E: TopicEvent>(codec: &Codec, bytes: &[u8]) {
            match codec.decode::<E>(bytes).await {
                Ok(event) => {
                    let _ = event.validate();
                }
                Err(error) => assert!(!error.to_string().is_empty(), "a rejection names its reason"),
            }
        }
        as_topic::<OrderEvent>(codec, bytes).await;
        as_topic::<StockEvent>(codec, bytes).await;
        as_topic::<ShipmentEvent>(codec, bytes).await;
        as_topic::<OfferResponseEvent>(codec, bytes).await;
        as_topic::<BackorderDelayEvent>(codec, bytes).await;
        as_topic::<EmailRequestEvent>(codec, bytes).await;
        as_topic::<BackorderDecisionEvent>(codec, bytes).await;
        codec.decode_value(bytes).await.is_ok()
    }

    fn order(order_id: String, email: String, name: String, quantity: i32, price: i64) -> OrderPlaced {
        OrderPlaced {
            event_id: format!("e-{order_id}"),
            occurred_at: Utc.with_ymd_and_hms(2026, 11, 24, 10, 0, 0).unwrap(),
            order_id,
            customer: Customer {
                customer_id: "c-1".into(),
                email,
                name,
                locale: "de-DE".into(),
                country: Some("DE".into()),
            },
            lines: vec![OrderLine {
                line_id: "l-1".into(),
                sku: "SKU-1".into(),
                product_name: "Lamp".into(),
                category: None,
                quantity,
                unit_price_minor: price,
                availability: Availability::Backordered,
            }],
            currency: "EUR".into(),
            total_minor: price,
        }
    }

    /// A Codec whose registry already knows every current schema by id
    /// (100 + its index), so Confluent-framed input is decoded without a
    /// network; ids it does not know hit an address where nothing listens.
    fn codec_with_cached_registry() -> Codec {
        let codec = Codec::new(Some("http://127.0.0.1:1")).unwrap();
        if let Some(registry) = &codec.registry {
            let mut cache = registry.by_id.write().unwrap();
            for (index, known) in codec.schemas.known.iter().enumerate() {
                cache.insert(100 + index as u32, Arc::new(known.schema.clone()));
            }
        }
        codec
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn any_bytes_decode_to_an_event_or_a_typed_error(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let codec = Codec::new(None).unwrap();
            runtime().block_on(decode_everywhere(&codec, &bytes));
        }

        #[test]
        fn any_datum_behind_a_known_fingerprint_is_an_event_or_a_typed_error(
            schema in 0usize..SCHEMA_FILES.len(),
            apache_form in any::<bool>(),
            datum in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let codec = Codec::new(None).unwrap();
            let known = &codec.schemas.known[schema];
            let form = if apache_form { FingerprintForm::ApacheAvro } else { FingerprintForm::Specification };
            let mut bytes = SINGLE_OBJECT_MAGIC.to_vec();
            bytes.extend_from_slice(&known.fingerprints.get(form));
            bytes.extend_from_slice(&datum);
            runtime().block_on(decode_everywhere(&codec, &bytes));
        }

        #[test]
        fn any_datum_behind_a_registry_id_is_an_event_or_a_typed_error(
            id in 95u32..120,
            datum in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let codec = codec_with_cached_registry();
            let mut bytes = vec![CONFLUENT_MAGIC];
            bytes.extend_from_slice(&id.to_be_bytes());
            bytes.extend_from_slice(&datum);
            let rt = runtime();
            rt.block_on(decode_everywhere(&codec, &bytes));
            if !(100..100 + SCHEMA_FILES.len() as u32).contains(&id) {
                let error = rt.block_on(codec.decode_value(&bytes)).err().unwrap();
                prop_assert!(error.is_transient(), "an unknown id asks the registry: {error}");
            }
        }

        #[test]
        fn a_valid_order_cut_short_is_rejected_and_one_with_a_flipped_byte_never_panics(
            order_id in "\\PC{0,40}",
            email in "\\PC{0,40}",
            name in "\\PC{0,40}",
            quantity in any::<i32>(),
            price in any::<i64>(),
            cut in any::<prop::sample::Index>(),
            flip in any::<prop::sample::Index>(),
            mask in 1u8..=255,
            confluent in any::<bool>(),
        ) {
            let rt = runtime();
            let codec = codec_with_cached_registry();
            let record = order(order_id, email, name, quantity, price);
            let mut bytes = Codec::new(None).unwrap().encode_value_sync(&record);
            if confluent {
                let index = codec.schemas.known.iter().position(|k| k.current && k.full_name == OrderPlaced::FULL_NAME).unwrap();
                let mut framed = vec![CONFLUENT_MAGIC];
                framed.extend_from_slice(&(100 + index as u32).to_be_bytes());
                framed.extend_from_slice(&bytes[10..]);
                bytes = framed;
            }
            let decoded: OrderEvent = rt.block_on(codec.decode(&bytes)).unwrap();
            prop_assert_eq!(decoded, OrderEvent::Placed(record));

            let short = &bytes[..cut.index(bytes.len())];
            prop_assert!(!rt.block_on(decode_everywhere(&codec, short)), "a cut message never decodes");

            let mut flipped = bytes.clone();
            flipped[flip.index(bytes.len())] ^= mask;
            rt.block_on(decode_everywhere(&codec, &flipped));
        }

        #[test]
        fn a_length_prefix_larger_than_the_message_is_a_typed_error(claimed in 1_000_000i64..i64::MAX / 2) {
            // OrderPlaced starts with its event id, a string: the zig-zag
            // varint of its length, then (here, none of) the bytes.
            let codec = Codec::new(None).unwrap();
            // Codec::new set the bound (a later call cannot change it).
            prop_assert_eq!(apache_avro::util::max_allocation_bytes(usize::MAX), MAX_DECODE_ALLOCATION);
            let known = codec.schemas.current.get(OrderPlaced::FULL_NAME).unwrap().clone();
            let mut bytes = SINGLE_OBJECT_MAGIC.to_vec();
            bytes.extend_from_slice(&known.fingerprints.specification);
            let mut zigzag = ((claimed << 1) ^ (claimed >> 63)) as u64;
            while zigzag >= 0x80 {
                bytes.push((zigzag as u8) | 0x80);
                zigzag >>= 7;
            }
            bytes.push(zigzag as u8);
            let error = runtime().block_on(codec.decode::<OrderEvent>(&bytes)).err().unwrap();
            prop_assert!(matches!(error, CodecError::Datum { .. }), "{error}");
        }

        #[test]
        fn a_valid_order_larger_than_an_event_may_be_is_too_large(extra in 0usize..4096) {
            let codec = Codec::new(None).unwrap();
            let name = "x".repeat(MAX_MESSAGE_BYTES + extra);
            let bytes = codec.encode_value_sync(&order("o-big".into(), "a@example.com".into(), name, 1, 1));
            let error = runtime().block_on(codec.decode::<OrderEvent>(&bytes)).err().unwrap();
            prop_assert!(matches!(error, CodecError::TooLarge { len, .. } if len == bytes.len()), "{error}");
        }
    }

    impl Codec {
        /// Single-object encoding without the async registry path.
        fn encode_value_sync(&self, record: &OrderPlaced) -> Vec<u8> {
            runtime().block_on(self.encode("orders.v1", record)).unwrap()
        }
    }
}
