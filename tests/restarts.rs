//! Infrastructure restarts: the broker and PostgreSQL are restarted in
//! place (same port, same data) under running services, which ride through
//! without restarting themselves and lose or double nothing. The broker is
//! a private Tansu with S3 storage in a private moto (what `make
//! restart-broker` does to the local stack with `BACKORDER_TANSU_STORAGE=s3`),
//! the database a private cluster: the shared ones serve the tests running
//! in parallel.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::disallowed_methods)]

use std::time::Duration;

use backorder_core::events::orders::Availability::{Backordered, InStock};
use backorder_core::kafka::topics::ORDERS;
use backorder_tests::private_pg::PrivatePostgres;
use backorder_tests::private_tansu::PrivateTansu;
use backorder_tests::process::ServiceProcess;
use backorder_tests::{TestApp, order_placed, wait_until};

const PATIENCE: Duration = Duration::from_secs(90);

/// Publishes an order for a new recipient and waits for its confirmation
/// at the SES endpoint; returns the recipient.
async fn order_goes_through(app: &TestApp, name: &str) -> String {
    let recipient = app.recipient(name);
    let order = order_placed(
        &format!("o-{name}"),
        &recipient,
        "en-GB",
        &[("LAMP-01", Backordered), ("MUG-01", InStock)],
    );
    app.publish(ORDERS, &order).await;
    wait_until(&format!("the confirmation of order o-{name}"), PATIENCE, || async {
        (!app.emails_to(&recipient).await.is_empty()).then_some(())
    })
    .await;
    recipient
}

/// The process still runs (it was never restarted) and is ready again.
async fn still_the_same_process(service: &mut ServiceProcess, pid: u32) {
    assert!(
        service.wait_exit(Duration::ZERO).await.is_none(),
        "{} exited: {}",
        service.name,
        service.log_tail()
    );
    assert_eq!(service.pid(), pid);
    let url = format!("http://127.0.0.1:{}/readyz", service.http_port);
    wait_until(&format!("{} ready again", service.name), PATIENCE, || async {
        reqwest::get(&url)
            .await
            .ok()
            .filter(|r| r.status().is_success())
            .map(|_| ())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_ride_through_a_broker_restart_and_a_database_restart() {
    let name = format!("restarts-{}", uuid::Uuid::new_v4().simple());
    let log_dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/test-logs")
        .join(&name);
    let mut broker = PrivateTansu::start(&log_dir).await;
    let pg = PrivatePostgres::start(&name);
    let app = TestApp::spawn_with(&pg.admin_url(), Some(&broker.bootstrap())).await;
    let mut orders = app.start_service("orders-consumer").await;
    let mut sender = app.start_service("sender").await;
    let (orders_pid, sender_pid) = (orders.pid(), sender.pid());

    let before = order_goes_through(&app, "before").await;

    broker.restart().await;
    let after_broker = order_goes_through(&app, "after-broker").await;

    pg.stop();
    pg.restart();
    let after_db = order_goes_through(&app, "after-db").await;

    wait_until("the sender's queue to be empty", PATIENCE, || async {
        let states = app.ledger_states().await;
        (!states.contains_key("queued") && !states.contains_key("sending")).then_some(())
    })
    .await;
    for recipient in [&before, &after_broker, &after_db] {
        assert_eq!(
            app.emails_to(recipient).await.len(),
            1,
            "exactly one confirmation for {}",
            recipient.split('+').next().unwrap_or_default()
        );
    }
    wait_until("every order committed by orders-consumer", PATIENCE, || async {
        (app.committed_total("orders-consumer", ORDERS).await == 3).then_some(())
    })
    .await;
    still_the_same_process(&mut orders, orders_pid).await;
    still_the_same_process(&mut sender, sender_pid).await;
}
