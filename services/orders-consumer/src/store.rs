//! SQL for orders, lines, customers and carts. Every write is idempotent
//! (`ON CONFLICT`), so a replayed event changes nothing.

use backorder_core::events::orders::{CartAbandoned, Customer, OrderCancelled, OrderPlaced};
use backorder_core::tokio_postgres::{Error, Transaction};
use chrono::NaiveDate;

/// Tag on orders with at least one backordered line (PLAYBOOK).
pub const ORDER_TAG_BACKORDER: &str = "backorder";
/// Tag on customers who bought backordered goods (PLAYBOOK).
pub const CUSTOMER_TAG_BACKORDER_BUYER: &str = "backorder-buyer";

/// Upserts the customer's contact details; `tag` is added, never removed.
pub async fn upsert_customer(
    tx: &Transaction<'_>,
    customer: &Customer,
    seen_at: chrono::DateTime<chrono::Utc>,
    tag: Option<&str>,
) -> Result<(), Error> {
    let tags: Vec<&str> = tag.into_iter().collect();
    tx.execute(
        "INSERT INTO customers (customer_id, email, name, locale, country, tags, first_seen_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (customer_id) DO UPDATE SET
             email = EXCLUDED.email, name = EXCLUDED.name, locale = EXCLUDED.locale,
             country = COALESCE(EXCLUDED.country, customers.country),
             tags = ARRAY(SELECT DISTINCT unnest(customers.tags || EXCLUDED.tags) ORDER BY 1),
             first_seen_at = LEAST(customers.first_seen_at, EXCLUDED.first_seen_at),
             updated_at = now()",
        &[
            &customer.customer_id,
            &customer.email.trim(),
            &customer.name,
            &customer.locale,
            &customer.country,
            &tags,
            &seen_at,
        ],
    )
    .await?;
    Ok(())
}

/// Records the order and its lines. Returns false when it was already known.
pub async fn insert_order(tx: &Transaction<'_>, order: &OrderPlaced, has_backorder: bool) -> Result<bool, Error> {
    let tags: Vec<&str> = if has_backorder {
        vec![ORDER_TAG_BACKORDER]
    } else {
        vec![]
    };
    let inserted = tx
        .execute(
            "INSERT INTO orders (order_id, customer_id, placed_at, currency, total_minor, tags, event_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (order_id) DO NOTHING",
            &[
                &order.order_id,
                &order.customer.customer_id,
                &order.occurred_at,
                &order.currency,
                &order.total_minor,
                &tags,
                &order.event_id,
            ],
        )
        .await?;
    if inserted == 0 {
        return Ok(false);
    }
    // One multi-row statement for all lines of the order.
    let line_ids: Vec<&str> = order.lines.iter().map(|l| l.line_id.as_str()).collect();
    let skus: Vec<&str> = order.lines.iter().map(|l| l.sku.as_str()).collect();
    let names: Vec<&str> = order.lines.iter().map(|l| l.product_name.as_str()).collect();
    let categories: Vec<Option<&str>> = order.lines.iter().map(|l| l.category.as_deref()).collect();
    let quantities: Vec<i32> = order.lines.iter().map(|l| l.quantity).collect();
    let prices: Vec<i64> = order.lines.iter().map(|l| l.unit_price_minor).collect();
    let availability: Vec<&str> = order.lines.iter().map(|l| l.availability.as_str()).collect();
    tx.execute(
        "INSERT INTO order_lines (order_id, line_id, sku, product_name, category, quantity,
                                  unit_price_minor, availability)
         SELECT $1, * FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::int[],
                                  $7::bigint[], $8::text[])
         ON CONFLICT (order_id, line_id) DO NOTHING",
        &[
            &order.order_id,
            &line_ids,
            &skus,
            &names,
            &categories,
            &quantities,
            &prices,
            &availability,
        ],
    )
    .await?;
    Ok(true)
}

/// The promise recorded for one line: what the customer was told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Promise {
    pub from: Option<NaiveDate>,
    pub to: Option<NaiveDate>,
}

/// Fixes the promise of every backordered line of the order that has none
/// yet, from the SKU's current supplier ETA ("unknown" when there is none),
/// and returns the promise of every backordered line by line id. The first
/// promise is also kept apart (`first_promised_*`), for the on-time metric.
/// On replay the recorded promise is returned unchanged, so the email is the same.
pub async fn promise_backordered_lines(tx: &Transaction<'_>, order_id: &str) -> Result<Vec<(String, Promise)>, Error> {
    let rows = tx
        .query(
            "WITH told AS (
                 UPDATE order_lines l
                    SET promised_from = e.eta_from, promised_to = e.eta_to, promise_told = true,
                        first_promised_from = e.eta_from, first_promised_to = e.eta_to
                   FROM order_lines src
                   LEFT JOIN sku_eta e ON e.sku = src.sku
                  WHERE l.order_id = $1 AND src.order_id = l.order_id AND src.line_id = l.line_id
                    AND l.availability = 'BACKORDERED' AND NOT l.promise_told
              RETURNING l.line_id, l.promised_from, l.promised_to)
             SELECT line_id, promised_from, promised_to FROM told
             UNION ALL
             SELECT line_id, promised_from, promised_to FROM order_lines
              WHERE order_id = $1 AND availability = 'BACKORDERED' AND promise_told
                AND line_id NOT IN (SELECT line_id FROM told)",
            &[&order_id],
        )
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            (
                r.get::<_, String>(0),
                Promise {
                    from: r.get(1),
                    to: r.get(2),
                },
            )
        })
        .collect())
}

/// Cancels the named lines (all when empty) that have not shipped, and
/// records that a cancellation was asked for on every named line, shipped
/// or not (a delivered line cancelled later is a return: it gets no
/// follow-up). Returns how many lines changed status.
pub async fn cancel_lines(tx: &Transaction<'_>, cancel: &OrderCancelled) -> Result<u64, Error> {
    let changed = tx
        .execute(
            "UPDATE order_lines SET status = 'cancelled'
              WHERE order_id = $1 AND status NOT IN ('shipped', 'cancelled')
                AND (cardinality($2::text[]) = 0 OR line_id = ANY($2))",
            &[&cancel.order_id, &cancel.line_ids],
        )
        .await?;
    tx.execute(
        "UPDATE order_lines SET cancel_requested_at = $3
          WHERE order_id = $1 AND cancel_requested_at IS NULL
            AND (cardinality($2::text[]) = 0 OR line_id = ANY($2))",
        &[&cancel.order_id, &cancel.line_ids, &cancel.occurred_at],
    )
    .await?;
    if cancel.line_ids.is_empty() {
        tx.execute(
            "UPDATE orders SET cancelled_at = COALESCE(cancelled_at, $2) WHERE order_id = $1",
            &[&cancel.order_id, &cancel.occurred_at],
        )
        .await?;
    }
    Ok(changed)
}

/// The order's shipments whose every line had its cancellation asked for.
pub async fn fully_cancelled_shipments(tx: &Transaction<'_>, order_id: &str) -> Result<Vec<String>, Error> {
    let rows = tx
        .query(
            "SELECT s.shipment_id FROM shipments s
              WHERE s.order_id = $1
                AND NOT EXISTS (SELECT 1 FROM order_lines l
                                 WHERE l.order_id = s.order_id AND l.line_id = ANY(s.line_ids)
                                   AND l.cancel_requested_at IS NULL)",
            &[&order_id],
        )
        .await?;
    Ok(rows.into_iter().map(|r| r.get(0)).collect())
}

/// Records an abandoned cart and its customer (for back-in-stock emails).
pub async fn upsert_cart_with_customer(tx: &Transaction<'_>, cart: &CartAbandoned) -> Result<(), Error> {
    upsert_customer(tx, &cart.customer, cart.occurred_at, None).await?;
    tx.execute(
        "INSERT INTO carts (cart_id, customer_id, skus, abandoned_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (cart_id) DO UPDATE SET skus = EXCLUDED.skus, abandoned_at = EXCLUDED.abandoned_at",
        &[&cart.cart_id, &cart.customer.customer_id, &cart.skus, &cart.occurred_at],
    )
    .await?;
    Ok(())
}

/// Counts, for ranking alternatives, that this customer bought each SKU of
/// the order together with everything they bought before: only SKUs new to
/// the customer add pairs (both directions), so a replayed order or a
/// repeat purchase counts nothing twice. One statement, whatever the size.
pub async fn record_co_purchases(
    tx: &Transaction<'_>,
    customer_id: &str,
    order_id: &str,
    skus: &[&str],
) -> Result<(), Error> {
    let mut distinct: Vec<&str> = skus.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    tx.execute(
        "WITH new AS (
             INSERT INTO customer_skus (customer_id, sku, order_id)
             SELECT $1, s, $2 FROM unnest($3::text[]) AS s
             ON CONFLICT DO NOTHING
             RETURNING sku),
         -- The statement's snapshot does not see `new`'s rows in
         -- customer_skus: `old` is what the customer had bought before.
         old AS (SELECT sku FROM customer_skus WHERE customer_id = $1),
         pairs AS (
             SELECT n.sku AS a, o.sku AS b FROM new n CROSS JOIN old o
             UNION ALL SELECT o.sku, n.sku FROM new n CROSS JOIN old o
             UNION ALL SELECT n1.sku, n2.sku FROM new n1 JOIN new n2 ON n1.sku <> n2.sku)
         INSERT INTO co_purchases (sku, other_sku, customers)
         SELECT a, b, count(*) FROM pairs GROUP BY a, b
         ON CONFLICT (sku, other_sku) DO UPDATE SET customers = co_purchases.customers + EXCLUDED.customers",
        &[&customer_id, &order_id, &distinct],
    )
    .await?;
    Ok(())
}
