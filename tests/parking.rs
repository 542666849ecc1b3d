//! Parking (DESIGN invariant 4): a shipment whose order has not arrived is
//! parked, not held. Other orders on the same partition and on the other
//! partitions keep flowing; the parked shipment (and a later event of its
//! order, queued behind it) is applied, in order, as soon as the order is
//! stored; an order that never arrives sends its shipment to the DLQ after
//! the configured time on the controlled clock. Real services, broker and
//! PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::disallowed_methods)]

use backorder_core::events::orders::Availability::InStock;
use backorder_core::kafka::topics::{ORDERS, SHIPMENTS};
use backorder_core::kafka::{OutboundRecord, dead_letter};
use backorder_tests::scenario::*;
use backorder_tests::{TestApp, order_placed, wait_until};

/// Produces `record` to shipments.v1 and returns its partition.
async fn ship<T: backorder_core::events::AvroRecord>(app: &TestApp, record: &T) -> i32 {
    let out = OutboundRecord::encode(&app.codec, &app.topics.name(SHIPMENTS), record)
        .await
        .unwrap();
    app.producer.send_all(&[out]).await.unwrap()[0].0
}

async fn stored_shipments(app: &TestApp, order_id: &str) -> (i64, i64) {
    let client = app.pool.get().await.unwrap();
    let row = client
        .query_one(
            "SELECT count(*), count(delivered_at) FROM shipments WHERE order_id = $1",
            &[&order_id],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

async fn parked(app: &TestApp) -> Vec<(String, Option<String>)> {
    let client = app.pool.get().await.unwrap();
    client
        .query("SELECT park_key, waiting_for FROM parked_events ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shipment_before_its_order_is_parked_while_everything_else_flows_and_applied_once_the_order_arrives() {
    let app = TestApp::spawn().await;
    let env = [
        ("BACKORDER_TIMER_POLL_MS", "100"),
        ("BACKORDER_PARK_MAX_AGE_SECS", "3600"),
    ];
    let _orders = app.start_service_with("orders-consumer", &env).await;
    let shipments = app.start_service_with("shipments-consumer", &env).await;

    // The shipment of an order nobody has seen yet, and its delivery.
    let late = app.recipient("late");
    let held = ship(&app, &dispatched(&app, "o-late", "s-late", &["l1"]).await).await;
    ship(&app, &delivered(&app, "o-late", "s-late").await).await;

    // Shipments of stored orders, until some share the parked shipment's
    // partition and some do not.
    let (mut same, mut other) = (Vec::new(), Vec::new());
    for i in 0..60 {
        if same.len() >= 2 && other.len() >= 2 {
            break;
        }
        let id = format!("o-{i}");
        app.publish(
            ORDERS,
            &order_placed(&id, &app.recipient(&id), "en", &[("MUG-1", InStock)]),
        )
        .await;
        wait_until("the order to be stored", PATIENCE, || async {
            let client = app.pool.get().await.unwrap();
            let n: i64 = client
                .query_one("SELECT count(*) FROM orders WHERE order_id = $1", &[&id])
                .await
                .unwrap()
                .get(0);
            (n == 1).then_some(())
        })
        .await;
        let partition = ship(&app, &dispatched(&app, &id, &format!("s-{i}"), &["l1"]).await).await;
        if partition == held { &mut same } else { &mut other }.push(id);
    }
    assert!(same.len() >= 2 && other.len() >= 2, "{same:?} {other:?}");
    for id in same.iter().chain(&other) {
        wait_until(
            "shipments of stored orders to flow past the parked one",
            PATIENCE,
            || async { (stored_shipments(&app, id).await.0 == 1).then_some(()) },
        )
        .await;
    }
    assert_eq!(
        stored_shipments(&app, "o-late").await,
        (0, 0),
        "the early shipment waits"
    );
    assert_eq!(
        parked(&app).await,
        vec![
            ("o-late".to_string(), Some("order:o-late".to_string())),
            ("o-late".to_string(), None),
        ],
        "the shipment waits for its order; its delivery queues behind it"
    );
    let total = 2 + (same.len() + other.len()) as i64;
    wait_until(
        "every offset to be committed: nothing holds a partition",
        PATIENCE,
        || async { (app.committed_total("shipments-consumer", SHIPMENTS).await == total).then_some(()) },
    )
    .await;
    let metrics = shipments.metrics().await;
    assert_eq!(
        metric_sum(&metrics, "backorder_consumer_errors_total", "kind=\"transient\""),
        0.0,
        "parking is not a transient failure"
    );

    // The order arrives: the shipment, then its delivery, are applied.
    app.publish(ORDERS, &order_placed("o-late", &late, "en", &[("LAMP-1", InStock)]))
        .await;
    wait_until(
        "the parked shipment and its delivery to be applied",
        PATIENCE,
        || async { (stored_shipments(&app, "o-late").await == (1, 1)).then_some(()) },
    )
    .await;
    wait_until("the parking lot to empty", PATIENCE, || async {
        parked(&app).await.is_empty().then_some(())
    })
    .await;
    let client = app.pool.get().await.unwrap();
    let shipped_emails: i64 = client
        .query_one(
            "SELECT count(*) FROM email_decisions WHERE order_id = 'o-late' AND template = 'shipped'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(shipped_emails, 1, "the shipped email is decided once");
    let metrics = shipments.metrics().await;
    assert_eq!(
        metric_sum(&metrics, "backorder_dead_letters_total", ""),
        0.0,
        "nothing dead-lettered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shipment_whose_order_never_arrives_is_dead_lettered_after_the_configured_time_and_replayed_once_after_a_fix()
{
    let app = TestApp::spawn().await;
    let env = [
        ("BACKORDER_TIMER_POLL_MS", "100"),
        ("BACKORDER_PARK_MAX_AGE_SECS", "7200"),
    ];
    let shipments = app.start_service_with("shipments-consumer", &env).await;
    ship(&app, &dispatched(&app, "o-never", "s-never", &["l1"]).await).await;
    wait_until("the shipment to be parked", PATIENCE, || async {
        (parked(&app).await.len() == 1).then_some(())
    })
    .await;

    // An hour later it is still waiting; past two hours it is given up.
    advance_hours(&app, 1).await;
    let client = app.pool.get().await.unwrap();
    wait_until("a retry on the schedule", PATIENCE, || async {
        let attempts: i32 = client
            .query_one("SELECT attempts FROM parked_events", &[])
            .await
            .unwrap()
            .get(0);
        (attempts >= 1).then_some(())
    })
    .await;
    let metrics = shipments.metrics().await;
    assert_eq!(metric_sum(&metrics, "backorder_dead_letters_total", ""), 0.0, "not yet");
    advance_hours(&app, 2).await;
    let letters = app.dead_letters(SHIPMENTS, 1).await;
    let reason = &letters[0].1[dead_letter::REASON];
    assert!(
        reason.contains("order:o-never") && reason.contains("not stored yet"),
        "{reason}"
    );
    assert_eq!(letters[0].1[dead_letter::KIND], "unresolved");
    wait_until("the parking lot to empty", PATIENCE, || async {
        parked(&app).await.is_empty().then_some(())
    })
    .await;
    assert_eq!(stored_shipments(&app, "o-never").await, (0, 0));

    // The fix: the order turns up after all. The operator lists the dead
    // letter and re-publishes it; it is processed once, even when replayed
    // twice.
    let listed = backorderctl(&app, &["dlq", "list", SHIPMENTS, "--idle", "2s"]).await;
    assert!(
        listed.contains("unresolved") && listed.contains("order:o-never"),
        "{listed}"
    );
    assert!(listed.contains("1 dead letters"), "{listed}");
    let dry = backorderctl(&app, &["dlq", "replay", SHIPMENTS, "--dry-run", "--idle", "2s"]).await;
    assert!(dry.contains("dry run, nothing published"), "{dry}");
    let orders = app.start_service("orders-consumer").await;
    app.publish(
        ORDERS,
        &order_placed("o-never", &app.recipient("never"), "en", &[("MUG-1", InStock)]),
    )
    .await;
    wait_until("the order to be stored", PATIENCE, || async {
        let m = orders.metrics().await;
        (metric_sum(&m, "backorder_consumer_events_total", "outcome=\"applied\"") >= 1.0).then_some(())
    })
    .await;
    assert_eq!(
        stored_shipments(&app, "o-never").await,
        (0, 0),
        "the dry run published nothing"
    );
    for _ in 0..2 {
        let replayed = backorderctl(&app, &["dlq", "replay", SHIPMENTS, "--idle", "2s"]).await;
        assert!(replayed.contains("re-published 1 of 1"), "{replayed}");
    }
    wait_until("the replayed shipments to be consumed", PATIENCE, || async {
        (app.committed_total("shipments-consumer", SHIPMENTS).await == 3).then_some(())
    })
    .await;
    assert_eq!(
        stored_shipments(&app, "o-never").await,
        (1, 0),
        "processed after the fix"
    );
    let client = app.pool.get().await.unwrap();
    let shipped: i64 = client
        .query_one(
            "SELECT count(*) FROM email_decisions WHERE order_id = 'o-never' AND template = 'shipped'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(shipped, 1, "one shipped email however often it is replayed");
}

/// Runs `backorderctl` against this test's stack; returns its stdout.
async fn backorderctl(app: &TestApp, args: &[&str]) -> String {
    let output = tokio::process::Command::new(backorder_tests::process::binary("backorderctl"))
        .args(args)
        .env_clear()
        .env("KAFKA_BOOTSTRAP_SERVERS", &app.settings.kafka_bootstrap_servers)
        .env("DATABASE_URL", &app.settings.database_url)
        .env("BACKORDER_TOPIC_PREFIX", &app.settings.topic_prefix)
        .env("BACKORDER_STACK_ENV", "/nonexistent")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "backorderctl {args:?}: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

async fn advance_hours(app: &TestApp, hours: i64) {
    backorder_core::clock::advance(&app.pool, chrono::Duration::hours(hours))
        .await
        .unwrap();
}
