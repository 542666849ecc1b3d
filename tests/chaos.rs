//! Chaos, reduced scope (`make chaos`): a seeded stream of orders in the
//! five languages, each with a backordered line, flows through the real
//! orders-consumer and sender while a fault driver SIGKILLs a random one of
//! them at least ten times (restarting it), restarts the broker once and
//! PostgreSQL once. Afterwards every order's confirmation reached the SES
//! endpoint, each exactly once except the ambiguous resends the sender
//! counted (reported, never hidden), and the ledger holds one sent row per
//! order.
//!
//! What the full scenario of issue 14 adds and this does not yet cover:
//! stock, shipments, offers, segmentation and campaigns, the controlled
//! clock, offer clicks through the page, and the comparison with a
//! fault-free run of the same seed (here the expectation is computed: one
//! confirmation per order, which is what a fault-free run produces).
//!
//! The broker is a private Tansu with S3 storage (a restart keeps its
//! data), the database a private cluster and the SES endpoint a private
//! moto, so the faults touch no other test running in parallel.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::time::Duration;

use backorder_core::events::orders::Availability::{Backordered, InStock};
use backorder_core::kafka::topics::ORDERS;
use backorder_tests::moto::sent_emails;
use backorder_tests::private_moto::PrivateMoto;
use backorder_tests::private_pg::PrivatePostgres;
use backorder_tests::private_tansu::PrivateTansu;
use backorder_tests::process::ServiceProcess;
use backorder_tests::{TestApp, order_placed, wait_until};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Orders in the run, published in waves with a fault after each wave.
const WAVES: usize = 12;
const ORDERS_PER_WAVE: usize = 25;
const SERVICES: [&str; 2] = ["orders-consumer", "sender"];
const LOCALES: [&str; 5] = ["en-GB", "de-DE", "fr-FR", "es-ES", "it-IT"];
const PATIENCE: Duration = Duration::from_secs(120);

/// What the fault driver does after a wave.
#[derive(Debug, Clone, Copy)]
enum Fault {
    Kill(usize),
    RestartBroker,
    RestartDatabase,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_flow_through_kills_and_restarts_with_every_email_once() {
    let seed: u64 = std::env::var("BACKORDER_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(14);
    let mut rng = StdRng::seed_from_u64(seed);
    let name = format!("chaos-{}", uuid::Uuid::new_v4().simple());
    let log_dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/test-logs")
        .join(&name);
    let mut broker = PrivateTansu::start(&log_dir).await;
    let pg = PrivatePostgres::start(&name);
    let ses = PrivateMoto::start(&log_dir).await;
    let app = TestApp::spawn_with(&pg.admin_url(), Some(&broker.bootstrap())).await;
    let env = [("AWS_ENDPOINT_URL_SESV2", ses.url.as_str())];
    let mut services: Vec<ServiceProcess> = Vec::new();
    for service in SERVICES {
        services.push(app.start_service_with(service, &env).await);
    }

    // Ten kills at random, the broker and the database restarted once each
    // at random waves, in a seeded order.
    let mut plan: Vec<Fault> = (0..WAVES - 2)
        .map(|_| Fault::Kill(rng.random_range(0..SERVICES.len())))
        .collect();
    plan.insert(rng.random_range(0..=plan.len()), Fault::RestartBroker);
    plan.insert(rng.random_range(0..=plan.len()), Fault::RestartDatabase);

    let mut recipients = Vec::new();
    let mut injected: HashMap<&str, usize> = HashMap::new();
    for (wave, fault) in plan.iter().enumerate() {
        for n in 0..ORDERS_PER_WAVE {
            let i = wave * ORDERS_PER_WAVE + n;
            let recipient = app.recipient(&format!("c{i}"));
            let mut lines = vec![("LAMP-01", Backordered)];
            if rng.random_bool(0.5) {
                lines.push(("MUG-01", InStock));
            }
            let order = order_placed(&format!("o-{i}"), &recipient, LOCALES[i % LOCALES.len()], &lines);
            app.publish(ORDERS, &order).await;
            recipients.push(recipient);
        }
        // A random moment inside the wave's processing.
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..400))).await;
        match *fault {
            Fault::Kill(index) => {
                services[index].kill();
                services[index] = app.start_service_with(SERVICES[index], &env).await;
                *injected.entry("SIGKILL + restart of a service").or_default() += 1;
            }
            Fault::RestartBroker => {
                broker.restart().await;
                *injected.entry("broker restart").or_default() += 1;
            }
            Fault::RestartDatabase => {
                pg.stop();
                pg.restart();
                *injected.entry("PostgreSQL restart").or_default() += 1;
            }
        }
    }

    let expected = recipients.len();
    wait_until("every order's confirmation at SES", PATIENCE, || async {
        let sent = sent_emails(&ses.url).await;
        let reached = recipients
            .iter()
            .filter(|r| sent.iter().any(|e| e.to.contains(r)))
            .count();
        (reached == expected).then_some(())
    })
    .await;
    wait_until("the sender's queue to be empty", PATIENCE, || async {
        let states = app.ledger_states().await;
        (!states.contains_key("queued") && !states.contains_key("sending")).then_some(())
    })
    .await;

    let sent = sent_emails(&ses.url).await;
    let mut per_recipient: HashMap<&String, usize> = HashMap::new();
    for email in &sent {
        for recipient in &recipients {
            if email.to.contains(recipient) {
                *per_recipient.entry(recipient).or_default() += 1;
            }
        }
    }
    let delivered = per_recipient.len();
    let lost = expected - delivered;
    let duplicated: usize = per_recipient.values().map(|n| n.saturating_sub(1)).sum();
    let client = app.pool.get().await.expect("db");
    let ledger = client
        .query_one(
            "SELECT count(*) FILTER (WHERE state = 'sent'), count(*), coalesce(sum(ambiguous_resends), 0)::bigint \
             FROM email_ledger",
            &[],
        )
        .await
        .expect("ledger");
    let (ledger_sent, ledger_rows, ambiguous): (i64, i64, i64) = (ledger.get(0), ledger.get(1), ledger.get(2));
    let unexplained = duplicated.saturating_sub(ambiguous as usize);

    let faults: usize = injected.values().sum();
    let mut table = String::from("\nchaos summary (seed ");
    table.push_str(&format!("{seed})\n"));
    for (what, count) in [
        ("faults injected", faults),
        (
            "  SIGKILL + restart of a service",
            injected.get("SIGKILL + restart of a service").copied().unwrap_or(0),
        ),
        ("  broker restart", injected.get("broker restart").copied().unwrap_or(0)),
        (
            "  PostgreSQL restart",
            injected.get("PostgreSQL restart").copied().unwrap_or(0),
        ),
        ("emails expected", expected),
        ("delivered", delivered),
        ("lost", lost),
        ("duplicated", duplicated),
        ("ambiguous (counted by the sender)", ambiguous as usize),
        ("unexplained duplicates", unexplained),
    ] {
        table.push_str(&format!("| {what:<34} | {count:>6} |\n"));
    }
    println!("{table}");

    assert!(injected["SIGKILL + restart of a service"] >= 10, "{table}");
    assert_eq!(lost, 0, "no email lost: {table}");
    assert_eq!(
        unexplained, 0,
        "every duplicate is an ambiguous resend the sender counted: {table}"
    );
    assert_eq!(ledger_rows as usize, expected, "one ledger row per order: {table}");
    assert_eq!(ledger_sent as usize, expected, "every row sent: {table}");
    wait_until("every order committed by orders-consumer", PATIENCE, || async {
        (app.committed_total("orders-consumer", ORDERS).await == expected as i64).then_some(())
    })
    .await;
}
