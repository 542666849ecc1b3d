//! Dead letters: an event that cannot be decoded or is invalid goes, bytes
//! untouched, to `<topic>.dlq` with the reason and its origin in headers
//! (DESIGN invariant 3), and a metric counts it.

use rdkafka::Message;
use rdkafka::message::{Headers, OwnedMessage};

use super::producer::OutboundRecord;
use super::topics::Topics;

/// Header names on a dead-lettered record.
pub const REASON: &str = "dlq.reason";
pub const KIND: &str = "dlq.kind";
pub const ORIGINAL_TOPIC: &str = "dlq.original.topic";
pub const ORIGINAL_PARTITION: &str = "dlq.original.partition";
pub const ORIGINAL_OFFSET: &str = "dlq.original.offset";

/// Why a message was dead-lettered, as a small fixed set for metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterKind {
    /// The bytes are not a known Avro record.
    Undecodable,
    /// The record decoded but breaks a rule (no lines, negative quantity).
    Invalid,
    /// The handler could not apply it for a reason that retrying won't fix.
    Rejected,
    /// It waited for state from another topic longer than allowed.
    Unresolved,
}

impl DeadLetterKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterKind::Undecodable => "undecodable",
            DeadLetterKind::Invalid => "invalid",
            DeadLetterKind::Rejected => "rejected",
            DeadLetterKind::Unresolved => "unresolved",
        }
    }
}

/// The dead-letter record for `message`.
pub fn dead_letter(message: &OwnedMessage, kind: DeadLetterKind, reason: &str) -> OutboundRecord {
    let mut headers: Vec<(String, String)> = message
        .headers()
        .map(|h| {
            h.iter()
                .filter_map(|h| Some((h.key.to_string(), String::from_utf8(h.value?.to_vec()).ok()?)))
                .collect()
        })
        .unwrap_or_default();
    headers.extend([
        (REASON.to_string(), reason.to_string()),
        (KIND.to_string(), kind.as_str().to_string()),
        (ORIGINAL_TOPIC.to_string(), message.topic().to_string()),
        (ORIGINAL_PARTITION.to_string(), message.partition().to_string()),
        (ORIGINAL_OFFSET.to_string(), message.offset().to_string()),
    ]);
    metrics::counter!(
        "backorder_dead_letters_total",
        "topic" => message.topic().to_string(),
        "kind" => kind.as_str(),
    )
    .increment(1);
    OutboundRecord {
        topic: Topics::dead_letter_of(message.topic()),
        key: message
            .key()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .unwrap_or_default(),
        payload: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
        headers,
    }
}
