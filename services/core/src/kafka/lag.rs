//! Consumer-group lag, per topic and partition, as a gauge.
//!
//! Lag is measured the way an external exporter would: the group's
//! committed offset against the partition's high watermark, read by a
//! client that shares the group id but never joins the group (OffsetFetch
//! needs no membership), so sampling cannot trigger a rebalance. Offsets
//! are committed only after a batch is durable (invariant 2), so this lag
//! counts everything not yet safely processed.
//!
//! Every replica samples the whole group, so replicas report the same
//! series; dashboards and alerts aggregate with `max`.
//!
//! The local broker (Tansu) counts record batches in its high watermarks
//! after batched produces (docs/architecture.md), so there this gauge can
//! be off; it is validated against a real Kafka, where watermarks count
//! records.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::lifecycle::Lifecycle;

/// How often lag is sampled. Prometheus scrapes every 15-30 s; sampling
/// faster would only load the brokers.
pub const LAG_SAMPLE_INTERVAL: Duration = Duration::from_secs(10);

/// How long one broker request of a sample may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Samples `topic`'s lag for the group in `consumer_config` every
/// `interval` until shutdown. Failures are logged and retried on the next
/// sample: lag reporting must never stop a service.
pub async fn run_lag_sampler(consumer_config: ClientConfig, topic: String, interval: Duration, lifecycle: Lifecycle) {
    let mut config = consumer_config;
    // Never commits or joins: it only reads offsets.
    config.set("enable.auto.commit", "false");
    let consumer: BaseConsumer = match config.create() {
        Ok(consumer) => consumer,
        Err(error) => {
            tracing::warn!(%topic, %error, "could not create the lag reader; lag is not reported");
            return;
        }
    };
    let consumer = std::sync::Arc::new(consumer);
    loop {
        let reader = consumer.clone();
        let sampled_topic = topic.clone();
        // librdkafka's offset calls block: keep them off the async workers.
        let sampled = tokio::task::spawn_blocking(move || sample(&reader, &sampled_topic)).await;
        match sampled {
            Ok(Ok(lags)) => {
                for (partition, lag) in lags {
                    metrics::gauge!(
                        "backorder_consumer_lag_messages",
                        "topic" => topic.clone(),
                        "partition" => partition.to_string()
                    )
                    .set(lag as f64);
                }
            }
            Ok(Err(error)) => tracing::debug!(%topic, %error, "lag sample failed"),
            Err(error) => tracing::warn!(%topic, %error, "lag sample task failed"),
        }
        tokio::select! {
            () = lifecycle.shutdown.cancelled() => break,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

/// One sample: `(partition, high watermark - committed)` for every
/// partition of `topic`. A partition the group never committed counts from
/// its low watermark (the group starts at the earliest offset).
fn sample(consumer: &BaseConsumer, topic: &str) -> Result<Vec<(i32, i64)>, rdkafka::error::KafkaError> {
    let metadata = consumer.fetch_metadata(Some(topic), REQUEST_TIMEOUT)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut list = TopicPartitionList::new();
    for partition in &partitions {
        list.add_partition(topic, *partition);
    }
    let committed = consumer.committed_offsets(list, REQUEST_TIMEOUT)?;
    let mut lags = Vec::with_capacity(partitions.len());
    for partition in partitions {
        let (low, high) = consumer.fetch_watermarks(topic, partition, REQUEST_TIMEOUT)?;
        let position = match committed.find_partition(topic, partition).map(|e| e.offset()) {
            Some(Offset::Offset(offset)) => offset,
            _ => low,
        };
        lags.push((partition, lag(high, position)));
    }
    Ok(lags)
}

/// Messages between the committed position and the high watermark; never
/// negative (a watermark read just before a commit can trail it).
fn lag(high_watermark: i64, committed: i64) -> i64 {
    (high_watermark - committed).max(0)
}

#[cfg(test)]
mod tests {
    use super::lag;

    #[test]
    fn lag_is_the_distance_to_the_high_watermark_and_never_negative() {
        assert_eq!(lag(120, 100), 20);
        assert_eq!(lag(100, 100), 0);
        assert_eq!(lag(99, 100), 0);
    }
}
