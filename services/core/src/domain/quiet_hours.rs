//! Quiet hours: marketing and nurture emails are not delivered at night in
//! the recipient's local time; they wait for the morning (never dropped).
//! The window and the time zones come from the policy file
//! (`[quiet_hours]`); this module only does the calendar arithmetic.

use chrono::{DateTime, Days, LocalResult, NaiveDateTime, NaiveTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

/// A nightly window of whole local hours, `[start, end)`; it wraps past
/// midnight when `start > end` (21 to 8). `start == end` means no window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuietWindow {
    /// The local hour (0-23) from which emails wait.
    pub start_hour: u32,
    /// The local hour (0-23) at which waiting emails go out.
    pub end_hour: u32,
}

impl QuietWindow {
    /// Whether the local hour `hour` lies inside the window.
    fn contains(&self, hour: u32) -> bool {
        match self.start_hour.cmp(&self.end_hour) {
            std::cmp::Ordering::Equal => false,
            std::cmp::Ordering::Less => (self.start_hour..self.end_hour).contains(&hour),
            std::cmp::Ordering::Greater => hour >= self.start_hour || hour < self.end_hour,
        }
    }

    /// `None` when an email may go out at `now` in `zone`; otherwise the
    /// next allowed instant: the window's end, local time, on the right day.
    pub fn next_allowed(&self, now: DateTime<Utc>, zone: Tz) -> Option<DateTime<Utc>> {
        let local = now.with_timezone(&zone);
        if !self.contains(local.hour()) {
            return None;
        }
        // Before midnight in a window that wraps, the end is tomorrow.
        let mut date = local.date_naive();
        if self.start_hour > self.end_hour && local.hour() >= self.start_hour {
            date = date.checked_add_days(Days::new(1))?;
        }
        let end = NaiveDateTime::new(date, NaiveTime::from_hms_opt(self.end_hour, 0, 0)?);
        Some(match zone.from_local_datetime(&end) {
            LocalResult::Single(at) | LocalResult::Ambiguous(at, _) => at.with_timezone(&Utc),
            // The end falls into a daylight-saving gap: an hour later
            // exists whatever the zone's rules.
            LocalResult::None => zone
                .from_local_datetime(&(end + chrono::Duration::hours(1)))
                .earliest()?
                .with_timezone(&Utc),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NIGHT: QuietWindow = QuietWindow {
        start_hour: 21,
        end_hour: 8,
    };

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn half_past_eleven_in_seoul_waits_for_eight_the_next_morning() {
        // 23:30 KST on 1 December is 14:30 UTC.
        let until = NIGHT.next_allowed(utc("2026-12-01T14:30:00Z"), Tz::Asia__Seoul);
        assert_eq!(until, Some(utc("2026-12-01T23:00:00Z")));
    }

    #[test]
    fn after_midnight_waits_for_the_same_morning_and_daytime_goes_at_once() {
        // 03:00 KST on 2 December.
        let until = NIGHT.next_allowed(utc("2026-12-01T18:00:00Z"), Tz::Asia__Seoul);
        assert_eq!(until, Some(utc("2026-12-01T23:00:00Z")));
        // 08:00 and 20:59 KST are allowed.
        assert_eq!(NIGHT.next_allowed(utc("2026-12-01T23:00:00Z"), Tz::Asia__Seoul), None);
        assert_eq!(NIGHT.next_allowed(utc("2026-12-02T11:59:00Z"), Tz::Asia__Seoul), None);
        assert!(
            NIGHT
                .next_allowed(utc("2026-12-02T12:00:00Z"), Tz::Asia__Seoul)
                .is_some()
        );
    }

    #[test]
    fn a_window_inside_one_day_and_an_empty_one() {
        let midday = QuietWindow {
            start_hour: 12,
            end_hour: 14,
        };
        assert_eq!(
            midday.next_allowed(utc("2026-06-01T12:30:00Z"), Tz::UTC),
            Some(utc("2026-06-01T14:00:00Z"))
        );
        assert_eq!(midday.next_allowed(utc("2026-06-01T14:00:00Z"), Tz::UTC), None);
        let none = QuietWindow {
            start_hour: 8,
            end_hour: 8,
        };
        assert_eq!(none.next_allowed(utc("2026-06-01T03:00:00Z"), Tz::UTC), None);
    }

    #[test]
    fn the_end_follows_daylight_saving_time() {
        // 22:00 CET on 28 March 2026; 08:00 the next day is CEST (UTC+2).
        let until = NIGHT.next_allowed(utc("2026-03-28T21:00:00Z"), Tz::Europe__Berlin);
        assert_eq!(until, Some(utc("2026-03-29T06:00:00Z")));
    }
}
