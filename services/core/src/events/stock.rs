//! `stock.v1` (key: sku).

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use super::orders::{currency, non_empty};
use super::{AvroRecord, topic_event, wire_time};
use crate::domain::ValidationError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Season {
    Spring,
    Summer,
    Autumn,
    Winter,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProductUpserted {
    pub event_id: String,
    #[serde(with = "wire_time::millis")]
    pub occurred_at: DateTime<Utc>,
    pub sku: String,
    pub name: String,
    pub category: String,
    pub need: String,
    /// Empty: all year.
    pub seasons: Vec<Season>,
    pub price_minor: i64,
    pub currency: String,
    pub available_quantity: i32,
}

impl AvroRecord for ProductUpserted {
    const FULL_NAME: &'static str = "com.backorder.stock.ProductUpserted";
    fn key(&self) -> &str {
        &self.sku
    }
    fn validate(&self) -> Result<(), ValidationError> {
        non_empty("event_id", &self.event_id)?;
        non_empty("sku", &self.sku)?;
        currency("currency", &self.currency)?;
        if self.price_minor < 0 {
            return Err(ValidationError::new("price_minor", "must not be negative"));
        }
        if self.available_quantity < 0 {
            return Err(ValidationError::new("available_quantity", "must not be negative"));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupplierEtaChanged {
    pub event_id: String,
    #[serde(with = "wire_time::millis")]
    pub occurred_at: DateTime<Utc>,
    pub sku: String,
    /// Both `None`: the supplier does not know.
    #[serde(with = "wire_time::opt_date", default)]
    pub eta_from: Option<NaiveDate>,
    #[serde(with = "wire_time::opt_date", default)]
    pub eta_to: Option<NaiveDate>,
    /// What happened, free text in `reason_locale`'s language.
    pub reason: String,
    /// What is being done about it, same language.
    pub remedy: String,
    /// What happened, as a code every email can state in the customer's
    /// language (schema version 2; absent in version 1 events).
    #[serde(default)]
    pub reason_code: Option<DelayReasonCode>,
    /// BCP 47 language of `reason` and `remedy`; `None` means English.
    #[serde(default)]
    pub reason_locale: Option<String>,
}

/// Why a supplier's ETA moved, as `SupplierEtaChanged.reason_code` names it.
/// Published in `schemas/stock.v1/SupplierEtaChanged.avsc` and
/// `docs/producers.md`; each has a sentence in every email language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DelayReasonCode {
    ProductionDelay,
    SupplierShortage,
    CustomsHold,
    ShippingDelay,
    QualityCheck,
    DemandSurge,
    Other,
}

impl DelayReasonCode {
    pub fn as_str(self) -> &'static str {
        match self {
            DelayReasonCode::ProductionDelay => "PRODUCTION_DELAY",
            DelayReasonCode::SupplierShortage => "SUPPLIER_SHORTAGE",
            DelayReasonCode::CustomsHold => "CUSTOMS_HOLD",
            DelayReasonCode::ShippingDelay => "SHIPPING_DELAY",
            DelayReasonCode::QualityCheck => "QUALITY_CHECK",
            DelayReasonCode::DemandSurge => "DEMAND_SURGE",
            DelayReasonCode::Other => "OTHER",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Some(match raw {
            "PRODUCTION_DELAY" => Self::ProductionDelay,
            "SUPPLIER_SHORTAGE" => Self::SupplierShortage,
            "CUSTOMS_HOLD" => Self::CustomsHold,
            "SHIPPING_DELAY" => Self::ShippingDelay,
            "QUALITY_CHECK" => Self::QualityCheck,
            "DEMAND_SURGE" => Self::DemandSurge,
            "OTHER" => Self::Other,
            _ => return None,
        })
    }
}

impl AvroRecord for SupplierEtaChanged {
    const FULL_NAME: &'static str = "com.backorder.stock.SupplierEtaChanged";
    fn key(&self) -> &str {
        &self.sku
    }
    fn validate(&self) -> Result<(), ValidationError> {
        non_empty("event_id", &self.event_id)?;
        non_empty("sku", &self.sku)?;
        if let Some(locale) = &self.reason_locale {
            crate::domain::Locale::parse("reason_locale", locale)?;
        }
        match (self.eta_from, self.eta_to) {
            (Some(from), Some(to)) if from > to => Err(ValidationError::new("eta_from", "must not be after eta_to")),
            (Some(_), None) | (None, Some(_)) => Err(ValidationError::new(
                "eta_to",
                "give both eta_from and eta_to, or neither (unknown)",
            )),
            _ => Ok(()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StockArrival {
    pub event_id: String,
    #[serde(with = "wire_time::millis")]
    pub occurred_at: DateTime<Utc>,
    pub arrival_id: String,
    pub sku: String,
    pub quantity: i32,
    pub warehouse: String,
}

impl AvroRecord for StockArrival {
    const FULL_NAME: &'static str = "com.backorder.stock.StockArrival";
    fn key(&self) -> &str {
        &self.sku
    }
    fn validate(&self) -> Result<(), ValidationError> {
        non_empty("event_id", &self.event_id)?;
        non_empty("arrival_id", &self.arrival_id)?;
        non_empty("sku", &self.sku)?;
        if self.quantity <= 0 {
            return Err(ValidationError::new(
                "quantity",
                format!("must be positive, got {}", self.quantity),
            ));
        }
        Ok(())
    }
}

topic_event! {
    /// Everything `stock.v1` carries.
    StockEvent {
        ProductUpserted(ProductUpserted),
        SupplierEtaChanged(SupplierEtaChanged),
        StockArrival(StockArrival),
    }
}
