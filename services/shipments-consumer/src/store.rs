//! SQL of shipments and of what the lifecycle emails show. Writes are
//! idempotent: a replayed event changes nothing.

use backorder_core::events::shipments::{ShipmentDelivered, ShipmentDispatched};
use backorder_core::tokio_postgres::{Error, Row, Transaction};
use chrono::{DateTime, NaiveDate, Utc};

/// Who an order's emails go to.
#[derive(Debug, Clone)]
pub struct OrderContact {
    pub customer_id: String,
    pub email: String,
    pub name: String,
    pub locale: String,
    /// The order carries the `backorder` tag.
    pub backorder: bool,
    pub cancelled: bool,
}

/// The contact of an order, if the order is stored.
pub async fn order_contact(tx: &Transaction<'_>, order_id: &str) -> Result<Option<OrderContact>, Error> {
    let row = tx
        .query_opt(
            "SELECT c.customer_id, c.email, c.name, c.locale, 'backorder' = ANY(o.tags), o.cancelled_at IS NOT NULL
               FROM orders o JOIN customers c ON c.customer_id = o.customer_id
              WHERE o.order_id = $1",
            &[&order_id],
        )
        .await?;
    row.map(|r| {
        Ok(OrderContact {
            customer_id: r.try_get(0)?,
            email: r.try_get(1)?,
            name: r.try_get(2)?,
            locale: r.try_get(3)?,
            backorder: r.try_get(4)?,
            cancelled: r.try_get(5)?,
        })
    })
    .transpose()
}

/// Records the shipment and marks its lines shipped (unless cancelled).
pub async fn record_dispatch(tx: &Transaction<'_>, s: &ShipmentDispatched) -> Result<(), Error> {
    tx.execute(
        "INSERT INTO shipments (shipment_id, order_id, line_ids, carrier, tracking_number, tracking_url,
                                dispatched_at, event_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (shipment_id) DO NOTHING",
        &[
            &s.shipment_id,
            &s.order_id,
            &s.line_ids,
            &s.carrier,
            &s.tracking_number,
            &s.tracking_url,
            &s.occurred_at,
            &s.event_id,
        ],
    )
    .await?;
    tx.execute(
        "UPDATE order_lines SET status = 'shipped', shipment_id = $3, shipped_at = $4
          WHERE order_id = $1 AND line_id = ANY($2) AND status IN ('open', 'allocated')",
        &[&s.order_id, &s.line_ids, &s.shipment_id, &s.occurred_at],
    )
    .await?;
    Ok(())
}

/// One order line as the emails show it.
#[derive(Debug, Clone)]
pub struct LineView {
    pub line_id: String,
    pub product_name: String,
    pub category: Option<String>,
    pub quantity: i32,
    pub backordered: bool,
    pub promised_from: Option<NaiveDate>,
    pub promised_to: Option<NaiveDate>,
}

fn line_view(r: &Row) -> Result<LineView, Error> {
    let availability: &str = r.try_get(4)?;
    Ok(LineView {
        line_id: r.try_get(0)?,
        product_name: r.try_get(1)?,
        category: r.try_get(2)?,
        quantity: r.try_get(3)?,
        backordered: availability == "BACKORDERED",
        promised_from: r.try_get(5)?,
        promised_to: r.try_get(6)?,
    })
}

const LINE_COLUMNS: &str = "line_id, product_name, category, quantity, availability, promised_from, promised_to";

/// The named lines of an order that were not cancelled.
pub async fn lines(tx: &Transaction<'_>, order_id: &str, line_ids: &[String]) -> Result<Vec<LineView>, Error> {
    let rows = tx
        .query(
            &format!(
                "SELECT {LINE_COLUMNS} FROM order_lines
                  WHERE order_id = $1 AND line_id = ANY($2) AND cancel_requested_at IS NULL
                  ORDER BY line_id"
            ),
            &[&order_id, &line_ids],
        )
        .await?;
    rows.iter().map(line_view).collect()
}

/// The lines of an order still waiting to ship (not shipped, not cancelled).
pub async fn pending_lines(tx: &Transaction<'_>, order_id: &str) -> Result<Vec<LineView>, Error> {
    let rows = tx
        .query(
            &format!(
                "SELECT {LINE_COLUMNS} FROM order_lines
                  WHERE order_id = $1 AND status IN ('open', 'allocated') AND cancel_requested_at IS NULL
                  ORDER BY line_id"
            ),
            &[&order_id],
        )
        .await?;
    rows.iter().map(line_view).collect()
}

/// The backordered lines of an order that were not cancelled.
pub async fn backordered_lines(tx: &Transaction<'_>, order_id: &str) -> Result<Vec<LineView>, Error> {
    let rows = tx
        .query(
            &format!(
                "SELECT {LINE_COLUMNS} FROM order_lines
                  WHERE order_id = $1 AND availability = 'BACKORDERED' AND cancel_requested_at IS NULL
                  ORDER BY line_id"
            ),
            &[&order_id],
        )
        .await?;
    rows.iter().map(line_view).collect()
}

/// A stored shipment.
#[derive(Debug, Clone)]
pub struct Shipment {
    pub order_id: String,
    pub line_ids: Vec<String>,
}

pub async fn shipment(tx: &Transaction<'_>, shipment_id: &str) -> Result<Option<Shipment>, Error> {
    let row = tx
        .query_opt(
            "SELECT order_id, line_ids FROM shipments WHERE shipment_id = $1",
            &[&shipment_id],
        )
        .await?;
    row.map(|r| {
        Ok(Shipment {
            order_id: r.try_get(0)?,
            line_ids: r.try_get(1)?,
        })
    })
    .transpose()
}

/// The first recording of a delivery: how long the order took and whether
/// its promise was kept. `None` when the delivery was already recorded.
#[derive(Debug, Clone, Copy)]
pub struct DeliveryFacts {
    pub order_to_delivery_seconds: f64,
    /// Every backordered line of the shipment left by the end of its first
    /// promised window; `None` when none carried a promise.
    pub promise_kept: Option<bool>,
}

/// Records the delivery of a shipment once.
pub async fn record_delivery(tx: &Transaction<'_>, d: &ShipmentDelivered) -> Result<Option<DeliveryFacts>, Error> {
    let row = tx
        .query_opt(
            "UPDATE shipments s
                SET delivered_at = $2,
                    promise_kept = (SELECT bool_and((s.dispatched_at AT TIME ZONE 'UTC')::date <= l.first_promised_to)
                                      FROM order_lines l
                                     WHERE l.order_id = s.order_id AND l.line_id = ANY(s.line_ids)
                                       AND l.availability = 'BACKORDERED' AND l.first_promised_to IS NOT NULL)
              WHERE s.shipment_id = $1 AND s.delivered_at IS NULL
          RETURNING s.promise_kept, (SELECT o.placed_at FROM orders o WHERE o.order_id = s.order_id)",
            &[&d.shipment_id, &d.occurred_at],
        )
        .await?;
    row.map(|r| {
        let placed_at: DateTime<Utc> = r.try_get(1)?;
        let seconds = (d.occurred_at - placed_at).num_seconds().max(0);
        Ok(DeliveryFacts {
            order_to_delivery_seconds: seconds as f64,
            promise_kept: r.try_get(0)?,
        })
    })
    .transpose()
}

/// Whether the order's backordered lines are now complete: none is waiting
/// or on its way any more (each delivered or cancelled), and at least one
/// was delivered. Only then has the customer received what they waited
/// for, and the win-back (PLAYBOOK 10) may be scheduled.
pub async fn backorders_complete(tx: &Transaction<'_>, order_id: &str) -> Result<bool, Error> {
    let row = tx
        .query_one(
            "SELECT count(*) FILTER (WHERE l.status <> 'cancelled' AND s.delivered_at IS NULL),
                    count(*) FILTER (WHERE l.status <> 'cancelled' AND s.delivered_at IS NOT NULL)
               FROM order_lines l
               LEFT JOIN shipments s ON s.shipment_id = l.shipment_id
              WHERE l.order_id = $1 AND l.availability = 'BACKORDERED'",
            &[&order_id],
        )
        .await?;
    let (waiting, delivered): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
    Ok(waiting == 0 && delivered > 0)
}

/// When the customer's last win-back was decided, if any.
pub async fn last_win_back(
    tx: &Transaction<'_>,
    customer_id: &str,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, Error> {
    let row = tx
        .query_one(
            "SELECT max(d.decided_at) FROM email_decisions d JOIN orders o ON o.order_id = d.order_id
              WHERE d.template = 'win_back' AND o.customer_id = $1",
            &[&customer_id],
        )
        .await?;
    row.try_get(0)
}
