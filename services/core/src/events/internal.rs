//! The topics the services own: `email-requests.v1`,
//! `backorder-delays.v1` and `backorder-decisions.v1`.

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use super::orders::non_empty;
use super::{AvroRecord, topic_event, wire_time};
use crate::domain::{DedupKey, EmailAddress, Locale, ValidationError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EmailCategory {
    /// Order status: always sent unless the address hard-bounced or complained.
    Transactional,
    /// Carts, win-back: only with consent, always with one-click unsubscribe.
    Marketing,
}

impl EmailCategory {
    pub fn as_str(self) -> &'static str {
        match self {
            EmailCategory::Transactional => "TRANSACTIONAL",
            EmailCategory::Marketing => "MARKETING",
        }
    }
}

/// A decided email, handed to the sender (key: dedup_key).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailRequested {
    pub event_id: String,
    /// When the triggering input event happened, for event-to-SES latency.
    #[serde(with = "wire_time::millis")]
    pub occurred_at: DateTime<Utc>,
    pub dedup_key: String,
    pub template: String,
    pub locale: String,
    pub recipient: String,
    pub recipient_name: String,
    pub customer_id: String,
    #[serde(default)]
    pub order_id: Option<String>,
    pub category: EmailCategory,
    #[serde(default)]
    pub campaign: Option<String>,
    /// Template data as a JSON object.
    pub data_json: String,
}

impl AvroRecord for EmailRequested {
    const FULL_NAME: &'static str = "com.backorder.internal.EmailRequested";
    fn key(&self) -> &str {
        &self.dedup_key
    }
    fn validate(&self) -> Result<(), ValidationError> {
        non_empty("event_id", &self.event_id)?;
        if DedupKey::parse(&self.dedup_key).is_none() {
            return Err(ValidationError::new("dedup_key", "must match [A-Za-z0-9_-]{1,256}"));
        }
        non_empty("template", &self.template)?;
        Locale::parse("locale", &self.locale)?;
        EmailAddress::parse("recipient", &self.recipient)?;
        match serde_json::from_str::<serde_json::Value>(&self.data_json) {
            Ok(serde_json::Value::Object(_)) => Ok(()),
            _ => Err(ValidationError::new("data_json", "must be a JSON object")),
        }
    }
}

/// Who an email goes to, as stored with the customer.
#[derive(Debug, Clone, Copy)]
pub struct Recipient<'a> {
    pub customer_id: &'a str,
    pub email: &'a str,
    pub name: &'a str,
    pub locale: &'a str,
}

impl EmailRequested {
    /// Builds a request. The event id derives from the dedup key, so a
    /// replayed decision produces an identical record; `data` becomes the
    /// template's JSON object.
    #[allow(clippy::too_many_arguments)]
    pub fn compose(
        dedup_key: &DedupKey,
        template: &str,
        category: EmailCategory,
        to: Recipient<'_>,
        order_id: Option<&str>,
        campaign: Option<&str>,
        occurred_at: DateTime<Utc>,
        data: &impl Serialize,
    ) -> Self {
        Self {
            event_id: uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, dedup_key.as_str().as_bytes()).to_string(),
            occurred_at,
            dedup_key: dedup_key.to_string(),
            template: template.to_string(),
            locale: to.locale.to_string(),
            recipient: to.email.trim().to_string(),
            recipient_name: to.name.to_string(),
            customer_id: to.customer_id.to_string(),
            order_id: order_id.map(str::to_string),
            category,
            campaign: campaign.map(str::to_string),
            // Template data is plain strings and numbers: serializing cannot
            // fail, and `validate` would reject anything but an object.
            data_json: serde_json::to_string(data).unwrap_or_else(|_| "{}".to_string()),
        }
    }
}

topic_event! {
    /// Everything `email-requests.v1` carries.
    EmailRequestEvent {
        Requested(EmailRequested),
    }
}

/// A significant slip of an order's backordered lines (key: order_id):
/// segmentation turns it into one email that is both the apology and a
/// time-limited offer. One event per order and SKU slip, carrying every
/// slipped line of the order, so several lines make one campaign.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackorderDelayed {
    pub event_id: String,
    #[serde(with = "wire_time::millis")]
    pub occurred_at: DateTime<Utc>,
    pub order_id: String,
    pub customer_id: String,
    /// The SKU whose ETA slipped.
    pub sku: String,
    /// The new window; both `None`: not known.
    #[serde(with = "wire_time::opt_date", default)]
    pub new_promise_from: Option<NaiveDate>,
    #[serde(with = "wire_time::opt_date", default)]
    pub new_promise_to: Option<NaiveDate>,
    /// Value of the slipped lines in minor units of `currency`.
    pub delayed_value_minor: i64,
    pub currency: String,
    /// The ETA change that caused it; part of dedup keys.
    pub eta_version: i64,
    /// A `DelayReasonCode` symbol, or [`OVERDUE_REASON`]; `None`: only the
    /// free text says why.
    #[serde(default)]
    pub reason_code: Option<String>,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub remedy: String,
    /// BCP 47 language of `reason` and `remedy`.
    #[serde(default = "default_reason_locale")]
    pub reason_locale: String,
    /// Every slipped line of the order (empty only in events written with
    /// schema version 1, which named one line that segmentation looks up).
    #[serde(default)]
    pub lines: Vec<DelayedLine>,
}

/// The reason code of a promise whose window passed with no stock and no news.
pub const OVERDUE_REASON: &str = "OVERDUE";

fn default_reason_locale() -> String {
    "en".to_string()
}

/// One slipped line, with what its customer had been told.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DelayedLine {
    pub line_id: String,
    pub sku: String,
    pub product_name: String,
    pub quantity: i32,
    pub unit_price_minor: i64,
    #[serde(with = "wire_time::opt_date", default)]
    pub old_promise_from: Option<NaiveDate>,
    #[serde(with = "wire_time::opt_date", default)]
    pub old_promise_to: Option<NaiveDate>,
}

impl AvroRecord for BackorderDelayed {
    const FULL_NAME: &'static str = "com.backorder.internal.BackorderDelayed";
    fn key(&self) -> &str {
        &self.order_id
    }
}

topic_event! {
    /// Everything `backorder-delays.v1` carries.
    BackorderDelayEvent {
        Delayed(BackorderDelayed),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DecisionKind {
    Switch,
    Credit,
    Expedite,
    Cancel,
}

/// What a customer chose, for the OMS to execute (key: order_id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackorderDecision {
    pub event_id: String,
    #[serde(with = "wire_time::millis")]
    pub occurred_at: DateTime<Utc>,
    pub order_id: String,
    pub line_id: String,
    pub offer_id: String,
    pub decision: DecisionKind,
    #[serde(default)]
    pub alternative_sku: Option<String>,
    #[serde(default)]
    pub credit_minor: Option<i64>,
    pub currency: String,
}

impl AvroRecord for BackorderDecision {
    const FULL_NAME: &'static str = "com.backorder.internal.BackorderDecision";
    fn key(&self) -> &str {
        &self.order_id
    }
}

topic_event! {
    /// Everything `backorder-decisions.v1` carries (what the OMS consumes).
    BackorderDecisionEvent {
        Decision(BackorderDecision),
    }
}
