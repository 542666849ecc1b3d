//! Currencies: how many digits a currency's minor unit has (ISO 4217), so
//! amounts in minor units are computed, rounded and shown correctly. The one
//! table of the project: the sender's money formatting, the operator CLI's
//! reports and the campaign amounts all read it.

/// Digits after the decimal point of `currency` (ISO 4217 "minor unit").
/// Unknown codes are taken as 2, the common case.
pub fn minor_unit_digits(currency: &str) -> u32 {
    match currency {
        "BIF" | "CLP" | "DJF" | "GNF" | "ISK" | "JPY" | "KMF" | "KRW" | "PYG" | "RWF" | "UGX" | "UYI" | "VND"
        | "VUV" | "XAF" | "XOF" | "XPF" => 0,
        "BHD" | "IQD" | "JOD" | "KWD" | "LYD" | "OMR" | "TND" => 3,
        _ => 2,
    }
}

/// `major` (e.g. 5.0 meaning 5.00 EUR) in minor units of `currency`,
/// rounded half away from zero.
pub fn major_to_minor(major: f64, currency: &str) -> i64 {
    let scale = 10_f64.powi(minor_unit_digits(currency) as i32);
    (major * scale).round() as i64
}

/// `percent`% of `minor`, rounded half away from zero to whole minor units.
pub fn share_of(minor: i64, percent: f64) -> i64 {
    (minor as f64 * percent / 100.0).round() as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_minor_units() {
        assert_eq!(minor_unit_digits("EUR"), 2);
        assert_eq!(minor_unit_digits("JPY"), 0);
        assert_eq!(minor_unit_digits("KRW"), 0);
        assert_eq!(minor_unit_digits("IDR"), 2);
        assert_eq!(minor_unit_digits("KWD"), 3);
    }

    #[test]
    fn major_amounts_become_minor_units_of_the_currency() {
        assert_eq!(major_to_minor(5.0, "EUR"), 500);
        assert_eq!(major_to_minor(5.0, "JPY"), 5);
        assert_eq!(major_to_minor(5.0, "KWD"), 5000);
    }

    #[test]
    fn shares_round_half_away_from_zero() {
        assert_eq!(share_of(4995, 10.0), 500);
        assert_eq!(share_of(4994, 10.0), 499);
        assert_eq!(share_of(12_345, 10.0), 1235);
    }
}
