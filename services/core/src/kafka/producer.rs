//! Producing records and waiting for the broker's acknowledgement.
//!
//! All records of a batch are handed to librdkafka first and awaited
//! together afterwards, so a batch costs one round of acknowledgements,
//! not one per record.

use std::time::Duration;

use futures::future::try_join_all;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

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
    #[error("broker did not acknowledge a record for {topic}: {source}")]
    NotAcknowledged {
        topic: String,
        #[source]
        source: KafkaError,
    },
}

/// The producer's settings. Idempotent: a retry inside librdkafka (a lost
/// acknowledgement) never writes a record twice or out of order; it
/// implies `acks=all`.
fn producer_config(settings: &Settings) -> rdkafka::ClientConfig {
    let mut config = super::client_config(settings);
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000");
    config
}

/// A shared, cheaply cloned producer.
#[derive(Clone)]
pub struct Producer {
    inner: FutureProducer,
}

impl Producer {
    pub fn new(settings: &Settings) -> Result<Self, ProduceError> {
        let inner = producer_config(settings).create().map_err(ProduceError::Create)?;
        Ok(Self { inner })
    }

    /// Produces every record and returns once the broker acknowledged all
    /// of them, with where each landed (partition, offset), in input order.
    /// The first failure is returned (the caller retries the lot, which is
    /// safe because consumers of our outputs deduplicate).
    pub async fn send_all(&self, records: &[OutboundRecord]) -> Result<Vec<(i32, i64)>, ProduceError> {
        let deliveries = records.iter().map(|record| {
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
            async move {
                self.inner
                    .send(future_record, Duration::from_secs(30))
                    .await
                    .map(|delivery| (delivery.partition, delivery.offset))
                    .map_err(|(source, _)| ProduceError::NotAcknowledged {
                        topic: record.topic.clone(),
                        source,
                    })
            }
        });
        try_join_all(deliveries).await
    }

    /// Produces dead letters as they are (bytes keys and headers, a
    /// tombstone stays one) and returns once the broker acknowledged all.
    pub async fn send_dead_letters(&self, letters: &[DeadLetter]) -> Result<(), ProduceError> {
        let deliveries = letters.iter().map(|letter| {
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
            async move {
                self.inner
                    .send(record, Duration::from_secs(30))
                    .await
                    .map(|_| ())
                    .map_err(|(source, _)| ProduceError::NotAcknowledged {
                        topic: letter.topic.clone(),
                        source,
                    })
            }
        });
        try_join_all(deliveries).await.map(|_| ())
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
}
