//! `offer-responses.v1` (key: offer_id).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::orders::non_empty;
use super::{AvroRecord, topic_event, wire_time};
use crate::domain::ValidationError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OfferChoice {
    SwitchToAlternative,
    TakeStoreCredit,
    KeepWaitingExpedited,
    Cancel,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OfferResponse {
    pub event_id: String,
    #[serde(with = "wire_time::millis")]
    pub occurred_at: DateTime<Utc>,
    pub offer_id: String,
    pub token: String,
    pub choice: OfferChoice,
    #[serde(default)]
    pub alternative_sku: Option<String>,
}

impl AvroRecord for OfferResponse {
    const FULL_NAME: &'static str = "com.backorder.offers.OfferResponse";
    fn key(&self) -> &str {
        &self.offer_id
    }
    fn validate(&self) -> Result<(), ValidationError> {
        non_empty("event_id", &self.event_id)?;
        non_empty("offer_id", &self.offer_id)?;
        non_empty("token", &self.token)?;
        if self.choice == OfferChoice::SwitchToAlternative && self.alternative_sku.is_none() {
            return Err(ValidationError::new(
                "alternative_sku",
                "a switch names the alternative sku",
            ));
        }
        Ok(())
    }
}

/// A customer asked to cancel one backordered line (key: order_id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CancellationRequested {
    pub event_id: String,
    #[serde(with = "wire_time::millis")]
    pub occurred_at: DateTime<Utc>,
    pub order_id: String,
    pub line_id: String,
    /// The cancel link's signature (`backorder_core::links`).
    pub token: String,
}

impl AvroRecord for CancellationRequested {
    const FULL_NAME: &'static str = "com.backorder.offers.CancellationRequested";
    fn key(&self) -> &str {
        &self.order_id
    }
    fn validate(&self) -> Result<(), ValidationError> {
        non_empty("event_id", &self.event_id)?;
        non_empty("order_id", &self.order_id)?;
        non_empty("line_id", &self.line_id)?;
        non_empty("token", &self.token)
    }
}

topic_event! {
    /// Everything `offer-responses.v1` carries.
    OfferResponseEvent {
        Response(OfferResponse),
        Cancellation(CancellationRequested),
    }
}
