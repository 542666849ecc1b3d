//! Chaos, reduced scope (`make chaos`): the catalogue and a first supplier
//! window for six backordered SKUs, then a seeded stream of orders in the
//! five languages, each with a backordered line of one of them, some with
//! an in-stock line that ships in the next wave and is delivered in the one
//! after. From the third wave on, each wave also carries one stock event:
//! two small ETA slips, two significant ones (more than 7 days, which go
//! to `backorder-delays.v1`) and arrivals of a few units. All of it flows
//! through the real orders-consumer, shipments-consumer, stock-consumer
//! and sender while a fault driver SIGKILLs a random one of them at least
//! ten times (restarting it), restarts the broker once and PostgreSQL
//! once. The same seed then runs again without faults, and the two runs
//! are compared: the same dedup keys were sent (every one reached the SES
//! endpoint, exactly once except the ambiguous resends the sender counted,
//! reported, never hidden), the same emails per customer, the same final
//! orders and order lines (with their promises), arrivals, allocations,
//! stock and ETAs, and the same significant delays on `backorder-delays.v1`
//! (a record re-published after a fault is counted, not failed).
//!
//! A wave's stock event is for a SKU that wave's orders do not use, and the
//! driver publishes it only once the previous waves are applied (a wait
//! with a deadline, not a sleep): so who is told of a slip and which lines
//! an arrival serves do not depend on how far a killed service had got.
//!
//! What the full scenario of issue 14 adds and this does not yet cover:
//! cancellations, segmentation and campaigns, offers and offer clicks
//! through the page, `backorder-decisions.v1`, and moving the controlled
//! clock (it stays at today's time, so no promise becomes overdue).
//!
//! The broker is a private Tansu with S3 storage (a restart keeps its
//! data; it is stopped with SIGTERM, see [`PrivateTansu::restart`]), the
//! database a private cluster and the SES endpoint a private moto, so the
//! faults touch no other test running in parallel.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::disallowed_methods)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use backorder_core::events::internal::BackorderDelayEvent;
use backorder_core::events::orders::Availability::{Backordered, InStock};
use backorder_core::kafka::topics::{BACKORDER_DELAYS, ORDERS, SHIPMENTS, STOCK};
use backorder_tests::moto::sent_emails;
use backorder_tests::private_moto::PrivateMoto;
use backorder_tests::private_pg::PrivatePostgres;
use backorder_tests::private_tansu::PrivateTansu;
use backorder_tests::process::ServiceProcess;
use backorder_tests::scenario::{day, delivered, dispatched};
use backorder_tests::stock::{arrival, eta, product, records_on_topic};
use backorder_tests::{TestApp, order_placed, wait_until};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// Orders in the run, published in waves with a fault after each wave.
const WAVES: usize = 12;
const ORDERS_PER_WAVE: usize = 25;
const SERVICES: [&str; 4] = ["orders-consumer", "shipments-consumer", "stock-consumer", "sender"];
/// The backordered SKUs; every order has one line of one of them.
const SKUS: [&str; 6] = ["LAMP-01", "LAMP-02", "LAMP-03", "LAMP-04", "LAMP-05", "LAMP-06"];
/// Every SKU's first supplier window, in days from today, and the two
/// kinds of slip (policy: more than 7 days past the promise is significant).
const FIRST_WINDOW: (i64, i64) = (10, 14);
const SMALL_SLIP: (i64, i64) = (13, 17);
const SIGNIFICANT_SLIP: (i64, i64) = (30, 34);
const LOCALES: [&str; 5] = ["en-GB", "de-DE", "fr-FR", "es-ES", "it-IT"];
const PATIENCE: Duration = Duration::from_secs(120);

/// The kinds of fault, as the summary names them.
const KILLS: &str = "  SIGKILL + restart of a service";
const BROKER: &str = "  broker restart";
const DATABASE: &str = "  PostgreSQL restart";

/// The stock event of a wave, for a SKU that wave's orders do not use: its
/// effect (who is told, which lines are allocated) then depends only on
/// orders the driver saw stored before publishing it.
#[derive(Debug, Clone, Copy)]
enum StockStep {
    Slip { sku: usize, window: (i64, i64) },
    Arrival { sku: usize, quantity: i32 },
}

impl StockStep {
    fn sku(self) -> usize {
        match self {
            StockStep::Slip { sku, .. } | StockStep::Arrival { sku, .. } => sku,
        }
    }
}

/// What the fault driver does after a wave.
#[derive(Debug, Clone, Copy)]
enum Fault {
    Kill(usize),
    RestartBroker,
    RestartDatabase,
}

/// What one run left behind, in terms that do not depend on the run's
/// random test id (customers are named by their index).
#[derive(Debug)]
struct Outcome {
    /// Fault kind -> how many were injected.
    injected: BTreeMap<&'static str, usize>,
    /// Emails that reached the SES endpoint, per customer index.
    emails: BTreeMap<usize, usize>,
    /// The ledger's dedup keys of sent emails.
    sent_keys: BTreeSet<String>,
    /// Rows of the ledger in any state, and its ambiguous resends.
    ledger_rows: usize,
    ambiguous: usize,
    /// Orders and their lines, one text line each.
    database: Vec<String>,
    /// Arrivals, allocations, the catalogue's stock and the SKUs' ETAs.
    stock: Vec<String>,
    /// Distinct (order, SKU, ETA version) of `backorder-delays.v1`, and how
    /// many records repeated one (an output re-published after a crash,
    /// which consumers deduplicate).
    delays: BTreeSet<String>,
    delays_repeated: usize,
}

/// Waits until the stock-consumer and orders-consumer have applied
/// everything published so far: `orders` stored (with their promise),
/// `eta_changes` applied and their debounce timers fired, `arrivals`
/// allocated. A query failing while PostgreSQL restarts is waited out.
async fn stock_applied(app: &TestApp, orders: usize, eta_changes: usize, arrivals: usize) {
    let expected = (orders as i64, eta_changes as i64, arrivals as i64, 0_i64);
    wait_until("orders and stock events applied", PATIENCE, || async {
        let client = app.pool.get().await.ok()?;
        let row = client
            .query_one(
                "SELECT (SELECT count(*) FROM orders), (SELECT count(*) FROM eta_changes), \
                        (SELECT count(*) FROM stock_arrivals WHERE kind = 'supplier' AND state = 'allocated'), \
                        (SELECT count(*) FROM timers WHERE kind IN ('delay-notice', 'stock-settle') AND state = 'pending')",
                &[],
            )
            .await
            .ok()?;
        let seen: (i64, i64, i64, i64) = (row.get(0), row.get(1), row.get(2), row.get(3));
        (seen == expected).then_some(())
    })
    .await;
}

async fn run(seed: u64, faults: bool) -> Outcome {
    let mut rng = StdRng::seed_from_u64(seed);
    let name = format!("chaos-{}", uuid::Uuid::new_v4().simple());
    let log_dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/test-logs")
        .join(&name);
    let mut broker = PrivateTansu::start(&log_dir).await;
    let pg = PrivatePostgres::start(&name);
    let ses = PrivateMoto::start(&log_dir).await;
    let app = TestApp::spawn_with(&pg.admin_url(), Some(&broker.bootstrap())).await;
    // A short debounce of ETA changes and fast timers, so a slip is told
    // within the wave that published it.
    let policy = app.write_policy("chaos", "[delays]\ndebounce_seconds = 0.3\n");
    let env = [
        ("AWS_ENDPOINT_URL_SESV2", ses.url.as_str()),
        ("BACKORDER_POLICY_FILE", policy.as_str()),
        ("BACKORDER_TIMER_POLL_MS", "100"),
    ];
    let mut services: Vec<ServiceProcess> = Vec::new();
    for service in SERVICES {
        services.push(app.start_service_with(service, &env).await);
    }

    // Ten kills at random, the broker and the database restarted once each
    // at random waves, in a seeded order (drawn in the fault-free run too,
    // so both runs publish the same orders).
    let mut plan: Vec<Fault> = (0..WAVES - 2)
        .map(|_| Fault::Kill(rng.random_range(0..SERVICES.len())))
        .collect();
    plan.insert(rng.random_range(0..=plan.len()), Fault::RestartBroker);
    plan.insert(rng.random_range(0..=plan.len()), Fault::RestartDatabase);
    // From the third wave on, one stock event per wave: two small and two
    // significant slips of four different SKUs, and arrivals of two to four
    // units of any SKU.
    let mut slipping: Vec<usize> = (0..SKUS.len()).collect();
    slipping.shuffle(&mut rng);
    let mut steps: Vec<StockStep> = vec![
        StockStep::Slip {
            sku: slipping[0],
            window: SMALL_SLIP,
        },
        StockStep::Slip {
            sku: slipping[1],
            window: SMALL_SLIP,
        },
        StockStep::Slip {
            sku: slipping[2],
            window: SIGNIFICANT_SLIP,
        },
        StockStep::Slip {
            sku: slipping[3],
            window: SIGNIFICANT_SLIP,
        },
    ];
    while steps.len() < WAVES - 2 {
        steps.push(StockStep::Arrival {
            sku: rng.random_range(0..SKUS.len()),
            quantity: rng.random_range(2..=4),
        });
    }
    steps.shuffle(&mut rng);
    let mut stock_plan: Vec<Option<StockStep>> = vec![None, None];
    stock_plan.extend(steps.into_iter().map(Some));

    // The catalogue and every SKU's first window, applied before the first
    // order, so every backordered line is promised that window.
    for sku in SKUS {
        app.publish(STOCK, &product(sku, &format!("Product {sku}"), 2500, 0))
            .await;
    }
    app.publish(STOCK, &product("MUG-01", "Product MUG-01", 2500, 100_000))
        .await;
    let first = (day(&app, FIRST_WINDOW.0).await, day(&app, FIRST_WINDOW.1).await);
    for sku in SKUS {
        app.publish(STOCK, &eta(sku, Some(first), "first estimate")).await;
    }
    let mut eta_changes = SKUS.len();
    let mut arrivals = 0;
    stock_applied(&app, 0, eta_changes, arrivals).await;

    let mut recipients: Vec<String> = Vec::new();
    let mut injected: BTreeMap<&'static str, usize> = BTreeMap::new();
    // Orders whose in-stock line ships in the next wave, and whose shipment
    // is delivered in the wave after.
    let mut to_ship: Vec<usize> = Vec::new();
    let mut to_deliver: Vec<usize> = Vec::new();
    let mut shipment_events = 0;
    for (wave, (fault, stock)) in plan.iter().zip(&stock_plan).enumerate() {
        // After the previous wave's fault: its orders and stock event have
        // been applied, so this wave's stock event meets the same state in
        // both runs.
        stock_applied(&app, recipients.len(), eta_changes, arrivals).await;
        match *stock {
            Some(StockStep::Slip { sku, window }) => {
                let window = (day(&app, window.0).await, day(&app, window.1).await);
                let reason = "A storm closed the port our supplier ships from";
                app.publish(STOCK, &eta(SKUS[sku], Some(window), reason)).await;
                eta_changes += 1;
            }
            Some(StockStep::Arrival { sku, quantity }) => {
                app.publish(STOCK, &arrival(&format!("arr-{wave}"), SKUS[sku], quantity))
                    .await;
                arrivals += 1;
            }
            None => {}
        }
        let skus: Vec<&str> = SKUS
            .iter()
            .enumerate()
            .filter(|(k, _)| stock.is_none_or(|s| s.sku() != *k))
            .map(|(_, sku)| *sku)
            .collect();
        for i in std::mem::take(&mut to_deliver) {
            app.publish(SHIPMENTS, &delivered(&app, &format!("o-{i}"), &format!("s-{i}")).await)
                .await;
            shipment_events += 1;
        }
        for i in std::mem::take(&mut to_ship) {
            let shipment = dispatched(&app, &format!("o-{i}"), &format!("s-{i}"), &["l2"]).await;
            app.publish(SHIPMENTS, &shipment).await;
            shipment_events += 1;
            to_deliver.push(i);
        }
        for n in 0..ORDERS_PER_WAVE {
            let i = wave * ORDERS_PER_WAVE + n;
            let recipient = app.recipient(&format!("c{i}"));
            let mut lines = vec![(skus[rng.random_range(0..skus.len())], Backordered)];
            if rng.random_bool(0.5) {
                lines.push(("MUG-01", InStock));
                to_ship.push(i);
            }
            let order = order_placed(&format!("o-{i}"), &recipient, LOCALES[i % LOCALES.len()], &lines);
            app.publish(ORDERS, &order).await;
            recipients.push(recipient);
        }
        // A random moment inside the wave's processing.
        let moment = Duration::from_millis(rng.random_range(0..400));
        if !faults {
            continue;
        }
        tokio::time::sleep(moment).await;
        match *fault {
            Fault::Kill(index) => {
                services[index].kill();
                services[index] = app.start_service_with(SERVICES[index], &env).await;
                *injected.entry(KILLS).or_default() += 1;
            }
            Fault::RestartBroker => {
                broker.restart().await;
                *injected.entry(BROKER).or_default() += 1;
            }
            Fault::RestartDatabase => {
                pg.stop();
                pg.restart();
                *injected.entry(DATABASE).or_default() += 1;
            }
        }
    }

    let expected = recipients.len();
    stock_applied(&app, expected, eta_changes, arrivals).await;
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
    wait_until("every order committed by orders-consumer", PATIENCE, || async {
        (app.committed_total("orders-consumer", ORDERS).await == expected as i64).then_some(())
    })
    .await;
    wait_until(
        "every shipment event committed by shipments-consumer",
        PATIENCE,
        || async { (app.committed_total("shipments-consumer", SHIPMENTS).await == shipment_events).then_some(()) },
    )
    .await;
    // A shipment that came before its order was parked (and its offset
    // committed): it is applied when the order is stored.
    wait_until("no parked events left", PATIENCE, || async {
        let client = app.pool.get().await.expect("db");
        let row = client
            .query_one("SELECT count(*) FROM parked_events", &[])
            .await
            .expect("parked events");
        (row.get::<_, i64>(0) == 0).then_some(())
    })
    .await;
    // Every email decided (recorded with its outputs, which were
    // acknowledged before the inputs above were committed) has been sent.
    wait_until("every decided email sent", PATIENCE, || async {
        let client = app.pool.get().await.expect("db");
        let row = client
            .query_one(
                "SELECT (SELECT count(*) FROM email_decisions), \
                        (SELECT count(*) FROM email_ledger WHERE state IN ('sent', 'failed', 'suppressed'))",
                &[],
            )
            .await
            .expect("decisions and ledger");
        (row.get::<_, i64>(0) == row.get::<_, i64>(1)).then_some(())
    })
    .await;

    let index: HashMap<&String, usize> = recipients.iter().enumerate().map(|(i, r)| (r, i)).collect();
    let mut emails: BTreeMap<usize, usize> = BTreeMap::new();
    for email in sent_emails(&ses.url).await {
        for to in &email.to {
            if let Some(i) = index.get(to) {
                *emails.entry(*i).or_default() += 1;
            }
        }
    }
    let client = app.pool.get().await.expect("db");
    let sent_keys = client
        .query("SELECT dedup_key FROM email_ledger WHERE state = 'sent'", &[])
        .await
        .expect("ledger keys")
        .iter()
        .map(|row| row.get::<_, String>(0))
        .collect();
    let ledger = client
        .query_one(
            "SELECT count(*), coalesce(sum(ambiguous_resends), 0)::bigint FROM email_ledger",
            &[],
        )
        .await
        .expect("ledger");
    let database = client
        .query(
            "SELECT o.order_id, o.currency, o.total_minor, o.tags::text, o.cancelled_at IS NOT NULL, \
                    l.line_id, l.sku, l.quantity, l.availability, l.status, l.promise_told \
             FROM orders o JOIN order_lines l USING (order_id) ORDER BY o.order_id, l.line_id",
            &[],
        )
        .await
        .expect("orders and lines")
        .iter()
        .map(|row| {
            format!(
                "{} {} {} {} cancelled={} {} {} {} {} {} told={}",
                row.get::<_, String>(0),
                row.get::<_, String>(1),
                row.get::<_, i64>(2),
                row.get::<_, String>(3),
                row.get::<_, bool>(4),
                row.get::<_, String>(5),
                row.get::<_, String>(6),
                row.get::<_, i32>(7),
                row.get::<_, String>(8),
                row.get::<_, String>(9),
                row.get::<_, bool>(10),
            )
        })
        .collect();
    let mut stock = Vec::new();
    for (what, sql) in [
        (
            "arrival",
            "SELECT concat_ws(' ', arrival_id, sku, quantity, units, remaining, lines_allocated, surplus, reserved, \
                    state, kind, outputs_acked_at IS NOT NULL) FROM stock_arrivals ORDER BY arrival_id",
        ),
        (
            "allocation",
            "SELECT concat_ws(' ', arrival_id, order_id, line_id, sku, quantity) FROM stock_allocations \
             ORDER BY arrival_id, order_id, line_id",
        ),
        (
            "product",
            "SELECT concat_ws(' ', sku, available_quantity, reserved_quantity) FROM products ORDER BY sku",
        ),
        (
            "eta",
            "SELECT concat_ws(' ', sku, eta_from, eta_to, version) FROM sku_eta ORDER BY sku",
        ),
        (
            "promise",
            "SELECT concat_ws(' ', order_id, line_id, promised_from, promised_to, first_promised_from, first_promised_to) \
             FROM order_lines ORDER BY order_id, line_id",
        ),
    ] {
        for row in client.query(sql, &[]).await.expect(what) {
            stock.push(format!("{what}: {}", row.get::<_, String>(0)));
        }
    }
    // Two slips are significant, so there is at least one record; the
    // reader then keeps reading to catch the rest.
    let mut delays = BTreeSet::new();
    let mut delay_records = 0;
    for BackorderDelayEvent::Delayed(d) in
        records_on_topic::<BackorderDelayEvent>(&app, BACKORDER_DELAYS, 1, Duration::from_secs(3)).await
    {
        delay_records += 1;
        delays.insert(format!("{} {} v{}", d.order_id, d.sku, d.eta_version));
    }
    Outcome {
        injected,
        emails,
        sent_keys,
        ledger_rows: ledger.get::<_, i64>(0) as usize,
        ambiguous: ledger.get::<_, i64>(1) as usize,
        database,
        stock,
        delays_repeated: delay_records - delays.len(),
        delays,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_flow_through_kills_and_restarts_with_every_email_once() {
    let seed: u64 = std::env::var("BACKORDER_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(14);
    let chaos = run(seed, true).await;
    let calm = run(seed, false).await;

    let expected: usize = calm.emails.values().sum();
    let delivered: usize = calm
        .emails
        .iter()
        .map(|(i, n)| (*n).min(chaos.emails.get(i).copied().unwrap_or(0)))
        .sum();
    let lost: usize = calm
        .emails
        .iter()
        .map(|(i, n)| n.saturating_sub(chaos.emails.get(i).copied().unwrap_or(0)))
        .sum();
    let duplicated: usize = chaos
        .emails
        .iter()
        .map(|(i, n)| n.saturating_sub(calm.emails.get(i).copied().unwrap_or(0)))
        .sum();
    let unexplained = duplicated.saturating_sub(chaos.ambiguous);
    let faults: usize = chaos.injected.values().sum();
    let count = |what| chaos.injected.get(what).copied().unwrap_or(0);

    let mut table = format!("\nchaos summary (seed {seed}; compared with a fault-free run of the same seed)\n");
    for (what, n) in [
        ("faults injected", faults),
        (KILLS, count(KILLS)),
        (BROKER, count(BROKER)),
        (DATABASE, count(DATABASE)),
        ("emails expected", expected),
        ("delivered", delivered),
        ("lost", lost),
        ("duplicated", duplicated),
        ("ambiguous (counted by the sender)", chaos.ambiguous),
        ("unexplained duplicates", unexplained),
        (
            "arrivals allocated",
            chaos.stock.iter().filter(|r| r.starts_with("allocation:")).count(),
        ),
        ("significant delays (distinct)", chaos.delays.len()),
        ("  re-published after a fault", chaos.delays_repeated),
    ] {
        table.push_str(&format!("| {what:<34} | {n:>6} |\n"));
    }
    println!("{table}");

    assert!(count(KILLS) >= 10, "{table}");
    assert_eq!((count(BROKER), count(DATABASE)), (1, 1), "{table}");
    assert_eq!(calm.ambiguous, 0, "the fault-free run resent nothing");
    assert_eq!(
        calm.emails.len(),
        WAVES * ORDERS_PER_WAVE,
        "every customer of the fault-free run got email"
    );
    assert_eq!(lost, 0, "no email lost: {table}");
    assert_eq!(
        unexplained, 0,
        "every duplicate is an ambiguous resend the sender counted: {table}"
    );
    assert_eq!(chaos.sent_keys, calm.sent_keys, "the same dedup keys were sent");
    assert_eq!(chaos.ledger_rows, calm.ledger_rows, "no extra ledger rows");
    assert_eq!(calm.delays_repeated, 0, "the fault-free run published every delay once");
    assert_eq!(
        chaos.delays, calm.delays,
        "the same significant delays on backorder-delays.v1"
    );
    let only_chaos: Vec<&String> = chaos.stock.iter().filter(|r| !calm.stock.contains(r)).collect();
    let only_calm: Vec<&String> = calm.stock.iter().filter(|r| !chaos.stock.contains(r)).collect();
    assert!(
        only_chaos.is_empty() && only_calm.is_empty(),
        "the same arrivals, allocations, stock and promises; only after faults: {only_chaos:#?}; only without: {only_calm:#?}"
    );
    let only_chaos: Vec<&String> = chaos.database.iter().filter(|r| !calm.database.contains(r)).collect();
    let only_calm: Vec<&String> = calm.database.iter().filter(|r| !chaos.database.contains(r)).collect();
    assert!(
        only_chaos.is_empty() && only_calm.is_empty(),
        "the same orders and lines; only after faults: {only_chaos:#?}; only without: {only_calm:#?}"
    );
}
