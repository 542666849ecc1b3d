//! Durable timers: work scheduled for later (a follow-up three days after
//! delivery, the next nurture email, an offer's expiry, the end of a
//! debounce window), stored in PostgreSQL and fired by whichever replica
//! claims it first.
//!
//! - A timer has a deterministic key, so scheduling is idempotent
//!   (`schedule`), and can be moved (`reschedule`) or cancelled by key
//!   exactly (`cancel`) or by scope (`cancel_prefix`, a prefix ending at a
//!   `:` separator, e.g. every nurture step of one order).
//! - "Due" is measured on the injectable [`Clock`], so tests and the demo
//!   move time instead of sleeping.
//! - [`run_timer_loop`] claims due timers of its kinds with
//!   `FOR UPDATE SKIP LOCKED`, lets the handler decide (in the same
//!   transaction: it may schedule the next timer), produces the outputs and
//!   waits for the broker, and only then commits the timers as fired. A
//!   crash before the commit fires them again, with the same dedup keys.
//! - Each timer fires inside its own savepoint: one that fails for good
//!   (a permanent handler error, an unreadable row) is rolled back alone,
//!   marked `failed` with the reason and counted in
//!   `backorder_timers_failed_total`, and the others of the round still
//!   fire. A transient failure (database down) rolls back the round, which
//!   is retried on the next poll.

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use tokio_postgres::{GenericClient, Transaction};
use tracing::Instrument;

use crate::clock::Clock;
use crate::db::{DbError, Statements};
use crate::kafka::{HandlerError, OutboundRecord, Producer};
use crate::lifecycle::Lifecycle;

/// One timer as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Timer {
    pub key: String,
    pub kind: String,
    pub due_at: DateTime<Utc>,
    pub payload: serde_json::Value,
}

/// Schedules `timer` unless a timer with its key exists (in any state).
/// Returns whether it was new.
pub async fn schedule<C: Statements>(client: &C, timer: &Timer) -> Result<bool, DbError> {
    let inserted = client
        .client()
        .execute(
            &client
                .prepared(
                    "INSERT INTO timers (timer_key, kind, due_at, payload) VALUES ($1, $2, $3, $4)
             ON CONFLICT (timer_key) DO NOTHING",
                )
                .await?,
            &[&timer.key, &timer.kind, &timer.due_at, &timer.payload],
        )
        .await?;
    Ok(inserted == 1)
}

/// Schedules every timer of `timers` whose key is not known yet (in any
/// state), in one multi-row statement; returns how many were new. Keys
/// may repeat: the first one counts, as with [`schedule`] one at a time.
pub async fn schedule_all<C: Statements>(client: &C, timers: &[Timer]) -> Result<u64, DbError> {
    if timers.is_empty() {
        return Ok(0);
    }
    let keys: Vec<&str> = timers.iter().map(|t| t.key.as_str()).collect();
    let kinds: Vec<&str> = timers.iter().map(|t| t.kind.as_str()).collect();
    let due: Vec<DateTime<Utc>> = timers.iter().map(|t| t.due_at).collect();
    let payloads: Vec<&serde_json::Value> = timers.iter().map(|t| &t.payload).collect();
    Ok(client
        .client()
        .execute(
            &client
                .prepared(
                    "INSERT INTO timers (timer_key, kind, due_at, payload)
             SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::jsonb[])
             ON CONFLICT (timer_key) DO NOTHING",
                )
                .await?,
            &[&keys, &kinds, &due, &payloads],
        )
        .await?)
}

/// Creates or moves a timer to `timer.due_at` with `timer.payload`, pending
/// again even if it fired or was cancelled before (debounce windows).
pub async fn reschedule<C: GenericClient>(client: &C, timer: &Timer) -> Result<(), DbError> {
    client
        .execute(
            "INSERT INTO timers (timer_key, kind, due_at, payload) VALUES ($1, $2, $3, $4)
             ON CONFLICT (timer_key) DO UPDATE
                SET kind = EXCLUDED.kind, due_at = EXCLUDED.due_at, payload = EXCLUDED.payload,
                    state = 'pending', fired_at = NULL",
            &[&timer.key, &timer.kind, &timer.due_at, &timer.payload],
        )
        .await?;
    Ok(())
}

/// Cancels the pending timer `key`, exactly; returns whether it was pending.
pub async fn cancel<C: GenericClient>(client: &C, key: &str) -> Result<bool, DbError> {
    Ok(client
        .execute(
            "UPDATE timers SET state = 'cancelled' WHERE state = 'pending' AND timer_key = $1",
            &[&key],
        )
        .await?
        == 1)
}

/// Cancels every pending timer of a scope; returns how many. Keys are built
/// `kind:scope:...`, and a scope ends at a separator (`nurture:o-1:`), so
/// `o-1` never reaches `o-10`'s timers. A `prefix` that does not end in `:`
/// is a whole key and is cancelled exactly ([`cancel`]): `s-1` is not a
/// prefix of `s-10` here.
pub async fn cancel_prefix<C: GenericClient>(client: &C, prefix: &str) -> Result<u64, DbError> {
    if !prefix.ends_with(':') {
        return Ok(u64::from(cancel(client, prefix).await?));
    }
    let pattern = format!(
        "{}%",
        prefix.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")
    );
    Ok(client
        .execute(
            "UPDATE timers SET state = 'cancelled' WHERE state = 'pending' AND timer_key LIKE $1",
            &[&pattern],
        )
        .await?)
}

/// Decides what a due timer does. Runs inside the claiming transaction:
/// it may read state, schedule the next timer, and returns records to
/// produce (typically email requests).
pub trait TimerHandler: Send + Sync + 'static {
    /// The kinds this handler fires.
    fn kinds(&self) -> &[&'static str];

    fn fire(
        &self,
        tx: &Transaction<'_>,
        timer: &Timer,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<Vec<OutboundRecord>, HandlerError>> + Send;
}

/// Timer loop failures that stop it.
#[derive(Debug, thiserror::Error)]
pub enum TimerError {
    #[error(transparent)]
    Db(#[from] DbError),
}

/// How many due timers one transaction claims at most.
const CLAIM_BATCH: i64 = 200;

/// Fires due timers of `handler`'s kinds until shutdown, polling every
/// `poll`. Transient failures are logged and retried on the next poll.
pub async fn run_timer_loop<H: TimerHandler>(
    pool: Pool,
    clock: Clock,
    handler: H,
    producer: Producer,
    lifecycle: Lifecycle,
    poll: Duration,
) -> Result<(), TimerError> {
    let kinds: Vec<String> = handler.kinds().iter().map(|k| (*k).to_string()).collect();
    tracing::info!(?kinds, "timer loop started");
    loop {
        let fired = match fire_due(&pool, &clock, &handler, &producer, &kinds).await {
            Ok(fired) => fired,
            Err(error) => {
                metrics::counter!("backorder_timer_errors_total").increment(1);
                tracing::warn!(%error, "timer round failed; retrying");
                0
            }
        };
        // A full batch means more may be due: go again at once.
        if fired as i64 == CLAIM_BATCH && !lifecycle.shutdown.is_cancelled() {
            continue;
        }
        tokio::select! {
            () = lifecycle.shutdown.cancelled() => break,
            () = tokio::time::sleep(poll) => {}
        }
    }
    tracing::info!("timer loop stopped");
    Ok(())
}

/// Errors of one round of firing.
#[derive(Debug, thiserror::Error)]
enum RoundError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("timer handler failed: {0}")]
    Handler(#[from] HandlerError),
    #[error("outputs not acknowledged: {0}")]
    Produce(#[from] crate::kafka::producer::ProduceError),
}

impl From<tokio_postgres::Error> for RoundError {
    fn from(error: tokio_postgres::Error) -> Self {
        RoundError::Db(DbError::from(error))
    }
}

async fn fire_due<H: TimerHandler>(
    pool: &Pool,
    clock: &Clock,
    handler: &H,
    producer: &Producer,
    kinds: &[String],
) -> Result<usize, RoundError> {
    let now = clock.now().await?;
    let mut client = pool.get().await.map_err(DbError::from)?;
    let mut tx = client.transaction().await?;
    let rows = tx
        .query(
            "SELECT timer_key, kind, due_at, payload FROM timers
              WHERE state = 'pending' AND kind = ANY($1) AND due_at <= $2
              ORDER BY due_at
              LIMIT $3
              FOR UPDATE SKIP LOCKED",
            &[&kinds, &now, &CLAIM_BATCH],
        )
        .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let mut outputs = Vec::new();
    let mut keys = Vec::with_capacity(rows.len());
    let mut failed: Vec<(String, String)> = Vec::new();
    for row in rows {
        let key: String = row.try_get(0).map_err(DbError::from)?;
        let timer = match read_timer(&row, &key) {
            Ok(timer) => timer,
            Err(reason) => {
                failed.push((key, reason));
                continue;
            }
        };
        let span = tracing::info_span!("timer", key = %timer.key, kind = %timer.kind);
        // A savepoint per timer: a timer that fails for good is rolled back
        // alone, and the round goes on with the others.
        let savepoint = tx.savepoint(SAVEPOINT).await?;
        match handler.fire(&savepoint, &timer, now).instrument(span.clone()).await {
            Ok(more) => {
                savepoint.commit().await?;
                outputs.extend(more);
                keys.push(timer.key);
            }
            Err(HandlerError::Permanent(reason)) => {
                savepoint.rollback().await?;
                tracing::warn!(parent: &span, %reason, "timer failed for good; set aside, the others still fire");
                failed.push((timer.key, reason));
            }
            Err(error) => return Err(RoundError::Handler(error)),
        }
    }
    for (key, reason) in &failed {
        tx.execute(
            "UPDATE timers SET state = 'failed', fired_at = $2, last_error = $3 WHERE timer_key = $1 AND state = 'pending'",
            &[key, &now, reason],
        )
        .await?;
    }
    tx.execute(
        "UPDATE timers SET state = 'fired', fired_at = $2 WHERE timer_key = ANY($1) AND state = 'pending'",
        &[&keys, &now],
    )
    .await?;
    // Outputs are acknowledged before the timers are committed as fired: a
    // crash in between fires them again, and the dedup keys absorb it.
    producer.send_all(&outputs).await?;
    tx.commit().await?;
    metrics::counter!("backorder_timers_fired_total").increment(keys.len() as u64);
    if !failed.is_empty() {
        metrics::counter!("backorder_timers_failed_total").increment(failed.len() as u64);
    }
    Ok(keys.len() + failed.len())
}

/// The name of the per-timer savepoint (reused: savepoints nest by name).
const SAVEPOINT: &str = "timer";

/// A claimed row as a [`Timer`]; Err with the reason when a column does not
/// read (a schema or data problem that retrying will not fix).
fn read_timer(row: &tokio_postgres::Row, key: &str) -> Result<Timer, String> {
    let read = || -> Result<Timer, tokio_postgres::Error> {
        Ok(Timer {
            key: key.to_string(),
            kind: row.try_get(1)?,
            due_at: row.try_get(2)?,
            payload: row.try_get(3)?,
        })
    };
    read().map_err(|e| format!("unreadable timer row: {e}"))
}
