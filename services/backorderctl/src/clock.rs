//! `backorderctl clock`: the controlled clock (DESIGN invariant 5) that
//! every service reads when `BACKORDER_CLOCK_CONTROLLED=true`.
//!
//! Arguments are parsed by clap before anything connects, so a bad
//! duration or instant fails at once, with exit code 2.

use std::io::Write;

use backorder_core::clock;
use backorder_core::config::Settings;
use chrono::{DateTime, Duration, SecondsFormat, Utc};
use clap::Subcommand;

use crate::{CtlError, connect, db_error, warn};

/// `clock` subcommands.
#[derive(Debug, Subcommand)]
pub enum ClockCommand {
    /// Print the controlled clock's time and its offset from system time.
    Show,
    /// Set the controlled clock so that it reads INSTANT now; it keeps
    /// running from there.
    Set {
        /// An RFC 3339 instant, e.g. 2026-11-24T09:00:00Z or 2026-11-24T10:00:00+01:00.
        #[arg(value_name = "INSTANT", value_parser = parse_instant)]
        instant: DateTime<Utc>,
    },
    /// Move the controlled clock forward (or back, with a leading `-`).
    #[command(
        after_help = "Examples:\n  backorderctl clock advance 14d\n  backorderctl clock advance 1d12h\n  backorderctl clock advance -3h"
    )]
    Advance {
        /// Whole numbers with units w (weeks), d, h, m, s, combined like
        /// 1d12h; a leading `-` moves back.
        #[arg(value_name = "DURATION", value_parser = parse_duration, allow_hyphen_values = true)]
        by: Duration,
    },
    /// Put the controlled clock back to system time (offset zero).
    Reset,
}

/// clap's parser for `clock advance`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    clock::parse_duration(text.trim()).ok_or_else(|| {
        format!(
            "{text:?} is not a duration: use whole numbers with units w, d, h, m or s, \
             e.g. 14d, 3h, 1d12h or -2h"
        )
    })
}

/// clap's parser for `clock set`.
pub fn parse_instant(text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text.trim())
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("{text:?} is not an RFC 3339 instant such as 2026-11-24T09:00:00Z ({e})"))
}

/// An offset in human units: `+14d 0h`, `-0d 3h`, `+1d 12h 30m`; minutes
/// and seconds only when not zero; rounded to the second.
pub fn format_offset(offset: Duration) -> String {
    let ms = offset.num_milliseconds();
    let sign = if ms < 0 { '-' } else { '+' };
    let total_seconds = (ms.unsigned_abs() + 500) / 1000;
    let days = total_seconds / 86_400;
    let hours = total_seconds % 86_400 / 3_600;
    let minutes = total_seconds % 3_600 / 60;
    let seconds = total_seconds % 60;
    let mut text = format!("{sign}{days}d {hours}h");
    if minutes != 0 || seconds != 0 {
        text.push_str(&format!(" {minutes}m"));
    }
    if seconds != 0 {
        text.push_str(&format!(" {seconds}s"));
    }
    text
}

/// What `clock` prints after every subcommand.
pub fn describe(now: DateTime<Utc>, offset: Duration) -> String {
    format!(
        "now:    {}\noffset: {} from system time",
        now.to_rfc3339_opts(SecondsFormat::Secs, true),
        format_offset(offset)
    )
}

/// Runs `clock`.
pub async fn run(command: ClockCommand, settings: &Settings, out: &mut impl Write) -> Result<(), CtlError> {
    if !settings.clock_controlled {
        warn(
            "BACKORDER_CLOCK_CONTROLLED is not true here; services configured like this read \
             the system clock and ignore the controlled clock",
        );
    }
    let pool = connect(settings).await?;
    match command {
        ClockCommand::Show => {}
        ClockCommand::Set { instant } => {
            clock::set(&pool, instant).await.map_err(db_error(settings))?;
        }
        ClockCommand::Advance { by } => {
            clock::advance(&pool, by).await.map_err(db_error(settings))?;
        }
        ClockCommand::Reset => {
            clock::set(&pool, Utc::now()).await.map_err(db_error(settings))?;
        }
    }
    let offset = clock::offset(&pool).await.map_err(db_error(settings))?;
    writeln!(out, "{}", describe(Utc::now() + offset, offset))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn durations_parse_with_units_and_combinations() {
        assert_eq!(parse_duration("14d"), Ok(Duration::days(14)));
        assert_eq!(parse_duration("3h"), Ok(Duration::hours(3)));
        assert_eq!(parse_duration("1d12h"), Ok(Duration::hours(36)));
        assert_eq!(parse_duration("-2h"), Ok(Duration::hours(-2)));
    }

    #[test]
    fn bad_durations_explain_the_format() {
        for bad in ["", "14", "3x", "d", "1.5d", "fortnight"] {
            let e = parse_duration(bad).unwrap_err();
            assert!(e.contains("is not a duration"), "{bad}: {e}");
            assert!(e.contains("1d12h"), "{bad}: {e}");
        }
    }

    #[test]
    fn instants_are_rfc3339_in_any_zone() {
        let t = parse_instant("2026-11-24T10:00:00+01:00").unwrap();
        assert_eq!(t, Utc.with_ymd_and_hms(2026, 11, 24, 9, 0, 0).unwrap());
        let e = parse_instant("2026-11-24").unwrap_err();
        assert!(e.contains("not an RFC 3339 instant"), "{e}");
    }

    #[test]
    fn offsets_print_in_days_and_hours() {
        assert_eq!(format_offset(Duration::days(14)), "+14d 0h");
        assert_eq!(format_offset(Duration::hours(36)), "+1d 12h");
        assert_eq!(format_offset(Duration::hours(-3)), "-0d 3h");
        assert_eq!(format_offset(Duration::zero()), "+0d 0h");
        assert_eq!(format_offset(Duration::minutes(90)), "+0d 1h 30m");
        assert_eq!(format_offset(Duration::seconds(86_400 + 5)), "+1d 0h 0m 5s");
        // Milliseconds of jitter from `clock set` round away.
        assert_eq!(format_offset(Duration::days(14) - Duration::milliseconds(3)), "+14d 0h");
    }

    #[test]
    fn description_shows_now_and_offset() {
        let now = Utc.with_ymd_and_hms(2026, 12, 8, 9, 0, 0).unwrap();
        assert_eq!(
            describe(now, Duration::days(14)),
            "now:    2026-12-08T09:00:00Z\noffset: +14d 0h from system time"
        );
    }
}
