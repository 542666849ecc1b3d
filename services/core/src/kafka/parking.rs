//! Parking (DESIGN invariant 4): an event that needs state another topic
//! has not delivered yet is stored here instead of holding its partition.
//!
//! - A handler says so with [`HandlerError::Missing`](super::HandlerError::Missing),
//!   naming what it waits for (e.g. `order:o-1`). The runtime isolates the
//!   event, parks the original message (bytes, key, headers) under the
//!   event's key, and the partition moves on.
//! - Later events of a parked key park behind it, so a key's events are
//!   still applied in order.
//! - The runtime retries the oldest parked event of each key on a schedule
//!   measured on the injectable clock (doubling from one second up to
//!   `BACKORDER_PARK_RETRY_MAX_SECS`), and at once when the state arrives:
//!   the handler that stores it calls [`state_arrived`].
//! - After `BACKORDER_PARK_MAX_AGE_SECS` on the clock, a still-waiting event
//!   goes to the topic's dead-letter topic with the reason.
//!
//! A parked row is deleted only after its event was applied and its
//! outputs acknowledged (or its dead letter acknowledged); a crash in
//! between retries it, and handlers are idempotent.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use rdkafka::Message;
use rdkafka::message::{Header, Headers, OwnedHeaders, OwnedMessage, Timestamp};

use tokio_postgres::GenericClient as _;

use crate::clock::Clock;
use crate::config::Settings;
use crate::db::{DbError, Statements};

/// Where parked events are kept and how they are retried.
#[derive(Clone, Debug)]
pub struct ParkingLot {
    pub(crate) pool: Pool,
    pub(crate) clock: Clock,
    /// How long an event may wait before it is dead-lettered.
    pub(crate) max_age: chrono::Duration,
    /// The longest wait between two retries.
    pub(crate) retry_max: chrono::Duration,
    /// How often the runtime looks for parked events that are due.
    pub(crate) poll: Duration,
}

/// First retry delay after parking; doubles per attempt.
const RETRY_MIN: chrono::Duration = chrono::Duration::seconds(1);

/// One event to park.
pub struct ToPark<'a> {
    pub message: &'a OwnedMessage,
    pub key: String,
    pub waiting_for: Option<String>,
    pub reason: String,
}

impl<'a> ToPark<'a> {
    /// `message`, queued behind an earlier parked event of `key`.
    pub fn behind(message: &'a OwnedMessage, key: &str) -> Self {
        Self {
            message,
            key: key.to_string(),
            waiting_for: None,
            reason: "queued behind an earlier parked event of the same key".to_string(),
        }
    }
}

/// A parked event due for a retry, with its original message rebuilt.
pub struct Parked {
    pub id: i64,
    pub key: String,
    pub message: OwnedMessage,
    pub attempts: i32,
    pub parked_at: DateTime<Utc>,
    pub dead_letter_at: DateTime<Utc>,
}

impl ParkingLot {
    pub fn new(pool: Pool, clock: Clock, settings: &Settings) -> Self {
        Self {
            pool,
            clock,
            max_age: chrono::Duration::seconds(i64::try_from(settings.park_max_age_secs).unwrap_or(i64::MAX / 1000)),
            retry_max: chrono::Duration::seconds(
                i64::try_from(settings.park_retry_max_secs.max(1)).unwrap_or(i64::MAX / 1000),
            ),
            poll: Duration::from_millis(settings.timer_poll_ms.max(10)),
        }
    }

    /// Which of `keys` have an event parked on `topic`.
    pub async fn parked_keys(&self, topic: &str, keys: &[&str]) -> Result<HashSet<String>, DbError> {
        let client = self.pool.get().await?;
        // Asked before every batch: prepared once per connection.
        let statement = client
            .prepare_cached("SELECT DISTINCT park_key FROM parked_events WHERE topic = $1 AND park_key = ANY($2)")
            .await?;
        let rows = client.query(&statement, &[&topic, &keys]).await?;
        rows.iter()
            .map(|r| r.try_get::<_, String>(0).map_err(DbError::from))
            .collect()
    }

    /// Parks `events` durably, in order (their ids keep the order of a key).
    pub async fn park(&self, events: &[ToPark<'_>]) -> Result<(), DbError> {
        let now = self.clock.now().await?;
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let statement = tx
            .prepare(
                "INSERT INTO parked_events (topic, park_key, source_partition, source_offset, message_key, payload,
                                            header_names, header_values, waiting_for, reason,
                                            parked_at, next_retry_at, dead_letter_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
                 ON CONFLICT (topic, source_partition, source_offset) DO NOTHING",
            )
            .await?;
        for event in events {
            let m = event.message;
            let (names, values): (Vec<String>, Vec<Option<Vec<u8>>>) = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                        .unzip()
                })
                .unwrap_or_default();
            // Queued behind an earlier event of its key: due at once, so it
            // is tried as soon as it becomes the oldest of its key.
            let next_retry_at = if event.waiting_for.is_some() {
                now + RETRY_MIN
            } else {
                now
            };
            tx.execute(
                &statement,
                &[
                    &m.topic(),
                    &event.key,
                    &m.partition(),
                    &m.offset(),
                    &m.key(),
                    &m.payload().unwrap_or_default(),
                    &names,
                    &values,
                    &event.waiting_for,
                    &event.reason,
                    &now,
                    &next_retry_at,
                    &(now + self.max_age),
                ],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// When to retry after `attempts` failed retries, never past the
    /// moment the event is dead-lettered.
    pub(crate) fn next_retry(&self, now: DateTime<Utc>, attempts: i32, dead_letter_at: DateTime<Utc>) -> DateTime<Utc> {
        let factor = 1i32.checked_shl(attempts.clamp(0, 20) as u32).unwrap_or(i32::MAX);
        let delay = RETRY_MIN
            .checked_mul(factor)
            .unwrap_or(self.retry_max)
            .min(self.retry_max);
        (now + delay).min(dead_letter_at)
    }
}

/// The oldest parked event of a key whose retry is due, locked (FOR UPDATE
/// SKIP LOCKED) in `tx` so one replica retries it at a time.
pub(crate) async fn claim_due(
    tx: &tokio_postgres::Transaction<'_>,
    topic: &str,
    now: DateTime<Utc>,
) -> Result<Option<Parked>, DbError> {
    let row = tx
        .query_opt(
            "SELECT id, park_key, source_partition, source_offset, message_key, payload,
                    header_names, header_values, attempts, parked_at, dead_letter_at
               FROM parked_events p
              WHERE topic = $1 AND next_retry_at <= $2
                AND NOT EXISTS (SELECT 1 FROM parked_events q
                                 WHERE q.topic = p.topic AND q.park_key = p.park_key AND q.id < p.id)
              ORDER BY next_retry_at, id
              LIMIT 1
              FOR UPDATE SKIP LOCKED",
            &[&topic, &now],
        )
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let names: Vec<String> = row.try_get(6)?;
    let values: Vec<Option<Vec<u8>>> = row.try_get(7)?;
    let mut headers = OwnedHeaders::new_with_capacity(names.len());
    for (key, value) in names.iter().zip(&values) {
        headers = headers.insert(Header {
            key,
            value: value.as_deref(),
        });
    }
    let message = OwnedMessage::new(
        Some(row.try_get(5)?),
        row.try_get(4)?,
        topic.to_string(),
        Timestamp::NotAvailable,
        row.try_get(2)?,
        row.try_get(3)?,
        Some(headers),
    );
    Ok(Some(Parked {
        id: row.try_get(0)?,
        key: row.try_get(1)?,
        message,
        attempts: row.try_get(8)?,
        parked_at: row.try_get(9)?,
        dead_letter_at: row.try_get(10)?,
    }))
}

/// Makes every event parked waiting for one of `refs` due at once. Call it
/// in the transaction that stores the state (`order:<id>` when an order is
/// stored), so the parked events are retried as soon as it is committed.
pub async fn state_arrived<C: Statements>(client: &C, refs: &[String]) -> Result<u64, DbError> {
    if refs.is_empty() {
        return Ok(0);
    }
    // `parked_at` is on the same clock as the retry schedule and already
    // past, so no clock read is needed here.
    Ok(client
        .client()
        .execute(
            &client
                .prepared(
                    "UPDATE parked_events SET next_retry_at = parked_at
              WHERE waiting_for = ANY($1) AND next_retry_at > parked_at",
                )
                .await?,
            &[&refs],
        )
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_double_up_to_the_maximum_and_never_pass_the_dead_letter_time() {
        let pool = match crate::db::pool("postgres://u@127.0.0.1:1/db", 1) {
            Ok(pool) => pool,
            Err(error) => panic!("pool: {error}"),
        };
        let lot = ParkingLot {
            clock: Clock::System,
            pool,
            max_age: chrono::Duration::hours(1),
            retry_max: chrono::Duration::seconds(60),
            poll: Duration::from_millis(100),
        };
        let now = Utc::now();
        let far = now + chrono::Duration::days(1);
        assert_eq!(lot.next_retry(now, 0, far), now + chrono::Duration::seconds(1));
        assert_eq!(lot.next_retry(now, 3, far), now + chrono::Duration::seconds(8));
        assert_eq!(lot.next_retry(now, 30, far), now + chrono::Duration::seconds(60));
        let soon = now + chrono::Duration::seconds(5);
        assert_eq!(lot.next_retry(now, 5, soon), soon);
    }
}
