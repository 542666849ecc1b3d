//! What an email says about why a delivery moved (DESIGN: reason codes).
//! A coded reason is stated by the template in the customer's language; the
//! supplier's free text (`reason`, `remedy`) is in the supplier's language,
//! so it is shown only to customers of that language, or when there is no
//! code at all (then introduced as the supplier's own words).

use serde::Serialize;

use super::Locale;

/// The reason as one email's template data: `code` picks a sentence in the
/// email's language; `text` and `remedy` are present only when this customer
/// should see them; `foreign` asks the template to introduce them as the
/// supplier's words (they are not in the customer's language).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReasonForCustomer {
    pub code: Option<String>,
    pub text: Option<String>,
    pub remedy: Option<String>,
    pub foreign: bool,
}

impl ReasonForCustomer {
    pub fn new(code: Option<&str>, text: &str, remedy: &str, reason_locale: &str, customer_locale: &str) -> Self {
        let same_language = language(reason_locale) == language(customer_locale);
        let show_free_text = code.is_none() || same_language;
        let keep = |s: &str| (show_free_text && !s.trim().is_empty()).then(|| s.trim().to_string());
        Self {
            code: code.map(str::to_string),
            text: keep(text),
            remedy: keep(remedy),
            foreign: !same_language,
        }
    }
}

fn language(locale: &str) -> String {
    Locale::parse("locale", locale)
        .map(|l| l.language().to_string())
        .unwrap_or_else(|_| locale.split(['-', '_']).next().unwrap_or("").to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_coded_reason_hides_free_text_in_another_language() {
        let r = ReasonForCustomer::new(
            Some("CUSTOMS_HOLD"),
            "Held at customs",
            "We filed papers",
            "en",
            "de-DE",
        );
        assert_eq!(r.code.as_deref(), Some("CUSTOMS_HOLD"));
        assert_eq!(r.text, None);
        assert_eq!(r.remedy, None);
    }

    #[test]
    fn a_customer_of_the_texts_language_sees_them() {
        let r = ReasonForCustomer::new(
            Some("CUSTOMS_HOLD"),
            "Held at customs",
            "We filed papers",
            "en",
            "en-GB",
        );
        assert_eq!(r.text.as_deref(), Some("Held at customs"));
        assert!(!r.foreign);
    }

    #[test]
    fn without_a_code_the_free_text_is_shown_as_the_suppliers_words() {
        let r = ReasonForCustomer::new(None, "Held at customs", "", "en", "ko-KR");
        assert_eq!(r.text.as_deref(), Some("Held at customs"));
        assert_eq!(r.remedy, None);
        assert!(r.foreign);
    }
}
