//! `backorderctl publish`: JSON lines in, Avro records on the input topics out.
//!
//! Every line is parsed, validated and encoded before the first record is
//! sent, so one bad line means nothing is published; the error names the
//! line, the record type and the field.

use std::fmt;
use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;

use backorder_core::codec::{Codec, CodecError};
use backorder_core::config::Settings;
use backorder_core::domain::ValidationError;
use backorder_core::events::AvroRecord;
use backorder_core::events::offers::OfferResponse;
use backorder_core::events::orders::{CartAbandoned, OrderCancelled, OrderPlaced};
use backorder_core::events::shipments::{ShipmentDelivered, ShipmentDispatched};
use backorder_core::events::stock::{ProductUpserted, StockArrival, SupplierEtaChanged};
use backorder_core::kafka::{OutboundRecord, Producer, Topics, topics};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::CtlError;

/// Records per `send_all` call: each chunk is acknowledged by the broker
/// before the next one is handed over.
pub const CHUNK_SIZE: usize = 500;

/// At most this many bad lines are listed in one error.
const MAX_REPORTED_ERRORS: usize = 20;

pub(crate) const LONG_ABOUT: &str = "\
Publish events from a JSON-lines file (or stdin, with `-`) to the input topics,
as Avro records keyed as the contract says (order_id, sku, offer_id, ...).

Each line is one JSON object whose \"type\" names the record:
  OrderPlaced, OrderCancelled, CartAbandoned          -> orders.v1
  ProductUpserted, SupplierEtaChanged, StockArrival   -> stock.v1
  ShipmentDispatched, ShipmentDelivered               -> shipments.v1
  OfferResponse                                       -> offer-responses.v1
BACKORDER_TOPIC_PREFIX is prepended to the topic. The other keys are the
record's fields as in schemas/ (unknown keys are rejected): instants are
RFC 3339 strings (\"2026-11-24T09:00:00Z\"), dates \"YYYY-MM-DD\", money integer
minor units. Blank lines and lines starting with # are skipped.

event_id may be left out: it is then a UUID v5 of the line's text (leading and
trailing whitespace ignored), so publishing the same file again yields the same
ids and consumers treat the records as replays. occurred_at is never defaulted.

Every line is parsed, validated and encoded before anything is sent: one bad
line means nothing is published, and the error names the line, the record type
and the field. Records then go out in chunks of 500, each acknowledged by the
broker before the next; a progress bar is shown when stderr is a terminal.

Example line:
  {\"type\":\"StockArrival\",\"occurred_at\":\"2026-12-20T08:00:00Z\",\"arrival_id\":\"arr-1\",\"sku\":\"LAMP-01\",\"quantity\":40,\"warehouse\":\"BER-1\"}

Exit codes: 0 published; 1 Kafka or schema registry failure; 2 bad input.";

/// Arguments of `publish`.
#[derive(Debug, Args)]
pub struct PublishArgs {
    /// JSON-lines file to publish; `-` reads stdin.
    #[arg(value_name = "FILE|-")]
    pub input: PathBuf,
    /// Parse, validate and encode every line, print what would be published,
    /// and send nothing (no connection to Kafka or the schema registry).
    #[arg(long)]
    pub dry_run: bool,
}

/// Declares the record types the input may name, each with its topic.
macro_rules! record_types {
    ($($name:ident => $topic:expr),+ $(,)?) => {
        /// One input record of any type.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Record {
            $($name($name)),+
        }

        /// Every `"type"` a line may name.
        pub const RECORD_TYPES: &[&str] = &[$(stringify!($name)),+];

        impl Record {
            /// Deserializes `value` as record `type_name`; `None` for an
            /// unknown type.
            fn from_value(type_name: &str, value: Value) -> Option<Result<Self, FieldProblem>> {
                match type_name {
                    $(stringify!($name) => Some(from_value::<$name>(value).map(Record::$name)),)+
                    _ => None,
                }
            }

            /// The record's name as a line's `"type"` gives it.
            pub fn type_name(&self) -> &'static str {
                match self {
                    $(Record::$name(_) => stringify!($name)),+
                }
            }

            /// The topic, without prefix (`orders.v1`).
            pub fn base_topic(&self) -> &'static str {
                match self {
                    $(Record::$name(_) => $topic),+
                }
            }

            /// The Kafka key the contract names.
            pub fn key(&self) -> &str {
                match self {
                    $(Record::$name(r) => r.key()),+
                }
            }

            /// The event id (given or generated).
            pub fn event_id(&self) -> &str {
                match self {
                    $(Record::$name(r) => &r.event_id),+
                }
            }

            pub(crate) fn validate(&self) -> Result<(), ValidationError> {
                match self {
                    $(Record::$name(r) => r.validate()),+
                }
            }

            /// Stamps the record with the instant it happened (loadgen's
            /// wall-clock mode, for latency measured from the event).
            pub fn set_occurred_at(&mut self, at: chrono::DateTime<chrono::Utc>) {
                match self {
                    $(Record::$name(r) => r.occurred_at = at),+
                }
            }

            pub(crate) async fn encode(&self, codec: &Codec, topic: &str) -> Result<OutboundRecord, CodecError> {
                match self {
                    $(Record::$name(r) => OutboundRecord::encode(codec, topic, r).await),+
                }
            }

            #[cfg(test)]
            fn avro_full_name(&self) -> &'static str {
                match self {
                    $(Record::$name(_) => <$name as AvroRecord>::FULL_NAME),+
                }
            }
        }
    };
}

record_types! {
    OrderPlaced => topics::ORDERS,
    OrderCancelled => topics::ORDERS,
    CartAbandoned => topics::ORDERS,
    ProductUpserted => topics::STOCK,
    SupplierEtaChanged => topics::STOCK,
    StockArrival => topics::STOCK,
    ShipmentDispatched => topics::SHIPMENTS,
    ShipmentDelivered => topics::SHIPMENTS,
    OfferResponse => topics::OFFER_RESPONSES,
}

/// A line that became a valid record.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedLine {
    /// 1-based line number in the input.
    pub line: usize,
    pub record: Record,
    /// True when `event_id` was missing and generated from the line's text.
    pub generated_event_id: bool,
}

impl ParsedLine {
    /// The full topic name, prefix applied.
    pub fn topic(&self, topics: &Topics) -> String {
        topics.name(self.record.base_topic())
    }
}

/// Why one input line is not a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    /// 1-based line number in the input.
    pub line: usize,
    /// The record type, once the line named a known one.
    pub record_type: Option<&'static str>,
    /// The offending field (`lines[0].quantity`), when there is one.
    pub field: Option<String>,
    pub reason: String,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}", self.line)?;
        if let Some(record_type) = self.record_type {
            write!(f, " ({record_type})")?;
        }
        f.write_str(": ")?;
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        f.write_str(&self.reason)
    }
}

/// The message of [`CtlError::BadInput`].
pub(crate) fn describe_bad_input(input: &str, errors: &[LineError]) -> String {
    let count = errors.len();
    let lines = if count == 1 { "line" } else { "lines" };
    let mut text = format!("{input} has {count} bad {lines}; nothing was published");
    for error in errors.iter().take(MAX_REPORTED_ERRORS) {
        text.push_str(&format!("\n  {error}"));
    }
    if count > MAX_REPORTED_ERRORS {
        text.push_str(&format!("\n  ... and {} more", count - MAX_REPORTED_ERRORS));
    }
    text
}

/// A field that did not deserialize.
#[derive(Debug)]
struct FieldProblem {
    field: Option<String>,
    reason: String,
}

/// Deserializes one record, naming the nested field at fault.
fn from_value<T: AvroRecord>(value: Value) -> Result<T, FieldProblem> {
    serde_path_to_error::deserialize::<_, T>(value).map_err(|error| {
        let path = error.path().to_string();
        field_problem(&path, &error.inner().to_string())
    })
}

/// Turns serde's wording (`missing field `email`` at path `customer`) into
/// a field and a reason (`customer.email`, `required field is missing`).
fn field_problem(path: &str, message: &str) -> FieldProblem {
    let parent = (path != ".").then_some(path);
    let join = |name: &str| match parent {
        // serde_path_to_error may or may not have recorded the key itself.
        Some(p) if p == name || p.ends_with(&format!(".{name}")) => p.to_string(),
        Some(p) => format!("{p}.{name}"),
        None => name.to_string(),
    };
    if let Some(name) = quoted_name(message, "missing field `") {
        return FieldProblem {
            field: Some(join(name)),
            reason: "required field is missing".to_string(),
        };
    }
    if let Some(name) = quoted_name(message, "unknown field `") {
        let expected = message.split_once(", ").map(|(_, rest)| rest).unwrap_or("");
        return FieldProblem {
            field: Some(join(name)),
            reason: if expected.is_empty() {
                "unknown field".to_string()
            } else {
                format!("unknown field ({expected})")
            },
        };
    }
    FieldProblem {
        field: parent.map(str::to_string),
        reason: message.to_string(),
    }
}

/// `name` in "<prefix>name`...".
fn quoted_name<'m>(message: &'m str, prefix: &str) -> Option<&'m str> {
    let rest = message.strip_prefix(prefix)?;
    rest.split_once('`').map(|(name, _)| name)
}

/// The namespace of generated event ids: UUID v5 of
/// `https://backorder.invalid/backorderctl/publish` in the URL namespace.
fn event_id_namespace() -> Uuid {
    Uuid::new_v5(&Uuid::NAMESPACE_URL, b"https://backorder.invalid/backorderctl/publish")
}

/// The event id generated for a line without one: deterministic, so the
/// same line published twice is the same event.
pub fn generated_event_id(line_text: &str) -> String {
    Uuid::new_v5(&event_id_namespace(), line_text.trim().as_bytes()).to_string()
}

/// Parses one non-blank, non-comment line.
pub fn parse_line(line: usize, text: &str) -> Result<ParsedLine, LineError> {
    let text = text.trim();
    let error = |record_type: Option<&'static str>, field: Option<String>, reason: String| LineError {
        line,
        record_type,
        field,
        reason,
    };
    let value: Value = serde_json::from_str(text).map_err(|e| error(None, None, not_json(&e)))?;
    let Value::Object(mut object) = value else {
        return Err(error(
            None,
            None,
            format!("expected a JSON object with a \"type\", got {}", json_kind(&value)),
        ));
    };
    let type_name = match object.remove("type") {
        Some(Value::String(name)) => name,
        Some(other) => {
            return Err(error(
                None,
                Some("type".into()),
                format!(
                    "must be a string naming the record, got {} (expected one of {})",
                    json_kind(&other),
                    RECORD_TYPES.join(", ")
                ),
            ));
        }
        None => {
            return Err(error(
                None,
                Some("type".into()),
                format!("missing (expected one of {})", RECORD_TYPES.join(", ")),
            ));
        }
    };
    let Some(&known) = RECORD_TYPES.iter().find(|t| **t == type_name) else {
        let hint = RECORD_TYPES
            .iter()
            .find(|t| t.eq_ignore_ascii_case(&type_name))
            .map(|t| format!("; did you mean {t}?"))
            .unwrap_or_default();
        return Err(error(
            None,
            None,
            format!(
                "unknown type {type_name:?} (expected one of {}){hint}",
                RECORD_TYPES.join(", ")
            ),
        ));
    };
    if !object.contains_key("occurred_at") {
        return Err(error(
            Some(known),
            Some("occurred_at".into()),
            "required field is missing: give the instant the event happened, e.g. \
             \"2026-11-24T09:00:00Z\" (it is never defaulted)"
                .into(),
        ));
    }
    let generated_event_id = insert_event_id_if_missing(&mut object, text);
    let record = match Record::from_value(known, Value::Object(object)) {
        Some(Ok(record)) => record,
        Some(Err(problem)) => return Err(error(Some(known), problem.field, problem.reason)),
        None => return Err(error(None, None, format!("unknown type {known:?}"))),
    };
    record
        .validate()
        .map_err(|e| error(Some(known), Some(e.field), e.reason))?;
    Ok(ParsedLine {
        line,
        record,
        generated_event_id,
    })
}

fn insert_event_id_if_missing(object: &mut Map<String, Value>, line_text: &str) -> bool {
    if object.contains_key("event_id") {
        return false;
    }
    object.insert("event_id".into(), Value::String(generated_event_id(line_text)));
    true
}

/// Parses a whole input. Either every record line is good and all come
/// back, or nothing does and every bad line is reported.
pub fn parse_lines(text: &str) -> Result<Vec<ParsedLine>, Vec<LineError>> {
    let mut parsed = Vec::new();
    let mut errors = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let raw = if line == 1 {
            raw.trim_start_matches('\u{feff}')
        } else {
            raw
        };
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        match parse_line(line, trimmed) {
            Ok(record) => parsed.push(record),
            Err(error) => errors.push(error),
        }
    }
    if errors.is_empty() { Ok(parsed) } else { Err(errors) }
}

/// serde_json's message without its "at line 1 column N" (every line is
/// line 1 to it), with the column kept.
fn not_json(error: &serde_json::Error) -> String {
    let message = error.to_string();
    let suffix = format!(" at line {} column {}", error.line(), error.column());
    match message.strip_suffix(&suffix) {
        Some(reason) => format!("not JSON: {reason} (column {})", error.column()),
        None => format!("not JSON: {message}"),
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `3 records (orders.v1: 2, stock.v1: 1)`, topics in the contract's order.
pub fn summary(lines: &[ParsedLine], topics: &Topics) -> String {
    let mut counts: Vec<(String, usize)> = Vec::new();
    let order = |base: &str| {
        topics::TOPICS
            .iter()
            .position(|(t, _)| *t == base)
            .unwrap_or(usize::MAX)
    };
    let mut bases: Vec<&'static str> = lines.iter().map(|l| l.record.base_topic()).collect();
    bases.sort_by_key(|b| order(b));
    bases.dedup();
    for base in bases {
        let n = lines.iter().filter(|l| l.record.base_topic() == base).count();
        counts.push((topics.name(base), n));
    }
    let noun = if lines.len() == 1 { "record" } else { "records" };
    let detail: Vec<String> = counts.iter().map(|(t, n)| format!("{t}: {n}")).collect();
    format!("{} {noun} ({})", lines.len(), detail.join(", "))
}

/// Encodes every record; the first failure names its line.
pub async fn encode_all(lines: &[ParsedLine], codec: &Codec, topics: &Topics) -> Result<Vec<OutboundRecord>, CtlError> {
    let mut records = Vec::with_capacity(lines.len());
    for parsed in lines {
        let record = parsed
            .record
            .encode(codec, &parsed.topic(topics))
            .await
            .map_err(|source| CtlError::Encode {
                line: parsed.line,
                record_type: parsed.record.type_name(),
                source,
            })?;
        records.push(record);
    }
    Ok(records)
}

fn read_input(input: &std::path::Path) -> Result<(String, String), CtlError> {
    let is_stdin = input.as_os_str() == "-";
    let name = if is_stdin {
        "stdin".to_string()
    } else {
        input.display().to_string()
    };
    let read_error = |reason: String| CtlError::ReadInput {
        input: name.clone(),
        reason,
    };
    let mut bytes = Vec::new();
    if is_stdin {
        if std::io::stdin().is_terminal() {
            let _ = writeln!(
                std::io::stderr(),
                "reading JSON lines from stdin; end with Ctrl-D (see --help for the format)"
            );
        }
        std::io::stdin()
            .read_to_end(&mut bytes)
            .map_err(|e| read_error(e.to_string()))?;
    } else {
        bytes = std::fs::read(input).map_err(|e| read_error(e.to_string()))?;
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        read_error(format!(
            "not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        ))
    })?;
    Ok((name, text))
}

fn progress_bar(total: usize) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("{bar:40} {pos}/{len} records ({per_sec}, {eta} left)") {
        bar.set_style(style);
    }
    bar
}

/// Runs `publish`.
pub async fn run(args: PublishArgs, out: &mut impl Write) -> Result<(), CtlError> {
    let (input, text) = read_input(&args.input)?;
    let lines = parse_lines(&text).map_err(|errors| CtlError::BadInput {
        input: input.clone(),
        errors,
    })?;
    let settings = Settings::load()?;
    let topics = Topics::new(&settings.topic_prefix);
    if lines.is_empty() {
        writeln!(out, "{input} has no records; nothing published")?;
        return Ok(());
    }
    let codec = codec_for(&settings, args.dry_run)?;
    let records = encode_all(&lines, &codec, &topics).await?;
    let generated = lines.iter().filter(|l| l.generated_event_id).count();
    if args.dry_run {
        writeln!(
            out,
            "would publish {} (dry run: nothing sent)",
            summary(&lines, &topics)
        )?;
        if generated > 0 {
            writeln!(out, "{generated} event ids generated from the line text")?;
        }
        return Ok(());
    }

    let bootstrap = settings.kafka_bootstrap_servers.clone();
    let producer = Producer::new(&settings).map_err(|source| CtlError::Producer {
        bootstrap: bootstrap.clone(),
        source: Box::new(source),
    })?;
    let bar = progress_bar(records.len());
    let mut acknowledged = 0;
    for chunk in records.chunks(CHUNK_SIZE) {
        if let Err(source) = producer.send_all(chunk).await {
            bar.abandon();
            return Err(CtlError::Publish {
                bootstrap,
                acknowledged,
                total: records.len(),
                source: Box::new(source),
            });
        }
        acknowledged += chunk.len();
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    writeln!(out, "published {}", summary(&lines, &topics))?;
    Ok(())
}

/// The codec a publishing command encodes with: the deployment's framing
/// and fingerprint form, without the schema registry on a dry run (which
/// must not register schemas).
pub(crate) fn codec_for(settings: &Settings, dry_run: bool) -> Result<Codec, CtlError> {
    let registry = if dry_run {
        None
    } else {
        settings.schema_registry_url.as_deref()
    };
    Ok(Codec::new(registry)
        .map_err(CtlError::Codec)?
        .with_fingerprint_form(settings.avro_fingerprint))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLACED: &str = r#"{"type":"OrderPlaced","event_id":"e-1","occurred_at":"2026-11-24T10:00:00Z","order_id":"o-1","customer":{"customer_id":"c-1","email":"ada@example.com","name":"Ada","locale":"en-GB","country":"GB"},"lines":[{"line_id":"l1","sku":"LAMP-01","product_name":"Lamp","quantity":1,"unit_price_minor":8900,"availability":"BACKORDERED"}],"currency":"EUR","total_minor":8900}"#;

    const ETA: &str = r#"{"type":"SupplierEtaChanged","event_id":"e-2","occurred_at":"2026-11-24T08:00:00Z","sku":"LAMP-01","eta_from":"2026-12-15","eta_to":"2026-12-29","reason":"r","remedy":"m"}"#;

    fn one(text: &str) -> Result<ParsedLine, LineError> {
        parse_line(7, text)
    }

    fn err(text: &str) -> LineError {
        match one(text) {
            Ok(parsed) => panic!("expected an error, got {parsed:?}"),
            Err(e) => e,
        }
    }

    /// PLACED with `from` replaced by `to` (which must change something).
    fn placed_with(from: &str, to: &str) -> String {
        assert!(PLACED.contains(from), "{from}");
        PLACED.replacen(from, to, 1)
    }

    #[test]
    fn good_order_line_goes_to_orders_keyed_by_order_id() {
        let parsed = one(PLACED).unwrap();
        assert_eq!(parsed.line, 7);
        assert_eq!(parsed.record.type_name(), "OrderPlaced");
        assert_eq!(parsed.record.key(), "o-1");
        assert_eq!(parsed.record.event_id(), "e-1");
        assert!(!parsed.generated_event_id);
        assert_eq!(parsed.topic(&Topics::new("")), "orders.v1");
        assert_eq!(parsed.topic(&Topics::new("test-")), "test-orders.v1");
    }

    #[test]
    fn every_type_goes_to_its_contract_topic_and_key() {
        let cases = [
            (ETA, "stock.v1", "LAMP-01"),
            (
                r#"{"type":"StockArrival","event_id":"e","occurred_at":"2026-12-20T08:00:00Z","arrival_id":"a-1","sku":"MUG-01","quantity":4,"warehouse":"BER-1"}"#,
                "stock.v1",
                "MUG-01",
            ),
            (
                r#"{"type":"OrderCancelled","event_id":"e","occurred_at":"2026-12-20T08:00:00Z","order_id":"o-9","line_ids":[],"reason":"changed mind"}"#,
                "orders.v1",
                "o-9",
            ),
            (
                r#"{"type":"ShipmentDelivered","event_id":"e","occurred_at":"2026-12-20T08:00:00Z","shipment_id":"s-1","order_id":"o-3"}"#,
                "shipments.v1",
                "o-3",
            ),
            (
                r#"{"type":"OfferResponse","event_id":"e","occurred_at":"2026-12-20T08:00:00Z","offer_id":"of-1","token":"t","choice":"TAKE_STORE_CREDIT"}"#,
                "offer-responses.v1",
                "of-1",
            ),
        ];
        for (text, topic, key) in cases {
            let parsed = one(text).unwrap();
            assert_eq!(parsed.topic(&Topics::new("")), topic, "{text}");
            assert_eq!(parsed.record.key(), key, "{text}");
        }
    }

    #[test]
    fn record_type_names_match_the_avro_schemas() {
        let parsed = one(ETA).unwrap();
        assert_eq!(parsed.record.avro_full_name(), "com.backorder.stock.SupplierEtaChanged");
        // Every declared type is one of the contract's input records and
        // appears in --help.
        assert_eq!(RECORD_TYPES.len(), 9);
        for name in RECORD_TYPES {
            assert!(LONG_ABOUT.contains(name), "{name} missing from --help");
        }
    }

    #[test]
    fn unknown_type_is_named_with_the_choices() {
        let e = err(r#"{"type":"Foo","occurred_at":"2026-11-24T10:00:00Z"}"#);
        assert_eq!(e.line, 7);
        assert_eq!(e.record_type, None);
        let text = e.to_string();
        assert!(
            text.starts_with("line 7: unknown type \"Foo\" (expected one of OrderPlaced, "),
            "{text}"
        );
        assert!(text.contains("OfferResponse"), "{text}");

        let e = err(r#"{"type":"orderplaced","occurred_at":"2026-11-24T10:00:00Z"}"#);
        assert!(e.to_string().contains("did you mean OrderPlaced?"), "{e}");
    }

    #[test]
    fn missing_or_non_string_type_is_reported() {
        let e = err(r#"{"order_id":"o-1"}"#);
        assert_eq!(e.field.as_deref(), Some("type"));
        assert!(e.reason.starts_with("missing"), "{e}");
        let e = err(r#"{"type":3}"#);
        assert_eq!(e.field.as_deref(), Some("type"));
        assert!(e.reason.contains("got a number"), "{e}");
    }

    #[test]
    fn not_json_and_not_an_object_are_reported() {
        let e = err(r#"{"type":"OrderPlaced","#);
        assert!(e.to_string().starts_with("line 7: not JSON: "), "{e}");
        assert!(!e.reason.contains("at line 1"), "serde's own line number confuses: {e}");
        let e = err("[1,2]");
        assert!(e.reason.contains("expected a JSON object"), "{e}");
    }

    #[test]
    fn missing_field_names_the_field() {
        let e = err(&placed_with(r#""order_id":"o-1","#, ""));
        assert_eq!(e.record_type, Some("OrderPlaced"));
        assert_eq!(e.field.as_deref(), Some("order_id"));
        assert_eq!(
            e.to_string(),
            "line 7 (OrderPlaced): order_id: required field is missing"
        );
    }

    #[test]
    fn missing_nested_field_names_its_path() {
        let e = err(&placed_with(r#""email":"ada@example.com","#, ""));
        assert_eq!(e.field.as_deref(), Some("customer.email"), "{e}");
        let e = err(&placed_with(r#""product_name":"Lamp","#, ""));
        assert_eq!(e.field.as_deref(), Some("lines[0].product_name"), "{e}");
    }

    #[test]
    fn missing_occurred_at_fails_instead_of_defaulting() {
        let e = err(&placed_with(r#""occurred_at":"2026-11-24T10:00:00Z","#, ""));
        assert_eq!(e.field.as_deref(), Some("occurred_at"));
        assert!(e.reason.contains("never defaulted"), "{e}");
    }

    #[test]
    fn unknown_field_is_named() {
        let e = err(&placed_with(
            r#""currency":"EUR""#,
            r#""currency":"EUR","colour":"red""#,
        ));
        assert_eq!(e.field.as_deref(), Some("colour"), "{e}");
        assert!(e.reason.starts_with("unknown field"), "{e}");
        let e = err(&placed_with(r#""quantity":1"#, r#""quantity":1,"qty":1"#));
        assert_eq!(e.field.as_deref(), Some("lines[0].qty"), "{e}");
    }

    #[test]
    fn invalid_value_names_line_and_field() {
        let e = err(&placed_with(r#""quantity":1"#, r#""quantity":-1"#));
        assert_eq!(
            e.to_string(),
            "line 7 (OrderPlaced): lines[0].quantity: must be positive, got -1"
        );
        let e = err(&placed_with(r#""quantity":1"#, r#""quantity":"one""#));
        assert_eq!(e.field.as_deref(), Some("lines[0].quantity"), "{e}");
        let e = err(&placed_with(r#""BACKORDERED""#, r#""LATE""#));
        assert_eq!(e.field.as_deref(), Some("lines[0].availability"), "{e}");
        let e = err(&placed_with(r#""ada@example.com""#, r#""ada.example.com""#));
        assert_eq!(e.field.as_deref(), Some("customer.email"), "{e}");
        let e = err(&ETA.replace("2026-12-15", "2026-13-01"));
        assert_eq!(e.field.as_deref(), Some("eta_from"), "{e}");
        assert!(e.reason.contains("not a date"), "{e}");
        let e = err(&placed_with("2026-11-24T10:00:00Z", "yesterday"));
        assert_eq!(e.field.as_deref(), Some("occurred_at"), "{e}");
        assert!(e.reason.contains("RFC 3339"), "{e}");
    }

    #[test]
    fn missing_event_id_is_generated_deterministically_from_the_line() {
        let without = placed_with(r#""event_id":"e-1","#, "");
        let a = one(&without).unwrap();
        let b = one(&format!("  {without}  ")).unwrap();
        assert!(a.generated_event_id);
        assert_eq!(a.record.event_id(), b.record.event_id());
        assert!(Uuid::parse_str(a.record.event_id()).is_ok());
        assert_eq!(a.record.event_id(), generated_event_id(&without));
        let other = one(&without.replace("o-1", "o-2")).unwrap();
        assert_ne!(a.record.event_id(), other.record.event_id());
    }

    #[test]
    fn blank_and_comment_lines_are_skipped_and_numbering_is_physical() {
        let text = format!("# scenario\n\n   \n{ETA}\n  # indented comment\n{PLACED}\n");
        let parsed = parse_lines(&text).unwrap();
        let lines: Vec<usize> = parsed.iter().map(|p| p.line).collect();
        assert_eq!(lines, vec![4, 6]);
        assert!(parse_lines("\n# nothing\n").unwrap().is_empty());
        // Windows line endings and a byte-order mark are fine too.
        let crlf = format!("\u{feff}{ETA}\r\n{PLACED}\r\n");
        assert_eq!(parse_lines(&crlf).unwrap().len(), 2);
    }

    #[test]
    fn nothing_is_returned_when_any_line_is_bad_and_all_bad_lines_are_reported() {
        let bad = placed_with(r#""quantity":1"#, r#""quantity":-1"#);
        let text = format!("{ETA}\n{PLACED}\n{bad}\n{ETA}\nnot json\n");
        let errors = parse_lines(&text).unwrap_err();
        let lines: Vec<usize> = errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![3, 5]);
        let message = describe_bad_input("scenario.jsonl", &errors);
        assert!(
            message.starts_with("scenario.jsonl has 2 bad lines; nothing was published"),
            "{message}"
        );
        assert!(message.contains("\n  line 3 (OrderPlaced): lines[0].quantity: must be positive, got -1"));
    }

    #[test]
    fn long_error_lists_are_capped() {
        let text = "x\n".repeat(25);
        let errors = parse_lines(&text).unwrap_err();
        assert_eq!(errors.len(), 25);
        let message = describe_bad_input("f", &errors);
        assert!(message.contains("line 20:"));
        assert!(!message.contains("line 21:"));
        assert!(message.ends_with("... and 5 more"), "{message}");
    }

    #[test]
    fn summary_counts_per_topic_in_contract_order() {
        let text = format!("{PLACED}\n{ETA}\n{PLACED}\n");
        let parsed = parse_lines(&text).unwrap();
        assert_eq!(
            summary(&parsed, &Topics::new("")),
            "3 records (orders.v1: 2, stock.v1: 1)"
        );
        assert_eq!(summary(&parsed[1..2], &Topics::new("t-")), "1 record (t-stock.v1: 1)");
    }

    #[tokio::test]
    async fn encoding_keys_records_as_the_contract_says() {
        let text = format!("{ETA}\n{PLACED}\n");
        let parsed = parse_lines(&text).unwrap();
        let codec = Codec::new(None).unwrap();
        let records = encode_all(&parsed, &codec, &Topics::new("p-")).await.unwrap();
        assert_eq!(records[0].topic, "p-stock.v1");
        assert_eq!(records[0].key, "LAMP-01");
        assert_eq!(records[1].topic, "p-orders.v1");
        assert_eq!(records[1].key, "o-1");
        // Avro single-object encoding.
        assert_eq!(&records[1].payload[..2], &[0xC3, 0x01]);
    }

    #[test]
    fn the_demo_scenario_parses() {
        let text = include_str!("../../../infra/local/demo-scenario.jsonl");
        let parsed = match parse_lines(text) {
            Ok(parsed) => parsed,
            Err(errors) => panic!("{}", describe_bad_input("demo-scenario.jsonl", &errors)),
        };
        let count = |name: &str| parsed.iter().filter(|p| p.record.type_name() == name).count();
        assert_eq!(count("ProductUpserted"), 3);
        assert_eq!(count("SupplierEtaChanged"), 1);
        assert_eq!(count("OrderPlaced"), 3);
        assert_eq!(count("CartAbandoned"), 1);
        assert_eq!(parsed.len(), 8);

        let mut locales = Vec::new();
        let mut backordered_lamp_orders = 0;
        let mut all_in_stock_orders = 0;
        for p in &parsed {
            match &p.record {
                Record::OrderPlaced(o) => {
                    locales.push(o.customer.locale.clone());
                    assert!(o.customer.email.ends_with("@example.com"));
                    let sum: i64 = o.lines.iter().map(|l| l.unit_price_minor * i64::from(l.quantity)).sum();
                    assert_eq!(sum, o.total_minor, "{}", o.order_id);
                    use backorder_core::events::orders::Availability;
                    if o.lines
                        .iter()
                        .any(|l| l.sku == "LAMP-01" && l.availability == Availability::Backordered)
                    {
                        backordered_lamp_orders += 1;
                    }
                    if o.lines.iter().all(|l| l.availability == Availability::InStock) {
                        all_in_stock_orders += 1;
                    }
                }
                Record::SupplierEtaChanged(eta) => {
                    assert_eq!(eta.sku, "LAMP-01");
                    let base = chrono::NaiveDate::from_ymd_opt(2026, 11, 24).unwrap();
                    let from = (eta.eta_from.unwrap() - base).num_days();
                    let to = (eta.eta_to.unwrap() - base).num_days();
                    assert!((20..=36).contains(&from) && (20..=36).contains(&to), "{from}..{to}");
                }
                _ => {}
            }
        }
        locales.sort();
        assert_eq!(locales, vec!["de-DE", "en-GB", "ko-KR"]);
        assert_eq!(backordered_lamp_orders, 2);
        assert_eq!(all_in_stock_orders, 1);
    }
}

/// Hostile input: whatever a JSON-lines file holds, parsing ends in records
/// or a [`LineError`] per bad line naming the line and a reason, never a
/// panic; and a line that passes validation always encodes.
#[cfg(test)]
mod hostile_input {
    use super::*;
    use proptest::prelude::*;

    const PLACED: &str = r#"{"type":"OrderPlaced","event_id":"e-1","occurred_at":"2026-11-24T10:00:00Z","order_id":"o-1","customer":{"customer_id":"c-1","email":"ada@example.com","name":"Ada","locale":"en-GB","country":"GB"},"lines":[{"line_id":"l1","sku":"LAMP-01","product_name":"Lamp","quantity":1,"unit_price_minor":8900,"availability":"BACKORDERED"}],"currency":"EUR","total_minor":8900}"#;

    /// Any JSON value, nested a few levels.
    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            "\\PC{0,20}".prop_map(Value::String),
            prop::sample::select(vec![
                "2026-11-24T10:00:00Z",
                "2026-12-15",
                "BACKORDERED",
                "EUR",
                "",
                "-1"
            ])
            .prop_map(|s| Value::String(s.to_string())),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("\\PC{0,8}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Every path (`customer.email`, `lines.0.quantity`) of `value`.
    fn paths(value: &Value, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        let children: Vec<(String, &Value)> = match value {
            Value::Object(map) => map.iter().map(|(k, v)| (k.clone(), v)).collect(),
            Value::Array(items) => items.iter().enumerate().map(|(i, v)| (i.to_string(), v)).collect(),
            _ => Vec::new(),
        };
        for (key, child) in children {
            prefix.push(key);
            out.push(prefix.clone());
            paths(child, prefix, out);
            prefix.pop();
        }
    }

    fn replace(value: &mut Value, path: &[String], with: Value) {
        let Some((first, rest)) = path.split_first() else {
            *value = with;
            return;
        };
        let child = match value {
            Value::Object(map) => map.get_mut(first),
            Value::Array(items) => first.parse::<usize>().ok().and_then(|i| items.get_mut(i)),
            _ => None,
        };
        if let Some(child) = child {
            replace(child, rest, with);
        }
    }

    /// Parses `text`; every error names a line of it and a reason.
    fn check_errors(text: &str) -> Result<Vec<ParsedLine>, TestCaseError> {
        let lines = text.lines().count().max(1);
        match parse_lines(text) {
            Ok(parsed) => Ok(parsed),
            Err(errors) => {
                prop_assert!(!errors.is_empty());
                for error in &errors {
                    prop_assert!((1..=lines).contains(&error.line), "{error}");
                    prop_assert!(!error.reason.is_empty(), "{error}");
                }
                Ok(Vec::new())
            }
        }
    }

    fn encodes(parsed: &[ParsedLine]) -> Result<(), TestCaseError> {
        let codec = Codec::new(None).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let encoded = runtime.block_on(encode_all(parsed, &codec, &Topics::new("")));
        prop_assert!(encoded.is_ok(), "a validated line encodes: {:?}", encoded.err());
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn any_text_parses_or_names_each_bad_line(text in "\\PC{0,200}(\n\\PC{0,80}){0,3}") {
            let parsed = check_errors(&text)?;
            encodes(&parsed)?;
        }

        #[test]
        fn any_json_value_as_a_line_parses_or_names_the_line(value in json()) {
            let parsed = check_errors(&value.to_string())?;
            encodes(&parsed)?;
        }

        #[test]
        fn an_order_with_any_field_replaced_parses_and_encodes_or_names_the_field(
            at in any::<prop::sample::Index>(),
            with in json(),
        ) {
            let mut order: Value = serde_json::from_str(PLACED).unwrap();
            let mut all = Vec::new();
            paths(&order, &mut Vec::new(), &mut all);
            let path = &all[at.index(all.len())];
            replace(&mut order, path, with);
            match parse_line(1, &order.to_string()) {
                Ok(parsed) => encodes(&[parsed])?,
                Err(error) => prop_assert!(!error.reason.is_empty(), "{error}"),
            }
        }
    }
}
