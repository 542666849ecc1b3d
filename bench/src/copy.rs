//! PostgreSQL's `COPY` of the rows orders-consumer stores for an order
//! (customer, order, lines): the database's own ingest limit, and the fast
//! way to pre-fill tables for the cost-growth figures.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::Result;
use backorder_core::deadpool_postgres::Pool;
use backorderctl::loadgen::{Generator, LoadgenArgs};
use backorderctl::publish::Record;
use bytes::Bytes;
use futures::{SinkExt, pin_mut};

/// Rows are handed to `COPY` in pieces of about this many bytes.
const PIECE_BYTES: usize = 1 << 20;

/// One table's `COPY` input in text format, sent as it fills.
struct CopyText {
    statement: &'static str,
    text: String,
}

impl CopyText {
    fn new(statement: &'static str) -> Self {
        Self {
            statement,
            text: String::with_capacity(PIECE_BYTES * 2),
        }
    }
}

/// A field in COPY's text format (backslash, tab and newline escaped).
fn field(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
}

/// A nullable field: `\N` stands for NULL.
fn optional_field(out: &mut String, value: Option<&str>) {
    match value {
        Some(value) => field(out, value),
        None => out.push_str("\\N"),
    }
}

/// COPYs the customers, orders and lines of `args`' orders into the pool's
/// database and returns how long it took (after ANALYZE, as a table grown
/// this way would be in production).
pub async fn copy_orders(pool: &Pool, args: &LoadgenArgs) -> Result<Duration> {
    let mut customers =
        CopyText::new("COPY customers (customer_id, email, name, locale, country, tags, first_seen_at) FROM STDIN");
    let mut orders = CopyText::new(
        "COPY orders (order_id, customer_id, placed_at, currency, total_minor, tags, event_id) FROM STDIN",
    );
    let mut lines = CopyText::new(
        "COPY order_lines (order_id, line_id, sku, product_name, category, quantity, unit_price_minor, availability) \
         FROM STDIN",
    );
    let mut seen_customers = HashSet::new();
    // Text is built first and timed separately: the figure is the
    // database's rate, not the generator's.
    for record in Generator::new(args) {
        let Record::OrderPlaced(order) = record else {
            continue;
        };
        let placed = order.occurred_at.to_rfc3339();
        let backordered = order
            .lines
            .iter()
            .any(|l| l.availability == backorder_core::events::orders::Availability::Backordered);
        let tags = if backordered { "{backorder}" } else { "{}" };
        if seen_customers.insert(order.customer.customer_id.clone()) {
            let c = &order.customer;
            let t = &mut customers.text;
            for value in [&c.customer_id, &c.email, &c.name, &c.locale] {
                field(t, value);
                t.push('\t');
            }
            optional_field(t, c.country.as_deref());
            let _ = writeln!(t, "\t{tags}\t{placed}");
        }
        let t = &mut orders.text;
        field(t, &order.order_id);
        t.push('\t');
        field(t, &order.customer.customer_id);
        let _ = write!(t, "\t{placed}\t{}\t{}\t{tags}\t", order.currency, order.total_minor);
        field(t, &order.event_id);
        t.push('\n');
        for line in &order.lines {
            let t = &mut lines.text;
            for value in [&order.order_id, &line.line_id, &line.sku, &line.product_name] {
                field(t, value);
                t.push('\t');
            }
            optional_field(t, line.category.as_deref());
            let _ = writeln!(
                t,
                "\t{}\t{}\t{}",
                line.quantity,
                line.unit_price_minor,
                line.availability.as_str()
            );
        }
    }
    let client = pool.get().await?;
    let started = Instant::now();
    // Parents first: orders reference customers, lines reference orders.
    for table in [customers, orders, lines] {
        let sink = client.copy_in::<_, Bytes>(table.statement).await?;
        pin_mut!(sink);
        let bytes = table.text.into_bytes();
        for piece in bytes.chunks(PIECE_BYTES) {
            sink.send(Bytes::copy_from_slice(piece)).await?;
        }
        sink.as_mut().finish().await?;
    }
    client.batch_execute("ANALYZE customers, orders, order_lines").await?;
    Ok(started.elapsed())
}
