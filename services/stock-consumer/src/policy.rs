//! How a new supplier window compares with what a customer was last told,
//! and the batch sizes of stock work. The thresholds are in the policy file.

use chrono::NaiveDate;

/// Backordered lines allocated per transaction: a 100,000-line restock is
/// many short transactions, never one that holds locks for minutes.
pub const ALLOCATION_CHUNK_LINES: i64 = 5_000;

/// Orders (or carts) per page when the emails of an arrival are produced:
/// memory stays bounded however many customers one arrival reaches.
pub const EMIT_PAGE: i64 = 2_000;

/// Orders handled per firing of a delay timer: a slip of a SKU thousands
/// wait for is told in pages, each its own short transaction, the next page
/// scheduled as a timer due at once.
pub const DELAY_PAGE_ORDERS: i64 = 2_000;

/// A ship window; both ends `None`: not known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub from: Option<NaiveDate>,
    pub to: Option<NaiveDate>,
}

impl Window {
    pub fn is_known(&self) -> bool {
        self.to.is_some()
    }
}

/// What a new supplier window means for a line promised `told`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Same window: nothing to do.
    Unchanged,
    /// Ends no later: the promise moves quietly and the next email that
    /// goes out anyway carries it; no email of its own.
    Improved,
    /// Was "not known yet", now a window: the customer was promised to
    /// hear as soon as it is known, so a short update goes out.
    BecameKnown,
    /// Ends later than told, or becomes unknown: a delay notice, or when
    /// significant a `BackorderDelayed` event (segmentation's one email).
    Slipped { significant: bool },
}

/// A slip is significant when the new `eta_to` is more than
/// `significant_days` past the promise, or the ETA becomes unknown.
pub fn classify(told: Window, new: Window, significant_days: i64) -> Change {
    if told == new {
        return Change::Unchanged;
    }
    match (told.to, new.to) {
        (Some(_), None) => Change::Slipped { significant: true },
        (None, None) => Change::Improved,
        (None, Some(_)) => Change::BecameKnown,
        (Some(old), Some(new_to)) if new_to > old => Change::Slipped {
            significant: (new_to - old).num_days() > significant_days,
        },
        (Some(_), Some(_)) => Change::Improved,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(day: u32) -> Option<NaiveDate> {
        NaiveDate::from_ymd_opt(2026, 12, day)
    }

    fn w(from: u32, to: u32) -> Window {
        Window {
            from: d(from),
            to: d(to),
        }
    }

    const UNKNOWN: Window = Window { from: None, to: None };

    #[test]
    fn slips_are_significant_only_past_seven_days_or_when_unknown() {
        assert_eq!(classify(w(1, 5), w(4, 8), 7), Change::Slipped { significant: false });
        assert_eq!(classify(w(1, 5), w(6, 12), 7), Change::Slipped { significant: false });
        assert_eq!(classify(w(1, 5), w(6, 13), 7), Change::Slipped { significant: true });
        assert_eq!(classify(w(1, 5), UNKNOWN, 7), Change::Slipped { significant: true });
    }

    #[test]
    fn earlier_windows_are_quiet_improvements_and_a_first_window_is_news() {
        assert_eq!(classify(w(10, 20), w(5, 12), 7), Change::Improved);
        assert_eq!(classify(w(10, 20), w(15, 20), 7), Change::Improved);
        assert_eq!(classify(UNKNOWN, w(5, 12), 7), Change::BecameKnown);
        assert_eq!(classify(UNKNOWN, UNKNOWN, 7), Change::Unchanged);
        assert_eq!(classify(w(1, 5), w(1, 5), 7), Change::Unchanged);
    }
}
