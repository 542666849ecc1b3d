//! Building blocks of the lifecycle scenarios: events stamped with the
//! controlled clock, supplier ETAs, timers and email decisions as the
//! services recorded them, and proofs that a timer loop has run.

use std::time::Duration;

use backorder_core::events::shipments::{ShipmentDelivered, ShipmentDispatched};
use chrono::{DateTime, NaiveDate, Utc};

use crate::moto::SentEmail;
use crate::{TestApp, wait_until};

pub const PATIENCE: Duration = Duration::from_secs(45);

/// Timer polling fast enough for tests that move the clock.
pub const FAST_TIMERS: &[(&str, &str)] = &[("BACKORDER_TIMER_POLL_MS", "100")];

/// "Now" on this test's controlled clock.
pub async fn clock_now(app: &TestApp) -> DateTime<Utc> {
    Utc::now() + backorder_core::clock::offset(&app.pool).await.expect("clock offset")
}

/// Today on the controlled clock, plus `days`.
pub async fn day(app: &TestApp, days: i64) -> NaiveDate {
    clock_now(app).await.date_naive() + chrono::Duration::days(days)
}

/// Moves the controlled clock.
pub async fn advance_days(app: &TestApp, days: i64) {
    backorder_core::clock::advance(&app.pool, chrono::Duration::days(days))
        .await
        .expect("advance the clock");
}

/// Gives `sku` a supplier ETA of `from..=to` days from the clock's today
/// (what the stock consumer keeps from stock.v1).
pub async fn set_eta(app: &TestApp, sku: &str, from_days: i64, to_days: i64) {
    let (from, to) = (day(app, from_days).await, day(app, to_days).await);
    let now = clock_now(app).await;
    let client = app.pool.get().await.expect("db");
    client
        .execute(
            "INSERT INTO sku_eta (sku, eta_from, eta_to, reason, remedy, changed_at)
             VALUES ($1, $2, $3, 'supplier backlog', 'expedited freight', $4)
             ON CONFLICT (sku) DO UPDATE SET eta_from = EXCLUDED.eta_from, eta_to = EXCLUDED.eta_to,
                 version = sku_eta.version + 1, changed_at = EXCLUDED.changed_at",
            &[&sku, &from, &to, &now],
        )
        .await
        .expect("set eta");
}

pub async fn dispatched(app: &TestApp, order_id: &str, shipment_id: &str, line_ids: &[&str]) -> ShipmentDispatched {
    ShipmentDispatched {
        event_id: uuid::Uuid::new_v4().to_string(),
        occurred_at: clock_now(app).await,
        shipment_id: shipment_id.to_string(),
        order_id: order_id.to_string(),
        line_ids: line_ids.iter().map(|l| (*l).to_string()).collect(),
        carrier: "DHL".to_string(),
        tracking_number: format!("TRK{shipment_id}"),
        tracking_url: format!("https://track.example/{shipment_id}?a=1&b=2"),
    }
}

pub async fn delivered(app: &TestApp, order_id: &str, shipment_id: &str) -> ShipmentDelivered {
    ShipmentDelivered {
        event_id: uuid::Uuid::new_v4().to_string(),
        occurred_at: clock_now(app).await,
        shipment_id: shipment_id.to_string(),
        order_id: order_id.to_string(),
    }
}

/// Waits until exactly `n` emails reached the SES endpoint for `to`.
pub async fn wait_for_emails(app: &TestApp, to: &str, n: usize) -> Vec<SentEmail> {
    wait_until(&format!("{n} emails for {to}"), PATIENCE, || async {
        let sent = app.emails_to(to).await;
        assert!(sent.len() <= n, "more than {n} emails: {:?}", subjects(&sent));
        (sent.len() == n).then_some(sent)
    })
    .await
}

pub fn subjects(sent: &[SentEmail]) -> Vec<&str> {
    sent.iter().map(|e| e.subject.as_str()).collect()
}

/// The state of the timer `key`, if it exists.
pub async fn timer_state(app: &TestApp, key: &str) -> Option<String> {
    let client = app.pool.get().await.expect("db");
    client
        .query_opt("SELECT state FROM timers WHERE timer_key = $1", &[&key])
        .await
        .expect("timer query")
        .map(|r| r.get(0))
}

pub async fn wait_timer_state(app: &TestApp, key: &str, state: &str) {
    wait_until(&format!("timer {key} to be {state}"), PATIENCE, || async {
        (timer_state(app, key).await.as_deref() == Some(state)).then_some(())
    })
    .await;
}

/// How many emails of `template` were decided (by any service).
pub async fn decisions(app: &TestApp, template: &str) -> i64 {
    let client = app.pool.get().await.expect("db");
    client
        .query_one("SELECT count(*) FROM email_decisions WHERE template = $1", &[&template])
        .await
        .expect("decisions query")
        .get(0)
}

/// Proves that the timer loop of `kind` has run at the clock's current
/// time: schedules a sentinel timer of that kind due now (its payload is
/// unusable, so it sends nothing) and waits until it fired. Anything of
/// that kind due by now fired in the same or an earlier round.
pub async fn timer_loop_caught_up(app: &TestApp, kind: &str) {
    let key = format!("{kind}:sentinel:{}", uuid::Uuid::new_v4().simple());
    let now = clock_now(app).await;
    {
        let client = app.pool.get().await.expect("db");
        client
            .execute(
                "INSERT INTO timers (timer_key, kind, due_at, payload) VALUES ($1, $2, $3, '{\"sentinel\": true}')",
                &[&key, &kind, &now],
            )
            .await
            .expect("sentinel timer");
    }
    wait_timer_state(app, &key, "fired").await;
}

/// Waits until the sender has consumed `n` requests and sent or settled
/// every one of them.
pub async fn sender_settled(app: &TestApp, requests: i64) {
    wait_until(
        &format!("the sender to consume {requests} requests"),
        PATIENCE,
        || async {
            let consumed = app
                .committed_total("sender", backorder_core::kafka::topics::EMAIL_REQUESTS)
                .await;
            assert!(
                consumed <= requests,
                "the sender consumed {consumed} requests, expected {requests}"
            );
            (consumed == requests).then_some(())
        },
    )
    .await;
    wait_until("the sender's queue to be empty", PATIENCE, || async {
        let states = app.ledger_states().await;
        (!states.contains_key("queued") && !states.contains_key("sending")).then_some(())
    })
    .await;
}

/// A metric's value summed over its series whose line contains `filter`.
pub fn metric_sum(text: &str, name: &str, filter: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']) && l.contains(filter))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
