//! Which partitions this replica owns, observed through the consumer's
//! rebalance callbacks.
//!
//! librdkafka runs the callbacks inside `recv()`, which the runtime calls
//! only between batches, so no handler runs while a revoke is in progress.
//! What can be in hand is a batch being gathered: every message is tagged
//! with the *assignment epoch* of its partition when it was received, and
//! a batch whose partition was revoked (or revoked and assigned again)
//! since is dropped before it is applied and never committed; its next
//! owner replays it from the last commit. On revoke, the offsets this
//! replica committed for the revoked partitions are committed once more,
//! synchronously, so the next owner starts exactly where this one stopped,
//! and then forgotten, so nothing re-commits them later over the new
//! owner's progress.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

/// The partitions of one topic this replica owns right now.
#[derive(Debug, Default)]
struct Ownership {
    /// Partition -> the epoch of its current assignment; absent when not owned.
    owned: HashMap<i32, u64>,
    /// The next epoch to hand out; every assignment gets a new one.
    next_epoch: u64,
    /// Partition -> next offset this replica committed, for owned partitions.
    committed: HashMap<i32, i64>,
}

/// Shared view of the ownership, read by the runtime loop and written by
/// the rebalance callbacks.
#[derive(Debug, Clone)]
pub struct Partitions {
    topic: String,
    state: Arc<Mutex<Ownership>>,
}

impl Partitions {
    pub fn new(topic: &str) -> Self {
        Self {
            topic: topic.to_string(),
            state: Arc::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Ownership> {
        // The state stays consistent even if a holder panicked: every
        // critical section is a few map operations.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The epoch of `partition`'s current assignment, if owned.
    pub fn epoch(&self, partition: i32) -> Option<u64> {
        self.lock().owned.get(&partition).copied()
    }

    /// Whether `partition` is still owned under the same assignment.
    pub fn still_owned(&self, partition: i32, epoch: u64) -> bool {
        self.epoch(partition) == Some(epoch)
    }

    /// Records that `next_offset` was committed for `partition` under
    /// `epoch`. Returns false (and records nothing) when the partition is
    /// no longer owned under that epoch or the offset would move back.
    pub fn record_commit(&self, partition: i32, epoch: u64, next_offset: i64) -> bool {
        let mut state = self.lock();
        if state.owned.get(&partition) != Some(&epoch) {
            return false;
        }
        let entry = state.committed.entry(partition).or_insert(next_offset);
        if *entry > next_offset {
            return false;
        }
        *entry = next_offset;
        true
    }

    /// The committed offsets of the partitions still owned.
    pub fn owned_commits(&self) -> Vec<(i32, i64)> {
        let state = self.lock();
        let mut commits: Vec<(i32, i64)> = state
            .committed
            .iter()
            .filter(|(p, _)| state.owned.contains_key(p))
            .map(|(p, o)| (*p, *o))
            .collect();
        commits.sort_unstable();
        commits
    }

    fn assign(&self, partitions: &[i32]) {
        let mut state = self.lock();
        for partition in partitions {
            let epoch = state.next_epoch;
            state.next_epoch += 1;
            state.owned.insert(*partition, epoch);
            state.committed.remove(partition);
        }
        self.report_owned(&state);
    }

    /// How many partitions this replica owns (a replica that owns none
    /// consumes nothing: a group larger than the partition count, or a
    /// group still joining).
    fn report_owned(&self, state: &Ownership) {
        metrics::gauge!("backorder_consumer_assigned_partitions", "topic" => self.topic.clone())
            .set(state.owned.len() as f64);
    }

    /// Forgets `partitions` and returns what this replica had committed for them.
    fn revoke(&self, partitions: &[i32]) -> Vec<(i32, i64)> {
        let mut state = self.lock();
        let mut last = Vec::new();
        for partition in partitions {
            state.owned.remove(partition);
            if let Some(offset) = state.committed.remove(partition) {
                last.push((*partition, offset));
            }
        }
        self.report_owned(&state);
        last
    }

    fn of_topic(&self, list: &TopicPartitionList) -> Vec<i32> {
        list.elements()
            .iter()
            .filter(|e| e.topic() == self.topic)
            .map(|e| e.partition())
            .collect()
    }
}

/// Builds the offset list `(partition, next offset)` of `topic`.
pub fn offset_list(topic: &str, offsets: &[(i32, i64)]) -> Option<TopicPartitionList> {
    let mut list = TopicPartitionList::new();
    for (partition, next_offset) in offsets {
        if let Err(error) = list.add_partition_offset(topic, *partition, Offset::Offset(*next_offset)) {
            tracing::error!(%error, partition, "could not build the offset list");
            return None;
        }
    }
    Some(list)
}

/// The consumer context that keeps [`Partitions`] up to date.
pub struct RebalanceContext {
    partitions: Partitions,
}

impl RebalanceContext {
    pub fn new(partitions: Partitions) -> Self {
        Self { partitions }
    }
}

impl ClientContext for RebalanceContext {}

impl ConsumerContext for RebalanceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(list) => {
                let revoked = self.partitions.of_topic(list);
                let last = self.partitions.revoke(&revoked);
                tracing::info!(topic = %self.partitions.topic, ?revoked, "partitions revoked");
                if last.is_empty() {
                    return;
                }
                // Async commits of these offsets may still be in flight;
                // make them durable before the partitions change hands.
                if let Some(list) = offset_list(&self.partitions.topic, &last)
                    && let Err(error) = consumer.commit(&list, CommitMode::Sync)
                {
                    // The group may already have moved on (this member was
                    // expelled): the next owner replays from the last
                    // durable commit, and handlers are idempotent.
                    tracing::warn!(topic = %self.partitions.topic, %error, ?last, "commit on revoke failed");
                }
            }
            Rebalance::Assign(_) => {}
            Rebalance::Error(error) => {
                tracing::warn!(topic = %self.partitions.topic, %error, "rebalance error");
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            let assigned = self.partitions.of_topic(list);
            tracing::info!(topic = %self.partitions.topic, ?assigned, "partitions assigned");
            self.partitions.assign(&assigned);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revoked_or_reassigned_partition_is_no_longer_owned_under_its_old_epoch() {
        let partitions = Partitions::new("t");
        partitions.assign(&[0, 1]);
        let epoch0 = partitions.epoch(0).unwrap_or(u64::MAX);
        assert!(partitions.record_commit(0, epoch0, 10));
        assert!(!partitions.record_commit(0, epoch0, 5), "never backwards");
        assert_eq!(partitions.revoke(&[0]), vec![(0, 10)]);
        assert!(!partitions.still_owned(0, epoch0));
        assert!(!partitions.record_commit(0, epoch0, 11));
        partitions.assign(&[0]);
        assert!(!partitions.still_owned(0, epoch0), "a new assignment is a new epoch");
        assert!(partitions.owned_commits().is_empty(), "the old commit is forgotten");
    }
}
