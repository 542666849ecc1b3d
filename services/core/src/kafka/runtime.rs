//! The consumer runtime every service runs (DESIGN invariants 2, 3, 7).
//!
//! One loop per process: fetch a micro-batch, split it by partition (the
//! partitions are then processed side by side, a bounded number at once,
//! each in its own order), decode each message (bad ones become dead letters), let the handler apply the
//! valid ones in one database transaction, produce its outputs and the dead
//! letters and wait for the broker's acknowledgement, and only then commit
//! the partition's offset. A transient failure (database or broker down)
//! is retried with backoff while the partition is held: nothing is skipped.
//! On shutdown the loop stops fetching, finishes or abandons the batch in
//! hand (an abandoned batch is simply not committed, so it is replayed) and
//! returns.
//!
//! State from another topic that has not arrived yet does not hold the
//! partition: the handler says [`HandlerError::Missing`], the event is
//! parked durably ([`super::parking`]) with later events of its key behind
//! it, and this loop retries parked events beside its main work.
//!
//! Rebalances are observed ([`super::rebalance`]): a batch of a partition
//! that was revoked while it was gathered is dropped (its next owner
//! replays it), offsets are committed only for partitions still owned under
//! the same assignment, and a revoke commits and forgets what this replica
//! had committed, so a later commit cannot move the new owner back.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;

use futures::TryFutureExt;
use std::time::{Duration, Instant};

use futures::StreamExt;
use rdkafka::Message;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::OwnedMessage;
use tracing::{Instrument, info_span};

use super::dead_letter::{DeadLetter, DeadLetterKind, dead_letter};
use super::parking::{self, ParkingLot, ToPark};
use super::producer::{OutboundRecord, ProduceErrorClass, Producer};
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
    /// The event needs state that another topic has not delivered yet
    /// (DESIGN invariant 4). The runtime narrows it down to the event,
    /// parks it under its key and moves on; it is retried when
    /// `waiting_for` arrives (see [`super::parking::state_arrived`]) or on
    /// a schedule, and dead-lettered with `reason` when it waited too long.
    /// The database schema is behind this build (a table or column is
    /// missing). No event is at fault: the runtime holds the partition and
    /// retries, with readiness down, and dead-letters nothing.
    #[error("database schema behind the code: {0}")]
    SchemaBehind(String),
    #[error("waiting for {waiting_for}: {reason}")]
    Missing {
        /// What would let it proceed, e.g. `order:o-1`.
        waiting_for: String,
        reason: String,
    },
}

impl HandlerError {
    /// An event that waits for `waiting_for` (e.g. `order:o-1`).
    pub fn missing(waiting_for: impl Into<String>, reason: impl Into<String>) -> Self {
        HandlerError::Missing {
            waiting_for: waiting_for.into(),
            reason: reason.into(),
        }
    }
}

/// Why a message did not decode into an event.
enum Undecoded {
    /// Bad bytes or an invalid event: dead-letter it.
    Bad(DeadLetterKind, String),
    /// Shutdown came while the schema registry was unavailable.
    Shutdown,
}

/// Why applying events failed for good (after transient retries).
enum Failure {
    Permanent(String),
    Missing { waiting_for: String, reason: String },
}

impl Failure {
    fn reason(&self) -> &str {
        match self {
            Failure::Permanent(reason) | Failure::Missing { reason, .. } => reason,
        }
    }
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
    /// How many partitions of one fetched batch are processed at the same
    /// time. Each holds a database connection while it runs, so this stays
    /// below the pool size, leaving connections for timers, parking retries
    /// and HTTP pages.
    pub partition_concurrency: usize,
    /// Where events waiting for state from another topic are parked.
    /// Without it such events hold their partition (retried like a
    /// transient failure).
    pub parking: Option<ParkingLot>,
}

impl RuntimeOptions {
    pub fn from_settings(settings: &crate::config::Settings) -> Self {
        Self {
            max_batch: settings.batch_max_messages.max(1),
            linger: Duration::from_millis(settings.batch_linger_ms),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            partition_concurrency: settings.db_pool_size.div_ceil(2).max(1),
            parking: None,
        }
    }

    /// Parks events that wait for state from another topic in `lot`.
    pub fn with_parking(mut self, lot: ParkingLot) -> Self {
        self.parking = Some(lot);
        self
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
    tokio::join!(runtime.run(), runtime.retry_parked());
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

/// What producing outputs and dead letters came to.
enum Produced {
    /// Every record acknowledged by the broker.
    Acknowledged,
    /// Shutdown came first.
    Abandoned,
    /// An output is larger than the broker accepts (`bytes` for `topic`):
    /// retrying never helps, the events that made it are dead-lettered.
    TooLarge { topic: String, bytes: usize },
}

/// Which half of a produce call failed.
#[derive(Clone, Copy)]
enum ProducedPart {
    Outputs,
    DeadLetters,
}

/// How often a blocked output topic is logged while it stays blocked.
const BLOCKED_REPORT_INTERVAL: Duration = Duration::from_secs(60);

/// The dead-letter reason of an event whose output was too large.
fn oversized_reason(topic: &str, bytes: usize) -> String {
    format!(
        "its output for {topic} ({bytes} bytes) is larger than the broker accepts (BACKORDER_KAFKA_MESSAGE_MAX_BYTES and the topic's max.message.bytes); replay it once the limit is raised"
    )
}

/// What happened to one partition's batch.
enum BatchOutcome {
    /// Durable, outputs acknowledged: commit up to here.
    Done,
    /// Shutdown came first: do not commit, the batch will be replayed.
    Abandoned,
}

impl<H: Handler> Runtime<H> {
    async fn run(&self) {
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
            // Partitions are independent (each keeps its own order), so their
            // batches run side by side, at most `partition_concurrency` at a
            // time; every one is finished before the next fetch, so rebalance
            // callbacks (run inside `recv()`) still never overlap a handler.
            let abandoned = futures::stream::iter(by_partition)
                .map(|(partition, (epoch, messages))| self.run_partition(partition, epoch, messages))
                .buffer_unordered(self.options.partition_concurrency.max(1))
                .fold(false, |abandoned, outcome| async move {
                    abandoned || matches!(outcome, BatchOutcome::Abandoned)
                })
                .await;
            if abandoned {
                break;
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

    /// Processes one partition's share of a fetched batch, in batches of at
    /// most `max_batch` messages one after another (each committed before
    /// the next starts, so the partition keeps its order).
    async fn run_partition(&self, partition: i32, epoch: u64, mut messages: Vec<OwnedMessage>) -> BatchOutcome {
        let max_batch = self.options.max_batch.max(1);
        while !messages.is_empty() {
            let rest = messages.split_off(messages.len().min(max_batch));
            if let BatchOutcome::Abandoned = self.run_partition_batch(partition, epoch, messages).await {
                return BatchOutcome::Abandoned;
            }
            messages = rest;
        }
        BatchOutcome::Done
    }

    /// Processes one partition's batch and commits its offset once the
    /// batch is durable and its outputs acknowledged.
    async fn run_partition_batch(&self, partition: i32, epoch: u64, messages: Vec<OwnedMessage>) -> BatchOutcome {
        let (Some(first), Some(last)) = (messages.first(), messages.last()) else {
            return BatchOutcome::Done;
        };
        if !self.partitions.still_owned(partition, epoch) {
            tracing::info!(topic = %self.topic, partition, first_offset = first.offset(), "partition revoked while its batch was gathered; its next owner replays it");
            metrics::counter!("backorder_consumer_revoked_batches_total", "topic" => self.topic.clone()).increment(1);
            return BatchOutcome::Done;
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
                // Only while the partition is still ours: a commit for a
                // revoked partition could move its new owner back.
                if self.partitions.record_commit(partition, epoch, next_offset) {
                    self.commit(&[(partition, next_offset)], CommitMode::Async);
                }
                metrics::histogram!("backorder_consumer_batch_duration_seconds", "topic" => self.topic.clone())
                    .record(started.elapsed().as_secs_f64());
                BatchOutcome::Done
            }
            BatchOutcome::Abandoned => {
                tracing::info!(parent: &span, "shutdown during a batch; it will be replayed");
                BatchOutcome::Abandoned
            }
        }
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
        // `max_batch` for each partition that can run at the same time: a
        // fetch from a backlog then gives every such partition a full batch
        // (librdkafka hands out a partition's messages in runs of up to
        // `max.partition.fetch.bytes`), instead of one partition's batch
        // leaving the others idle until the next fetch.
        let gather = self
            .options
            .max_batch
            .max(1)
            .saturating_mul(self.options.partition_concurrency.max(1));
        let mut batch = Vec::with_capacity(gather.min(4096));
        batch.push(first);
        let deadline = tokio::time::Instant::now() + self.options.linger;
        while batch.len() < gather {
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
        // dead letter or a parking should the handler need one).
        let mut events: Vec<Incoming<H::Event>> = Vec::with_capacity(messages.len());
        let mut sources: Vec<&OwnedMessage> = Vec::with_capacity(messages.len());
        let mut dead_letters = Vec::new();
        for message in messages {
            match self.decode(message).await {
                Ok(incoming) => {
                    events.push(incoming);
                    sources.push(message);
                }
                Err(Undecoded::Bad(kind, reason)) => {
                    tracing::warn!(offset = message.offset(), kind = kind.as_str(), %reason, "dead-lettering message");
                    dead_letters.push(dead_letter(message, kind, &reason));
                }
                Err(Undecoded::Shutdown) => return BatchOutcome::Abandoned,
            }
        }
        // Invariant 4: an event whose key has an earlier event parked
        // queues behind it, so a key's events stay in order.
        let Some(mut parked_keys) = self.parked_keys(&events).await else {
            return BatchOutcome::Abandoned;
        };
        let mut to_park: Vec<ToPark<'_>> = Vec::new();
        let decoded = events.len();
        let (events, sources) = if parked_keys.is_empty() {
            (events, sources)
        } else {
            let mut ready = (Vec::with_capacity(events.len()), Vec::with_capacity(events.len()));
            for (incoming, message) in events.into_iter().zip(sources) {
                let key = incoming.event.business_id();
                if parked_keys.contains(key) {
                    tracing::info!(
                        offset = incoming.offset,
                        "an earlier event of this key is parked; parking behind it"
                    );
                    to_park.push(ToPark::behind(message, key));
                } else {
                    ready.0.push(incoming);
                    ready.1.push(message);
                }
            }
            ready
        };
        // Indices (into `events`) of the events the handler applied.
        let mut applied: Vec<usize> = Vec::with_capacity(events.len());
        let outputs = match self.apply_with_retry(&events).await {
            Some(Ok(outputs)) => {
                applied.extend(0..events.len());
                outputs
            }
            Some(Err(failure)) => {
                tracing::debug!(reason = failure.reason(), "batch failed; isolating the events at fault");
                match self
                    .apply_one_by_one(
                        &events,
                        &sources,
                        &mut parked_keys,
                        &mut to_park,
                        &mut dead_letters,
                        &mut applied,
                    )
                    .await
                {
                    Some(outputs) => outputs,
                    None => return BatchOutcome::Abandoned,
                }
            }
            None => return BatchOutcome::Abandoned,
        };
        if !to_park.is_empty() && !self.park_with_retry(&to_park).await {
            return BatchOutcome::Abandoned;
        }
        match self.produce_with_retry(&outputs, &dead_letters).await {
            Produced::Acknowledged => {}
            Produced::Abandoned => return BatchOutcome::Abandoned,
            Produced::TooLarge { topic, bytes } => {
                tracing::warn!(%topic, bytes, "an output is larger than the broker accepts; finding the events that made it");
                let applied: Vec<(&Incoming<H::Event>, &OwnedMessage)> =
                    applied.iter().map(|&i| (&events[i], sources[i])).collect();
                if !self.dead_letter_oversized(&applied, dead_letters).await {
                    return BatchOutcome::Abandoned;
                }
            }
        }
        metrics::counter!("backorder_consumer_events_total", "topic" => self.topic.clone(), "outcome" => "applied")
            .increment(decoded.saturating_sub(to_park.len()) as u64);
        if !to_park.is_empty() {
            metrics::counter!("backorder_consumer_events_total", "topic" => self.topic.clone(), "outcome" => "parked")
                .increment(to_park.len() as u64);
        }
        BatchOutcome::Done
    }

    /// Applies events one at a time after a batch failed for good, to find
    /// the events at fault. An event of a key parked meanwhile parks behind
    /// it; one the handler cannot apply yet is parked (its key from then on
    /// too); one it rejects is dead-lettered.
    /// None: shutdown.
    async fn apply_one_by_one<'m>(
        &self,
        events: &[Incoming<H::Event>],
        sources: &[&'m OwnedMessage],
        parked_keys: &mut HashSet<String>,
        to_park: &mut Vec<ToPark<'m>>,
        dead_letters: &mut Vec<DeadLetter>,
        applied: &mut Vec<usize>,
    ) -> Option<Vec<OutboundRecord>> {
        let mut outputs = Vec::new();
        for (index, (incoming, message)) in events.iter().zip(sources).enumerate() {
            let key = incoming.event.business_id();
            if parked_keys.contains(key) {
                tracing::info!(
                    offset = incoming.offset,
                    "an earlier event of this key is parked; parking behind it"
                );
                to_park.push(ToPark::behind(message, key));
                continue;
            }
            match self.apply_with_retry(std::slice::from_ref(incoming)).await? {
                Ok(more) => {
                    applied.push(index);
                    outputs.extend(more);
                }
                Err(Failure::Missing { waiting_for, reason }) => {
                    tracing::info!(offset = incoming.offset, %waiting_for, %reason, "state from another topic missing; parking");
                    parked_keys.insert(key.to_string());
                    to_park.push(ToPark {
                        message,
                        key: key.to_string(),
                        waiting_for: Some(waiting_for),
                        reason,
                    });
                }
                Err(Failure::Permanent(reason)) => {
                    tracing::warn!(offset = incoming.offset, %reason, "handler rejected event; dead-lettering");
                    dead_letters.push(dead_letter(message, DeadLetterKind::Rejected, &reason));
                }
            }
        }
        Some(outputs)
    }

    /// The keys among `events` with a parked event; empty without parking.
    /// None: shutdown while the database was unavailable.
    async fn parked_keys(&self, events: &[Incoming<H::Event>]) -> Option<HashSet<String>> {
        let Some(lot) = &self.options.parking else {
            return Some(HashSet::new());
        };
        if events.is_empty() {
            return Some(HashSet::new());
        }
        let keys: Vec<&str> = events.iter().map(|i| i.event.business_id()).collect();
        let mut backoff = Backoff::new(&self.options);
        loop {
            match lot.parked_keys(&self.topic, &keys).await {
                Ok(parked) => return Some(parked),
                Err(error) => {
                    self.note_db_failure(&error);
                    let delay = backoff.next_delay();
                    tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "could not read parked keys; holding the partition");
                    if !self.sleep_unless_shutdown(delay).await {
                        return None;
                    }
                }
            }
        }
    }

    /// Counts a database failure of the runtime's own statements (parking)
    /// the way handler failures are counted; a schema behind the code also
    /// turns readiness off, as in [`Self::apply_with_retry`].
    fn note_db_failure(&self, error: &crate::db::DbError) {
        if crate::db::classify(error) == crate::db::ErrorClass::SchemaBehind {
            metrics::counter!("backorder_consumer_errors_total", "topic" => self.topic.clone(), "kind" => "schema")
                .increment(1);
            if !self.lifecycle.readiness.is_schema_behind() {
                tracing::error!(%error, "the database schema is behind this build: run the migrations (`backorderctl migrate`); holding the partition, not ready, nothing dead-lettered");
            }
            self.lifecycle.readiness.set_schema_behind(true);
        } else {
            metrics::counter!("backorder_consumer_errors_total", "topic" => self.topic.clone(), "kind" => "transient")
                .increment(1);
        }
    }

    /// Stores `events` in the parking lot until it works, or shutdown (false).
    async fn park_with_retry(&self, events: &[ToPark<'_>]) -> bool {
        let Some(lot) = &self.options.parking else {
            return false;
        };
        let mut backoff = Backoff::new(&self.options);
        loop {
            match lot.park(events).await {
                Ok(()) => return true,
                Err(error) => {
                    self.note_db_failure(&error);
                    let delay = backoff.next_delay();
                    tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "could not park events; holding the partition");
                    if !self.sleep_unless_shutdown(delay).await {
                        return false;
                    }
                }
            }
        }
    }

    /// Retries parked events of this topic until shutdown: whenever one is
    /// due, else every poll interval.
    async fn retry_parked(&self) {
        let Some(lot) = &self.options.parking else {
            return;
        };
        let shutdown = &self.lifecycle.shutdown;
        loop {
            loop {
                if shutdown.is_cancelled() {
                    return;
                }
                match self.retry_one_parked(lot).await {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(error) => {
                        // A schema behind the code is reported by the main
                        // loop; here it would only repeat every poll.
                        if crate::db::classify(&error) != crate::db::ErrorClass::SchemaBehind {
                            metrics::counter!("backorder_consumer_errors_total", "topic" => self.topic.clone(), "kind" => "parking").increment(1);
                            tracing::warn!(topic = %self.topic, %error, "retrying parked events failed; trying again later");
                        }
                        break;
                    }
                }
            }
            if !self.sleep_unless_shutdown(lot.poll).await {
                return;
            }
        }
    }

    /// Retries the most overdue parked event whose key has no older one
    /// parked. Ok(false): none due (or a transient failure: later).
    async fn retry_one_parked(&self, lot: &ParkingLot) -> Result<bool, crate::db::DbError> {
        let now = lot.clock.now().await?;
        let mut client = lot.pool.get().await?;
        let tx = client.transaction().await?;
        let Some(parked) = parking::claim_due(&tx, &self.topic, now).await? else {
            return Ok(false);
        };
        let message = &parked.message;
        let span = info_span!(
            "parked",
            topic = %self.topic,
            partition = message.partition(),
            offset = message.offset(),
            attempts = parked.attempts,
        );
        let resolution = match self.decode(message).instrument(span.clone()).await {
            Err(Undecoded::Bad(kind, reason)) => Err(dead_letter(message, kind, &reason)),
            Err(Undecoded::Shutdown) => return Ok(false),
            Ok(incoming) => match self
                .handler
                .handle(std::slice::from_ref(&incoming))
                .instrument(span.clone())
                .await
            {
                Ok(outputs) => Ok(outputs),
                Err(HandlerError::Missing { waiting_for, reason }) if now < parked.dead_letter_at => {
                    let next = lot.next_retry(now, parked.attempts + 1, parked.dead_letter_at);
                    tx.execute(
                        "UPDATE parked_events SET attempts = attempts + 1, next_retry_at = $2, waiting_for = $3, reason = $4
                          WHERE id = $1",
                        &[&parked.id, &next, &waiting_for, &reason],
                    )
                    .await?;
                    tx.commit().await?;
                    tracing::debug!(parent: &span, %waiting_for, next_retry_at = %next, "still waiting");
                    return Ok(true);
                }
                Err(HandlerError::Missing { waiting_for, reason }) => {
                    let waited = now - parked.parked_at;
                    let reason = format!(
                        "waited {}s for {waiting_for} (limit {}s): {reason}",
                        waited.num_seconds(),
                        lot.max_age.num_seconds()
                    );
                    tracing::warn!(parent: &span, %reason, "parked event waited too long; dead-lettering");
                    Err(dead_letter(message, DeadLetterKind::Unresolved, &reason))
                }
                Err(HandlerError::Permanent(reason)) => {
                    tracing::warn!(parent: &span, %reason, "handler rejected parked event; dead-lettering");
                    Err(dead_letter(message, DeadLetterKind::Rejected, &reason))
                }
                Err(error @ (HandlerError::Transient(_) | HandlerError::SchemaBehind(_))) => {
                    tracing::warn!(parent: &span, %error, "could not retry a parked event now; later");
                    return Ok(false);
                }
            },
        };
        let (outputs, letters, outcome) = match resolution {
            Ok(outputs) => (outputs, Vec::new(), "resolved"),
            Err(letter) => (Vec::new(), vec![letter], "dead_lettered"),
        };
        // Outputs acknowledged before the row goes: a crash in between
        // retries the event, and handlers are idempotent.
        let outcome = match self.produce_with_retry(&outputs, &letters).await {
            Produced::Acknowledged => outcome,
            Produced::Abandoned => return Ok(false),
            Produced::TooLarge { topic, bytes } => {
                let reason = oversized_reason(&topic, bytes);
                tracing::warn!(parent: &span, %reason, "dead-lettering parked event");
                let letter = dead_letter(message, DeadLetterKind::Oversized, &reason);
                if !matches!(
                    self.produce_with_retry(&[], std::slice::from_ref(&letter)).await,
                    Produced::Acknowledged
                ) {
                    return Ok(false);
                }
                "dead_lettered"
            }
        };
        tx.execute("DELETE FROM parked_events WHERE id = $1", &[&parked.id])
            .await?;
        tx.commit().await?;
        tracing::info!(parent: &span, outcome, "parked event done");
        metrics::counter!("backorder_parked_events_total", "topic" => self.topic.clone(), "outcome" => outcome)
            .increment(1);
        Ok(true)
    }

    /// Decodes and validates one message. A registry outage is retried (it
    /// is never the message's fault) until shutdown.
    async fn decode(&self, message: &OwnedMessage) -> Result<Incoming<H::Event>, Undecoded> {
        // A message without a payload carries no event; on an event topic
        // it is a producer's mistake, so it is dead-lettered, not skipped.
        let Some(payload) = message.payload() else {
            return Err(Undecoded::Bad(
                DeadLetterKind::Empty,
                "the message has no payload".into(),
            ));
        };
        let mut backoff = Backoff::new(&self.options);
        let event: H::Event = loop {
            match self.codec.decode(payload).await {
                Ok(event) => break event,
                Err(error) if error.is_transient() => {
                    metrics::counter!("backorder_consumer_errors_total", "topic" => self.topic.clone(), "kind" => "transient").increment(1);
                    let delay = backoff.next_delay();
                    tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "schema registry unavailable; retrying");
                    if !self.sleep_unless_shutdown(delay).await {
                        return Err(Undecoded::Shutdown);
                    }
                }
                Err(error) => return Err(Undecoded::Bad(DeadLetterKind::Undecodable, error.to_string())),
            }
        };
        event
            .validate()
            .map_err(|e| Undecoded::Bad(DeadLetterKind::Invalid, format!("invalid event: {e}")))?;
        tracing::debug!(
            event_id = event.event_id(),
            business_id = event.business_id(),
            "decoded"
        );
        Ok(Incoming {
            event,
            partition: message.partition(),
            offset: message.offset(),
        })
    }

    /// Applies events, retrying transient failures until they succeed or
    /// shutdown. `None`: shutdown. `Some(Err)`: a permanent failure.
    async fn apply_with_retry(&self, events: &[Incoming<H::Event>]) -> Option<Result<Vec<OutboundRecord>, Failure>> {
        if events.is_empty() {
            return Some(Ok(Vec::new()));
        }
        let mut backoff = Backoff::new(&self.options);
        loop {
            match self.handler.handle(events).await {
                Ok(outputs) => {
                    if self.lifecycle.readiness.is_schema_behind() {
                        tracing::info!("the database schema caught up; ready again");
                        self.lifecycle.readiness.set_schema_behind(false);
                    }
                    return Some(Ok(outputs));
                }
                Err(HandlerError::Permanent(reason)) => return Some(Err(Failure::Permanent(reason))),
                Err(HandlerError::Missing { waiting_for, reason }) if self.options.parking.is_some() => {
                    return Some(Err(Failure::Missing { waiting_for, reason }));
                }
                Err(HandlerError::SchemaBehind(reason)) => {
                    metrics::counter!("backorder_consumer_errors_total", "topic" => self.topic.clone(), "kind" => "schema").increment(1);
                    if !self.lifecycle.readiness.is_schema_behind() {
                        tracing::error!(%reason, "the database schema is behind this build: run the migrations (`backorderctl migrate`); holding the partition, not ready, nothing dead-lettered");
                    }
                    self.lifecycle.readiness.set_schema_behind(true);
                    if !self.sleep_unless_shutdown(self.options.max_backoff).await {
                        return None;
                    }
                }
                // Nowhere to park: wait for the state, holding the partition.
                Err(error @ (HandlerError::Transient(_) | HandlerError::Missing { .. })) => {
                    let reason = error.to_string();
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

    /// Produces outputs and dead letters until acknowledged, or shutdown
    /// (false). Dead letters are counted once, after the acknowledgement.
    async fn produce_with_retry(&self, outputs: &[OutboundRecord], letters: &[DeadLetter]) -> Produced {
        if outputs.is_empty() && letters.is_empty() {
            return Produced::Acknowledged;
        }
        // Borrowed until a dead letter must lose its payload to fit.
        let mut letters = std::borrow::Cow::Borrowed(letters);
        let mut backoff = Backoff::new(&self.options);
        // When a blocked output topic was last reported: once per interval,
        // not once per retry.
        let mut blocked_reported: Option<(String, Instant)> = None;
        loop {
            let sent = futures::future::try_join(
                self.producer
                    .send_all(outputs)
                    .map_err(|error| (ProducedPart::Outputs, error)),
                self.producer
                    .send_dead_letters(&letters)
                    .map_err(|error| (ProducedPart::DeadLetters, error)),
            )
            .await;
            let (part, error) = match sent {
                Ok(_) => {
                    if let Some((topic, _)) = blocked_reported {
                        tracing::info!(%topic, "output topic writable again; ready");
                        metrics::gauge!("backorder_output_blocked", "topic" => topic).set(0.0);
                        self.lifecycle.readiness.set_output_blocked(false);
                    }
                    letters.iter().for_each(DeadLetter::count);
                    return Produced::Acknowledged;
                }
                Err(failed) => failed,
            };
            let class = error.class();
            metrics::counter!("backorder_consumer_errors_total", "topic" => self.topic.clone(), "kind" => format!("produce_{}", class.as_str()))
                .increment(1);
            match (class, part) {
                (ProduceErrorClass::TooLarge, ProducedPart::Outputs) => {
                    let index = error.index().unwrap_or(0);
                    return Produced::TooLarge {
                        topic: error.topic().unwrap_or_default().to_string(),
                        bytes: outputs.get(index).map_or(0, |o| o.payload.len()),
                    };
                }
                (ProduceErrorClass::TooLarge, ProducedPart::DeadLetters) => {
                    if let Some(letter) = error.index().and_then(|i| letters.to_mut().get_mut(i)) {
                        letter.drop_payload();
                        continue;
                    }
                }
                (ProduceErrorClass::Blocked, _) => {
                    let topic = error.topic().unwrap_or_default().to_string();
                    let due = blocked_reported
                        .as_ref()
                        .is_none_or(|(_, at)| at.elapsed() >= BLOCKED_REPORT_INTERVAL);
                    if due {
                        tracing::error!(%topic, %error, "output topic missing or not writable: create it (`backorderctl topics create`) or grant this service write access; holding the partition, not ready");
                        blocked_reported = Some((topic.clone(), Instant::now()));
                    }
                    metrics::gauge!("backorder_output_blocked", "topic" => topic).set(1.0);
                    self.lifecycle.readiness.set_output_blocked(true);
                }
                (ProduceErrorClass::Transient, _) => {}
            }
            let delay = backoff.next_delay();
            if class == ProduceErrorClass::Transient {
                tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "outputs not acknowledged; retrying");
            }
            if !self.sleep_unless_shutdown(delay).await {
                return Produced::Abandoned;
            }
        }
    }

    /// After a batch's outputs were refused as too large: applies each
    /// applied event again on its own (handlers are idempotent, so it
    /// yields the outputs it made the first time), produces those, and
    /// dead-letters the events whose outputs the broker refuses, then
    /// produces `dead_letters`. False: shutdown.
    async fn dead_letter_oversized(
        &self,
        applied: &[(&Incoming<H::Event>, &OwnedMessage)],
        mut dead_letters: Vec<DeadLetter>,
    ) -> bool {
        for (incoming, message) in applied {
            let outputs = match self.apply_with_retry(std::slice::from_ref(*incoming)).await {
                Some(Ok(outputs)) => outputs,
                Some(Err(failure)) => {
                    dead_letters.push(dead_letter(message, DeadLetterKind::Rejected, failure.reason()));
                    continue;
                }
                None => return false,
            };
            match self.produce_with_retry(&outputs, &[]).await {
                Produced::Acknowledged => {}
                Produced::Abandoned => return false,
                Produced::TooLarge { topic, bytes } => {
                    let reason = oversized_reason(&topic, bytes);
                    tracing::warn!(offset = incoming.offset, %reason, "dead-lettering event");
                    dead_letters.push(dead_letter(message, DeadLetterKind::Oversized, &reason));
                }
            }
        }
        matches!(
            self.produce_with_retry(&[], &dead_letters).await,
            Produced::Acknowledged
        )
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

/// Database failures as [`crate::db::classify`] sees them: transient (the
/// runtime holds the partition and retries), a schema behind the code
/// (held, not ready, nothing dead-lettered) or permanent (the runtime
/// isolates the event at fault and dead-letters it).
impl From<crate::db::DbError> for HandlerError {
    fn from(error: crate::db::DbError) -> Self {
        use crate::db::ErrorClass;
        match crate::db::classify(&error) {
            ErrorClass::Transient => HandlerError::Transient(error.to_string()),
            ErrorClass::SchemaBehind => HandlerError::SchemaBehind(error.to_string()),
            ErrorClass::Permanent => HandlerError::Permanent(error.to_string()),
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
