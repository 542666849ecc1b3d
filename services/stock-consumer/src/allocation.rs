//! Stock arrivals: allocate the units to open backordered lines, first
//! come first served by order time, then decide the emails.
//!
//! Policy for lines that need more than one unit: whole lines only, and no
//! queue jumping. Lines are served strictly in order (order time, then
//! order and line id); when the next line needs more units than are left,
//! allocation stops there. The units left are *reserved* for the queue
//! (`products.reserved_quantity`) and the SKU's next arrival starts with
//! them, so the customer at the head of the queue is served first. Units
//! become available stock (and reach abandoned carts) only when no
//! backordered line of the SKU is left waiting.
//!
//! A large restock runs as a sequence of short transactions of at most
//! [`ALLOCATION_CHUNK_LINES`] lines; the arrival row records what is left,
//! so a crash resumes where it stopped. Emails are then produced page by
//! page from `stock_allocations`, so memory does not grow with the number
//! of customers. Everything is keyed by `arrival_id`: a replayed arrival
//! allocates nothing more and requests the same emails (same dedup keys)
//! only if their acknowledgement was never recorded.

use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

use backorder_core::codec::Codec;
use backorder_core::deadpool_postgres::Pool;
use backorder_core::email_decisions;
use backorder_core::events::stock::StockArrival;
use backorder_core::kafka::{OutboundRecord, Producer};
use backorder_core::lifecycle::Lifecycle;
use backorder_core::timers::{self, Timer};
use backorder_core::tokio_postgres::Transaction;
use chrono::{DateTime, Utc};

use crate::emails::{self, ArrivedItem, Customer};
use crate::error::StockError;
use crate::policy::{ALLOCATION_CHUNK_LINES, EMIT_PAGE};

/// Timer kind that ends an arrival's settle time (fired by stock-consumer).
pub const SETTLE_TIMER: &str = "stock-settle";

/// The settle timer of one arrival.
pub fn settle_key(arrival_id: &str) -> String {
    format!("{SETTLE_TIMER}:{arrival_id}")
}

/// The allocation of what was still unallocated when `arrival_id`'s settle
/// time ended.
pub fn settle_arrival_id(arrival_id: &str) -> String {
    format!("settle:{arrival_id}")
}

/// Where an arrival's units come from (`stock_arrivals.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArrivalKind {
    /// A `StockArrival` from the warehouse.
    Supplier,
    /// The SKU's reserve after a cancellation gave units back.
    Release,
    /// The SKU's reserve when a supplier arrival's settle time ended.
    Settle,
}

impl ArrivalKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ArrivalKind::Supplier => "supplier",
            ArrivalKind::Release => "release",
            ArrivalKind::Settle => "settle",
        }
    }
}

/// Records a new arrival (taking the SKU's reserve into it). Returns false
/// for a replay, which changes nothing.
pub async fn register(tx: &Transaction<'_>, arrival: &StockArrival, now: DateTime<Utc>) -> Result<bool, StockError> {
    let inserted = tx
        .execute(
            "INSERT INTO stock_arrivals (arrival_id, sku, quantity, warehouse, event_id, occurred_at,
                                         units, remaining, received_at)
             VALUES ($1, $2, $3, $4, $5, $6, $3, $3, $7)
             ON CONFLICT (arrival_id) DO NOTHING",
            &[
                &arrival.arrival_id,
                &arrival.sku,
                &arrival.quantity,
                &arrival.warehouse,
                &arrival.event_id,
                &arrival.occurred_at,
                &now,
            ],
        )
        .await?;
    if inserted == 0 {
        metrics::counter!("backorder_stock_arrivals_total", "outcome" => "replayed").increment(1);
        return Ok(false);
    }
    metrics::counter!("backorder_stock_arrivals_total", "outcome" => "new").increment(1);
    tx.execute(
        "INSERT INTO products (sku) VALUES ($1) ON CONFLICT (sku) DO NOTHING",
        &[&arrival.sku],
    )
    .await?;
    // Units held for the queue by earlier arrivals join this one.
    tx.execute(
        "WITH reserve AS (SELECT reserved_quantity AS units FROM products WHERE sku = $2 FOR UPDATE),
              taken AS (UPDATE products SET reserved_quantity = 0 WHERE sku = $2 AND reserved_quantity > 0)
         UPDATE stock_arrivals
            SET units = units + (SELECT units FROM reserve), remaining = remaining + (SELECT units FROM reserve)
          WHERE arrival_id = $1",
        &[&arrival.arrival_id, &arrival.sku],
    )
    .await?;
    Ok(true)
}

/// Allocates the next chunk of the queue: at most `$4` open backordered
/// lines of the SKU in order, of which the prefix whose running total of
/// units fits in `$3` is taken. Returns (lines taken, units taken, lines
/// looked at).
const ALLOCATE_CHUNK: &str = "
WITH next AS (
    SELECT l.order_id, l.line_id, l.quantity, o.placed_at
      FROM order_lines l
      JOIN orders o ON o.order_id = l.order_id
     WHERE l.sku = $2 AND l.availability = 'BACKORDERED' AND l.status = 'open'
       -- A line the customer cancelled or switched away from (one click,
       -- awaiting the OMS) is not served.
       AND l.cancel_requested_at IS NULL
     ORDER BY o.placed_at, l.order_id, l.line_id
     LIMIT $4
       FOR UPDATE OF l
), ranked AS (
    SELECT order_id, line_id, quantity,
           sum(quantity) OVER (ORDER BY placed_at, order_id, line_id) AS running
      FROM next
), taken AS (
    UPDATE order_lines l SET status = 'allocated'
      FROM ranked r
     WHERE l.order_id = r.order_id AND l.line_id = r.line_id AND r.running <= $3
    RETURNING l.order_id, l.line_id, l.quantity
), recorded AS (
    INSERT INTO stock_allocations (arrival_id, order_id, line_id, sku, quantity, chunk)
    SELECT $1, order_id, line_id, $2, quantity, $5 FROM taken
    RETURNING quantity
)
SELECT (SELECT count(*) FROM recorded),
       (SELECT COALESCE(sum(quantity), 0)::bigint FROM recorded),
       (SELECT count(*) FROM ranked)";

/// What one arrival did, for logs and tests.
#[derive(Debug, Default, Clone, Copy)]
pub struct Outcome {
    pub lines: i64,
    pub units: i64,
    pub chunks: i32,
    pub surplus: i32,
    pub reserved: i32,
    pub emails: usize,
}

/// Runs arrivals to completion and produces their emails.
#[derive(Clone)]
pub struct Allocator {
    pub pool: Pool,
    pub codec: Codec,
    pub producer: Producer,
    /// Full name of `email-requests.v1`.
    pub email_topic: String,
    /// Checked between chunks and pages, so SIGTERM during a large restock
    /// stops within the grace period (the arrival resumes on replay).
    pub lifecycle: Lifecycle,
    /// How long a supplier arrival's surplus waits for orders still on
    /// their way before it reaches carts (policy `stock.arrival_settle_seconds`).
    pub settle: chrono::Duration,
}

impl Allocator {
    pub fn new(service: &backorder_core::service::Service) -> Self {
        Self {
            pool: service.pool.clone(),
            codec: service.codec.clone(),
            producer: service.producer.clone(),
            email_topic: service.topics.name(backorder_core::kafka::topics::EMAIL_REQUESTS),
            lifecycle: service.lifecycle.clone(),
            settle: service.policy.stock.arrival_settle(),
        }
    }

    /// Registers the release `arrival_id`: the SKU's whole reserve (units
    /// a cancellation gave back, and any held for the queue) becomes an
    /// arrival of its own, allocated like a supplier's. Returns whether
    /// there is an arrival to run: false when the reserve is empty (a
    /// supplier arrival took it first).
    pub async fn register_release(
        &self,
        arrival_id: &str,
        sku: &str,
        kind: ArrivalKind,
        now: DateTime<Utc>,
    ) -> Result<bool, StockError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let known = tx
            .query_opt("SELECT 1 FROM stock_arrivals WHERE arrival_id = $1", &[&arrival_id])
            .await?
            .is_some();
        if known {
            tx.commit().await?;
            return Ok(true);
        }
        let reserve: i32 = match tx
            .query_opt(
                "SELECT reserved_quantity FROM products WHERE sku = $1 FOR UPDATE",
                &[&sku],
            )
            .await?
        {
            Some(row) => row.try_get(0)?,
            None => 0,
        };
        if reserve == 0 {
            tx.commit().await?;
            return Ok(false);
        }
        tx.execute(
            "INSERT INTO stock_arrivals (arrival_id, sku, quantity, warehouse, event_id, occurred_at,
                                         units, remaining, received_at, kind)
             VALUES ($1, $2, $3, $5, $1, $4, $3, $3, $4, $5)",
            &[&arrival_id, &sku, &reserve, &now, &kind.as_str()],
        )
        .await?;
        tx.execute(
            "UPDATE products SET reserved_quantity = 0, updated_at = $2 WHERE sku = $1",
            &[&sku, &now],
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Allocates what is left of `arrival_id` (nothing for a finished one),
    /// then produces the emails not yet acknowledged.
    pub async fn run(&self, arrival_id: &str, now: DateTime<Utc>) -> Result<Outcome, StockError> {
        let started = Instant::now();
        let mut outcome = Outcome::default();
        let mut client = self.pool.get().await?;
        let mut allocated_now = false;
        loop {
            self.continue_unless_shutdown(arrival_id)?;
            let tx = client.transaction().await?;
            let row = tx
                .query_one(
                    "SELECT sku, state, remaining, chunks, kind FROM stock_arrivals WHERE arrival_id = $1 FOR UPDATE",
                    &[&arrival_id],
                )
                .await?;
            let (sku, state, remaining, chunks): (String, String, i32, i32) =
                (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?, row.try_get(3)?);
            let kind: String = row.try_get(4)?;
            // A supplier's surplus waits the settle time; what a release or
            // the end of a settle time leaves over is surplus at once.
            let settle = (kind == ArrivalKind::Supplier.as_str() && self.settle > chrono::Duration::zero())
                .then_some(self.settle);
            if state == "allocated" {
                tx.commit().await?;
                break;
            }
            allocated_now = true;
            let mut left = remaining;
            let mut more = false;
            let mut chunk_done = (0_i64, 0_i64);
            if remaining > 0 {
                let chunk = chunks + 1;
                let row = tx
                    .query_one(
                        ALLOCATE_CHUNK,
                        &[
                            &arrival_id,
                            &sku,
                            &i64::from(remaining),
                            &ALLOCATION_CHUNK_LINES,
                            &chunk,
                        ],
                    )
                    .await?;
                let (lines, units, looked_at): (i64, i64, i64) = (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
                left = remaining - i32::try_from(units).unwrap_or(remaining);
                tx.execute(
                    "UPDATE stock_arrivals SET remaining = $2, lines_allocated = lines_allocated + $3, chunks = $4
                      WHERE arrival_id = $1",
                    &[&arrival_id, &left, &(lines as i32), &chunk],
                )
                .await?;
                chunk_done = (lines, units);
                outcome.lines += lines;
                outcome.units += units;
                outcome.chunks = chunk;
                // The queue may go on only if the whole chunk fitted.
                more = left > 0 && lines == looked_at && looked_at == ALLOCATION_CHUNK_LINES;
            }
            if !more {
                let (surplus, reserved) = finalize(&tx, arrival_id, &sku, left, settle, now).await?;
                outcome.surplus = surplus;
                outcome.reserved = reserved;
            }
            tx.commit().await?;
            metrics::counter!("backorder_stock_lines_allocated_total").increment(chunk_done.0 as u64);
            metrics::counter!("backorder_stock_units_allocated_total").increment(chunk_done.1 as u64);
            if !more {
                metrics::counter!("backorder_stock_surplus_units_total").increment(outcome.surplus.max(0) as u64);
                break;
            }
        }
        let allocation = started.elapsed();
        if allocated_now {
            metrics::histogram!("backorder_stock_allocation_duration_seconds").record(allocation.as_secs_f64());
        }
        outcome.emails = self.emit(arrival_id, now).await?;
        tracing::info!(
            arrival_id,
            lines = outcome.lines,
            units = outcome.units,
            chunks = outcome.chunks,
            surplus = outcome.surplus,
            reserved = outcome.reserved,
            emails = outcome.emails,
            allocation_ms = allocation.as_millis() as u64,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "arrival handled"
        );
        Ok(outcome)
    }

    /// Produces the arrival's emails page by page unless already
    /// acknowledged; returns how many were requested.
    async fn emit(&self, arrival_id: &str, now: DateTime<Utc>) -> Result<usize, StockError> {
        let client = self.pool.get().await?;
        let row = client
            .query_one(
                "SELECT sku, occurred_at, outputs_acked_at IS NOT NULL FROM stock_arrivals WHERE arrival_id = $1",
                &[&arrival_id],
            )
            .await?;
        let (sku, occurred_at, acked): (String, DateTime<Utc>, bool) =
            (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
        if acked {
            return Ok(0);
        }
        let mut total = 0;
        // A page's requests are acknowledged while the next page is read,
        // recorded and encoded: one page at most in flight, so memory stays
        // bounded. The arrival is marked acknowledged only after the last.
        let mut sending: Option<Sending<'_>> = None;
        // Arrival notices: one per order served, by order id.
        let mut after = String::new();
        loop {
            self.continue_unless_shutdown(arrival_id)?;
            let page = async {
                let rows = client
                    .query(
                        "WITH page AS (
                         SELECT DISTINCT order_id FROM stock_allocations
                          WHERE arrival_id = $1 AND order_id > $2
                          ORDER BY order_id
                          LIMIT $3)
                     SELECT a.order_id, c.customer_id, c.email, c.name, c.locale,
                            array_agg(l.product_name ORDER BY a.line_id), array_agg(a.quantity ORDER BY a.line_id),
                            array_agg(a.line_id ORDER BY a.line_id)
                       FROM page p
                       JOIN stock_allocations a ON a.arrival_id = $1 AND a.order_id = p.order_id
                       JOIN order_lines l ON l.order_id = a.order_id AND l.line_id = a.line_id
                       JOIN orders o ON o.order_id = a.order_id
                       JOIN customers c ON c.customer_id = o.customer_id
                      GROUP BY a.order_id, c.customer_id
                      ORDER BY a.order_id",
                        &[&arrival_id, &after, &EMIT_PAGE],
                    )
                    .await?;
                let Some(last) = rows.last() else {
                    return Ok::<_, StockError>(None);
                };
                let last: String = last.try_get(0)?;
                let mut decisions = Vec::with_capacity(rows.len());
                for row in &rows {
                    let order_id: String = row.try_get(0)?;
                    let customer = Customer {
                        customer_id: row.try_get(1)?,
                        email: row.try_get(2)?,
                        name: row.try_get(3)?,
                        locale: row.try_get(4)?,
                    };
                    let names: Vec<String> = row.try_get(5)?;
                    let quantities: Vec<i32> = row.try_get(6)?;
                    let line_ids: Vec<String> = row.try_get(7)?;
                    let items: Vec<ArrivedItem> = names
                        .into_iter()
                        .zip(quantities)
                        .map(|(product_name, quantity)| ArrivedItem { product_name, quantity })
                        .collect();
                    let request = emails::arrival_notice(arrival_id, &order_id, &customer, &items, occurred_at);
                    let line = (line_ids.len() == 1).then(|| line_ids.into_iter().next()).flatten();
                    decisions.push((request, line));
                }
                let records = self.decide(&client, &decisions, now).await?;
                Ok(Some((last, rows.len(), records)))
            };
            let (sent, page) = overlapped(sending.take(), page).await?;
            total += sent;
            let Some((last, rows, records)) = page else { break };
            after = last;
            sending = Some(Box::pin(self.send(records, emails::ARRIVAL_NOTICE)));
            if (rows as i64) < EMIT_PAGE {
                break;
            }
        }
        // Back in stock: the carts this arrival's surplus reached.
        let mut after = String::new();
        loop {
            self.continue_unless_shutdown(arrival_id)?;
            let page = async {
                let rows = client
                    .query(
                        "SELECT n.cart_id, cu.customer_id, cu.email, cu.name, cu.locale,
                            COALESCE(p.name, n.sku), p.price_minor, p.currency
                       FROM back_in_stock_notices n
                       JOIN carts ca ON ca.cart_id = n.cart_id
                       JOIN customers cu ON cu.customer_id = ca.customer_id
                       LEFT JOIN products p ON p.sku = n.sku
                      WHERE n.arrival_id = $1 AND n.sku = $2 AND n.cart_id > $3
                      ORDER BY n.cart_id
                      LIMIT $4",
                        &[&arrival_id, &sku, &after, &EMIT_PAGE],
                    )
                    .await?;
                let Some(last) = rows.last() else {
                    return Ok::<_, StockError>(None);
                };
                let last: String = last.try_get(0)?;
                let mut decisions = Vec::with_capacity(rows.len());
                for row in &rows {
                    let cart_id: String = row.try_get(0)?;
                    let customer = Customer {
                        customer_id: row.try_get(1)?,
                        email: row.try_get(2)?,
                        name: row.try_get(3)?,
                        locale: row.try_get(4)?,
                    };
                    let name: String = row.try_get(5)?;
                    let currency: Option<String> = row.try_get(7)?;
                    let request = emails::back_in_stock(
                        &cart_id,
                        &sku,
                        &customer,
                        &name,
                        row.try_get(6)?,
                        currency.as_deref(),
                        occurred_at,
                    );
                    decisions.push((request, None));
                }
                let records = self.decide(&client, &decisions, now).await?;
                Ok(Some((last, rows.len(), records)))
            };
            let (sent, page) = overlapped(sending.take(), page).await?;
            total += sent;
            let Some((last, rows, records)) = page else { break };
            after = last;
            sending = Some(Box::pin(self.send(records, emails::BACK_IN_STOCK)));
            if (rows as i64) < EMIT_PAGE {
                break;
            }
        }
        if let Some(last) = sending.take() {
            total += last.await?;
        }
        client
            .execute(
                "UPDATE stock_arrivals SET outputs_acked_at = $2 WHERE arrival_id = $1",
                &[&arrival_id, &now],
            )
            .await?;
        Ok(total)
    }

    fn continue_unless_shutdown(&self, arrival_id: &str) -> Result<(), StockError> {
        if self.lifecycle.shutdown.is_cancelled() {
            return Err(StockError::Interrupted {
                arrival_id: arrival_id.to_string(),
            });
        }
        Ok(())
    }

    /// Records the decisions and encodes the requests.
    async fn decide(
        &self,
        client: &backorder_core::deadpool_postgres::Object,
        decisions: &[(backorder_core::events::internal::EmailRequested, Option<String>)],
        now: DateTime<Utc>,
    ) -> Result<Vec<OutboundRecord>, StockError> {
        let decided: Vec<_> = decisions.iter().map(|(r, l)| (r, l.as_deref())).collect();
        email_decisions::record_all(client, &decided, now).await?;
        let requests: Vec<_> = decisions.iter().map(|(r, _)| r).collect();
        Ok(OutboundRecord::encode_all(&self.codec, &self.email_topic, &requests).await?)
    }

    /// Produces the requests and waits for the broker's acknowledgement.
    async fn send(&self, records: Vec<OutboundRecord>, template: &'static str) -> Result<usize, StockError> {
        self.producer.send_all(&records).await?;
        metrics::counter!("backorder_stock_emails_requested_total", "template" => template)
            .increment(records.len() as u64);
        Ok(records.len())
    }
}

/// A page of requests on its way to the broker.
type Sending<'a> = Pin<Box<dyn Future<Output = Result<usize, StockError>> + Send + 'a>>;

/// Runs `page` while the previous page (if any) is being acknowledged;
/// returns how many that one sent, and what `page` gave.
async fn overlapped<T>(
    sending: Option<Sending<'_>>,
    page: impl Future<Output = Result<T, StockError>>,
) -> Result<(usize, T), StockError> {
    match sending {
        Some(sending) => {
            let (sent, page) = tokio::join!(sending, page);
            Ok((sent?, page?))
        }
        None => Ok((0, page.await?)),
    }
}

/// Settles what is left of an arrival: reserved for the queue while any
/// backordered line of the SKU still waits, otherwise available stock
/// (which reaches abandoned carts). With a `settle` time, units nobody
/// waits for are reserved too, and a settle timer hands them on when it
/// ends: an order for the SKU may still be on its way (topics are not
/// ordered with each other), and carts must not hear of units its
/// customer is about to receive. Returns (surplus, reserved).
async fn finalize(
    tx: &Transaction<'_>,
    arrival_id: &str,
    sku: &str,
    left: i32,
    settle: Option<chrono::Duration>,
    now: DateTime<Utc>,
) -> Result<(i32, i32), StockError> {
    let waiting: bool = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM order_lines
                             WHERE sku = $1 AND availability = 'BACKORDERED' AND status = 'open'
                               AND cancel_requested_at IS NULL)",
            &[&sku],
        )
        .await?
        .try_get(0)?;
    let settling = match settle {
        Some(settle) if !waiting && left > 0 => {
            timers::schedule(
                tx,
                &Timer {
                    key: settle_key(arrival_id),
                    kind: SETTLE_TIMER.to_string(),
                    due_at: now + settle,
                    payload: serde_json::json!({"sku": sku, "arrival_id": arrival_id}),
                },
            )
            .await?;
            metrics::counter!("backorder_stock_settling_units_total").increment(u64::try_from(left).unwrap_or(0));
            tracing::info!(
                arrival_id,
                sku,
                units = left,
                "nobody waits: the units settle before carts hear of them"
            );
            true
        }
        _ => false,
    };
    let (surplus, reserved) = if waiting || settling { (0, left) } else { (left, 0) };
    if reserved > 0 {
        tx.execute(
            "UPDATE products SET reserved_quantity = reserved_quantity + $2, updated_at = $3 WHERE sku = $1",
            &[&sku, &reserved, &now],
        )
        .await?;
    }
    if surplus > 0 {
        tx.execute(
            "UPDATE products SET available_quantity = available_quantity + $2, updated_at = $3 WHERE sku = $1",
            &[&sku, &surplus, &now],
        )
        .await?;
        // Carts holding the SKU, once per cart and SKU ever; not customers
        // who already ordered it (they are served by the queue).
        tx.execute(
            "INSERT INTO back_in_stock_notices (cart_id, sku, arrival_id, decided_at)
             SELECT c.cart_id, $1, $2, $3 FROM carts c
              WHERE c.skus @> ARRAY[$1::text]
                AND NOT EXISTS (SELECT 1 FROM orders o JOIN order_lines l ON l.order_id = o.order_id
                                 WHERE o.customer_id = c.customer_id AND l.sku = $1 AND l.status <> 'cancelled')
             ON CONFLICT (cart_id, sku) DO NOTHING",
            &[&sku, &arrival_id, &now],
        )
        .await?;
    }
    tx.execute(
        "UPDATE stock_arrivals SET state = 'allocated', remaining = 0, surplus = $2, reserved = $3, allocated_at = $4
          WHERE arrival_id = $1",
        &[&arrival_id, &surplus, &reserved, &now],
    )
    .await?;
    Ok((surplus, reserved))
}
