//! Decides the order confirmation (PLAYBOOK email 1): a receipt of the
//! items, for each backordered line an honest ship window (a range, or an
//! explicit "not known yet"), what happens next, and how to reach support.

use backorder_core::domain::DedupKey;
use backorder_core::events::internal::{EmailCategory, EmailRequested, Recipient};
use backorder_core::events::orders::{Availability, OrderPlaced};
use backorder_core::links::LinkSigner;
use serde::Serialize;

use crate::store::Promise;

pub const TEMPLATE: &str = "order_confirmation";

/// What the confirmation template receives.
#[derive(Debug, Serialize)]
struct ConfirmationData<'a> {
    order_id: &'a str,
    customer_name: &'a str,
    currency: &'a str,
    total_minor: i64,
    has_backorder: bool,
    lines: Vec<LineData<'a>>,
}

#[derive(Debug, Serialize)]
struct LineData<'a> {
    product_name: &'a str,
    quantity: i32,
    unit_price_minor: i64,
    backordered: bool,
    /// `YYYY-MM-DD`; both absent on a backordered line: not known yet.
    window_from: Option<String>,
    window_to: Option<String>,
    /// A backordered line's signed one-click cancel link.
    cancel_url: Option<String>,
}

/// The email request for a newly placed order. `promises` holds the
/// recorded promise of each backordered line, by line id.
pub fn order_confirmation(order: &OrderPlaced, promises: &[(String, Promise)], signer: &LinkSigner) -> EmailRequested {
    let lines = order
        .lines
        .iter()
        .map(|line| {
            let backordered = line.availability == Availability::Backordered;
            let promise = promises
                .iter()
                .find(|(id, _)| *id == line.line_id)
                .map(|(_, p)| *p)
                .filter(|_| backordered);
            LineData {
                product_name: &line.product_name,
                quantity: line.quantity,
                unit_price_minor: line.unit_price_minor,
                backordered,
                window_from: promise.and_then(|p| p.from).map(|d| d.to_string()),
                window_to: promise.and_then(|p| p.to).map(|d| d.to_string()),
                cancel_url: backordered
                    .then(|| signer.cancel_url(&order.order_id, &line.line_id, &order.customer.customer_id)),
            }
        })
        .collect();
    let data = ConfirmationData {
        order_id: &order.order_id,
        customer_name: &order.customer.name,
        currency: &order.currency,
        total_minor: order.total_minor,
        has_backorder: order.lines.iter().any(|l| l.availability == Availability::Backordered),
        lines,
    };
    let customer = &order.customer;
    EmailRequested::compose(
        &DedupKey::new("order-confirmation", &[&order.order_id]),
        TEMPLATE,
        EmailCategory::Transactional,
        Recipient {
            customer_id: &customer.customer_id,
            email: &customer.email,
            name: &customer.name,
            locale: &customer.locale,
        },
        Some(&order.order_id),
        None,
        order.occurred_at,
        &data,
    )
}
