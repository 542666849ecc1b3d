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

/// A shared, cheaply cloned producer.
#[derive(Clone)]
pub struct Producer {
    inner: FutureProducer,
}

impl Producer {
    pub fn new(settings: &Settings) -> Result<Self, ProduceError> {
        let inner = super::client_config(settings)
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("message.timeout.ms", "30000")
            .create()
            .map_err(ProduceError::Create)?;
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
}
