//! `shipments.v1` (key: order_id).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::orders::non_empty;
use super::{AvroRecord, topic_event, wire_time};
use crate::domain::ValidationError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShipmentDispatched {
    pub event_id: String,
    #[serde(with = "wire_time::millis")]
    pub occurred_at: DateTime<Utc>,
    pub shipment_id: String,
    pub order_id: String,
    pub line_ids: Vec<String>,
    pub carrier: String,
    pub tracking_number: String,
    pub tracking_url: String,
}

impl AvroRecord for ShipmentDispatched {
    const FULL_NAME: &'static str = "com.backorder.shipments.ShipmentDispatched";
    fn key(&self) -> &str {
        &self.order_id
    }
    fn validate(&self) -> Result<(), ValidationError> {
        non_empty("event_id", &self.event_id)?;
        non_empty("shipment_id", &self.shipment_id)?;
        non_empty("order_id", &self.order_id)?;
        if self.line_ids.is_empty() {
            return Err(ValidationError::new("line_ids", "a shipment carries at least one line"));
        }
        if !(self.tracking_url.starts_with("https://") || self.tracking_url.starts_with("http://")) {
            return Err(ValidationError::new("tracking_url", "must be an http(s) URL"));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShipmentDelivered {
    pub event_id: String,
    #[serde(with = "wire_time::millis")]
    pub occurred_at: DateTime<Utc>,
    pub shipment_id: String,
    pub order_id: String,
}

impl AvroRecord for ShipmentDelivered {
    const FULL_NAME: &'static str = "com.backorder.shipments.ShipmentDelivered";
    fn key(&self) -> &str {
        &self.order_id
    }
    fn validate(&self) -> Result<(), ValidationError> {
        non_empty("event_id", &self.event_id)?;
        non_empty("shipment_id", &self.shipment_id)?;
        non_empty("order_id", &self.order_id)
    }
}

topic_event! {
    /// Everything `shipments.v1` carries.
    ShipmentEvent {
        Dispatched(ShipmentDispatched),
        Delivered(ShipmentDelivered),
    }
}
