//! Topic administration (`backorderctl topics create`, tests).

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use crate::config::Settings;

/// What creating topics did.
#[derive(Debug, Default)]
pub struct CreatedTopics {
    pub created: Vec<String>,
    pub existing: Vec<String>,
}

/// Topic administration failures, with the topic at fault.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("could not reach Kafka at {bootstrap}: {source}")]
    Client {
        bootstrap: String,
        #[source]
        source: KafkaError,
    },
    #[error("could not create topic {topic}: {code}")]
    Create { topic: String, code: RDKafkaErrorCode },
}

/// What to create: every topic with the configured replication factor.
fn new_topics<'a>(settings: &Settings, topics: &'a [(String, i32)]) -> Vec<NewTopic<'a>> {
    let replication = settings.topic_replication_factor.max(1);
    topics
        .iter()
        .map(|(name, partitions)| NewTopic::new(name, *partitions, TopicReplication::Fixed(replication)))
        .collect()
}

/// Creates `topics` (name, partitions) that do not exist yet. Idempotent.
pub async fn create_topics(settings: &Settings, topics: &[(String, i32)]) -> Result<CreatedTopics, AdminError> {
    let client: AdminClient<DefaultClientContext> =
        super::client_config(settings)
            .create()
            .map_err(|source| AdminError::Client {
                bootstrap: settings.kafka_bootstrap_servers.clone(),
                source,
            })?;
    let new = new_topics(settings, topics);
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = client
        .create_topics(&new, &options)
        .await
        .map_err(|source| AdminError::Client {
            bootstrap: settings.kafka_bootstrap_servers.clone(),
            source,
        })?;
    let mut report = CreatedTopics::default();
    for result in results {
        match result {
            Ok(topic) => report.created.push(topic),
            Err((topic, RDKafkaErrorCode::TopicAlreadyExists)) => report.existing.push(topic),
            Err((topic, code)) => return Err(AdminError::Create { topic, code }),
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_are_created_with_the_configured_replication_factor() {
        let settings = Settings {
            topic_replication_factor: 3,
            ..Settings::default()
        };
        let topics = [("orders.v1".to_string(), 6), ("orders.v1.dlq".to_string(), 1)];
        for topic in new_topics(&settings, &topics) {
            assert!(
                matches!(topic.replication, TopicReplication::Fixed(3)),
                "{}",
                topic.name
            );
        }
    }
}
