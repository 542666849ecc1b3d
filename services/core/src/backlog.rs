//! Backlog gauges read from PostgreSQL: durable timers that are due but not
//! fired, how late the oldest of them is, and backordered lines whose
//! promised ship window has passed. Counters cannot show these: they are
//! work that has *not* happened yet.
//!
//! Every service that runs timers samples its own timer kinds; the overdue
//! promise count is global, so each of those services reports the same
//! value and alerts aggregate with `max`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;

use crate::clock::Clock;
use crate::db::DbError;
use crate::lifecycle::Lifecycle;

/// How often the backlog is sampled: two cheap aggregate queries.
pub const BACKLOG_SAMPLE_INTERVAL: Duration = Duration::from_secs(15);

/// Days of grace after a promised window's end before the line counts as
/// overdue (the policy's overdue-promise rule: window end plus one day).
const PROMISE_GRACE_DAYS: i32 = 1;

/// One timer kind's backlog.
#[derive(Debug, Clone, PartialEq)]
pub struct TimerBacklog {
    pub kind: String,
    /// Pending timers whose due time has passed.
    pub due: i64,
    /// How long ago the oldest of them was due, in seconds (0 when none).
    pub oldest_overdue_seconds: f64,
}

/// Samples `kinds` and the overdue promises every `interval` until
/// shutdown. Failures are logged and retried on the next sample.
pub async fn run_backlog_sampler(
    pool: Pool,
    clock: Clock,
    kinds: Vec<String>,
    interval: Duration,
    lifecycle: Lifecycle,
) {
    loop {
        match sample(&pool, &clock, &kinds).await {
            Ok((timers, overdue_promises, parked)) => {
                for backlog in timers {
                    metrics::gauge!("backorder_timers_due", "kind" => backlog.kind.clone()).set(backlog.due as f64);
                    metrics::gauge!("backorder_timers_overdue_seconds", "kind" => backlog.kind)
                        .set(backlog.oldest_overdue_seconds);
                }
                metrics::gauge!("backorder_promises_overdue").set(overdue_promises as f64);
                metrics::gauge!("backorder_parked_events").set(parked.count as f64);
                metrics::gauge!("backorder_parked_oldest_age_seconds").set(parked.oldest_age_seconds);
            }
            Err(error) => tracing::warn!(%error, "backlog sample failed"),
        }
        tokio::select! {
            () = lifecycle.shutdown.cancelled() => break,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

async fn sample(
    pool: &Pool,
    clock: &Clock,
    kinds: &[String],
) -> Result<(Vec<TimerBacklog>, i64, ParkedBacklog), DbError> {
    let now = clock.now().await?;
    let client = pool.get().await?;
    let timers = timer_backlog(&client, kinds, now).await?;
    let promises = overdue_promises(&client, now).await?;
    let parked = parked_backlog(&client, now).await?;
    Ok((timers, promises, parked))
}

/// Events parked for state from another topic (every topic): how many,
/// and how long the oldest has waited. Global, like overdue promises.
#[derive(Debug, Clone, PartialEq)]
pub struct ParkedBacklog {
    pub count: i64,
    pub oldest_age_seconds: f64,
}

pub async fn parked_backlog(client: &tokio_postgres::Client, now: DateTime<Utc>) -> Result<ParkedBacklog, DbError> {
    let row = client
        .query_one(
            "SELECT count(*), COALESCE(EXTRACT(EPOCH FROM ($1 - min(parked_at))), 0)::float8 FROM parked_events",
            &[&now],
        )
        .await?;
    Ok(ParkedBacklog {
        count: row.try_get(0)?,
        oldest_age_seconds: row.try_get::<_, f64>(1)?.max(0.0),
    })
}

/// The backlog of every kind in `kinds`, zero for kinds with nothing due
/// (so each kind has a series from the first sample on).
pub async fn timer_backlog(
    client: &tokio_postgres::Client,
    kinds: &[String],
    now: DateTime<Utc>,
) -> Result<Vec<TimerBacklog>, DbError> {
    let rows = client
        .query(
            "SELECT kind, count(*), EXTRACT(EPOCH FROM ($2 - min(due_at)))::float8
               FROM timers
              WHERE state = 'pending' AND kind = ANY($1) AND due_at <= $2
              GROUP BY kind",
            &[&kinds, &now],
        )
        .await?;
    let mut found: Vec<(String, i64, f64)> = Vec::with_capacity(rows.len());
    for row in &rows {
        found.push((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?));
    }
    Ok(kinds
        .iter()
        .map(|kind| {
            let row = found.iter().find(|(k, _, _)| k == kind);
            TimerBacklog {
                kind: kind.clone(),
                due: row.map_or(0, |(_, due, _)| *due),
                oldest_overdue_seconds: row.map_or(0.0, |(_, _, oldest)| oldest.max(0.0)),
            }
        })
        .collect())
}

/// Backordered lines still waiting for stock whose promised window ended
/// more than the grace period ago (measured on the injectable clock).
pub async fn overdue_promises(client: &tokio_postgres::Client, now: DateTime<Utc>) -> Result<i64, DbError> {
    let today = now.date_naive();
    let row = client
        .query_one(
            "SELECT count(*) FROM order_lines
              WHERE availability = 'BACKORDERED' AND status = 'open'
                AND promised_to IS NOT NULL AND promised_to + $2::int < $1",
            &[&today, &PROMISE_GRACE_DAYS],
        )
        .await?;
    Ok(row.try_get(0)?)
}
