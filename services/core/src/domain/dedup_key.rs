use std::fmt;

/// The deterministic identity of one email (DESIGN invariant 1): built from
/// what the email is about, so every replay produces the same key. Valid as
/// an SES EmailTag value: `[A-Za-z0-9_-]`, at most 256 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DedupKey(String);

const MAX_LEN: usize = 256;

impl DedupKey {
    /// Joins `kind` and the ids with `_`. Characters outside the allowed
    /// set become `-`; when that (or truncation) changed anything, a UUIDv5
    /// of the exact input is appended so distinct inputs never collide.
    pub fn new(kind: &str, parts: &[&str]) -> Self {
        let raw = std::iter::once(kind)
            .chain(parts.iter().copied())
            .collect::<Vec<_>>()
            .join("_");
        let cleaned: String = raw
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        if cleaned == raw && raw.len() <= MAX_LEN {
            return Self(raw);
        }
        let digest = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, raw.as_bytes())
            .simple()
            .to_string();
        let keep = MAX_LEN - digest.len() - 1;
        let prefix: String = cleaned.chars().take(keep).collect();
        Self(format!("{prefix}_{digest}"))
    }

    /// Accepts a key that arrived on the wire, if it is valid.
    pub fn parse(raw: &str) -> Option<Self> {
        let ok = !raw.is_empty()
            && raw.len() <= MAX_LEN
            && raw.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        ok.then(|| Self(raw.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DedupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_ids_are_kept_readable() {
        let k = DedupKey::new("order-confirmation", &["o-123"]);
        assert_eq!(k.as_str(), "order-confirmation_o-123");
    }

    #[test]
    fn odd_characters_are_replaced_without_collisions() {
        let a = DedupKey::new("x", &["a.b"]);
        let b = DedupKey::new("x", &["a-b"]);
        assert_ne!(a, b);
        assert!(DedupKey::parse(a.as_str()).is_some());
    }

    #[test]
    fn long_keys_stay_within_the_ses_limit() {
        let long = "z".repeat(1000);
        let k = DedupKey::new("x", &[&long]);
        assert!(k.as_str().len() <= 256);
        assert!(DedupKey::parse(k.as_str()).is_some());
    }
}
