//! Where a customer lives, as far as emails care: the hemisphere (which
//! season it is, for alternatives that "make sense now") and the time zone
//! (deadlines shown in local time, quiet hours). Both come from the ISO
//! 3166 country of the order's customer.

use chrono::{Datelike, NaiveDate};
use chrono_tz::Tz;

/// A meteorological season, as `ProductUpserted.seasons` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Season {
    Spring,
    Summer,
    Autumn,
    Winter,
}

impl Season {
    pub fn as_str(self) -> &'static str {
        match self {
            Season::Spring => "SPRING",
            Season::Summer => "SUMMER",
            Season::Autumn => "AUTUMN",
            Season::Winter => "WINTER",
        }
    }
}

/// Countries (ISO 3166 alpha-2) that lie mostly south of the equator, where
/// December is summer. Countries astride the equator count as northern.
const SOUTHERN: &[&str] = &[
    "AO", "AR", "AU", "BO", "BW", "CL", "FJ", "LS", "MG", "MU", "MW", "MZ", "NA", "NZ", "PE", "PG", "PY", "SZ", "TZ",
    "UY", "ZA", "ZM", "ZW", "BR", "ID",
];

/// Whether `country` is in the southern hemisphere (unknown: northern).
pub fn is_southern(country: Option<&str>) -> bool {
    country.is_some_and(|c| SOUTHERN.iter().any(|s| s.eq_ignore_ascii_case(c.trim())))
}

/// The meteorological season on `date` in `country`'s hemisphere.
pub fn season_at(date: NaiveDate, country: Option<&str>) -> Season {
    let northern = match date.month() {
        3..=5 => Season::Spring,
        6..=8 => Season::Summer,
        9..=11 => Season::Autumn,
        _ => Season::Winter,
    };
    if !is_southern(country) {
        return northern;
    }
    match northern {
        Season::Spring => Season::Autumn,
        Season::Summer => Season::Winter,
        Season::Autumn => Season::Spring,
        Season::Winter => Season::Summer,
    }
}

/// The time zone of most of `country`'s population; UTC when unknown. A
/// customer in another zone of a large country sees times up to a few hours
/// off, which quiet hours and deadlines tolerate; an order that names its
/// own `timezone` overrides this.
pub fn timezone_of(country: Option<&str>) -> Tz {
    known_timezone_of(country).unwrap_or(Tz::UTC)
}

/// The time zone of most of `country`'s population, if this table knows
/// the country (quiet hours fall back to the policy's default zone).
pub fn known_timezone_of(country: Option<&str>) -> Option<Tz> {
    let code = country.map(|c| c.trim().to_ascii_uppercase()).unwrap_or_default();
    Some(match code.as_str() {
        "DE" => Tz::Europe__Berlin,
        "AT" => Tz::Europe__Vienna,
        "CH" => Tz::Europe__Zurich,
        "GB" | "UK" => Tz::Europe__London,
        "IE" => Tz::Europe__Dublin,
        "FR" => Tz::Europe__Paris,
        "NL" => Tz::Europe__Amsterdam,
        "BE" => Tz::Europe__Brussels,
        "LU" => Tz::Europe__Luxembourg,
        "ES" => Tz::Europe__Madrid,
        "PT" => Tz::Europe__Lisbon,
        "IT" => Tz::Europe__Rome,
        "DK" => Tz::Europe__Copenhagen,
        "SE" => Tz::Europe__Stockholm,
        "NO" => Tz::Europe__Oslo,
        "FI" => Tz::Europe__Helsinki,
        "PL" => Tz::Europe__Warsaw,
        "CZ" => Tz::Europe__Prague,
        "HU" => Tz::Europe__Budapest,
        "GR" => Tz::Europe__Athens,
        "RO" => Tz::Europe__Bucharest,
        "TR" => Tz::Europe__Istanbul,
        "RU" => Tz::Europe__Moscow,
        "UA" => Tz::Europe__Kyiv,
        "KR" => Tz::Asia__Seoul,
        "JP" => Tz::Asia__Tokyo,
        "CN" => Tz::Asia__Shanghai,
        "HK" => Tz::Asia__Hong_Kong,
        "TW" => Tz::Asia__Taipei,
        "SG" => Tz::Asia__Singapore,
        "MY" => Tz::Asia__Kuala_Lumpur,
        "TH" => Tz::Asia__Bangkok,
        "VN" => Tz::Asia__Ho_Chi_Minh,
        "PH" => Tz::Asia__Manila,
        "ID" => Tz::Asia__Jakarta,
        "IN" => Tz::Asia__Kolkata,
        "AE" => Tz::Asia__Dubai,
        "IL" => Tz::Asia__Jerusalem,
        "SA" => Tz::Asia__Riyadh,
        "AU" => Tz::Australia__Sydney,
        "NZ" => Tz::Pacific__Auckland,
        "US" => Tz::America__New_York,
        "CA" => Tz::America__Toronto,
        "MX" => Tz::America__Mexico_City,
        "BR" => Tz::America__Sao_Paulo,
        "AR" => Tz::America__Argentina__Buenos_Aires,
        "CL" => Tz::America__Santiago,
        "CO" => Tz::America__Bogota,
        "PE" => Tz::America__Lima,
        "ZA" => Tz::Africa__Johannesburg,
        "EG" => Tz::Africa__Cairo,
        "NG" => Tz::Africa__Lagos,
        "KE" => Tz::Africa__Nairobi,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, m, day).unwrap()
    }

    #[test]
    fn december_is_winter_in_germany_and_summer_in_australia() {
        assert_eq!(season_at(d(12, 1), Some("DE")), Season::Winter);
        assert_eq!(season_at(d(12, 1), Some("AU")), Season::Summer);
        assert_eq!(season_at(d(7, 1), Some("au")), Season::Winter);
        assert_eq!(season_at(d(4, 1), None), Season::Spring);
        assert_eq!(season_at(d(10, 1), Some("NZ")), Season::Spring);
    }

    #[test]
    fn time_zones_follow_the_country() {
        assert_eq!(timezone_of(Some("KR")), Tz::Asia__Seoul);
        assert_eq!(timezone_of(Some("de")), Tz::Europe__Berlin);
        assert_eq!(timezone_of(None), Tz::UTC);
        assert_eq!(timezone_of(Some("ZZ")), Tz::UTC);
        assert_eq!(known_timezone_of(Some("ZZ")), None);
    }
}
