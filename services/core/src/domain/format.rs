//! Money and dates the way each supported language writes them (CLDR
//! conventions for en, de, ko, tr, id). Small on purpose: a full ICU is a
//! heavy dependency for five languages and two formats.

use chrono::{Datelike, NaiveDate};

/// Digits after the decimal point: the project's one ISO 4217 table.
fn exponent(currency: &str) -> u32 {
    super::currency::minor_unit_digits(currency)
}

fn symbol(currency: &str) -> Option<&'static str> {
    Some(match currency {
        "EUR" => "€",
        "USD" => "$",
        "GBP" => "£",
        "KRW" => "₩",
        "TRY" => "₺",
        "IDR" => "Rp",
        "JPY" => "¥",
        _ => return None,
    })
}

/// (thousands separator, decimal separator, symbol after the amount)
fn conventions(language: &str) -> (char, char, bool) {
    match language {
        "de" => ('.', ',', true),
        "tr" | "id" => ('.', ',', false),
        _ => (',', '.', false),
    }
}

/// Formats `minor` units of `currency` for `language`, e.g. `€1,234.50`
/// (en), `1.234,50 €` (de), `₩12,000` (ko), `₺1.234,50` (tr).
pub fn money(language: &str, minor: i64, currency: &str) -> String {
    let exp = exponent(currency);
    let scale = 10_i64.pow(exp);
    let negative = minor < 0;
    let abs = minor.unsigned_abs();
    let (major, fraction) = (abs / scale as u64, abs % scale as u64);
    let (thousands, decimal, symbol_after) = conventions(language);
    let digits = major.to_string();
    let mut grouped = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            grouped.push(thousands);
        }
        grouped.push(c);
    }
    let mut amount = grouped;
    if exp > 0 {
        amount.push(decimal);
        amount.push_str(&format!("{fraction:0width$}", width = exp as usize));
    }
    let sign = if negative { "-" } else { "" };
    match symbol(currency) {
        Some(sym) if symbol_after => format!("{sign}{amount}\u{a0}{sym}"),
        Some(sym) => format!("{sign}{sym}{amount}"),
        None => format!("{sign}{amount}\u{a0}{currency}"),
    }
}

const MONTHS_EN: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];
const MONTHS_DE: [&str; 12] = [
    "Januar",
    "Februar",
    "März",
    "April",
    "Mai",
    "Juni",
    "Juli",
    "August",
    "September",
    "Oktober",
    "November",
    "Dezember",
];
const MONTHS_TR: [&str; 12] = [
    "Ocak", "Şubat", "Mart", "Nisan", "Mayıs", "Haziran", "Temmuz", "Ağustos", "Eylül", "Ekim", "Kasım", "Aralık",
];
const MONTHS_ID: [&str; 12] = [
    "Januari",
    "Februari",
    "Maret",
    "April",
    "Mei",
    "Juni",
    "Juli",
    "Agustus",
    "September",
    "Oktober",
    "November",
    "Desember",
];

/// A date as people read it in `language`: `24 Dec 2026`,
/// `24. Dezember 2026`, `2026년 12월 24일`, `24 Aralık 2026`,
/// `24 Desember 2026`.
pub fn long_date(language: &str, date: NaiveDate) -> String {
    let (d, m, y) = (date.day(), date.month0() as usize, date.year());
    match language {
        "de" => format!("{d}. {} {y}", MONTHS_DE[m]),
        "ko" => format!("{y}년 {}월 {d}일", m + 1),
        "tr" => format!("{d} {} {y}", MONTHS_TR[m]),
        "id" => format!("{d} {} {y}", MONTHS_ID[m]),
        _ => format!("{d} {} {y}", MONTHS_EN[m]),
    }
}

/// An instant as people read it in `language`, in the recipient's time
/// zone: `4 Dec 2026, 10:00 (Europe/Berlin)`, `4. Dezember 2026, 10:00 Uhr`,
/// `2026년 12월 4일 10:00`, `4 Aralık 2026 10:00`, `4 Desember 2026 pukul 10.00`.
pub fn long_datetime(language: &str, at: chrono::DateTime<chrono_tz::Tz>) -> String {
    let date = long_date(language, at.date_naive());
    let zone = at.timezone().name();
    match language {
        "de" => format!("{date}, {} Uhr ({zone})", at.format("%H:%M")),
        "ko" => format!("{date} {} ({zone})", at.format("%H:%M")),
        "tr" => format!("{date} {} ({zone})", at.format("%H:%M")),
        "id" => format!("{date} pukul {} ({zone})", at.format("%H.%M")),
        _ => format!("{date}, {} ({zone})", at.format("%H:%M")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_follows_each_language() {
        assert_eq!(money("en", 123450, "EUR"), "€1,234.50");
        assert_eq!(money("de", 123450, "EUR"), "1.234,50\u{a0}€");
        assert_eq!(money("ko", 12000, "KRW"), "₩12,000");
        assert_eq!(money("tr", 123450, "TRY"), "₺1.234,50");
        assert_eq!(money("id", 5, "IDR"), "Rp0,05");
        assert_eq!(money("en", 1235, "JPY"), "¥1,235");
        assert_eq!(money("en", 999, "CHF"), "9.99\u{a0}CHF");
        assert_eq!(money("en", -500, "USD"), "-$5.00");
    }

    #[test]
    fn dates_follow_each_language() {
        let date = NaiveDate::from_ymd_opt(2026, 12, 24).unwrap();
        assert_eq!(long_date("en", date), "24 Dec 2026");
        assert_eq!(long_date("de", date), "24. Dezember 2026");
        assert_eq!(long_date("ko", date), "2026년 12월 24일");
        assert_eq!(long_date("tr", date), "24 Aralık 2026");
        assert_eq!(long_date("id", date), "24 Desember 2026");
    }

    #[test]
    fn instants_are_shown_in_the_recipients_zone() {
        use chrono::TimeZone;
        let at = chrono::Utc.with_ymd_and_hms(2026, 12, 4, 9, 0, 0).unwrap();
        let berlin = at.with_timezone(&chrono_tz::Europe::Berlin);
        assert_eq!(
            long_datetime("de", berlin),
            "4. Dezember 2026, 10:00 Uhr (Europe/Berlin)"
        );
        let seoul = at.with_timezone(&chrono_tz::Asia::Seoul);
        assert_eq!(long_datetime("ko", seoul), "2026년 12월 4일 18:00 (Asia/Seoul)");
    }
}
