//! Domain newtypes that validate at the boundary, so the rest of the code
//! can trust what it holds.

pub mod currency;
mod dedup_key;
mod delay_reason;
mod email_address;
pub mod format;
pub mod geo;
mod locale;
mod product_kind;
pub mod quiet_hours;

pub use dedup_key::DedupKey;
pub use delay_reason::ReasonForCustomer;
pub use email_address::{EmailAddress, mask_email, mask_emails_in_text};
pub use locale::Locale;
pub use product_kind::product_kind;

/// A value that failed validation: which field, and why, in words a person
/// fixing the producer understands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ValidationError {
    pub field: String,
    pub reason: String,
}

impl ValidationError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}
