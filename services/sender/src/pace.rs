//! Pacing SES calls: a token bucket with a burst of one, counted in
//! recipients, whose rate follows SES.
//!
//! Every send reserves the next free slot; slots are `1 / rate` seconds
//! apart, so no window of one second ever holds more than `rate` sends
//! (when SES counts them the way we do). The ceiling is SES's MaxSendRate
//! (from `GetAccount`, refreshed) or the configured rate. When SES
//! throttles anyway (another sender on the account, a lower real limit),
//! the rate halves, at most once a second, down to one per second, and
//! climbs back by a quarter per calm second: additive-increase
//! multiplicative-decrease, like TCP.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

const CALM_BEFORE_RAISE: Duration = Duration::from_secs(1);
/// Sends already in flight at the old pace get throttled too: cut again
/// only after this long.
const CUT_SPACING: Duration = Duration::from_millis(200);
const MIN_RATE: f64 = 1.0;
/// Slots are spaced for 96% of the rate: SES counts sends when they reach
/// it, after network and scheduling jitter, and 4% of a second (40 ms over
/// any one-second window) keeps a late send from making a window hold one
/// more than the limit. (The performance target is 95% of the SES rate.)
pub const HEADROOM: f64 = 0.96;

#[derive(Debug)]
struct State {
    /// The earliest instant the next send may start.
    next: Instant,
    /// Sends per second now.
    rate: f64,
    /// What SES allows (or the configured rate).
    ceiling: f64,
    /// Last cut or raise, to space adjustments.
    last_change: Instant,
}

#[derive(Debug)]
pub struct Pacer {
    state: Mutex<State>,
}

impl Pacer {
    pub fn new(rate: f64) -> Self {
        let rate = rate.max(MIN_RATE);
        let now = Instant::now();
        let pacer = Self {
            state: Mutex::new(State {
                next: now,
                rate,
                ceiling: rate,
                last_change: now,
            }),
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

    /// Reserves the slot for `recipients` sends; returns when it starts.
    pub fn reserve(&self, recipients: u32) -> Instant {
        self.with(|s| {
            let now = Instant::now();
            let slot = s.next.max(now);
            s.next = slot + Duration::from_secs_f64(f64::from(recipients.max(1)) / (s.rate * HEADROOM));
            slot
        })
    }

    /// Waits for a slot (cancel-safe: a dropped wait only wastes the slot).
    pub async fn acquire(&self, recipients: u32) {
        tokio::time::sleep_until(self.reserve(recipients)).await;
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
            // Sends already reserved at the old pace keep their slots; the
            // next one waits a full new interval.
            s.next = s.next.max(now) + Duration::from_secs_f64(1.0 / (s.rate * HEADROOM));
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn slots_are_spaced_by_the_rate_and_no_second_holds_more() {
        let pacer = Pacer::new(50.0);
        let start = Instant::now();
        let slots: Vec<Instant> = (0..500).map(|_| pacer.reserve(1)).collect();
        let last = slots[slots.len() - 1] - start;
        // 499 intervals of 1 / (50 * HEADROOM) s.
        assert!(
            last >= Duration::from_millis(10_390) && last <= Duration::from_millis(10_400),
            "{last:?}"
        );
        for (i, slot) in slots.iter().enumerate() {
            let in_window = slots[i..]
                .iter()
                .take_while(|s| **s < *slot + Duration::from_secs(1))
                .count();
            assert!(in_window <= 50, "{in_window} sends in one second");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn throttling_halves_the_rate_and_calm_restores_it() {
        let pacer = Pacer::new(40.0);
        assert!(pacer.throttled());
        assert_eq!(pacer.rate(), 20.0);
        // In-flight sends throttled in the same second do not cut again.
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
