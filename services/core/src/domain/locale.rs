use super::ValidationError;

/// A BCP 47 language tag as producers send it (`de-DE`, `ko`, `pt-BR`),
/// normalised to `ll` or `ll-RR`. Templates are chosen by its language.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Locale(String);

impl Locale {
    pub fn parse(field: &str, raw: &str) -> Result<Self, ValidationError> {
        let mut parts = raw.trim().split(['-', '_']);
        let language = parts.next().unwrap_or("");
        if !(2..=3).contains(&language.len()) || !language.chars().all(|c| c.is_ascii_alphabetic()) {
            return Err(ValidationError::new(
                field,
                format!("locale {raw:?} is not a BCP 47 tag like de-DE"),
            ));
        }
        let mut tag = language.to_ascii_lowercase();
        if let Some(region) = parts.next().filter(|r| !r.is_empty()) {
            if !region.chars().all(|c| c.is_ascii_alphanumeric()) {
                return Err(ValidationError::new(
                    field,
                    format!("locale {raw:?} has an invalid region"),
                ));
            }
            tag.push('-');
            tag.push_str(&region.to_ascii_uppercase());
        }
        Ok(Self(tag))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The language subtag (`de` for `de-DE`).
    pub fn language(&self) -> &str {
        self.0.split('-').next().unwrap_or("en")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_case_and_separator() {
        let l = Locale::parse("locale", "de_de").unwrap();
        assert_eq!(l.as_str(), "de-DE");
        assert_eq!(l.language(), "de");
        assert!(Locale::parse("locale", "").is_err());
        assert!(Locale::parse("locale", "deutsch").is_err());
    }
}
