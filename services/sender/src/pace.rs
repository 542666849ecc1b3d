//! Pacing SES calls within the account's limits, shared by every replica.
//!
//! SES limits the account, not a process: its send rate (MaxSendRate) and
//! daily quota (Max24HourSend) hold for all sender replicas together. So
//! send slots are handed out by PostgreSQL (`reserve_ses_send`, migration
//! V200): one row holds the start of the next free slot, and each
//! reservation, under that row's lock, takes it and moves it on by one
//! spacing; the same call counts the send against the daily quota (per
//! minute, over the last 24 hours) and refuses it when the quota is used
//! up. Slots are never more than [`horizon`] ahead, so a claimed row never
//! waits long for its slot and a replica that stops cannot strand slots
//! far in the future. Times are the database's: every replica waits the
//! same clock's intervals, whatever its own clock says.
//!
//! The spacing is `1 / floor(rate × HEADROOM)`: sends start on a lattice
//! of at most that many per second, so any one-second window at SES holds
//! at most that many, plus what network jitter moves in; the headroom
//! keeps that under the account's rate. A send whose row is marked in
//! flight later than [`LATE_TOLERANCE`] after its slot does not go out on
//! that slot (see `delivery`, which marks rows just ahead of their slots):
//! a late send followed by punctual ones is how a window would overflow.
//!
//! Each replica adapts its own rate: the ceiling is SES's MaxSendRate
//! (from `GetAccount`, refreshed) or the configured rate; when SES throttles
//! anyway (another sender on the account, a lower real limit), this
//! replica's rate halves, at most every 200 ms, down to one per second, and
//! climbs back by a quarter per calm second: additive-increase
//! multiplicative-decrease, like TCP. A throttled replica's reservations
//! use a longer spacing, so the shared schedule slows for everyone.

use std::sync::Mutex;
use std::time::Duration;

use backorder_core::db::DbError;
use backorder_core::deadpool_postgres::Pool;
use chrono::{DateTime, Utc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const CALM_BEFORE_RAISE: Duration = Duration::from_secs(1);
/// Sends already in flight at the old pace get throttled too: cut again
/// only after this long.
const CUT_SPACING: Duration = Duration::from_millis(200);
const MIN_RATE: f64 = 1.0;
/// How late (in seconds) a send may reach SES, relative to the one a
/// second after it, without a one-second window at SES holding more than
/// the rate: SES counts sends when they arrive, after scheduling and
/// network jitter. 40 ms: the 20 ms a send may start after its slot
/// ([`LATE_TOLERANCE`]) plus 20 ms of network jitter (SES itself also
/// accepts short bursts above the rate).
const JITTER_BUDGET: f64 = 0.04;
/// Sends are paced for `1 / (1 + JITTER_BUDGET)` (96.2%) of the rate,
/// rounded down to whole sends per second: `rate × HEADROOM` slots fill
/// `1 / (1 + JITTER_BUDGET)` of a second, leaving the rest for jitter.
/// (The performance target is 95% of the SES rate.)
pub const HEADROOM: f64 = 1.0 / (1.0 + JITTER_BUDGET);
/// How late after its slot a send may still start: see the module docs.
pub const LATE_TOLERANCE: Duration = Duration::from_millis(20);
/// The furthest ahead a slot is handed out.
const MAX_HORIZON: Duration = Duration::from_secs(1);

/// How far ahead slots are handed out: at most a quarter of the claim
/// lease (a claimed row waits for its slot well within its lease), at
/// most a second.
pub fn horizon(lease: Duration) -> Duration {
    (lease / 4).min(MAX_HORIZON)
}

#[derive(Debug)]
struct State {
    /// Sends per second now.
    rate: f64,
    /// What SES allows (or the configured rate).
    ceiling: f64,
    /// Last cut or raise, to space adjustments.
    last_change: Instant,
}

/// A send slot, or why there is none.
#[derive(Debug, Clone, PartialEq)]
pub enum Reservation {
    /// Start the send at `at` (database time), `wait` from now.
    Slot { at: DateTime<Utc>, wait: Duration },
    /// The daily quota is used up: `used` of `limit` in the last 24 hours.
    QuotaExhausted { used: i64, limit: i64 },
    /// Shutdown came first.
    Shutdown,
}

/// The daily quota to enforce, from `GetAccount` or configuration.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Quota {
    /// Emails per 24 hours; `None`: unknown, not enforced.
    pub limit: Option<i64>,
    /// What SES said the account sent in the last 24 hours (including
    /// senders other than this service).
    pub account_used: i64,
}

#[derive(Debug)]
pub struct Pacer {
    state: Mutex<State>,
    /// Whose turn it is to reserve (FIFO): one reservation of this replica
    /// at a time, so waiting for the horizon is one poll, not one per worker.
    turn: tokio::sync::Mutex<()>,
}

impl Pacer {
    pub fn new(rate: f64) -> Self {
        let rate = rate.max(MIN_RATE);
        let pacer = Self {
            state: Mutex::new(State {
                rate,
                ceiling: rate,
                last_change: Instant::now(),
            }),
            turn: tokio::sync::Mutex::new(()),
        };
        pacer.report(rate, rate);
        pacer
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut guard = match self.state.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }

    fn report(&self, rate: f64, ceiling: f64) {
        metrics::gauge!("backorder_sender_send_rate_limit").set(ceiling);
        metrics::gauge!("backorder_sender_send_rate_current").set(rate);
    }

    /// The time between two slots at this replica's current rate.
    pub fn spacing(&self) -> Duration {
        let per_second = self.with(|s| (s.rate * HEADROOM).floor().max(1.0));
        Duration::from_secs_f64(1.0 / per_second)
    }

    /// Reserves the next shared send slot (waiting, in turn, while the
    /// schedule is full up to `horizon`), counting it against `quota`.
    pub async fn reserve(
        &self,
        pool: &Pool,
        quota: Quota,
        horizon: Duration,
        shutdown: &CancellationToken,
    ) -> Result<Reservation, DbError> {
        let _turn = tokio::select! {
            () = shutdown.cancelled() => return Ok(Reservation::Shutdown),
            turn = self.turn.lock() => turn,
        };
        let client = pool.get().await?;
        // Reservations are taken one after another, so their round trip
        // bounds the send rate: prepared once per connection, each is one
        // round trip instead of two (parse, then execute).
        let statement = client
            .prepare_cached("SELECT r_outcome, r_slot, r_wait_ms, r_day_used FROM reserve_ses_send($1, $2, $3, $4)")
            .await?;
        let spacing_ms = self.spacing().as_secs_f64() * 1000.0;
        let horizon_ms = horizon.as_secs_f64() * 1000.0;
        loop {
            let row = client
                .query_one(
                    &statement,
                    &[&spacing_ms, &horizon_ms, &quota.limit, &quota.account_used],
                )
                .await?;
            let outcome: String = row.try_get(0)?;
            let wait = Duration::from_secs_f64(row.try_get::<_, Option<f64>>(2)?.unwrap_or(0.0).max(0.0) / 1000.0);
            let used: i64 = row.try_get(3)?;
            metrics::gauge!("backorder_sender_daily_quota_used").set(used as f64);
            match (outcome.as_str(), row.try_get::<_, Option<DateTime<Utc>>>(1)?) {
                ("slot", Some(at)) => return Ok(Reservation::Slot { at, wait }),
                ("quota", _) => {
                    return Ok(Reservation::QuotaExhausted {
                        used: used.max(quota.account_used),
                        limit: quota.limit.unwrap_or(0),
                    });
                }
                // The schedule is full up to the horizon: wait until it
                // is not, keeping the turn.
                _ => {
                    tokio::select! {
                        () = shutdown.cancelled() => return Ok(Reservation::Shutdown),
                        () = tokio::time::sleep(wait.max(Duration::from_millis(1))) => {}
                    }
                }
            }
        }
    }

    /// SES's limit changed (or was read for the first time).
    pub fn set_ceiling(&self, ceiling: f64) {
        let (rate, ceiling) = self.with(|s| {
            let backing_off = s.rate < s.ceiling;
            s.ceiling = ceiling.max(MIN_RATE);
            // Not backing off: follow SES up or down. Backing off: keep
            // climbing from where we are, but never above the new limit.
            s.rate = if backing_off { s.rate.min(s.ceiling) } else { s.ceiling };
            (s.rate, s.ceiling)
        });
        self.report(rate, ceiling);
    }

    /// SES throttled a send: halve the rate (at most every [`CUT_SPACING`],
    /// since the sends already in flight at the old rate are throttled too).
    /// Returns whether the rate was cut.
    pub fn throttled(&self) -> bool {
        let cut = self.with(|s| {
            let now = Instant::now();
            if now < s.last_change + CUT_SPACING && s.rate < s.ceiling {
                return None;
            }
            s.rate = (s.rate / 2.0).max(MIN_RATE);
            s.last_change = now;
            Some((s.rate, s.ceiling))
        });
        if let Some((rate, ceiling)) = cut {
            self.report(rate, ceiling);
        }
        cut.is_some()
    }

    /// A send went through: after a calm second, climb back towards the
    /// ceiling.
    pub fn succeeded(&self) {
        let raised = self.with(|s| {
            let now = Instant::now();
            if s.rate >= s.ceiling || now < s.last_change + CALM_BEFORE_RAISE {
                return None;
            }
            s.rate = (s.rate * 1.25 + 1.0).min(s.ceiling);
            s.last_change = now;
            Some((s.rate, s.ceiling))
        });
        if let Some((rate, ceiling)) = raised {
            self.report(rate, ceiling);
        }
    }

    pub fn rate(&self) -> f64 {
        self.with(|s| s.rate)
    }

    pub fn ceiling(&self) -> f64 {
        self.with(|s| s.ceiling)
    }
}

/// Gives back the quota a reserved slot counted when the send did not
/// happen (the slot itself has passed or is left unused: harmless).
pub async fn unreserve(pool: &Pool, at: DateTime<Utc>) -> Result<(), DbError> {
    let client = pool.get().await?;
    let statement = client.prepare_cached("SELECT unreserve_ses_send($1)").await?;
    client.execute(&statement, &[&at]).await?;
    Ok(())
}

/// Sends counted against the daily quota in the last 24 hours, by every
/// replica.
pub async fn day_used(pool: &Pool) -> Result<i64, DbError> {
    let client = pool.get().await?;
    let row = client.query_one("SELECT ses_day_used()", &[]).await?;
    Ok(row.try_get(0)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn throttling_halves_the_rate_and_calm_restores_it() {
        let pacer = Pacer::new(40.0);
        assert!(pacer.throttled());
        assert_eq!(pacer.rate(), 20.0);
        // In-flight sends throttled right after do not cut again.
        assert!(!pacer.throttled());
        tokio::time::advance(Duration::from_millis(250)).await;
        assert!(pacer.throttled());
        assert_eq!(pacer.rate(), 10.0);
        for _ in 0..20 {
            tokio::time::advance(Duration::from_millis(1_100)).await;
            pacer.succeeded();
        }
        assert_eq!(pacer.rate(), 40.0);
        pacer.set_ceiling(14.0);
        assert_eq!(pacer.rate(), 14.0);
    }

    #[test]
    fn slots_are_spaced_for_whole_sends_below_the_rate() {
        // 30/s × 0.962 = 28.85: 28 slots a second, never 29.
        assert_eq!(Pacer::new(30.0).spacing(), Duration::from_secs_f64(1.0 / 28.0));
        assert_eq!(Pacer::new(50.0).spacing(), Duration::from_secs_f64(1.0 / 48.0));
        assert_eq!(Pacer::new(500.0).spacing(), Duration::from_secs_f64(1.0 / 480.0));
        assert_eq!(Pacer::new(0.5).spacing(), Duration::from_secs(1));
        assert_eq!(horizon(Duration::from_secs(30)), Duration::from_secs(1));
        assert_eq!(horizon(Duration::from_secs(2)), Duration::from_millis(500));
    }
}
