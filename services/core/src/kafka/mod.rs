//! Kafka: topic names, client settings, the producer, dead letters, topic
//! administration and the consumer runtime every service runs.

pub mod admin;
pub mod dead_letter;
pub mod lag;
pub mod parking;
pub mod producer;
pub mod rebalance;
pub mod runtime;
pub mod topics;

use rdkafka::ClientConfig;

use crate::config::Settings;

pub use producer::{OutboundRecord, Producer};
pub use runtime::{AcknowledgeOnly, Handler, HandlerError, Incoming, run_consumer};
pub use topics::Topics;

/// Settings shared by every client of this project.
pub fn client_config(settings: &Settings) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &settings.kafka_bootstrap_servers)
        .set("client.id", "backorder");
    // Passes any `BACKORDER_KAFKA__<librdkafka.property>` through, e.g.
    // BACKORDER_KAFKA__SECURITY_PROTOCOL=SASL_SSL -> security.protocol.
    for (key, value) in std::env::vars() {
        if let Some(property) = key.strip_prefix("BACKORDER_KAFKA__") {
            config.set(property.to_ascii_lowercase().replace('_', "."), value);
        }
    }
    config
}

/// Settings for a consumer in `group` that commits explicitly, only after
/// its work is durable (DESIGN invariant 2).
pub fn consumer_config(settings: &Settings, group: &str) -> ClientConfig {
    let mut config = client_config(settings);
    let session = settings.kafka_session_timeout_ms;
    config
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", session.to_string())
        .set("heartbeat.interval.ms", (session / 3).max(100).to_string())
        .set("enable.partition.eof", "false");
    // librdkafka queues a fetched partition's messages in one run of
    // up to this many bytes (1 MiB by default, thousands of orders), so
    // a batch gathered from a backlog would hold one partition only and
    // the runtime could not apply partitions side by side. Smaller runs
    // interleave the partitions of one fetch; a larger message is still
    // fetched whole. BACKORDER_KAFKA__MAX_PARTITION_FETCH_BYTES overrides it.
    if config.get("max.partition.fetch.bytes").is_none() {
        config.set("max.partition.fetch.bytes", MAX_PARTITION_FETCH_BYTES.to_string());
    }
    config
}

/// See [`consumer_config`]: a few hundred typical events per partition.
const MAX_PARTITION_FETCH_BYTES: usize = 128 * 1024;
