//! Serde adapters for instants and dates.
//!
//! On the wire (Avro) an instant is `timestamp-millis` (an i64) and a date
//! is `date` (days since 1970-01-01, an i32); in the CLI's JSON lines they
//! are RFC 3339 strings and `YYYY-MM-DD`. Serialization always writes the
//! Avro form; deserialization accepts both.

use std::fmt;

use chrono::{DateTime, NaiveDate, Utc};
use serde::de::{self, Visitor};
use serde::{Deserializer, Serializer};

const EPOCH: NaiveDate = match NaiveDate::from_ymd_opt(1970, 1, 1) {
    Some(date) => date,
    None => NaiveDate::MIN,
};

/// Days since the epoch, as Avro's `date` counts them.
pub fn date_to_days(date: NaiveDate) -> i32 {
    // Dates we handle are within ±5.8 million years of 1970.
    i32::try_from((date - EPOCH).num_days()).unwrap_or(i32::MAX)
}

pub fn days_to_date(days: i64) -> Option<NaiveDate> {
    EPOCH.checked_add_signed(chrono::Duration::days(days))
}

/// `DateTime<Utc>` as `timestamp-millis`.
pub mod millis {
    use super::*;

    pub fn serialize<S: Serializer>(value: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64(value.timestamp_millis())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        d.deserialize_any(InstantVisitor)
    }

    struct InstantVisitor;

    impl Visitor<'_> for InstantVisitor {
        type Value = DateTime<Utc>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an RFC 3339 instant such as 2026-11-24T10:00:00Z, or epoch milliseconds")
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            DateTime::from_timestamp_millis(v).ok_or_else(|| E::custom("instant out of range"))
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            let v = i64::try_from(v).map_err(|_| E::custom("instant out of range"))?;
            self.visit_i64(v)
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            DateTime::parse_from_rfc3339(v)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| E::custom(format!("{v:?} is not an RFC 3339 instant such as 2026-11-24T10:00:00Z")))
        }
    }
}

struct DateVisitor;

impl Visitor<'_> for DateVisitor {
    type Value = NaiveDate;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a date such as 2026-12-24, or days since 1970-01-01")
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        days_to_date(v).ok_or_else(|| E::custom("date out of range"))
    }

    fn visit_i32<E: de::Error>(self, v: i32) -> Result<Self::Value, E> {
        self.visit_i64(i64::from(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        let v = i64::try_from(v).map_err(|_| E::custom("date out of range"))?;
        self.visit_i64(v)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        NaiveDate::parse_from_str(v, "%Y-%m-%d")
            .map_err(|_| E::custom(format!("{v:?} is not a date such as 2026-12-24")))
    }
}

/// `Option<NaiveDate>` as a nullable Avro `date`.
pub mod opt_date {
    use super::*;

    pub fn serialize<S: Serializer>(value: &Option<NaiveDate>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(date) => s.serialize_some(&date_to_days(*date)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<NaiveDate>, D::Error> {
        d.deserialize_option(OptionalDate)
    }

    struct OptionalDate;

    impl<'de> Visitor<'de> for OptionalDate {
        type Value = Option<NaiveDate>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("null or a date such as 2026-12-24")
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(DateVisitor).map(Some)
        }
    }
}
