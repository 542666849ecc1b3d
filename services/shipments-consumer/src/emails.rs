//! The emails of a shipment's life: shipped (PLAYBOOK 3), the delivered
//! follow-up (PLAYBOOK 4) and the win-back (PLAYBOOK 10). Each has a
//! deterministic dedup key from what it is about, so a replay requests the
//! same email again and the sender keeps one.

use backorder_core::domain::DedupKey;
use backorder_core::domain::product_kind;
use backorder_core::events::internal::{EmailCategory, EmailRequested, Recipient};
use backorder_core::events::shipments::ShipmentDispatched;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::store::{LineView, OrderContact};

pub const SHIPPED: &str = "shipped";
pub const DELIVERED_FOLLOWUP: &str = "delivered_followup";
pub const WIN_BACK: &str = "win_back";

#[derive(Debug, Serialize)]
struct Item<'a> {
    product_name: &'a str,
    quantity: i32,
}

#[derive(Debug, Serialize)]
struct PendingItem<'a> {
    product_name: &'a str,
    quantity: i32,
    backordered: bool,
    /// `YYYY-MM-DD`; both absent on a backordered line: not known yet.
    window_from: Option<String>,
    window_to: Option<String>,
}

#[derive(Debug, Serialize)]
struct ShippedData<'a> {
    order_id: &'a str,
    carrier: &'a str,
    tracking_number: &'a str,
    tracking_url: &'a str,
    items: Vec<Item<'a>>,
    pending: Vec<PendingItem<'a>>,
}

fn recipient(contact: &OrderContact) -> Recipient<'_> {
    Recipient {
        customer_id: &contact.customer_id,
        email: &contact.email,
        name: &contact.name,
        locale: &contact.locale,
    }
}

fn items(lines: &[LineView]) -> Vec<Item<'_>> {
    lines
        .iter()
        .map(|l| Item {
            product_name: &l.product_name,
            quantity: l.quantity,
        })
        .collect()
}

/// The shipped email: what is in this parcel, how to track it, and (for a
/// partial shipment) what is still to come and when.
pub fn shipped(
    shipment: &ShipmentDispatched,
    contact: &OrderContact,
    shipped: &[LineView],
    pending: &[LineView],
) -> EmailRequested {
    let data = ShippedData {
        order_id: &shipment.order_id,
        carrier: &shipment.carrier,
        tracking_number: &shipment.tracking_number,
        tracking_url: &shipment.tracking_url,
        items: items(shipped),
        pending: pending
            .iter()
            .map(|l| PendingItem {
                product_name: &l.product_name,
                quantity: l.quantity,
                backordered: l.backordered,
                window_from: l.promised_from.map(|d| d.to_string()),
                window_to: l.promised_to.map(|d| d.to_string()),
            })
            .collect(),
    };
    EmailRequested::compose(
        &DedupKey::new("shipped", &[&shipment.order_id, &shipment.shipment_id]),
        SHIPPED,
        EmailCategory::Transactional,
        recipient(contact),
        Some(&shipment.order_id),
        None,
        shipment.occurred_at,
        &data,
    )
}

#[derive(Debug, Serialize)]
struct FollowupData<'a> {
    order_id: &'a str,
    items: Vec<Item<'a>>,
}

/// The "how do you like it?" email, some days after delivery.
pub fn delivered_followup(
    order_id: &str,
    shipment_id: &str,
    contact: &OrderContact,
    delivered: &[LineView],
    due_at: DateTime<Utc>,
) -> EmailRequested {
    EmailRequested::compose(
        &DedupKey::new("delivered-followup", &[order_id, shipment_id]),
        DELIVERED_FOLLOWUP,
        EmailCategory::Transactional,
        recipient(contact),
        Some(order_id),
        None,
        due_at,
        &FollowupData {
            order_id,
            items: items(delivered),
        },
    )
}

#[derive(Debug, Serialize)]
struct WinBackProduct<'a> {
    product_name: &'a str,
    /// Guidance key for the template (see `product_kind`).
    kind: &'static str,
}

#[derive(Debug, Serialize)]
struct WinBackData<'a> {
    order_id: &'a str,
    products: Vec<WinBackProduct<'a>>,
}

/// The win-back email (marketing: the sender adds the unsubscribe link and
/// respects suppression), tailored to the backordered products bought.
pub fn win_back(
    order_id: &str,
    contact: &OrderContact,
    backordered: &[LineView],
    due_at: DateTime<Utc>,
) -> EmailRequested {
    EmailRequested::compose(
        &DedupKey::new("win-back", &[&contact.customer_id, order_id]),
        WIN_BACK,
        EmailCategory::Marketing,
        recipient(contact),
        Some(order_id),
        Some("win-back"),
        due_at,
        &WinBackData {
            order_id,
            products: backordered
                .iter()
                .map(|l| WinBackProduct {
                    product_name: &l.product_name,
                    kind: product_kind(l.category.as_deref()),
                })
                .collect(),
        },
    )
}
