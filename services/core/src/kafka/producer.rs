//! Producing records and waiting for the broker's acknowledgement.
//!
//! All records of a batch are handed to librdkafka first and awaited
//! together afterwards, so a batch costs one round of acknowledgements,
//! not one per record.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::future::try_join_all;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};

use super::dead_letter::DeadLetter;
use crate::codec::{Codec, CodecError};
use crate::config::Settings;
use crate::events::AvroRecord;

/// One record to produce.
#[derive(Debug, Clone)]
pub struct OutboundRecord {
    pub topic: String,
    pub key: String,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

impl OutboundRecord {
    /// Encodes `record` for `topic`, keyed as its contract says.
    pub async fn encode<T: AvroRecord>(codec: &Codec, topic: &str, record: &T) -> Result<Self, CodecError> {
        Ok(Self {
            topic: topic.to_string(),
            key: record.key().to_string(),
            payload: codec.encode(topic, record).await?,
            headers: Vec::new(),
        })
    }
}

impl OutboundRecord {
    /// Encodes every record of `records` for `topic`, in order.
    pub async fn encode_all<T: AvroRecord>(
        codec: &Codec,
        topic: &str,
        records: &[&T],
    ) -> Result<Vec<Self>, CodecError> {
        let mut out = Vec::with_capacity(records.len());
        for record in records {
            out.push(Self::encode(codec, topic, *record).await?);
        }
        Ok(out)
    }
}

/// Producer failures.
#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    #[error("could not create the Kafka producer: {0}")]
    Create(#[source] KafkaError),
    #[error("broker did not acknowledge record {index} for {topic}: {source}")]
    NotAcknowledged {
        topic: String,
        /// Which record of the slice handed to the producer failed, so a
        /// caller can act on that one (dead-letter what caused it).
        index: usize,
        #[source]
        source: KafkaError,
    },
}

/// What a produce failure calls for. Retrying helps only the transient
/// kind; the others need the record or an operator to change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProduceErrorClass {
    /// The broker is unavailable, a leader moved, a request timed out:
    /// retry as is.
    Transient,
    /// The record is larger than this producer or the broker accepts;
    /// retrying the same bytes never succeeds.
    TooLarge,
    /// The topic does not exist or this client may not write to it. Every
    /// record for it fails until an operator creates the topic or grants
    /// the ACL: retried slowly, with readiness down and an alert.
    Blocked,
}

impl ProduceErrorClass {
    /// A short word for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ProduceErrorClass::Transient => "transient",
            ProduceErrorClass::TooLarge => "too_large",
            ProduceErrorClass::Blocked => "blocked",
        }
    }
}

impl ProduceError {
    /// The one place produce errors are classified (librdkafka error codes,
    /// local and broker ones).
    pub fn class(&self) -> ProduceErrorClass {
        use rdkafka::types::RDKafkaErrorCode as Code;
        let source = match self {
            ProduceError::Create(source) | ProduceError::NotAcknowledged { source, .. } => source,
        };
        match source.rdkafka_error_code() {
            Some(Code::MessageSizeTooLarge | Code::MessageBatchTooLarge) => ProduceErrorClass::TooLarge,
            Some(
                Code::UnknownTopic
                | Code::UnknownTopicOrPartition
                | Code::UnknownPartition
                | Code::UnknownTopicId
                | Code::TopicAuthorizationFailed
                | Code::ClusterAuthorizationFailed
                | Code::TransactionalIdAuthorizationFailed,
            ) => ProduceErrorClass::Blocked,
            _ => ProduceErrorClass::Transient,
        }
    }

    /// librdkafka raised a fatal error (an idempotent producer lost its
    /// sequence with the broker): that producer instance fails every record
    /// from then on, so only a new instance can succeed.
    pub fn is_fatal(&self) -> bool {
        let source = match self {
            ProduceError::Create(source) | ProduceError::NotAcknowledged { source, .. } => source,
        };
        source.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::Fatal)
    }

    /// The index of the failed record in the slice that was produced.
    pub fn index(&self) -> Option<usize> {
        match self {
            ProduceError::NotAcknowledged { index, .. } => Some(*index),
            ProduceError::Create(_) => None,
        }
    }

    /// The topic the failed record was for.
    pub fn topic(&self) -> Option<&str> {
        match self {
            ProduceError::NotAcknowledged { topic, .. } => Some(topic),
            ProduceError::Create(_) => None,
        }
    }
}

/// The producer's settings. Idempotent: a retry inside librdkafka (a lost
/// acknowledgement) never writes a record twice or out of order; it
/// implies `acks=all`. A record for a topic that does not exist fails after
/// `topic.metadata.propagation.max.ms` rather than waiting the whole
/// message timeout: our topics are created ahead (`backorderctl topics
/// create`), so a missing one is an operator's problem to report, not a
/// propagation delay to wait out; for the same reason the producer never
/// asks the broker to auto-create a topic (it would get the broker's
/// default partition count, not the contract's).
fn producer_config(settings: &Settings) -> rdkafka::ClientConfig {
    let mut config = super::client_config(settings);
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        // A batch's records are handed over together and then awaited, so
        // they are already queued when the first is sent: a longer linger
        // would only add to every batch's wait for its acknowledgements.
        .set("linger.ms", "1")
        .set("message.timeout.ms", "30000")
        .set("topic.metadata.propagation.max.ms", "5000")
        .set("allow.auto.create.topics", "false")
        .set("message.max.bytes", settings.kafka_message_max_bytes.to_string());
    config
}

/// A shared, cheaply cloned producer. After a fatal error it replaces its
/// librdkafka instance (every clone sees the new one), so the caller's
/// retry goes out under a new producer id instead of failing forever;
/// records the old instance may have written are duplicates consumers of
/// our outputs already deduplicate.
#[derive(Clone)]
pub struct Producer {
    inner: Arc<RwLock<FutureProducer>>,
    config: rdkafka::ClientConfig,
}

impl Producer {
    pub fn new(settings: &Settings) -> Result<Self, ProduceError> {
        let config = producer_config(settings);
        let inner = config.create().map_err(ProduceError::Create)?;
        Ok(Self {
            inner: Arc::new(RwLock::new(inner)),
            config,
        })
    }

    /// The current librdkafka instance.
    fn current(&self) -> FutureProducer {
        match self.inner.read() {
            Ok(inner) => inner.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces the instance after a fatal error (`failed`), unless another
    /// clone already did.
    fn renew_after(&self, failed: &FutureProducer, error: &ProduceError) {
        if !error.is_fatal() {
            return;
        }
        let Ok(fresh) = self.config.create::<FutureProducer>() else {
            tracing::error!("could not create a new Kafka producer after a fatal error; retrying with the old one");
            return;
        };
        let mut inner = match self.inner.write() {
            Ok(inner) => inner,
            Err(poisoned) => poisoned.into_inner(),
        };
        if std::ptr::eq(inner.client().native_ptr(), failed.client().native_ptr()) {
            tracing::warn!("the Kafka producer hit a fatal error; replaced it with a new one");
            *inner = fresh;
        }
    }

    /// Produces every record and returns once the broker acknowledged all
    /// of them, with where each landed (partition, offset), in input order.
    /// The first failure is returned (the caller retries the lot, which is
    /// safe because consumers of our outputs deduplicate).
    pub async fn send_all(&self, records: &[OutboundRecord]) -> Result<Vec<(i32, i64)>, ProduceError> {
        let producer = self.current();
        let deliveries = records.iter().enumerate().map(|(index, record)| {
            let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
            for (key, value) in &record.headers {
                headers = headers.insert(Header {
                    key,
                    value: Some(value.as_bytes()),
                });
            }
            let future_record = FutureRecord::to(&record.topic)
                .key(&record.key)
                .payload(&record.payload)
                .headers(headers);
            let producer = &producer;
            async move {
                producer
                    .send(future_record, Duration::from_secs(30))
                    .await
                    .map(|delivery| (delivery.partition, delivery.offset))
                    .map_err(|(source, _)| ProduceError::NotAcknowledged {
                        topic: record.topic.clone(),
                        index,
                        source,
                    })
            }
        });
        let result = try_join_all(deliveries).await;
        if let Err(error) = &result {
            self.renew_after(&producer, error);
        }
        result
    }

    /// Produces dead letters as they are (bytes keys and headers, a
    /// tombstone stays one) and returns once the broker acknowledged all.
    pub async fn send_dead_letters(&self, letters: &[DeadLetter]) -> Result<(), ProduceError> {
        let producer = self.current();
        let deliveries = letters.iter().enumerate().map(|(index, letter)| {
            let mut headers = OwnedHeaders::new_with_capacity(letter.headers.len());
            for (key, value) in &letter.headers {
                headers = headers.insert(Header {
                    key,
                    value: value.as_deref(),
                });
            }
            let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&letter.topic).headers(headers);
            if let Some(key) = &letter.key {
                record = record.key(key.as_slice());
            }
            if let Some(payload) = &letter.payload {
                record = record.payload(payload.as_slice());
            }
            let producer = &producer;
            async move {
                producer
                    .send(record, Duration::from_secs(30))
                    .await
                    .map(|_| ())
                    .map_err(|(source, _)| ProduceError::NotAcknowledged {
                        topic: letter.topic.clone(),
                        index,
                        source,
                    })
            }
        });
        let result = try_join_all(deliveries).await.map(|_| ());
        if let Err(error) = &result {
            self.renew_after(&producer, error);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_producer_is_idempotent_and_waits_for_all_replicas() {
        let config = producer_config(&Settings::default());
        assert_eq!(config.get("enable.idempotence"), Some("true"));
        assert_eq!(config.get("acks"), Some("all"));
    }

    #[test]
    fn only_a_fatal_error_calls_for_a_new_producer() {
        use rdkafka::types::RDKafkaErrorCode as Code;
        let failed = |code| ProduceError::NotAcknowledged {
            topic: "t".into(),
            index: 0,
            source: KafkaError::MessageProduction(code),
        };
        assert!(failed(Code::Fatal).is_fatal());
        assert!(!failed(Code::MessageTimedOut).is_fatal());
        assert_eq!(failed(Code::Fatal).class(), ProduceErrorClass::Transient);
    }

    #[test]
    fn produce_errors_are_classified_by_what_fixes_them() {
        use rdkafka::types::RDKafkaErrorCode as Code;
        let failed = |code| ProduceError::NotAcknowledged {
            topic: "t".into(),
            index: 3,
            source: KafkaError::MessageProduction(code),
        };
        assert_eq!(failed(Code::MessageSizeTooLarge).class(), ProduceErrorClass::TooLarge);
        assert_eq!(failed(Code::UnknownTopic).class(), ProduceErrorClass::Blocked);
        assert_eq!(
            failed(Code::UnknownTopicOrPartition).class(),
            ProduceErrorClass::Blocked
        );
        assert_eq!(
            failed(Code::TopicAuthorizationFailed).class(),
            ProduceErrorClass::Blocked
        );
        assert_eq!(failed(Code::MessageTimedOut).class(), ProduceErrorClass::Transient);
        assert_eq!(
            failed(Code::BrokerTransportFailure).class(),
            ProduceErrorClass::Transient
        );
        assert_eq!(
            failed(Code::NotLeaderForPartition).class(),
            ProduceErrorClass::Transient
        );
        assert_eq!(failed(Code::MessageSizeTooLarge).index(), Some(3));
    }
}
