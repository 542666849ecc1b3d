//! `orders.v1` (key: order_id; carts: cart_id).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{AvroRecord, topic_event, wire_time};
use crate::domain::{EmailAddress, Locale, ValidationError};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Customer {
    pub customer_id: String,
    pub email: String,
    pub name: String,
    pub locale: String,
    #[serde(default)]
    pub country: Option<String>,
}

impl Customer {
    fn validate(&self) -> Result<(), ValidationError> {
        non_empty("customer.customer_id", &self.customer_id)?;
        EmailAddress::parse("customer.email", &self.email)?;
        Locale::parse("customer.locale", &self.locale)?;
        if let Some(country) = &self.country
            && (country.len() != 2 || !country.chars().all(|c| c.is_ascii_alphabetic()))
        {
            return Err(ValidationError::new(
                "customer.country",
                "must be an ISO 3166 alpha-2 code such as DE",
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Availability {
    InStock,
    Backordered,
}

impl Availability {
    pub fn as_str(self) -> &'static str {
        match self {
            Availability::InStock => "IN_STOCK",
            Availability::Backordered => "BACKORDERED",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderLine {
    pub line_id: String,
    pub sku: String,
    pub product_name: String,
    #[serde(default)]
    pub category: Option<String>,
    pub quantity: i32,
    pub unit_price_minor: i64,
    pub availability: Availability,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderPlaced {
    pub event_id: String,
    #[serde(with = "wire_time::millis")]
    pub occurred_at: DateTime<Utc>,
    pub order_id: String,
    pub customer: Customer,
    pub lines: Vec<OrderLine>,
    pub currency: String,
    pub total_minor: i64,
}

impl AvroRecord for OrderPlaced {
    const FULL_NAME: &'static str = "com.backorder.orders.OrderPlaced";
    fn key(&self) -> &str {
        &self.order_id
    }
    fn validate(&self) -> Result<(), ValidationError> {
        non_empty("event_id", &self.event_id)?;
        non_empty("order_id", &self.order_id)?;
        self.customer.validate()?;
        currency("currency", &self.currency)?;
        if self.lines.is_empty() {
            return Err(ValidationError::new("lines", "an order needs at least one line"));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, line) in self.lines.iter().enumerate() {
            let field = |name: &str| format!("lines[{i}].{name}");
            non_empty(&field("line_id"), &line.line_id)?;
            non_empty(&field("sku"), &line.sku)?;
            if !seen.insert(line.line_id.as_str()) {
                return Err(ValidationError::new(
                    field("line_id"),
                    "line ids must be unique within an order",
                ));
            }
            if line.quantity <= 0 {
                return Err(ValidationError::new(
                    field("quantity"),
                    format!("must be positive, got {}", line.quantity),
                ));
            }
            if line.unit_price_minor < 0 {
                return Err(ValidationError::new(field("unit_price_minor"), "must not be negative"));
            }
        }
        if self.total_minor < 0 {
            return Err(ValidationError::new("total_minor", "must not be negative"));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderCancelled {
    pub event_id: String,
    #[serde(with = "wire_time::millis")]
    pub occurred_at: DateTime<Utc>,
    pub order_id: String,
    /// Empty: the whole order.
    pub line_ids: Vec<String>,
    pub reason: String,
}

impl AvroRecord for OrderCancelled {
    const FULL_NAME: &'static str = "com.backorder.orders.OrderCancelled";
    fn key(&self) -> &str {
        &self.order_id
    }
    fn validate(&self) -> Result<(), ValidationError> {
        non_empty("event_id", &self.event_id)?;
        non_empty("order_id", &self.order_id)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CartAbandoned {
    pub event_id: String,
    #[serde(with = "wire_time::millis")]
    pub occurred_at: DateTime<Utc>,
    pub cart_id: String,
    pub customer: Customer,
    pub skus: Vec<String>,
}

impl AvroRecord for CartAbandoned {
    const FULL_NAME: &'static str = "com.backorder.orders.CartAbandoned";
    fn key(&self) -> &str {
        &self.cart_id
    }
    fn validate(&self) -> Result<(), ValidationError> {
        non_empty("event_id", &self.event_id)?;
        non_empty("cart_id", &self.cart_id)?;
        self.customer.validate()?;
        if self.skus.is_empty() {
            return Err(ValidationError::new("skus", "an abandoned cart needs at least one sku"));
        }
        Ok(())
    }
}

topic_event! {
    /// Everything `orders.v1` carries.
    OrderEvent {
        Placed(OrderPlaced),
        Cancelled(OrderCancelled),
        CartAbandoned(CartAbandoned),
    }
}

pub(crate) fn non_empty(field: &str, value: &str) -> Result<(), ValidationError> {
    if value.trim().is_empty() {
        Err(ValidationError::new(field, "must not be empty"))
    } else {
        Ok(())
    }
}

pub(crate) fn currency(field: &str, value: &str) -> Result<(), ValidationError> {
    if value.len() == 3 && value.chars().all(|c| c.is_ascii_uppercase()) {
        Ok(())
    } else {
        Err(ValidationError::new(
            field,
            format!("{value:?} is not an ISO 4217 code such as EUR"),
        ))
    }
}
