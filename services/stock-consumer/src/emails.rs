//! The emails stock-consumer decides: arrival notices (PLAYBOOK 2), delay
//! notices (5) and back in stock for carts (9), with deterministic dedup
//! keys, and the multi-row record of each decision in `email_decisions`.

use backorder_core::domain::{DedupKey, ReasonForCustomer};
use backorder_core::events::internal::{EmailCategory, EmailRequested, Recipient};
use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;

pub const ARRIVAL_NOTICE: &str = "arrival_notice";
pub const DELAY_NOTICE: &str = "delay_notice";
pub const BACK_IN_STOCK: &str = "back_in_stock";
pub const ETA_KNOWN: &str = "eta_known";

/// A customer as stored, owning its fields (rows come from SQL).
#[derive(Debug, Clone)]
pub struct Customer {
    pub customer_id: String,
    pub email: String,
    pub name: String,
    pub locale: String,
}

impl Customer {
    fn recipient(&self) -> Recipient<'_> {
        Recipient {
            customer_id: &self.customer_id,
            email: &self.email,
            name: &self.name,
            locale: &self.locale,
        }
    }
}

/// One item of an arrival notice.
#[derive(Debug, Serialize)]
pub struct ArrivedItem {
    pub product_name: String,
    pub quantity: i32,
}

#[derive(Debug, Serialize)]
struct ArrivalData<'a> {
    order_id: &'a str,
    items: &'a [ArrivedItem],
    /// Not known at arrival: tracking follows with the shipped email.
    tracking_number: Option<&'a str>,
}

/// "It arrived, we are preparing your order": one per order and arrival,
/// whatever number of its lines the arrival served.
pub fn arrival_notice(
    arrival_id: &str,
    order_id: &str,
    customer: &Customer,
    items: &[ArrivedItem],
    occurred_at: DateTime<Utc>,
) -> EmailRequested {
    EmailRequested::compose(
        &DedupKey::new("arrival", &[order_id, arrival_id]),
        ARRIVAL_NOTICE,
        EmailCategory::Transactional,
        customer.recipient(),
        Some(order_id),
        None,
        occurred_at,
        &ArrivalData {
            order_id,
            items,
            tracking_number: None,
        },
    )
}

/// One delayed line as the delay notice shows it.
#[derive(Debug, Serialize)]
pub struct DelayedItem {
    pub product_name: String,
    pub quantity: i32,
    /// What the customer was told before (`YYYY-MM-DD`; absent: unknown).
    pub previous_from: Option<String>,
    pub previous_to: Option<String>,
    /// The line's signed one-click cancel link.
    pub cancel_url: Option<String>,
}

/// What a delay notice says.
#[derive(Debug, Serialize)]
pub struct DelayData<'a> {
    pub order_id: &'a str,
    pub items: &'a [DelayedItem],
    /// The new window (`YYYY-MM-DD`); both absent: we do not know yet.
    pub window_from: Option<String>,
    pub window_to: Option<String>,
    /// Why, as this customer should read it (coded and/or free text).
    pub reason: ReasonForCustomer,
}

/// The apology for a slip of `sku` in `order_id`, one per order, SKU and
/// ETA version: replays and debounced bursts of changes give one key.
pub fn delay_notice(
    sku: &str,
    eta_version: i64,
    customer: &Customer,
    data: &DelayData<'_>,
    occurred_at: DateTime<Utc>,
) -> EmailRequested {
    EmailRequested::compose(
        &DedupKey::new("delay-notice", &[data.order_id, sku, &eta_version.to_string()]),
        DELAY_NOTICE,
        EmailCategory::Transactional,
        customer.recipient(),
        Some(data.order_id),
        None,
        occurred_at,
        data,
    )
}

#[derive(Debug, Serialize)]
struct EtaKnownData<'a> {
    order_id: &'a str,
    items: &'a [DelayedItem],
    window_from: Option<String>,
    window_to: Option<String>,
}

/// "We told you the date was not known yet: now it is": one per order, SKU
/// and ETA version.
pub fn eta_known(
    sku: &str,
    eta_version: i64,
    order_id: &str,
    customer: &Customer,
    items: &[DelayedItem],
    window: crate::policy::Window,
    occurred_at: DateTime<Utc>,
) -> EmailRequested {
    EmailRequested::compose(
        &DedupKey::new("eta-known", &[order_id, sku, &eta_version.to_string()]),
        ETA_KNOWN,
        EmailCategory::Transactional,
        customer.recipient(),
        Some(order_id),
        None,
        occurred_at,
        &EtaKnownData {
            order_id,
            items,
            window_from: iso(window.from),
            window_to: iso(window.to),
        },
    )
}

#[derive(Debug, Serialize)]
struct BackInStockData<'a> {
    sku: &'a str,
    product_name: &'a str,
    price_minor: Option<i64>,
    currency: Option<&'a str>,
}

/// Marketing: the carted item is available again; once per cart and SKU.
#[allow(clippy::too_many_arguments)]
pub fn back_in_stock(
    cart_id: &str,
    sku: &str,
    customer: &Customer,
    product_name: &str,
    price_minor: Option<i64>,
    currency: Option<&str>,
    occurred_at: DateTime<Utc>,
) -> EmailRequested {
    EmailRequested::compose(
        &DedupKey::new("back-in-stock", &[cart_id, sku]),
        BACK_IN_STOCK,
        EmailCategory::Marketing,
        customer.recipient(),
        None,
        None,
        occurred_at,
        &BackInStockData {
            sku,
            product_name,
            price_minor,
            currency,
        },
    )
}

/// `YYYY-MM-DD` for templates (their `date` filter formats it per language).
pub fn iso(date: Option<NaiveDate>) -> Option<String> {
    date.map(|d| d.format("%Y-%m-%d").to_string())
}
