//! `backorderctl dlq`: what is on a topic's dead-letter topic, and
//! re-publishing it to the original topic after a fix.
//!
//! Dead-letter topics are read from the beginning, without a consumer
//! group, until no further record arrives for `--idle` (a dead-letter topic
//! is small and quiet, and Tansu's high watermarks do not count records).
//! The listing shows where each letter came from, when, and why, never the
//! payload, and masks anything in a reason that looks like an address.
//! Replayed records keep their key, payload and headers (the `dlq.*` ones
//! are dropped, `dlq.replayed.from` says which letter it was); consumers
//! deduplicate, so replaying twice is safe.

use std::io::Write;
use std::time::Duration;

use backorder_core::config::Settings;
use backorder_core::kafka::Topics;
use backorder_core::kafka::dead_letter::{KIND, ORIGINAL_OFFSET, ORIGINAL_PARTITION, ORIGINAL_TOPIC, REASON};
use backorder_core::rdkafka::consumer::{Consumer, StreamConsumer};
use backorder_core::rdkafka::message::{Header, Headers, OwnedHeaders};
use backorder_core::rdkafka::producer::{FutureProducer, FutureRecord};
use backorder_core::rdkafka::{Message, Offset, TopicPartitionList};
use clap::Subcommand;
use comfy_table::Table;
use comfy_table::presets::UTF8_FULL_CONDENSED;

use crate::CtlError;

/// The header a replayed record carries: the dead-letter offset it came from.
pub const REPLAYED_FROM: &str = "dlq.replayed.from";

/// `dlq` subcommands. TOPIC is a base topic name (`shipments.v1`); the
/// configured prefix is applied.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List the dead letters of TOPIC: offset, kind, origin, time and reason.
    List {
        topic: String,
        /// Stop reading after this long without a further record.
        #[arg(long, default_value = "3s", value_parser = parse_idle)]
        idle: Duration,
    },
    /// Re-publish dead letters of TOPIC to the topic they came from.
    Replay {
        topic: String,
        /// Only these dead-letter offsets (repeatable); default all.
        #[arg(long = "offset")]
        offsets: Vec<i64>,
        /// Only letters of this kind (undecodable, invalid, rejected, unresolved, empty, oversized).
        #[arg(long)]
        kind: Option<String>,
        /// Show what would be re-published and publish nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long, default_value = "3s", value_parser = parse_idle)]
        idle: Duration,
    },
}

fn parse_idle(text: &str) -> Result<Duration, String> {
    backorder_core::clock::parse_duration(text)
        .and_then(|d| d.to_std().ok())
        .ok_or_else(|| format!("not a duration like 3s or 1m: {text}"))
}

/// One dead letter as read back.
#[derive(Debug, Clone)]
pub struct Letter {
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl Letter {
    fn header(&self, name: &str) -> String {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_deref())
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default()
    }
}

/// Replaces every word with an `@` in it, so a reason quoting an address
/// does not print it.
pub fn mask_addresses(text: &str) -> String {
    text.split(' ')
        .map(|word| if word.contains('@') { "<address>" } else { word })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `dlq`.
pub async fn run(command: DlqCommand, settings: &Settings, out: &mut impl Write) -> Result<(), CtlError> {
    let topics = Topics::new(&settings.topic_prefix);
    match command {
        DlqCommand::List { topic, idle } => {
            let letters = read(settings, &Topics::dead_letter_of(&topics.name(&topic)), idle).await?;
            let mut table = Table::new();
            table
                .load_preset(UTF8_FULL_CONDENSED)
                .set_header(["dlq offset", "kind", "origin", "time", "reason"]);
            for letter in &letters {
                table.add_row([
                    letter.offset.to_string(),
                    letter.header(KIND),
                    format!(
                        "{}/{}@{}",
                        letter.header(ORIGINAL_TOPIC),
                        letter.header(ORIGINAL_PARTITION),
                        letter.header(ORIGINAL_OFFSET)
                    ),
                    letter
                        .timestamp_ms
                        .and_then(chrono::DateTime::from_timestamp_millis)
                        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                        .unwrap_or_default(),
                    mask_addresses(&letter.header(REASON)),
                ]);
            }
            writeln!(out, "{table}")?;
            writeln!(out, "{} dead letters", letters.len())?;
        }
        DlqCommand::Replay {
            topic,
            offsets,
            kind,
            dry_run,
            idle,
        } => {
            let original = topics.name(&topic);
            let letters = read(settings, &Topics::dead_letter_of(&original), idle).await?;
            let selected: Vec<&Letter> = letters
                .iter()
                .filter(|l| offsets.is_empty() || offsets.contains(&l.offset))
                .filter(|l| kind.as_ref().is_none_or(|k| &l.header(KIND) == k))
                .collect();
            if dry_run {
                for letter in &selected {
                    writeln!(
                        out,
                        "would re-publish dead letter {} ({}) to {original}",
                        letter.offset,
                        letter.header(KIND)
                    )?;
                }
                writeln!(
                    out,
                    "{} of {} dead letters selected; dry run, nothing published",
                    selected.len(),
                    letters.len()
                )?;
                return Ok(());
            }
            let producer: FutureProducer = backorder_core::kafka::client_config(settings)
                .set("enable.idempotence", "true")
                .create()
                .map_err(|source| CtlError::Kafka {
                    what: "create a producer".into(),
                    source,
                })?;
            let progress = indicatif::ProgressBar::new(selected.len() as u64);
            for letter in &selected {
                let offset = letter.offset.to_string();
                let mut headers = OwnedHeaders::new();
                for (name, value) in letter.headers.iter().filter(|(k, _)| !k.starts_with("dlq.")) {
                    headers = headers.insert(Header {
                        key: name,
                        value: value.as_deref(),
                    });
                }
                headers = headers.insert(Header {
                    key: REPLAYED_FROM,
                    value: Some(&offset),
                });
                let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&original).headers(headers);
                if let Some(key) = &letter.key {
                    record = record.key(key.as_slice());
                }
                if let Some(payload) = &letter.payload {
                    record = record.payload(payload.as_slice());
                }
                producer
                    .send(record, Duration::from_secs(30))
                    .await
                    .map_err(|(source, _)| CtlError::Kafka {
                        what: format!("re-publish dead letter {offset} to {original}"),
                        source,
                    })?;
                progress.inc(1);
            }
            progress.finish_and_clear();
            writeln!(
                out,
                "re-published {} of {} dead letters to {original}",
                selected.len(),
                letters.len()
            )?;
        }
    }
    Ok(())
}

/// Every record of the single-partition topic `dlq`, oldest first.
async fn read(settings: &Settings, dlq: &str, idle: Duration) -> Result<Vec<Letter>, CtlError> {
    let consumer: StreamConsumer = backorder_core::kafka::client_config(settings)
        .set("group.id", format!("backorderctl-dlq-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|source| CtlError::Kafka {
            what: "create a consumer".into(),
            source,
        })?;
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(dlq, 0, Offset::Beginning)
        .and_then(|()| consumer.assign(&list))
        .map_err(|source| CtlError::Kafka {
            what: format!("read {dlq}"),
            source,
        })?;
    let mut letters = Vec::new();
    while let Ok(received) = tokio::time::timeout(idle, consumer.recv()).await {
        let message = received.map_err(|source| CtlError::Kafka {
            what: format!("read {dlq}"),
            source,
        })?;
        letters.push(Letter {
            offset: message.offset(),
            timestamp_ms: message.timestamp().to_millis(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            headers: message
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                        .collect()
                })
                .unwrap_or_default(),
        });
    }
    Ok(letters)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_in_reasons_are_masked() {
        assert_eq!(
            mask_addresses("customer.email: ada@example.com is not valid"),
            "customer.email: <address> is not valid"
        );
    }
}
