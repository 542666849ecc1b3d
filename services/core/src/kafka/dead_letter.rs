//! Dead letters: an event that cannot be decoded, is invalid, is rejected
//! or has no payload goes, bytes untouched (key and headers as bytes too),
//! to `<topic>.dlq` with the reason and its origin in headers (DESIGN
//! invariant 3), and a metric counts it once the broker acknowledged it.

use rdkafka::Message;
use rdkafka::message::{Headers, OwnedMessage};

use super::topics::Topics;

/// Header names on a dead-lettered record.
pub const REASON: &str = "dlq.reason";
pub const KIND: &str = "dlq.kind";
pub const ORIGINAL_TOPIC: &str = "dlq.original.topic";
pub const ORIGINAL_PARTITION: &str = "dlq.original.partition";
pub const ORIGINAL_OFFSET: &str = "dlq.original.offset";
/// Set when the dead letter itself was too large for the broker and its
/// payload had to be left out: the size it had and why.
pub const PAYLOAD_DROPPED: &str = "dlq.payload.dropped";

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
    /// It carries no payload at all (a tombstone on an event topic).
    Empty,
    /// An output it produced is larger than the broker accepts. Replay it
    /// (`backorderctl dlq replay`) once the limit is raised.
    Oversized,
}

impl DeadLetterKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterKind::Undecodable => "undecodable",
            DeadLetterKind::Invalid => "invalid",
            DeadLetterKind::Rejected => "rejected",
            DeadLetterKind::Unresolved => "unresolved",
            DeadLetterKind::Empty => "empty",
            DeadLetterKind::Oversized => "oversized",
        }
    }
}

/// A dead letter: the original message, bytes untouched (key, payload and
/// every header as bytes, a tombstone stays a tombstone), plus the reason
/// and origin headers. Counted in `backorder_dead_letters_total` once the
/// broker acknowledged it ([`DeadLetter::count`]), so a retried produce is
/// not counted twice.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// `<original topic>.dlq`.
    pub topic: String,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    /// The original headers, then the `dlq.*` ones.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    pub kind: DeadLetterKind,
    pub original_topic: String,
}

impl DeadLetter {
    /// Leaves the payload out, recording its size, for a dead letter that
    /// is itself larger than the broker accepts. The only case where a
    /// dead letter loses bytes: the alternative is a partition held for
    /// ever. Origin headers still point at the original record.
    pub fn drop_payload(&mut self) {
        let bytes = self.payload.take().map_or(0, |p| p.len());
        tracing::error!(topic = %self.original_topic, bytes, "a dead letter is larger than the broker accepts; its payload is left out (origin headers kept)");
        self.headers.push((
            PAYLOAD_DROPPED.to_string(),
            Some(format!("{bytes} bytes: larger than the broker accepts").into_bytes()),
        ));
    }

    /// Counts this dead letter; call after the broker acknowledged it.
    pub fn count(&self) {
        metrics::counter!(
            "backorder_dead_letters_total",
            "topic" => self.original_topic.clone(),
            "kind" => self.kind.as_str(),
        )
        .increment(1);
    }
}

/// The dead letter for `message`.
pub fn dead_letter(message: &OwnedMessage, kind: DeadLetterKind, reason: &str) -> DeadLetter {
    let mut headers: Vec<(String, Option<Vec<u8>>)> = message
        .headers()
        .map(|h| {
            h.iter()
                .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                .collect()
        })
        .unwrap_or_default();
    headers.extend(
        [
            (REASON, reason.to_string()),
            (KIND, kind.as_str().to_string()),
            (ORIGINAL_TOPIC, message.topic().to_string()),
            (ORIGINAL_PARTITION, message.partition().to_string()),
            (ORIGINAL_OFFSET, message.offset().to_string()),
        ]
        .map(|(k, v)| (k.to_string(), Some(v.into_bytes()))),
    );
    DeadLetter {
        topic: Topics::dead_letter_of(message.topic()),
        key: message.key().map(<[u8]>::to_vec),
        payload: message.payload().map(<[u8]>::to_vec),
        headers,
        kind,
        original_topic: message.topic().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::{Header, OwnedHeaders, Timestamp};

    #[test]
    fn binary_keys_and_headers_and_tombstones_are_kept_as_bytes() {
        let headers = OwnedHeaders::new().insert(Header {
            key: "trace",
            value: Some(&[0xff_u8, 0x00, 0xfe][..]),
        });
        let message = OwnedMessage::new(
            None,
            Some(vec![0xc3, 0x28]),
            "orders.v1".into(),
            Timestamp::NotAvailable,
            2,
            7,
            Some(headers),
        );
        let letter = dead_letter(&message, DeadLetterKind::Empty, "no payload");
        assert_eq!(letter.topic, "orders.v1.dlq");
        assert_eq!(letter.key, Some(vec![0xc3, 0x28]), "a non-UTF-8 key survives");
        assert_eq!(letter.payload, None, "a tombstone stays a tombstone");
        assert_eq!(letter.headers[0], ("trace".to_string(), Some(vec![0xff, 0x00, 0xfe])));
        let reason = letter
            .headers
            .iter()
            .find(|(k, _)| k == REASON)
            .and_then(|(_, v)| v.clone());
        assert_eq!(reason, Some(b"no payload".to_vec()));
    }
}
