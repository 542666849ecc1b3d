//! Units held for lines that are cancelled go back to the SKU's queue.
//!
//! Every cancel path (an `OrderCancelled` from the OMS in orders-consumer,
//! a one-click cancellation or switch in offers-consumer) calls
//! [`release_for_cancelled_lines`] in its own transaction, before it marks
//! the lines. A backordered line an arrival already served (`allocated`)
//! gives its units back to the SKU's reserve (`products.reserved_quantity`),
//! and a waiting line that leaves the queue may let the reserve serve the
//! line behind it. Either way a durable timer due at once
//! ([`RELEASE_TIMER`], committed with the cancellation) hands the reserve
//! to stock-consumer's allocator, which serves the next waiting lines in
//! order (each gets its arrival notice) or, when none waits, makes the
//! units available stock and tells carts (back in stock). The units never
//! sit in limbo: they are in the reserve from the cancelling commit on, and
//! a supplier arrival of the SKU in between takes them like any reserve.

use chrono::{DateTime, Utc};
use tokio_postgres::GenericClient;

use crate::db::{DbError, Statements};
use crate::order_lines::LineStatus;
use crate::timers::{self, Timer};

/// Timer kind that hands a SKU's reserve to the allocator after a
/// cancellation (fired by stock-consumer).
pub const RELEASE_TIMER: &str = "stock-release";

/// The release timer of one cancelled line. One per line, ever: a line is
/// cancelled once (later cancellations of it release nothing).
pub fn release_key(sku: &str, order_id: &str, line_id: &str) -> String {
    format!("{RELEASE_TIMER}:{sku}:{order_id}:{line_id}")
}

/// The allocation that hands the reserve on after `order_id`/`line_id` was
/// cancelled (the `stock_arrivals` row the arrival notices are built from).
pub fn release_arrival_id(order_id: &str, line_id: &str) -> String {
    format!("release:{order_id}:{line_id}")
}

/// Releases what the named lines (all of the order's when empty) hold,
/// before they are marked cancelled: the units of served lines go to the
/// SKU's reserve, and a release timer is scheduled for every SKU whose
/// reserve then holds units. Lines whose cancellation was already asked
/// for released theirs then. Returns the timers scheduled.
pub async fn release_for_cancelled_lines<C: GenericClient + Statements>(
    client: &C,
    order_id: &str,
    line_ids: &[String],
    now: DateTime<Utc>,
) -> Result<Vec<String>, DbError> {
    let rows = client
        .query(
            "SELECT line_id, sku, quantity, status FROM order_lines
              WHERE order_id = $1 AND (cardinality($2::text[]) = 0 OR line_id = ANY($2))
                AND availability = 'BACKORDERED' AND status = ANY($3) AND cancel_requested_at IS NULL
              ORDER BY line_id
                FOR UPDATE",
            &[
                &order_id,
                &line_ids,
                &vec![LineStatus::Open.as_str(), LineStatus::Allocated.as_str()],
            ],
        )
        .await?;
    let mut scheduled = Vec::new();
    for row in rows {
        let line_id: String = row.try_get(0)?;
        let sku: String = row.try_get(1)?;
        let quantity: i32 = row.try_get(2)?;
        let status: String = row.try_get(3)?;
        let freed = if LineStatus::parse(&status) == Some(LineStatus::Allocated) {
            quantity
        } else {
            0
        };
        client
            .execute(
                "INSERT INTO products (sku) VALUES ($1) ON CONFLICT (sku) DO NOTHING",
                &[&sku],
            )
            .await?;
        let reserve: i32 = client
            .query_one(
                "UPDATE products SET reserved_quantity = reserved_quantity + $2, updated_at = $3
                  WHERE sku = $1 RETURNING reserved_quantity",
                &[&sku, &freed, &now],
            )
            .await?
            .try_get(0)?;
        if reserve == 0 {
            continue;
        }
        let key = release_key(&sku, order_id, &line_id);
        timers::schedule(
            client,
            &Timer {
                key: key.clone(),
                kind: RELEASE_TIMER.to_string(),
                due_at: now,
                payload: serde_json::json!({"sku": sku, "order_id": order_id, "line_id": line_id}),
            },
        )
        .await?;
        metrics::counter!("backorder_stock_units_released_total").increment(u64::try_from(freed).unwrap_or(0));
        scheduled.push(key);
    }
    Ok(scheduled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_the_sku_and_the_line() {
        assert_eq!(release_key("LAMP", "o-1", "l2"), "stock-release:LAMP:o-1:l2");
        assert_eq!(release_arrival_id("o-1", "l2"), "release:o-1:l2");
    }
}
