//! The injectable clock of DESIGN.md invariant 5.
//!
//! In production `now()` is the system time. With
//! `BACKORDER_CLOCK_CONTROLLED=true` (local stack, demo, tests) it is the
//! system time plus an offset stored in PostgreSQL, so `backorderctl clock
//! advance 14d` moves every service at once and nobody sleeps through days.
//! An offset (rather than a frozen instant) keeps time flowing naturally
//! between moves, which the demo relies on.

use chrono::{DateTime, Duration, Utc};
use deadpool_postgres::Pool;

use crate::db::DbError;

/// Where "now" comes from.
#[derive(Clone)]
pub enum Clock {
    System,
    /// Reads the shared offset from the `clock` table on every call.
    Controlled(Pool),
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Clock::System => f.write_str("Clock::System"),
            Clock::Controlled(_) => f.write_str("Clock::Controlled"),
        }
    }
}

impl Clock {
    pub fn from_settings(controlled: bool, pool: &Pool) -> Self {
        if controlled {
            Clock::Controlled(pool.clone())
        } else {
            Clock::System
        }
    }

    pub async fn now(&self) -> Result<DateTime<Utc>, DbError> {
        match self {
            Clock::System => Ok(Utc::now()),
            Clock::Controlled(pool) => {
                let offset = offset(pool).await?;
                Ok(Utc::now() + offset)
            }
        }
    }
}

/// The controlled clock's current offset from system time.
pub async fn offset(pool: &Pool) -> Result<Duration, DbError> {
    let client = pool.get().await?;
    let row = client.query_opt("SELECT offset_ms FROM clock WHERE id", &[]).await?;
    let ms: i64 = match row {
        Some(row) => row.try_get(0)?,
        None => 0,
    };
    Ok(Duration::milliseconds(ms))
}

/// Sets the controlled clock so that it reads `instant` now.
pub async fn set(pool: &Pool, instant: DateTime<Utc>) -> Result<DateTime<Utc>, DbError> {
    let offset_ms = (instant - Utc::now()).num_milliseconds();
    write_offset(pool, offset_ms).await?;
    Ok(instant)
}

/// Moves the controlled clock forward (or back, with a negative duration).
pub async fn advance(pool: &Pool, by: Duration) -> Result<DateTime<Utc>, DbError> {
    let client = pool.get().await?;
    let row = client
        .query_one(
            "INSERT INTO clock (id, offset_ms) VALUES (true, $1)
             ON CONFLICT (id) DO UPDATE SET offset_ms = clock.offset_ms + EXCLUDED.offset_ms,
                                            updated_at = now()
             RETURNING offset_ms",
            &[&by.num_milliseconds()],
        )
        .await?;
    let ms: i64 = row.try_get(0)?;
    Ok(Utc::now() + Duration::milliseconds(ms))
}

async fn write_offset(pool: &Pool, offset_ms: i64) -> Result<(), DbError> {
    let client = pool.get().await?;
    client
        .execute(
            "INSERT INTO clock (id, offset_ms) VALUES (true, $1)
             ON CONFLICT (id) DO UPDATE SET offset_ms = EXCLUDED.offset_ms, updated_at = now()",
            &[&offset_ms],
        )
        .await?;
    Ok(())
}

/// Parses durations like `14d`, `3h`, `90m`, `45s`, `2w`, or combinations
/// (`1d12h`); a leading `-` moves back.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let (negative, body) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    if body.is_empty() {
        return None;
    }
    let mut total = Duration::zero();
    let mut number = String::new();
    for c in body.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let n: i64 = number.parse().ok()?;
        number.clear();
        total += match c {
            'w' => Duration::weeks(n),
            'd' => Duration::days(n),
            'h' => Duration::hours(n),
            'm' => Duration::minutes(n),
            's' => Duration::seconds(n),
            _ => return None,
        };
    }
    if !number.is_empty() {
        return None;
    }
    Some(if negative { -total } else { total })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_days_hours_and_combinations() {
        assert_eq!(parse_duration("14d"), Some(Duration::days(14)));
        assert_eq!(parse_duration("1d12h"), Some(Duration::hours(36)));
        assert_eq!(parse_duration("-3h"), Some(Duration::hours(-3)));
        assert_eq!(parse_duration("2w"), Some(Duration::days(14)));
        assert_eq!(parse_duration("14"), None);
        assert_eq!(parse_duration("3x"), None);
        assert_eq!(parse_duration(""), None);
    }
}
