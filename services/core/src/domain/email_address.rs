use std::fmt;

use super::ValidationError;

/// An email address that passed a deliberately small syntax check: SES is
/// the final judge, this only keeps obvious garbage out of the ledger.
/// Its `Debug` and `Display` are masked so it never lands in a log whole.
#[derive(Clone, PartialEq, Eq)]
pub struct EmailAddress(String);

impl EmailAddress {
    pub fn parse(field: &str, raw: &str) -> Result<Self, ValidationError> {
        let trimmed = raw.trim();
        let invalid = |why: &str| ValidationError::new(field, why);
        if trimmed.len() > 254 {
            return Err(invalid("email address is longer than 254 characters"));
        }
        if trimmed.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid("email address contains whitespace"));
        }
        let Some((local, domain)) = trimmed.rsplit_once('@') else {
            return Err(invalid("email address has no @"));
        };
        if local.is_empty() || local.contains('@') {
            return Err(invalid("email address has an empty or malformed local part"));
        }
        if domain.len() < 3 || !domain.contains('.') || domain.starts_with('.') || domain.ends_with('.') {
            return Err(invalid("email address has no valid domain"));
        }
        Ok(Self(trimmed.to_string()))
    }

    /// The full address, for SES only.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `j***@e***.com`: enough for a person to recognise, nothing more.
    pub fn masked(&self) -> String {
        mask_email(&self.0)
    }
}

/// Masks any string that looks like an address (the CLI shows ledger rows).
pub fn mask_email(raw: &str) -> String {
    let Some((local, domain)) = raw.rsplit_once('@') else {
        return "***".into();
    };
    let first = |s: &str| s.chars().next().map(String::from).unwrap_or_default();
    let tld = domain.rsplit_once('.').map(|(_, t)| t).unwrap_or("");
    format!("{}***@{}***.{}", first(local), first(domain), tld)
}

/// Masks every address-like word in free text (`user@host.tld`), leaving
/// the rest as it is: SES error messages quote recipients, and such texts
/// end up in logs, the ledger and the CLI.
pub fn mask_emails_in_text(text: &str) -> String {
    let is_delimiter = |c: char| c.is_whitespace() || "<>()[]{}\"',;:=".contains(c);
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if word.contains('@') {
            let address = word.trim_end_matches('.');
            let dots = &word[address.len()..];
            out.push_str(&mask_email(address));
            out.push_str(dots);
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in text.chars() {
        if is_delimiter(c) {
            flush(&mut word, &mut out);
            out.push(c);
        } else {
            word.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

impl fmt::Debug for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EmailAddress({})", self.masked())
    }
}

impl fmt::Display for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_addresses_and_masks_them() {
        let a = EmailAddress::parse("email", "jane.doe@example.com").unwrap();
        assert_eq!(a.masked(), "j***@e***.com");
        assert!(!format!("{a:?}").contains("jane"));
    }

    #[test]
    fn addresses_inside_text_are_masked() {
        assert_eq!(
            mask_emails_in_text("rejected <ada@example.com>, see bob@mail.example.org."),
            "rejected <a***@e***.com>, see b***@m***.org."
        );
        assert_eq!(mask_emails_in_text("no address here"), "no address here");
        assert_eq!(mask_emails_in_text("to:ada@example.com"), "to:a***@e***.com");
        let ses = mask_emails_in_text("Illegal address: <ada.lovelace@example.com>, tried \"bob@x.org\"");
        assert!(ses.starts_with("Illegal address: <a***@e***.com>"), "{ses}");
        assert!(!ses.contains("bob@x.org"), "{ses}");
    }

    #[test]
    fn rejects_garbage_with_the_field_named() {
        for bad in ["", "no-at-sign", "a@b", "two words@example.com", "@example.com"] {
            let err = EmailAddress::parse("customer.email", bad).err();
            assert_eq!(err.map(|e| e.field), Some("customer.email".to_string()), "{bad}");
        }
    }
}
