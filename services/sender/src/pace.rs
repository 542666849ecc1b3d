//! Pacing SES calls, counted in recipients, at a rate that follows SES.
//!
//! Sends follow a smooth schedule at `rate × HEADROOM`. The limit is exact
//! where it matters: no window of one second ever holds more than
//! `rate × HEADROOM` send starts (a sliding log of the last second's
//! sends). Time lost to a slow moment (at most a window's worth) is made
//! up at no more than twice the rate, never in a burst. Sends take turns in arrival order and are
//! timed when they actually start, after the database fence, so what SES
//! sees is this spacing.
//!
//! The ceiling is SES's MaxSendRate (from `GetAccount`, refreshed) or the
//! configured rate. When SES throttles anyway (another sender on the
//! account, a lower real limit), the rate halves, at most every 200 ms,
//! down to one per second, and climbs back by a quarter per calm second:
//! additive-increase multiplicative-decrease, like TCP.
//!
//! The pacer is per replica, SES's rate per account: with N replicas, set
//! `BACKORDER_SES_SEND_RATE_OVERRIDE` to MaxSendRate / N (otherwise SES
//! throttles and each replica backs off until they fit).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

const CALM_BEFORE_RAISE: Duration = Duration::from_secs(1);
/// Sends already in flight at the old pace get throttled too: cut again
/// only after this long.
const CUT_SPACING: Duration = Duration::from_millis(200);
const MIN_RATE: f64 = 1.0;
const WINDOW: Duration = Duration::from_secs(1);
/// Sends are paced for 96% of the rate: SES counts sends when they reach
/// it, after network and scheduling jitter; the missing 4% keeps a late
/// send from making a one-second window hold one more than the limit.
/// (The performance target is 95% of the SES rate.)
pub const HEADROOM: f64 = 0.96;

#[derive(Debug)]
struct State {
    /// Start times of the sends of the last window, oldest first (one
    /// entry per recipient).
    log: VecDeque<Instant>,
    /// No send before this (spacing, and the pause after a throttle).
    not_before: Instant,
    /// Where the next send would be on a smooth schedule at the rate. When
    /// sends fell behind it (a slow moment), they catch up at up to twice
    /// the rate; it never lags more than a window behind.
    ideal: Instant,
    /// Sends per second now.
    rate: f64,
    /// What SES allows (or the configured rate).
    ceiling: f64,
    /// Last cut or raise, to space adjustments.
    last_change: Instant,
}

impl State {
    /// Sends allowed in one window at the current rate.
    fn capacity(&self) -> usize {
        ((self.rate * HEADROOM).floor() as usize).max(1)
    }

    fn interval(&self) -> Duration {
        Duration::from_secs_f64(1.0 / (self.rate * HEADROOM))
    }

    /// When the sliding window allows the next send.
    fn window_opens(&self) -> Instant {
        let cap = self.capacity();
        if self.log.len() >= cap {
            self.log[self.log.len() - cap] + WINDOW
        } else {
            self.not_before
        }
    }

    /// The earliest instant the next send may start.
    fn earliest(&self) -> Instant {
        self.window_opens().max(self.not_before).max(self.ideal)
    }

    fn record(&mut self, now: Instant, recipients: u32) {
        // After an idle window there is nothing to catch up.
        if self.log.back().is_none_or(|last| *last + WINDOW < now) {
            self.ideal = now;
        }
        for _ in 0..recipients.max(1) {
            self.log.push_back(now);
        }
        let keep = self.capacity().max(1);
        while self.log.len() > keep {
            self.log.pop_front();
        }
        let interval = self.interval();
        self.not_before = now + interval / 2;
        let lag_floor = now.checked_sub(WINDOW).unwrap_or(now);
        self.ideal = self.ideal.max(lag_floor) + interval * recipients.max(1);
    }
}

#[derive(Debug)]
pub struct Pacer {
    state: Mutex<State>,
    /// Whose turn it is to send (FIFO).
    turn: tokio::sync::Mutex<()>,
}

/// A send's turn; see [`Pacer::acquire`].
#[derive(Debug)]
pub struct Permit<'a> {
    pacer: &'a Pacer,
    _turn: tokio::sync::MutexGuard<'a, ()>,
}

impl Permit<'_> {
    /// The send starts now.
    pub fn commit(self, recipients: u32) {
        self.pacer.with(|s| s.record(Instant::now(), recipients));
    }
}

impl Pacer {
    pub fn new(rate: f64) -> Self {
        let rate = rate.max(MIN_RATE);
        let now = Instant::now();
        let pacer = Self {
            state: Mutex::new(State {
                log: VecDeque::new(),
                not_before: now,
                ideal: now,
                rate,
                ceiling: rate,
                last_change: now,
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

    /// Waits for this send's turn (sends take turns in arrival order).
    /// Commit the permit right before sending; a permit dropped
    /// uncommitted uses nothing.
    pub async fn acquire(&self) -> Permit<'_> {
        let turn = self.turn.lock().await;
        loop {
            let earliest = self.with(|s| s.earliest());
            if Instant::now() >= earliest {
                break;
            }
            // Re-read after waking: a throttle may have pushed it out.
            tokio::time::sleep_until(earliest).await;
        }
        // When the window held this send back, the schedule restarts from
        // there: the window already absorbed whatever was behind.
        self.with(|s| {
            let opens = s.window_opens();
            if opens > s.ideal {
                s.ideal = opens;
            }
        });
        Permit {
            pacer: self,
            _turn: turn,
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
            // The next send waits a full new interval.
            s.not_before = s.not_before.max(now) + s.interval();
            s.ideal = s.ideal.max(s.not_before);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends as fast as the pacer lets them; returns their start times.
    async fn run(pacer: &Pacer, n: usize) -> Vec<Instant> {
        let mut times = Vec::with_capacity(n);
        for _ in 0..n {
            let permit = pacer.acquire().await;
            times.push(Instant::now());
            permit.commit(1);
        }
        times
    }

    fn busiest_second(times: &[Instant]) -> usize {
        (0..times.len())
            .map(|i| times[i..].iter().take_while(|t| **t < times[i] + WINDOW).count())
            .max()
            .unwrap_or(0)
    }

    #[tokio::test(start_paused = true)]
    async fn no_second_holds_more_than_the_rate_and_five_hundred_take_about_ten_seconds() {
        let pacer = Pacer::new(50.0);
        let times = run(&pacer, 500).await;
        assert!(busiest_second(&times) <= 48, "{}", busiest_second(&times));
        let took = times[499] - times[0];
        assert!(
            took >= Duration::from_millis(10_300) && took <= Duration::from_millis(10_500),
            "{took:?}"
        );
        for pair in times.windows(2) {
            assert!(
                pair[1] - pair[0] >= Duration::from_millis(20),
                "smooth: {:?}",
                pair[1] - pair[0]
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn lost_time_is_made_up_at_twice_the_rate_never_in_a_burst() {
        let pacer = Pacer::new(10.0);
        let mut times = run(&pacer, 5).await;
        // Nothing sent for 3 s (SES was slow, the queue empty...).
        tokio::time::advance(Duration::from_secs(3)).await;
        times.extend(run(&pacer, 30).await);
        assert!(busiest_second(&times) <= 9);
        // A send that starts late (a stall while it waited) is made up by
        // the next one at no more than twice the rate.
        let permit = pacer.acquire().await;
        tokio::time::advance(Duration::from_millis(300)).await;
        permit.commit(1);
        let stalled = Instant::now();
        let after = run(&pacer, 3).await;
        assert!(
            after[0] - stalled < Duration::from_millis(104),
            "{:?}",
            after[0] - stalled
        );
        assert!(after[0] - stalled >= Duration::from_millis(52));
        for pair in times.windows(2) {
            assert!(
                pair[1] - pair[0] >= Duration::from_millis(52),
                "{:?}",
                pair[1] - pair[0]
            );
        }
        // An uncommitted permit costs nothing.
        let before = Instant::now();
        drop(pacer.acquire().await);
        let permit = pacer.acquire().await;
        assert!(Instant::now() - before < Duration::from_secs(1));
        permit.commit(1);
    }

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
}
