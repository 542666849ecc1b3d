//! The consumer runtime every service runs (DESIGN invariants 2, 3, 7).
//!
//! One loop per process: fetch a micro-batch, split it by partition, decode
//! each message (bad ones become dead letters), let the handler apply the
//! valid ones in one database transaction, produce its outputs and the dead
//! letters and wait for the broker's acknowledgement, and only then commit
//! the partition's offset. A transient failure (database or broker down)
//! is retried with backoff while the partition is held: nothing is skipped.
//! On shutdown the loop stops fetching, finishes or abandons the batch in
//! hand (an abandoned batch is simply not committed, so it is replayed) and
//! returns.
//!
//! Rebalances are observed ([`super::rebalance`]): a batch of a partition
//! that was revoked while it was gathered is dropped (its next owner
//! replays it), offsets are committed only for partitions still owned under
//! the same assignment, and a revoke commits and forgets what this replica
//! had committed, so a later commit cannot move the new owner back.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::OwnedMessage;
use rdkafka::Message;
use tracing::{Instrument, info_span};

use super::dead_letter::{DeadLetterKind, dead_letter};
use super::producer::{OutboundRecord, Producer};
use super::rebalance::{Partitions, RebalanceContext, offset_list};
use crate::codec::Codec;
use crate::events::TopicEvent;
use crate::lifecycle::Lifecycle;

/// A decoded, valid event with where it came from.
#[derive(Debug, Clone)]
pub struct Incoming<E> {
    pub event: E,
    pub partition: i32,
    pub offset: i64,
}

/// How a handler failed.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Worth retrying as is: the database or broker is unavailable, a
    /// serialization conflict. The runtime holds the partition and retries.
    #[error("transient: {0}")]
    Transient(String),
    /// Retrying will not help: a constraint the data breaks. The runtime
    /// narrows it down to the message at fault and dead-letters that one.
    #[error("{0}")]
    Permanent(String),
}

/// The business logic of one consumer.
pub trait Handler: Send + Sync + 'static {
    type Event: TopicEvent;

    /// Applies a batch of valid events from one partition, in offset order,
    /// durably (typically one transaction), and returns the records to
    /// produce. Must be idempotent: a replayed batch yields the same state
    /// and the same outputs.
    fn handle(
        &self,
        batch: &[Incoming<Self::Event>],
    ) -> impl Future<Output = Result<Vec<OutboundRecord>, HandlerError>> + Send;
}

/// Consumer runtime failures that stop the loop.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("could not create the Kafka consumer: {0}")]
    Create(#[source] KafkaError),
    #[error("could not subscribe to {topics:?}: {source}")]
    Subscribe {
        topics: Vec<String>,
        #[source]
        source: KafkaError,
    },
}

/// Tunables of the loop.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    pub max_batch: usize,
    pub linger: Duration,
    /// First retry delay; doubles up to `max_backoff`, with jitter.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
}

impl RuntimeOptions {
    pub fn from_settings(settings: &crate::config::Settings) -> Self {
        Self {
            max_batch: settings.batch_max_messages.max(1),
            linger: Duration::from_millis(settings.batch_linger_ms),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
        }
    }
}

/// Runs `handler` over `topic` until shutdown.
pub async fn run_consumer<H: Handler>(
    consumer_config: rdkafka::ClientConfig,
    topic: &str,
    handler: H,
    codec: Codec,
    producer: Producer,
    options: RuntimeOptions,
    lifecycle: Lifecycle,
) -> Result<(), RuntimeError> {
    let partitions = Partitions::new(topic);
    let consumer: StreamConsumer<RebalanceContext> = consumer_config
        .create_with_context(RebalanceContext::new(partitions.clone()))
        .map_err(RuntimeError::Create)?;
    consumer.subscribe(&[topic]).map_err(|source| RuntimeError::Subscribe {
        topics: vec![topic.to_string()],
        source,
    })?;
    tracing::info!(topic, "consuming");
    let runtime = Runtime {
        consumer,
        partitions,
        topic: topic.to_string(),
        handler,
        codec,
        producer,
        options,
        lifecycle,
    };
    runtime.run().await;
    Ok(())
}

struct Runtime<H: Handler> {
    consumer: StreamConsumer<RebalanceContext>,
    /// What this replica owns, kept current by the rebalance callbacks.
    partitions: Partitions,
    /// The topic this loop consumes; used for metric labels and spans.
    topic: String,
    handler: H,
    codec: Codec,
    producer: Producer,
    options: RuntimeOptions,
    lifecycle: Lifecycle,
}

/// What happened to one partition's batch.
enum BatchOutcome {
    /// Durable, outputs acknowledged: commit up to here.
    Done,
    /// Shutdown came first: do not commit, the batch will be replayed.
    Abandoned,
}

impl<H: Handler> Runtime<H> {
    async fn run(self) {
        let shutdown = self.lifecycle.shutdown.clone();
        loop {
            let Some(batch) = self.next_batch().await else {
                break;
            };
            // Per partition: the assignment epoch its messages were received
            // under (a revoke clears librdkafka's queue, so they share one).
            let mut by_partition: BTreeMap<i32, (u64, Vec<OwnedMessage>)> = BTreeMap::new();
            for (epoch, message) in batch {
                let entry = by_partition
                    .entry(message.partition())
                    .or_insert_with(|| (epoch, Vec::new()));
                if entry.0 != epoch {
                    // Revoked and assigned again mid-gathering: keep only
                    // what arrived under the current assignment.
                    *entry = (epoch, Vec::new());
                }
                entry.1.push(message);
            }
            for (partition, (epoch, messages)) in by_partition {
                let (Some(first), Some(last)) = (messages.first(), messages.last()) else {
                    continue;
                };
                if !self.partitions.still_owned(partition, epoch) {
                    tracing::info!(topic = %self.topic, partition, first_offset = first.offset(), "partition revoked while its batch was gathered; its next owner replays it");
                    metrics::counter!("backorder_consumer_revoked_batches_total", "topic" => self.topic.clone()).increment(1);
                    continue;
                }
                let span = info_span!(
                    "batch",
                    topic = %self.topic,
                    partition,
                    first_offset = first.offset(),
                    last_offset = last.offset(),
                );
                let next_offset = last.offset() + 1;
                let started = Instant::now();
                match self.process_partition_batch(&messages).instrument(span.clone()).await {
                    BatchOutcome::Done => {
                        // Only while the partition is still ours: a commit
                        // for a revoked partition could move its new owner
                        // back.
                        if self.partitions.record_commit(partition, epoch, next_offset) {
                            self.commit(&[(partition, next_offset)], CommitMode::Async);
                        }
                        metrics::histogram!("backorder_consumer_batch_duration_seconds", "topic" => self.topic.clone())
                            .record(started.elapsed().as_secs_f64());
                    }
                    BatchOutcome::Abandoned => {
                        tracing::info!(parent: &span, "shutdown during a batch; it will be replayed");
                        break;
                    }
                }
            }
            if shutdown.is_cancelled() {
                break;
            }
        }
        // Async commits may still be in flight: commit the same offsets
        // synchronously before leaving the group, so the next owner starts
        // exactly where this replica stopped. Only partitions still owned:
        // revoked ones were committed at their revoke and belong to others.
        self.commit(&self.partitions.owned_commits(), CommitMode::Sync);
        self.consumer.unsubscribe();
        tracing::info!(topic = %self.topic, "consumer stopped");
    }

    /// Waits for the first message, then gathers more for up to `linger`.
    /// Returns None on shutdown.
    /// Each message comes with the assignment epoch of its partition at
    /// the time it was received.
    async fn next_batch(&self) -> Option<Vec<(u64, OwnedMessage)>> {
        let shutdown = &self.lifecycle.shutdown;
        let first = loop {
            tokio::select! {
                () = shutdown.cancelled() => return None,
                received = self.consumer.recv() => match received {
                    Ok(message) => match self.tag(message.detach()) {
                        Some(tagged) => break tagged,
                        None => continue,
                    },
                    Err(error) => {
                        tracing::warn!(topic = %self.topic, %error, "Kafka receive error; retrying");
                        metrics::counter!("backorder_consumer_errors_total", "topic" => self.topic.clone(), "kind" => "receive").increment(1);
                        tokio::time::sleep(self.options.min_backoff).await;
                    }
                }
            }
        };
        let mut batch = Vec::with_capacity(self.options.max_batch.min(1024));
        batch.push(first);
        let deadline = tokio::time::Instant::now() + self.options.linger;
        while batch.len() < self.options.max_batch {
            match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                Ok(Ok(message)) => batch.extend(self.tag(message.detach())),
                Ok(Err(error)) => {
                    tracing::warn!(topic = %self.topic, %error, "Kafka receive error");
                    break;
                }
                Err(_) => break,
            }
        }
        Some(batch)
    }

    /// Pairs a message with its partition's assignment epoch; None (the
    /// message is dropped, its owner replays it) when not owned.
    fn tag(&self, message: OwnedMessage) -> Option<(u64, OwnedMessage)> {
        let epoch = self.partitions.epoch(message.partition());
        if epoch.is_none() {
            tracing::debug!(topic = %self.topic, partition = message.partition(), offset = message.offset(), "message of a partition not owned; dropped");
        }
        Some((epoch?, message))
    }

    async fn process_partition_batch(&self, messages: &[OwnedMessage]) -> BatchOutcome {
        // Valid events, and beside them the message each came from (for a
        // dead letter should the handler reject it).
        let mut events: Vec<Incoming<H::Event>> = Vec::with_capacity(messages.len());
        let mut sources: Vec<&OwnedMessage> = Vec::with_capacity(messages.len());
        let mut dead_letters = Vec::new();
        for message in messages {
            match self.decode(message).await {
                Ok(Some(incoming)) => {
                    events.push(incoming);
                    sources.push(message);
                }
                Ok(None) => {}
                Err((kind, reason)) => {
                    tracing::warn!(offset = message.offset(), kind = kind.as_str(), %reason, "dead-lettering message");
                    dead_letters.push(dead_letter(message, kind, &reason));
                }
            }
        }
        let mut outputs = match self.apply_with_retry(&events).await {
            Some(Ok(outputs)) => outputs,
            Some(Err(reason)) => {
                // A permanent failure of the whole batch: find the message at
                // fault by applying them one at a time.
                let mut outputs = Vec::new();
                for (incoming, message) in events.iter().zip(&sources) {
                    match self.apply_with_retry(std::slice::from_ref(incoming)).await {
                        Some(Ok(more)) => outputs.extend(more),
                        Some(Err(reason)) => {
                            tracing::warn!(offset = incoming.offset, %reason, "handler rejected event; dead-lettering");
                            dead_letters.push(dead_letter(message, DeadLetterKind::Rejected, &reason));
                        }
                        None => return BatchOutcome::Abandoned,
                    }
                }
                tracing::debug!(%reason, "batch isolated");
                outputs
            }
            None => return BatchOutcome::Abandoned,
        };
        outputs.append(&mut dead_letters);
        if !self.produce_with_retry(&outputs).await {
            return BatchOutcome::Abandoned;
        }
        metrics::counter!("backorder_consumer_events_total", "topic" => self.topic.clone(), "outcome" => "applied")
            .increment(events.len() as u64);
        BatchOutcome::Done
    }

    /// Decodes and validates one message. `Ok(None)`: an empty tombstone,
    /// which carries no event and is skipped.
    async fn decode(&self, message: &OwnedMessage) -> Result<Option<Incoming<H::Event>>, (DeadLetterKind, String)> {
        let Some(payload) = message.payload() else {
            return Ok(None);
        };
        let event: H::Event = loop {
            match self.codec.decode(payload).await {
                Ok(event) => break event,
                Err(error) if error.is_transient() => {
                    tracing::warn!(%error, "schema registry unavailable; retrying");
                    tokio::time::sleep(self.options.max_backoff).await;
                }
                Err(error) => return Err((DeadLetterKind::Undecodable, error.to_string())),
            }
        };
        event
            .validate()
            .map_err(|e| (DeadLetterKind::Invalid, format!("invalid event: {e}")))?;
        tracing::debug!(
            event_id = event.event_id(),
            business_id = event.business_id(),
            "decoded"
        );
        Ok(Some(Incoming {
            event,
            partition: message.partition(),
            offset: message.offset(),
        }))
    }

    /// Applies events, retrying transient failures until they succeed or
    /// shutdown. `None`: shutdown. `Some(Err)`: a permanent failure.
    async fn apply_with_retry(&self, events: &[Incoming<H::Event>]) -> Option<Result<Vec<OutboundRecord>, String>> {
        if events.is_empty() {
            return Some(Ok(Vec::new()));
        }
        let mut backoff = Backoff::new(&self.options);
        loop {
            match self.handler.handle(events).await {
                Ok(outputs) => return Some(Ok(outputs)),
                Err(HandlerError::Permanent(reason)) => return Some(Err(reason)),
                Err(HandlerError::Transient(reason)) => {
                    metrics::counter!("backorder_consumer_errors_total", "topic" => self.topic.clone(), "kind" => "transient").increment(1);
                    let delay = backoff.next_delay();
                    tracing::warn!(%reason, retry_in_ms = delay.as_millis() as u64, "transient failure; holding the partition");
                    if !self.sleep_unless_shutdown(delay).await {
                        return None;
                    }
                }
            }
        }
    }

    /// Produces outputs until acknowledged, or shutdown (false).
    async fn produce_with_retry(&self, outputs: &[OutboundRecord]) -> bool {
        if outputs.is_empty() {
            return true;
        }
        let mut backoff = Backoff::new(&self.options);
        loop {
            match self.producer.send_all(outputs).await {
                Ok(_) => return true,
                Err(error) => {
                    metrics::counter!("backorder_consumer_errors_total", "topic" => self.topic.clone(), "kind" => "produce").increment(1);
                    let delay = backoff.next_delay();
                    tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "outputs not acknowledged; retrying");
                    if !self.sleep_unless_shutdown(delay).await {
                        return false;
                    }
                }
            }
        }
    }

    async fn sleep_unless_shutdown(&self, delay: Duration) -> bool {
        tokio::select! {
            () = self.lifecycle.shutdown.cancelled() => false,
            () = tokio::time::sleep(delay) => true,
        }
    }

    /// Commits `(partition, next offset)` pairs of this topic.
    fn commit(&self, offsets: &[(i32, i64)], mode: CommitMode) {
        if offsets.is_empty() {
            return;
        }
        let Some(list) = offset_list(&self.topic, offsets) else {
            return;
        };
        if let Err(error) = self.consumer.commit(&list, mode) {
            // Typically a rebalance took the partition away; its new owner
            // replays from the last commit and the handlers are idempotent.
            tracing::warn!(%error, ?offsets, "offset commit failed");
        }
    }
}

/// Exponential backoff with jitter, without a retry limit: the loop
/// holds the partition for as long as the failure lasts.
struct Backoff(Box<dyn Iterator<Item = Duration> + Send>);

impl Backoff {
    fn new(options: &RuntimeOptions) -> Self {
        use backon::BackoffBuilder;
        let delays = backon::ExponentialBuilder::default()
            .with_min_delay(options.min_backoff)
            .with_max_delay(options.max_backoff)
            .with_jitter()
            .without_max_times()
            .build();
        Self(Box::new(delays))
    }

    fn next_delay(&mut self) -> Duration {
        self.0.next().unwrap_or(Duration::from_secs(1))
    }
}

/// A handler that records nothing and produces nothing: the consumer
/// still decodes, validates and dead-letters, and commits offsets. Used by
/// services whose business logic arrives in a later change, so they can be
/// deployed, observed and scaled already.
pub struct AcknowledgeOnly<E>(std::marker::PhantomData<fn() -> E>);

impl<E> Default for AcknowledgeOnly<E> {
    fn default() -> Self {
        Self(std::marker::PhantomData)
    }
}

impl<E: TopicEvent> Handler for AcknowledgeOnly<E> {
    type Event = E;

    async fn handle(&self, batch: &[Incoming<E>]) -> Result<Vec<OutboundRecord>, HandlerError> {
        for incoming in batch {
            tracing::debug!(
                event_id = incoming.event.event_id(),
                business_id = incoming.event.business_id(),
                "acknowledged"
            );
        }
        Ok(Vec::new())
    }
}

/// Database failures are transient when the connection is at fault (the
/// runtime holds the partition and retries) and permanent otherwise (the
/// runtime isolates the event at fault and dead-letters it).
impl From<crate::db::DbError> for HandlerError {
    fn from(error: crate::db::DbError) -> Self {
        if crate::db::is_transient(&error) {
            HandlerError::Transient(error.to_string())
        } else {
            HandlerError::Permanent(error.to_string())
        }
    }
}

impl From<tokio_postgres::Error> for HandlerError {
    fn from(error: tokio_postgres::Error) -> Self {
        crate::db::DbError::from(error).into()
    }
}

impl From<deadpool_postgres::PoolError> for HandlerError {
    fn from(error: deadpool_postgres::PoolError) -> Self {
        crate::db::DbError::from(error).into()
    }
}
