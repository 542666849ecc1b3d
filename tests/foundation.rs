//! Foundation: an `OrderPlaced` on Kafka becomes exactly one order
//! confirmation at the SES endpoint, through crashes, bad input, a
//! database outage and SIGTERM. Everything real: the service binaries,
//! Tansu, PostgreSQL and moto's SES v2 API through the AWS SDK.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::disallowed_methods)]

use std::time::Duration;

use backorder_core::events::orders::Availability::{Backordered, InStock};
use backorder_core::kafka::topics::{EMAIL_REQUESTS, ORDERS};
use backorder_core::kafka::{Topics, dead_letter};
use backorder_tests::private_pg::PrivatePostgres;
use backorder_tests::{TestApp, order_placed, wait_until};

const PATIENCE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_order_across_a_consumer_crash_gives_exactly_one_email() {
    let app = TestApp::spawn().await;
    let mut orders = app.start_service("orders-consumer").await;
    let _sender = app.start_service("sender").await;
    let ada = app.recipient("ada");
    let order = order_placed("o-1", &ada, "en-GB", &[("LAMP-01", Backordered), ("MUG-01", InStock)]);

    app.publish(ORDERS, &order).await;
    let first = wait_until("the confirmation at SES", PATIENCE, || async {
        let sent = app.emails_to(&ada).await;
        (!sent.is_empty()).then_some(sent)
    })
    .await;
    assert!(first[0].subject.contains("o-1"), "{}", first[0].subject);
    assert!(
        first[0].body.contains("not known yet"),
        "honest window for an unknown ETA"
    );

    // Crash (no cleanup at all), restart, and receive the same event again.
    orders.kill();
    let _orders = app.start_service("orders-consumer").await;
    app.publish(ORDERS, &order).await;
    wait_until("the replay to be consumed and committed", PATIENCE, || async {
        (app.committed_total("orders-consumer", ORDERS).await == 2).then_some(())
    })
    .await;
    // The replay requests the confirmation again: only once the sender has
    // taken that second request in is "exactly one email" worth checking.
    wait_until("the sender to commit both requests", PATIENCE, || async {
        (app.committed_total("sender", EMAIL_REQUESTS).await == 2).then_some(())
    })
    .await;
    wait_until("the sender's queue to be empty", PATIENCE, || async {
        let states = app.ledger_states().await;
        (!states.contains_key("queued") && !states.contains_key("sending")).then_some(states)
    })
    .await;

    let sent = app.emails_to(&ada).await;
    assert_eq!(sent.len(), 1, "exactly one email at the SES endpoint");
    assert_eq!(app.ledger_states().await.get("sent"), Some(&1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_invalid_orders_go_to_the_dead_letter_topic_and_the_next_order_still_flows() {
    let app = TestApp::spawn().await;
    let _orders = app.start_service("orders-consumer").await;
    let _sender = app.start_service("sender").await;

    app.publish_raw(ORDERS, "junk", b"\x01\x02 definitely not avro").await;
    let mut no_lines = order_placed("o-empty", &app.recipient("e"), "en", &[("X", InStock)]);
    no_lines.lines.clear();
    app.publish(ORDERS, &no_lines).await;
    let mut negative = order_placed("o-neg", &app.recipient("n"), "en", &[("X", InStock)]);
    negative.lines[0].quantity = -2;
    app.publish(ORDERS, &negative).await;
    let good = app.recipient("good");
    app.publish(ORDERS, &order_placed("o-good", &good, "en", &[("X", InStock)]))
        .await;

    let letters = app.dead_letters(ORDERS, 3).await;
    let reasons: Vec<&str> = letters.iter().map(|(_, h)| h[dead_letter::REASON].as_str()).collect();
    let garbage = letters
        .iter()
        .find(|(payload, _)| payload.as_slice() == b"\x01\x02 definitely not avro")
        .expect("the garbage bytes, untouched, on the DLQ");
    assert!(
        garbage.1[dead_letter::REASON].contains("neither Avro single-object"),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("lines") && r.contains("at least one line")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("lines[0].quantity") && r.contains("-2")),
        "{reasons:?}"
    );
    for (payload, headers) in &letters {
        assert!(!payload.is_empty(), "the original bytes are kept");
        assert_eq!(headers[dead_letter::ORIGINAL_TOPIC], app.topics.name(ORDERS));
        assert!(headers[dead_letter::ORIGINAL_OFFSET].parse::<i64>().is_ok());
        assert!(headers.contains_key(dead_letter::ORIGINAL_PARTITION));
    }
    assert!(Topics::dead_letter_of(&app.topics.name(ORDERS)).ends_with("orders.v1.dlq"));

    wait_until("the valid order's confirmation", PATIENCE, || async {
        (app.emails_to(&good).await.len() == 1).then_some(())
    })
    .await;
    assert!(app.emails_to(&app.recipient("n")).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_postgres_down_the_offset_holds_and_the_order_is_processed_once_when_it_returns() {
    let pg = PrivatePostgres::start(&format!("outage-{}", uuid::Uuid::new_v4().simple()));
    let app = TestApp::spawn_on(&pg.admin_url()).await;
    let orders = app.start_service("orders-consumer").await;
    let _sender = app.start_service("sender").await;

    pg.stop();
    let ada = app.recipient("ada");
    app.publish(
        ORDERS,
        &order_placed("o-outage", &ada, "en", &[("LAMP-01", Backordered)]),
    )
    .await;

    // The consumer sees the event and keeps failing to store it...
    wait_until("transient failures to be retried", PATIENCE, || async {
        let metrics = orders.metrics().await;
        metrics
            .lines()
            .find(|l| l.starts_with("backorder_consumer_errors_total") && l.contains("kind=\"transient\""))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .filter(|n| *n >= 3.0)
    })
    .await;
    // ...and has not moved its offset past it.
    let committed = app.committed_total("orders-consumer", ORDERS).await;
    assert_eq!(committed, 0, "offset must not advance while the database is down");

    pg.restart();
    wait_until("the confirmation after recovery", PATIENCE, || async {
        (!app.emails_to(&ada).await.is_empty()).then_some(())
    })
    .await;
    wait_until("the offset to be committed", PATIENCE, || async {
        (app.committed_total("orders-consumer", ORDERS).await == 1).then_some(())
    })
    .await;
    wait_until("the sender to consume the request", PATIENCE, || async {
        (app.committed_total("sender", EMAIL_REQUESTS).await >= 1).then_some(())
    })
    .await;
    assert_eq!(app.emails_to(&ada).await.len(), 1);
    let client = app.pool.get().await.unwrap();
    let orders_stored: i64 = client
        .query_one("SELECT count(*) FROM orders", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(orders_stored, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_stream_exits_zero_quickly_and_loses_or_doubles_nothing() {
    let app = TestApp::spawn().await;
    let mut orders = app
        .start_service_with("orders-consumer", &[("BACKORDER_BATCH_MAX_MESSAGES", "5")])
        .await;
    let _sender = app.start_service("sender").await;
    const N: usize = 150;
    let recipients: Vec<String> = (0..N).map(|i| app.recipient(&format!("c{i}"))).collect();
    let records: Vec<_> = encoded_orders(&app, &recipients).await;
    app.producer.send_all(&records).await.unwrap();

    // SIGTERM while the stream is being processed.
    wait_until("processing to be under way", PATIENCE, || async {
        let done = app.ledger_states().await.values().sum::<i64>();
        (done > 0).then_some(())
    })
    .await;
    let started = std::time::Instant::now();
    let status = orders.terminate(Duration::from_secs(10)).await;
    let status = status.expect("orders-consumer exited within 10 s of SIGTERM");
    assert!(status.success(), "exit status {status}; log: {}", orders.log_tail());
    assert!(started.elapsed() < Duration::from_secs(10));
    // Work was in flight when the signal came: the stopped consumer had
    // committed only part of the stream.
    let committed_at_exit = app.committed_total("orders-consumer", ORDERS).await;
    assert!(
        committed_at_exit < N as i64,
        "SIGTERM came after all {N} orders were done; the test proves nothing"
    );

    let _orders = app.start_service("orders-consumer").await;
    wait_until("every confirmation at SES", Duration::from_secs(120), || async {
        let sent = backorder_tests::moto::sent_emails(&app.moto_url).await;
        let ours = sent.iter().filter(|e| e.to.iter().any(|t| t.contains(&app.id))).count();
        (ours >= N).then_some(())
    })
    .await;
    wait_until("the replayed tail to be committed", PATIENCE, || async {
        (app.committed_total("orders-consumer", ORDERS).await == N as i64).then_some(())
    })
    .await;
    let sent = backorder_tests::moto::sent_emails(&app.moto_url).await;
    for r in &recipients {
        let n = sent.iter().filter(|e| e.to.contains(r)).count();
        assert_eq!(n, 1, "one email per order");
    }
}

async fn encoded_orders(app: &TestApp, recipients: &[String]) -> Vec<backorder_core::kafka::OutboundRecord> {
    let mut out = Vec::new();
    for (i, r) in recipients.iter().enumerate() {
        let order = order_placed(&format!("o-{i}"), r, "en", &[("LAMP-01", Backordered)]);
        out.push(
            backorder_core::kafka::OutboundRecord::encode(&app.codec, &app.topics.name(ORDERS), &order)
                .await
                .unwrap(),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_starts_serves_health_and_metrics_and_exits_zero_on_sigterm() {
    let app = TestApp::spawn().await;
    for name in [
        "orders-consumer",
        "stock-consumer",
        "shipments-consumer",
        "offers-consumer",
        "segmentation",
        "sender",
    ] {
        let mut service = app.start_service(name).await;
        let base = format!("http://127.0.0.1:{}", service.http_port);
        let health = reqwest::get(format!("{base}/healthz")).await.unwrap();
        assert_eq!(health.status(), 200, "{name} /healthz");
        let ready = reqwest::get(format!("{base}/readyz")).await.unwrap();
        assert_eq!(ready.status(), 200, "{name} /readyz");
        let metrics = service.metrics().await;
        assert!(
            metrics
                .lines()
                .all(|l| l.starts_with('#') || l.is_empty() || l.starts_with("backorder_")),
            "{name}: every metric carries the project prefix:\n{metrics}"
        );
        let status = service.terminate(Duration::from_secs(10)).await;
        let status = status.unwrap_or_else(|| panic!("{name} did not exit within 10 s of SIGTERM"));
        assert!(status.success(), "{name} exited with {status}: {}", service.log_tail());
    }
}
