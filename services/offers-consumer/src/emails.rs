//! The decision confirmation (PLAYBOOK 7): what the customer chose and what
//! happens next, in their language, one per decision.

use backorder_core::domain::DedupKey;
use backorder_core::events::internal::{DecisionKind, EmailCategory, EmailRequested, Recipient};
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::decisions::{Alternative, Line};
use crate::handler::kind_str;

pub const DECISION_CONFIRMATION: &str = "decision_confirmation";

/// Who the confirmation goes to.
pub struct Customer<'a> {
    pub customer_id: &'a str,
    pub email: &'a str,
    pub name: &'a str,
    pub locale: &'a str,
}

#[derive(Debug, Serialize)]
struct Item<'a> {
    product_name: &'a str,
    quantity: i32,
}

#[derive(Debug, Serialize)]
struct Switched<'a> {
    product_name: &'a str,
    price_minor: i64,
}

#[derive(Debug, Serialize)]
struct ConfirmationData<'a> {
    order_id: &'a str,
    /// SWITCH, CREDIT, EXPEDITE or CANCEL: which "what happens next".
    kind: &'static str,
    items: Vec<Item<'a>>,
    alternative: Option<Switched<'a>>,
    credit_minor: Option<i64>,
    /// What a cancellation refunds.
    refund_minor: i64,
    currency: &'a str,
}

/// The confirmation of decision `decision_id` (one per decision, ever).
#[allow(clippy::too_many_arguments)]
pub fn decision_confirmation(
    decision_id: &str,
    to: &Customer<'_>,
    order_id: &str,
    kind: DecisionKind,
    lines: &[&Line],
    alternative: Option<&Alternative>,
    credit_minor: Option<i64>,
    currency: &str,
    occurred_at: DateTime<Utc>,
) -> EmailRequested {
    let data = ConfirmationData {
        order_id,
        kind: kind_str(kind),
        items: lines
            .iter()
            .map(|l| Item {
                product_name: &l.product_name,
                quantity: l.quantity,
            })
            .collect(),
        alternative: alternative.map(|a| Switched {
            product_name: &a.product_name,
            price_minor: a.price_minor,
        }),
        credit_minor,
        refund_minor: lines
            .iter()
            .map(|l| l.unit_price_minor.saturating_mul(i64::from(l.quantity)))
            .sum(),
        currency,
    };
    EmailRequested::compose(
        &DedupKey::new("decision", &[order_id, decision_id]),
        DECISION_CONFIRMATION,
        EmailCategory::Transactional,
        Recipient {
            customer_id: to.customer_id,
            email: to.email,
            name: to.name,
            locale: to.locale,
        },
        Some(order_id),
        None,
        occurred_at,
        &data,
    )
}
