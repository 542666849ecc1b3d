//! Building blocks of the stock scenarios: stock.v1 events, abandoned
//! carts, what the services recorded (ledger, decisions, allocations) and
//! a reader of `backorder-delays.v1`.

use std::time::Duration;

use backorder_core::events::TopicEvent;
use backorder_core::events::internal::{BackorderDelayEvent, BackorderDelayed};
use backorder_core::events::orders::{CartAbandoned, Customer};
use backorder_core::events::stock::{ProductUpserted, Season, StockArrival, SupplierEtaChanged};
use backorder_core::kafka::topics;
use chrono::{NaiveDate, Utc};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use crate::{TestApp, wait_until};

pub const PATIENCE: Duration = Duration::from_secs(45);

fn event_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

pub fn product(sku: &str, name: &str, price_minor: i64, available: i32) -> ProductUpserted {
    ProductUpserted {
        event_id: event_id(),
        occurred_at: Utc::now(),
        sku: sku.to_string(),
        name: name.to_string(),
        category: "kitchen".to_string(),
        need: "boil-water".to_string(),
        seasons: vec![Season::Autumn, Season::Winter],
        price_minor,
        currency: "EUR".to_string(),
        available_quantity: available,
    }
}

/// An ETA change; `window` None: the supplier does not know.
pub fn eta(sku: &str, window: Option<(NaiveDate, NaiveDate)>, reason: &str) -> SupplierEtaChanged {
    SupplierEtaChanged {
        event_id: event_id(),
        occurred_at: Utc::now(),
        sku: sku.to_string(),
        eta_from: window.map(|w| w.0),
        eta_to: window.map(|w| w.1),
        reason: reason.to_string(),
        remedy: "We have booked the first container space after the port reopens".to_string(),
        reason_code: None,
        reason_locale: None,
    }
}

pub fn arrival(arrival_id: &str, sku: &str, quantity: i32) -> StockArrival {
    StockArrival {
        event_id: event_id(),
        occurred_at: Utc::now(),
        arrival_id: arrival_id.to_string(),
        sku: sku.to_string(),
        quantity,
        warehouse: "main".to_string(),
    }
}

pub fn cart(cart_id: &str, customer_id: &str, recipient: &str, skus: &[&str]) -> CartAbandoned {
    CartAbandoned {
        event_id: event_id(),
        occurred_at: Utc::now(),
        cart_id: cart_id.to_string(),
        customer: Customer {
            customer_id: customer_id.to_string(),
            email: recipient.to_string(),
            name: "Grace Hopper".to_string(),
            locale: "en-GB".to_string(),
            country: Some("GB".to_string()),
        },
        skus: skus.iter().map(|s| (*s).to_string()).collect(),
    }
}

/// Today (system clock; tests here do not move the controlled clock) plus `days`.
pub fn day(days: i64) -> NaiveDate {
    Utc::now().date_naive() + chrono::Duration::days(days)
}

/// A date as the English templates print it (`24 Dec 2026`).
pub fn en_date(date: NaiveDate) -> String {
    date.format("%-d %b %Y").to_string()
}

/// One number from SQL.
pub async fn count(app: &TestApp, sql: &str) -> i64 {
    let client = app.pool.get().await.expect("db");
    client.query_one(sql, &[]).await.expect(sql).get(0)
}

/// Waits until `sql` (a count) returns `expected`.
pub async fn wait_for_count(app: &TestApp, what: &str, sql: &str, expected: i64) {
    wait_until(what, PATIENCE, || async {
        (count(app, sql).await == expected).then_some(())
    })
    .await;
}

/// Waits until the sender has nothing queued or in flight.
pub async fn wait_for_sender_idle(app: &TestApp) {
    wait_until("the sender's queue to be empty", PATIENCE, || async {
        let states = app.ledger_states().await;
        (!states.contains_key("queued") && !states.contains_key("sending")).then_some(())
    })
    .await;
}

/// Ledger rows of `template`: (order_id, recipient, dedup_key, state, category).
pub async fn ledger(app: &TestApp, template: &str) -> Vec<(Option<String>, String, String, String, String)> {
    let client = app.pool.get().await.expect("db");
    client
        .query(
            "SELECT order_id, recipient, dedup_key, state, category FROM email_ledger
              WHERE template = $1 ORDER BY order_id, recipient",
            &[&template],
        )
        .await
        .expect("ledger")
        .into_iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect()
}

/// Order ids whose lines `sku` are allocated, sorted.
pub async fn allocated_orders(app: &TestApp, sku: &str) -> Vec<String> {
    let client = app.pool.get().await.expect("db");
    client
        .query(
            "SELECT order_id FROM order_lines WHERE sku = $1 AND status = 'allocated' ORDER BY order_id",
            &[&sku],
        )
        .await
        .expect("allocated")
        .into_iter()
        .map(|r| r.get(0))
        .collect()
}

/// Every `BackorderDelayed` on this test's `backorder-delays.v1`: waits
/// for `expected` records, then keeps reading for `settle` so that an
/// unexpected extra record is seen too.
pub async fn delays_on_topic(app: &TestApp, expected: usize, settle: Duration) -> Vec<BackorderDelayed> {
    records_on_topic::<BackorderDelayEvent>(app, topics::BACKORDER_DELAYS, expected, settle)
        .await
        .into_iter()
        .map(|BackorderDelayEvent::Delayed(d)| d)
        .collect()
}

/// Every record on this test's `base_topic`, decoded: waits for
/// `expected`, then reads on for `settle` to catch extras.
pub async fn records_on_topic<E: TopicEvent>(
    app: &TestApp,
    base_topic: &str,
    expected: usize,
    settle: Duration,
) -> Vec<E> {
    let topic = app.topics.name(base_topic);
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &app.settings.kafka_bootstrap_servers)
        .set(
            "group.id",
            format!("{}reader-{}", app.settings.topic_prefix, uuid::Uuid::new_v4()),
        )
        .set("enable.auto.commit", "false")
        .create()
        .expect("topic reader");
    let partitions = topics::TOPICS
        .iter()
        .find(|(t, _)| *t == base_topic)
        .map(|(_, p)| *p)
        .expect("a known topic");
    let mut list = TopicPartitionList::new();
    for p in 0..partitions {
        list.add_partition_offset(&topic, p, Offset::Beginning)
            .expect("partition");
    }
    consumer.assign(&list).expect("assign");
    let decode = |payload: Vec<u8>| async move { app.codec.decode::<E>(&payload).await.expect("decodes") };
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while out.len() < expected {
        let message = tokio::time::timeout_at(deadline, consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {expected} records on {topic}", out.len()))
            .expect("record");
        out.push(decode(message.payload().unwrap_or_default().to_vec()).await);
    }
    let quiet_until = tokio::time::Instant::now() + settle;
    while let Ok(Ok(message)) = tokio::time::timeout_at(quiet_until, consumer.recv()).await {
        out.push(decode(message.payload().unwrap_or_default().to_vec()).await);
    }
    out
}

/// Resident-memory high-water mark of a process, in KiB (Linux).
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
