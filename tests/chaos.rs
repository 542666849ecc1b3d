//! Chaos (`make chaos`, issue 14): a seeded scenario of 2,400 orders in the
//! five languages through all six services, while a fault driver SIGKILLs
//! a random service at least ten times (restarting it), restarts the
//! broker once and PostgreSQL once; then the same seed again without
//! faults, and the two runs compared.
//!
//! The story, in twelve waves of 200 orders:
//! - the catalogue: six backordered SKUs, three of them with an in-stock
//!   alternative (same need, in season) and three without, and a mug in
//!   stock; every backordered SKU has a first supplier window;
//! - every order has a backordered line, some an in-stock line too, which
//!   ships in the next wave and is delivered in the one after;
//! - from the third wave on, one stock event per wave: two small slips
//!   (delay notices), two significant ones (more than 7 days: segmentation
//!   starts a campaign, an alternative or a store-credit one, whose one
//!   email is apology and offer), and arrivals of a few units;
//! - from the third wave on, the order system cancels a few orders (the
//!   whole order or its backordered line; units it was served go to the
//!   next waiting line);
//! - customers answer offers by clicking the links in the emails SES got,
//!   through the real offer page (the `GET` shows it, the `POST` decides),
//!   retrying while the page's service or its broker is down: switch,
//!   credit, keep waiting expedited, or cancel; the others let them expire;
//! - once, the controlled clock moves four days: unanswered offers expire
//!   and their campaigns send the next offer, delivered orders get their
//!   follow-up.
//!
//! Between the steps of a wave the driver waits until the pipeline is
//! quiet (every input committed, every slip in a campaign, every click
//! decided, no timer due, no parked event, every decided email sent): a
//! wait with a deadline, not a sleep. So what a step meets (who waits for
//! an arrival, who is offered what) is the same in both runs, however far
//! a killed service had got. The faults strike while a step's events are
//! being processed: a random moment after the cancellations, during the
//! clicks or after the orders.
//!
//! Compared: the dedup keys the ledger sent, the emails each customer got
//! at the SES endpoint (each exactly once except the ambiguous resends the
//! sender counted, reported, never hidden), the decisions on
//! `backorder-decisions.v1` and the significant delays on
//! `backorder-delays.v1` (a record re-published after a fault is counted,
//! not failed), and the final database state of orders, lines, promises,
//! arrivals, allocations, stock, ETAs, campaigns, offers and decisions.
//!
//! The broker is a private Tansu with S3 storage (a restart keeps its
//! data; it is stopped with SIGTERM, see [`PrivateTansu::restart`]), the
//! database a private cluster and the SES endpoint a private moto, so the
//! faults touch no other test running in parallel.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::disallowed_methods)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use backorder_core::events::internal::{BackorderDecisionEvent, BackorderDelayEvent};
use backorder_core::events::orders::Availability::{Backordered, InStock};
use backorder_core::events::orders::OrderCancelled;
use backorder_core::kafka::topics::{BACKORDER_DECISIONS, BACKORDER_DELAYS, CONSUMED, ORDERS, SHIPMENTS, STOCK};
use backorder_tests::browser::link_param;
use backorder_tests::moto::sent_emails;
use backorder_tests::private_moto::PrivateMoto;
use backorder_tests::private_pg::PrivatePostgres;
use backorder_tests::private_tansu::PrivateTansu;
use backorder_tests::process::{ServiceProcess, free_port};
use backorder_tests::scenario::{day, delivered, dispatched};
use backorder_tests::stock::{arrival, eta, product, records_on_topic};
use backorder_tests::{TestApp, order_placed, wait_until};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// Orders in the run, published in waves; one fault strikes in each wave.
const WAVES: usize = 12;
const ORDERS_PER_WAVE: usize = 200;

/// Orders per wave: [`ORDERS_PER_WAVE`] unless `BACKORDER_CHAOS_ORDERS_PER_WAVE`
/// says otherwise (a smaller run while working on the scenario).
fn orders_per_wave() -> usize {
    std::env::var("BACKORDER_CHAOS_ORDERS_PER_WAVE")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(ORDERS_PER_WAVE)
}
const SERVICES: [&str; 6] = [
    "orders-consumer",
    "shipments-consumer",
    "stock-consumer",
    "segmentation",
    "offers-consumer",
    "sender",
];
/// The backordered SKUs; every order has one line of one of them. The
/// first three share the mug's need (it is their in-stock alternative), the
/// last three have no alternative (store credit).
const SKUS: [&str; 6] = ["KETTLE-01", "KETTLE-02", "KETTLE-03", "LAMP-01", "LAMP-02", "LAMP-03"];
const WITH_ALTERNATIVE: usize = 3;
const MUG: &str = "MUG-01";
/// Every SKU's first supplier window, in days from today, and the two
/// kinds of slip (policy: more than 7 days past the promise is significant).
const FIRST_WINDOW: (i64, i64) = (10, 14);
const SMALL_SLIP: (i64, i64) = (13, 17);
const SIGNIFICANT_SLIP: (i64, i64) = (30, 34);
const LOCALES: [&str; 5] = ["en-GB", "de-DE", "fr-FR", "es-ES", "it-IT"];
/// Order cancellations by the order system in each wave from the third on.
const CANCELS_PER_WAVE: usize = 6;
/// The wave at whose start the controlled clock moves, and by how much:
/// past the 72-hour expiry of the offers sent so far and the 3-day
/// delivered follow-up. Every slip happens before it, so what counts as
/// significant never depends on the move.
const CLOCK_MOVE_WAVE: usize = 8;
const CLOCK_MOVE_DAYS: i64 = 4;
/// Share of offers the customers answer (the others expire).
const ANSWER_SHARE: f64 = 0.6;
const PATIENCE: Duration = Duration::from_secs(180);

/// The kinds of fault, as the summary names them.
const KILLS: &str = "  SIGKILL + restart of a service";
const BROKER: &str = "  broker restart";
const DATABASE: &str = "  PostgreSQL restart";

/// The stock event of a wave, for a SKU that wave's orders do not use: its
/// effect (who is told, which lines are allocated) then depends only on
/// orders the driver saw applied before publishing it.
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

/// What the fault driver does in a wave.
#[derive(Debug, Clone, Copy)]
enum Fault {
    Kill(usize),
    RestartBroker,
    RestartDatabase,
}

/// Where in a wave the fault strikes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Moment {
    AfterCancellations,
    DuringClicks,
    AfterOrders,
}

/// What the driver expects the pipeline to have applied when it is quiet.
#[derive(Debug, Default)]
struct Expected {
    /// Records published to each input topic.
    orders_topic: i64,
    stock_topic: i64,
    shipments_topic: i64,
    /// Significant slips, each one `BackorderDelayed` that segmentation
    /// records in `campaign_slips`; `None` while a slip just published has
    /// not been counted yet.
    slips: Option<i64>,
    /// Offers answered on the page, each one decision.
    answers: i64,
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
    /// Arrivals, allocations, the catalogue's stock, the SKUs' ETAs and the
    /// lines' promises.
    stock: Vec<String>,
    /// Campaigns, offers and decisions, one text line each.
    campaigns: Vec<String>,
    /// Distinct (order, SKU, ETA version) of `backorder-delays.v1`, and how
    /// many records repeated one (an output re-published after a crash,
    /// which consumers deduplicate).
    delays: BTreeSet<String>,
    delays_repeated: usize,
    /// Distinct decisions on `backorder-decisions.v1`, and repeats.
    decisions: BTreeSet<String>,
    decisions_repeated: usize,
    /// What the driver did: cancellations, answers by option, clock moves.
    cancellations: usize,
    answers: BTreeMap<String, usize>,
    clock_moves: usize,
    /// Timers that failed for good, and records on the dead-letter topics
    /// (the scenario publishes only valid events: there should be none).
    failed_timers: i64,
    dead_letters: usize,
}

/// One wait-with-deadline for a quiet pipeline (see the module docs). A
/// query failing while the broker or PostgreSQL restarts is waited out.
async fn quiet(app: &TestApp, expected: &Expected) {
    wait_until("the pipeline to be quiet", PATIENCE, || async {
        // The database, the broker, the database again: the first look is
        // cheap and spares the broker while work is visibly in progress;
        // the second is the one that counts, as by then every input was
        // applied and committed (its effects are in the database).
        database_quiet(app, expected).await?;
        for (service, topic, published) in [
            ("orders-consumer", ORDERS, expected.orders_topic),
            ("stock-consumer", STOCK, expected.stock_topic),
            ("shipments-consumer", SHIPMENTS, expected.shipments_topic),
        ] {
            if app.try_committed_total(service, topic).await? != published {
                return None;
            }
        }
        database_quiet(app, expected).await
    })
    .await;
}

/// Every slip in a campaign, every answer decided, nothing parked, no
/// timer due, every decided email sent (or settled as failed or
/// suppressed). `None` while not, or while PostgreSQL restarts.
async fn database_quiet(app: &TestApp, expected: &Expected) -> Option<()> {
    let client = app.pool.get().await.ok()?;
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM campaign_slips),
                    (SELECT count(*) FROM decisions WHERE offer_id IS NOT NULL),
                    (SELECT count(*) FROM parked_events),
                    (SELECT count(*) FROM timers WHERE state = 'pending'
                        AND due_at <= now() + (SELECT offset_ms FROM clock) * interval '1 millisecond'
                                            + interval '5 seconds'),
                    (SELECT count(*) FROM email_decisions),
                    (SELECT count(*) FROM email_ledger WHERE state IN ('sent', 'failed', 'suppressed'))",
            &[],
        )
        .await
        .ok()?;
    let seen: [i64; 6] = std::array::from_fn(|i| row.get(i));
    let slips = expected.slips.unwrap_or(seen[0]);
    (seen == [slips, expected.answers, 0, 0, seen[4], seen[4]]).then_some(())
}

/// Every link in `html` (entities decoded) that contains `needle`.
fn links_containing(html: &str, needle: &str) -> Vec<String> {
    let html = backorder_tests::campaigns::unescape(html);
    html.split("href=\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .filter(|href| href.contains(needle))
        .map(str::to_string)
        .collect()
}

/// A customer's click on `link` (an option of an offer email) and the
/// confirm button: `GET` the page, `POST` its form. While the page's
/// service, its broker or its database is down the click is retried, as a
/// customer would; a `409` after a retry means the first attempt got
/// through.
async fn answer_on_page(http: &reqwest::Client, link: &str) {
    let action = link.split('?').next().expect("a link").to_string();
    let option = link_param(link, "option");
    let form = [
        ("linked", option.clone()),
        ("token", link_param(link, "token")),
        ("option", option),
    ];
    wait_until(&format!("the offer page to take {action}"), PATIENCE, || async {
        let page = http.get(link).send().await.ok()?;
        match page.status().as_u16() {
            200 => {}
            409 => return Some(()),
            status if status >= 500 => return None,
            status => panic!("the offer page refused {link}: {status}"),
        }
        let confirmed = http.post(&action).form(&form).send().await.ok()?;
        match confirmed.status().as_u16() {
            200 | 409 => Some(()),
            status if status >= 500 => None,
            status => panic!("the offer page refused the confirm of {link}: {status}"),
        }
    })
    .await;
}

async fn run(seed: u64, faults: bool) -> Outcome {
    let per_wave = orders_per_wave();
    let started = chrono::Utc::now();
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
    // The offer pages keep their address across restarts, as behind a
    // Kubernetes service: the links in emails already sent must work.
    let pages_addr = format!("127.0.0.1:{}", free_port());
    let pages_url = format!("http://{pages_addr}");
    let env = [
        ("AWS_ENDPOINT_URL_SESV2", ses.url.as_str()),
        ("BACKORDER_POLICY_FILE", policy.as_str()),
        ("BACKORDER_TIMER_POLL_MS", "100"),
        ("BACKORDER_OFFERS_BASE_URL", pages_url.as_str()),
        ("BACKORDER_HTTP_ADDR", pages_addr.as_str()),
    ];
    let mut services: Vec<ServiceProcess> = Vec::new();
    for service in SERVICES {
        services.push(app.start_service_with(service, &env_for(&env, service)).await);
    }

    // Ten kills at random, the broker and the database restarted once each
    // at random waves, each at a random moment, in a seeded order (drawn in
    // the fault-free run too, so both runs publish the same events).
    let mut plan: Vec<Fault> = (0..WAVES - 2)
        .map(|_| Fault::Kill(rng.random_range(0..SERVICES.len())))
        .collect();
    plan.insert(rng.random_range(0..=plan.len()), Fault::RestartBroker);
    plan.insert(rng.random_range(0..=plan.len()), Fault::RestartDatabase);
    let moments: Vec<(Moment, Duration)> = (0..WAVES)
        .map(|_| {
            let moment =
                [Moment::AfterCancellations, Moment::DuringClicks, Moment::AfterOrders][rng.random_range(0..3)];
            (moment, Duration::from_millis(rng.random_range(0..1500)))
        })
        .collect();
    // The third to the eighth wave carry the four slips (two small, two
    // significant: one of a SKU with an alternative, one without) and two
    // arrivals; the waves after the clock move carry arrivals.
    let mut slipping: Vec<usize> = (0..SKUS.len()).collect();
    let with_alternative = rng.random_range(0..WITH_ALTERNATIVE);
    let without = rng.random_range(WITH_ALTERNATIVE..SKUS.len());
    slipping.retain(|k| *k != with_alternative && *k != without);
    slipping.shuffle(&mut rng);
    let random_arrival = |rng: &mut StdRng| StockStep::Arrival {
        sku: rng.random_range(0..SKUS.len()),
        quantity: rng.random_range(2..=6),
    };
    let mut early = vec![
        StockStep::Slip {
            sku: with_alternative,
            window: SIGNIFICANT_SLIP,
        },
        StockStep::Slip {
            sku: without,
            window: SIGNIFICANT_SLIP,
        },
        StockStep::Slip {
            sku: slipping[0],
            window: SMALL_SLIP,
        },
        StockStep::Slip {
            sku: slipping[1],
            window: SMALL_SLIP,
        },
        random_arrival(&mut rng),
        random_arrival(&mut rng),
    ];
    early.shuffle(&mut rng);
    let mut stock_plan: Vec<Option<StockStep>> = vec![None, None];
    stock_plan.extend(early.into_iter().map(Some));
    while stock_plan.len() < WAVES {
        stock_plan.push(Some(random_arrival(&mut rng)));
    }

    // The catalogue and every SKU's first window, applied before the first
    // order, so every backordered line is promised that window.
    let mut expected = Expected {
        slips: Some(0),
        ..Expected::default()
    };
    for (k, sku) in SKUS.iter().enumerate() {
        let mut item = product(sku, &format!("Product {sku}"), 2500, 0);
        if k >= WITH_ALTERNATIVE {
            item.need = "light-a-room".to_string();
        }
        app.publish(STOCK, &item).await;
    }
    app.publish(STOCK, &product(MUG, "Product MUG-01", 2500, 100_000)).await;
    let first = (day(&app, FIRST_WINDOW.0).await, day(&app, FIRST_WINDOW.1).await);
    for sku in SKUS {
        app.publish(STOCK, &eta(sku, Some(first), "first estimate")).await;
    }
    expected.stock_topic = (2 * SKUS.len() + 1) as i64;
    quiet(&app, &expected).await;

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .expect("http client");
    let mut recipients: Vec<String> = Vec::new();
    let mut injected: BTreeMap<&'static str, usize> = BTreeMap::new();
    // Orders whose in-stock line ships in the next wave, and whose shipment
    // is delivered in the wave after.
    let mut to_ship: Vec<usize> = Vec::new();
    let mut to_deliver: Vec<usize> = Vec::new();
    // Orders the order system cancelled or whose offer was answered: not
    // cancelled (again) by the order system.
    let mut settled: BTreeSet<usize> = BTreeSet::new();
    let mut offers_seen: BTreeSet<String> = BTreeSet::new();
    let mut answers: BTreeMap<String, usize> = BTreeMap::new();
    let mut cancellations = 0;
    let mut clock_moves = 0;
    let mut pending_significant: Option<(String, chrono::NaiveDate)> = None;
    let mut slips_counted = 0;

    for wave in 0..WAVES {
        let (moment, delay) = moments[wave];
        let mut fault = (faults && wave < plan.len()).then_some(plan[wave]);
        quiet(&app, &expected).await;

        // The last wave's significant slip has been applied: every line of
        // its SKU promised the new window was moved by it (this wave's
        // orders are not yet published), and each is one slip.
        if let Some((sku, to)) = pending_significant.take() {
            let client = app.pool.get().await.expect("db");
            let moved: i64 = client
                .query_one(
                    "SELECT count(*) FROM order_lines WHERE sku = $1 AND promised_to = $2",
                    &[&sku, &to],
                )
                .await
                .expect("moved lines")
                .get(0);
            slips_counted += moved;
            expected.slips = Some(slips_counted);
            quiet(&app, &expected).await;
        }

        if wave == CLOCK_MOVE_WAVE {
            wait_until("the clock to move", PATIENCE, || async {
                backorder_core::clock::advance(&app.pool, chrono::Duration::days(CLOCK_MOVE_DAYS))
                    .await
                    .ok()
            })
            .await;
            clock_moves += 1;
            quiet(&app, &expected).await;
        }

        // The order system cancels a few earlier orders: the whole order or
        // its backordered line.
        if wave >= 2 {
            let placed = wave * per_wave;
            let mut chosen = BTreeSet::new();
            while chosen.len() < CANCELS_PER_WAVE {
                let i = rng.random_range(0..placed);
                if !settled.contains(&i) && !to_ship.contains(&i) && !to_deliver.contains(&i) {
                    chosen.insert(i);
                }
            }
            let mut cancels = Vec::new();
            for i in chosen {
                let whole = rng.random_bool(0.5);
                cancels.push(OrderCancelled {
                    event_id: uuid::Uuid::new_v4().to_string(),
                    occurred_at: chrono::Utc::now(),
                    order_id: format!("o-{i}"),
                    line_ids: if whole { vec![] } else { vec!["l1".to_string()] },
                    reason: "customer asked by phone".to_string(),
                });
                settled.insert(i);
            }
            app.publish_all(ORDERS, &cancels).await;
            expected.orders_topic += cancels.len() as i64;
            cancellations += cancels.len();
            if let Some(f) = fault.take_if(|_| moment == Moment::AfterCancellations) {
                strike(f, delay, &app, &mut services, &env, &mut broker, &pg, &mut injected).await;
            }
            quiet(&app, &expected).await;
        }

        // Offers sent since the last wave: each customer answers some, by
        // the links in the email SES got, through the page.
        let open: Vec<(String, String)> = {
            let client = app.pool.get().await.expect("db");
            client
                .query(
                    "SELECT o.offer_id, c.order_id FROM offers o JOIN campaigns c USING (campaign_id)
                      WHERE o.state = 'open' ORDER BY o.offer_id",
                    &[],
                )
                .await
                .expect("open offers")
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .filter(|(offer, _): &(String, String)| !offers_seen.contains(offer))
                .collect()
        };
        let mut clicks: Vec<(usize, String)> = Vec::new();
        if !open.is_empty() {
            let sent = sent_emails(&ses.url).await;
            for (offer_id, order_id) in open {
                offers_seen.insert(offer_id.clone());
                let i: usize = order_id.trim_start_matches("o-").parse().expect("o-<index>");
                let path = format!("/offers/{offer_id}?");
                let mut links: Vec<String> = sent
                    .iter()
                    .filter(|e| e.to.contains(&recipients[i]))
                    .flat_map(|e| links_containing(&e.body, &path))
                    .collect();
                links.sort();
                links.dedup();
                assert!(!links.is_empty(), "no email at SES links offer {offer_id}");
                if rng.random_bool(ANSWER_SHARE) {
                    let link = links[rng.random_range(0..links.len())].clone();
                    clicks.push((i, link));
                }
            }
        }
        let clicking = async {
            for (i, link) in &clicks {
                answer_on_page(&http, link).await;
                let option = link_param(link, "option");
                let kind = option.split(':').next().unwrap_or_default().to_string();
                *answers.entry(kind).or_default() += 1;
                settled.insert(*i);
            }
        };
        if let Some(f) = fault.take_if(|_| moment == Moment::DuringClicks && !clicks.is_empty()) {
            tokio::join!(
                clicking,
                strike(f, delay, &app, &mut services, &env, &mut broker, &pg, &mut injected)
            );
        } else {
            clicking.await;
        }
        expected.answers += clicks.len() as i64;
        quiet(&app, &expected).await;

        // The wave's stock event, shipments and orders.
        let stock = stock_plan[wave];
        match stock {
            Some(StockStep::Slip { sku, window }) => {
                let window = (day(&app, window.0).await, day(&app, window.1).await);
                let reason = "A storm closed the port our supplier ships from";
                app.publish(STOCK, &eta(SKUS[sku], Some(window), reason)).await;
                if (window.1 - first.1).num_days() > 7 {
                    pending_significant = Some((SKUS[sku].to_string(), window.1));
                    expected.slips = None;
                }
            }
            Some(StockStep::Arrival { sku, quantity }) => {
                app.publish(STOCK, &arrival(&format!("arr-{wave}"), SKUS[sku], quantity))
                    .await;
            }
            None => {}
        }
        expected.stock_topic += i64::from(stock.is_some());
        let skus: Vec<&str> = SKUS
            .iter()
            .enumerate()
            .filter(|(k, _)| stock.is_none_or(|s| s.sku() != *k))
            .map(|(_, sku)| *sku)
            .collect();
        // Each kind in one go: the producer batches them, as a shop's
        // systems would (and the broker's S3 storage keeps one object per
        // batch, not per record).
        let mut deliveries = Vec::new();
        for i in std::mem::take(&mut to_deliver) {
            deliveries.push(delivered(&app, &format!("o-{i}"), &format!("s-{i}")).await);
        }
        app.publish_all(SHIPMENTS, &deliveries).await;
        let mut dispatches = Vec::new();
        for i in std::mem::take(&mut to_ship) {
            dispatches.push(dispatched(&app, &format!("o-{i}"), &format!("s-{i}"), &["l2"]).await);
            to_deliver.push(i);
        }
        app.publish_all(SHIPMENTS, &dispatches).await;
        expected.shipments_topic += (deliveries.len() + dispatches.len()) as i64;
        let mut orders = Vec::new();
        for n in 0..per_wave {
            let i = wave * per_wave + n;
            let recipient = app.recipient(&format!("c{i}"));
            let mut lines = vec![(skus[rng.random_range(0..skus.len())], Backordered)];
            if rng.random_bool(0.3) {
                lines.push((MUG, InStock));
                to_ship.push(i);
            }
            let mut order = order_placed(&format!("o-{i}"), &recipient, LOCALES[i % LOCALES.len()], &lines);
            // Arrivals serve the earliest order first (ties by order id),
            // and the wire keeps milliseconds: orders made in the same
            // millisecond would be served in an order that depends on the
            // machine's speed. One millisecond apart, in index order.
            order.occurred_at = started + chrono::Duration::milliseconds(i as i64);
            orders.push(order);
            recipients.push(recipient);
        }
        app.publish_all(ORDERS, &orders).await;
        expected.orders_topic += orders.len() as i64;
        if let Some(f) = fault {
            strike(f, delay, &app, &mut services, &env, &mut broker, &pg, &mut injected).await;
        }
        // Progress, for a person watching a run of several minutes.
        println!(
            "{} wave {}/{WAVES}: {} orders, {} cancelled, {} offers answered, faults so far {:?}",
            if faults { "chaos" } else { "calm " },
            wave + 1,
            recipients.len(),
            cancellations,
            answers.values().sum::<usize>(),
            injected
        );
    }
    quiet(&app, &expected).await;
    if let Some((sku, to)) = pending_significant.take() {
        panic!("the last significant slip ({sku} to {to}) must come before the last wave");
    }

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
    let rows = |sqls: &'static [(&'static str, &'static str)]| {
        let client = &client;
        async move {
            let mut out = Vec::new();
            for (what, sql) in sqls {
                for row in client.query(*sql, &[]).await.expect(what) {
                    out.push(format!("{what}: {}", row.get::<_, String>(0)));
                }
            }
            out
        }
    };
    let database = rows(&[(
        "order line",
        "SELECT concat_ws(' ', o.order_id, o.currency, o.total_minor, o.tags::text, o.cancelled_at IS NOT NULL, \
                l.line_id, l.sku, l.quantity, l.availability, l.status, l.promise_told) \
         FROM orders o JOIN order_lines l USING (order_id) ORDER BY o.order_id, l.line_id",
    )])
    .await;
    let stock = rows(&[
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
    ])
    .await;
    let campaigns = rows(&[
        (
            "campaign",
            "SELECT concat_ws(' ', campaign_id, order_id, kind, state, end_reason, offers_sent, window_from, window_to) \
             FROM campaigns ORDER BY campaign_id",
        ),
        (
            "offer",
            "SELECT concat_ws(' ', offer_id, campaign_id, seq, state, credit_minor, currency, alternatives::text) \
             FROM offers ORDER BY offer_id",
        ),
        (
            "decision",
            "SELECT concat_ws(' ', decision_id, order_id, offer_id, array_to_string(line_ids, ','), kind, \
                    alternative_sku, credit_minor) FROM decisions ORDER BY decision_id",
        ),
    ])
    .await;
    let failed_timers: i64 = client
        .query_one("SELECT count(*) FROM timers WHERE state = 'failed'", &[])
        .await
        .expect("timers")
        .get(0);
    // Two slips are significant, so there is at least one record; the
    // reader then keeps reading to catch the rest. Likewise decisions.
    let mut delays = BTreeSet::new();
    let mut delay_records = 0;
    for BackorderDelayEvent::Delayed(d) in
        records_on_topic::<BackorderDelayEvent>(&app, BACKORDER_DELAYS, 1, Duration::from_secs(3)).await
    {
        delay_records += 1;
        delays.insert(format!("{} {} v{}", d.order_id, d.sku, d.eta_version));
    }
    let answered: usize = answers.values().sum();
    let mut decisions = BTreeSet::new();
    let mut decision_records = 0;
    for BackorderDecisionEvent::Decision(d) in
        records_on_topic::<BackorderDecisionEvent>(&app, BACKORDER_DECISIONS, answered.min(1), Duration::from_secs(3))
            .await
    {
        decision_records += 1;
        decisions.insert(format!(
            "{} {} {} {:?} {:?} {:?}",
            d.order_id, d.line_id, d.offer_id, d.decision, d.alternative_sku, d.credit_minor
        ));
    }
    let dead_letters = dead_letter_count(&app).await;
    drop(client);
    drop(services);
    Outcome {
        injected,
        emails,
        sent_keys,
        ledger_rows: ledger.get::<_, i64>(0) as usize,
        ambiguous: ledger.get::<_, i64>(1) as usize,
        database,
        stock,
        campaigns,
        delays_repeated: delay_records - delays.len(),
        delays,
        decisions_repeated: decision_records - decisions.len(),
        decisions,
        cancellations,
        answers,
        clock_moves,
        failed_timers,
        dead_letters,
    }
}

/// Records on every dead-letter topic of this run: reads them all from the
/// beginning until none has come for three seconds.
async fn dead_letter_count(app: &TestApp) -> usize {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &app.settings.kafka_bootstrap_servers)
        .set("group.id", format!("{}dlq-count", app.settings.topic_prefix))
        .set("enable.auto.commit", "false")
        .create()
        .expect("dead-letter reader");
    let mut list = rdkafka::TopicPartitionList::new();
    for topic in CONSUMED {
        let name = backorder_core::kafka::Topics::dead_letter_of(&app.topics.name(topic));
        list.add_partition_offset(&name, 0, rdkafka::Offset::Beginning)
            .expect("partition");
    }
    consumer.assign(&list).expect("assign");
    let mut count = 0;
    while let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(3), consumer.recv()).await {
        count += 1;
    }
    count
}

/// The extra environment of `service`: only offers-consumer serves the
/// pages at the fixed address; the others get a free port.
fn env_for<'e>(env: &[(&'e str, &'e str)], service: &str) -> Vec<(&'e str, &'e str)> {
    env.iter()
        .copied()
        .filter(|(k, _)| service == "offers-consumer" || *k != "BACKORDER_HTTP_ADDR")
        .collect()
}

/// Injects `fault` after `delay`, while the events just published are
/// being processed: SIGKILL and restart of a service, or a restart of the
/// broker or of PostgreSQL in place.
#[allow(clippy::too_many_arguments)]
async fn strike(
    fault: Fault,
    delay: Duration,
    app: &TestApp,
    services: &mut [ServiceProcess],
    env: &[(&str, &str)],
    broker: &mut PrivateTansu,
    pg: &PrivatePostgres,
    injected: &mut BTreeMap<&'static str, usize>,
) {
    tokio::time::sleep(delay).await;
    match fault {
        Fault::Kill(index) => {
            services[index].kill();
            services[index] = app
                .start_service_with(SERVICES[index], &env_for(env, SERVICES[index]))
                .await;
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

/// The lines only `a` has and the lines only `b` has.
fn difference<'a>(a: &'a [String], b: &'a [String]) -> (Vec<&'a String>, Vec<&'a String>) {
    let (sa, sb): (BTreeSet<&String>, BTreeSet<&String>) = (a.iter().collect(), b.iter().collect());
    (
        sa.difference(&sb).copied().collect(),
        sb.difference(&sa).copied().collect(),
    )
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
    let answered = |option: &str| chaos.answers.get(option).copied().unwrap_or(0);
    let lines_of = |what: &str| chaos.campaigns.iter().filter(|r| r.starts_with(what)).count();

    let mut table = format!("\nchaos summary (seed {seed}; compared with a fault-free run of the same seed)\n");
    for (what, n) in [
        ("orders", WAVES * orders_per_wave()),
        ("faults injected", faults),
        (KILLS, count(KILLS)),
        (BROKER, count(BROKER)),
        (DATABASE, count(DATABASE)),
        ("controlled clock moves", chaos.clock_moves),
        ("emails expected", expected),
        ("delivered", delivered),
        ("lost", lost),
        ("duplicated", duplicated),
        ("ambiguous (counted by the sender)", chaos.ambiguous),
        ("unexplained duplicates", unexplained),
        ("cancelled by the order system", chaos.cancellations),
        (
            "arrivals allocated",
            chaos.stock.iter().filter(|r| r.starts_with("allocation:")).count(),
        ),
        ("significant delays (distinct)", chaos.delays.len()),
        ("  re-published after a fault", chaos.delays_repeated),
        ("campaigns", lines_of("campaign:")),
        ("offers sent", lines_of("offer:")),
        ("offers answered on the page", chaos.answers.values().sum()),
        ("  switch", answered("switch")),
        ("  credit", answered("credit")),
        ("  expedite", answered("expedite")),
        ("  cancel", answered("cancel")),
        ("dead letters", chaos.dead_letters),
        ("decisions (distinct)", chaos.decisions.len()),
        ("  re-published after a fault", chaos.decisions_repeated),
    ] {
        table.push_str(&format!("| {what:<34} | {n:>6} |\n"));
    }
    let (keys_only_chaos, keys_only_calm): (Vec<&String>, Vec<&String>) = (
        chaos.sent_keys.difference(&calm.sent_keys).collect(),
        calm.sent_keys.difference(&chaos.sent_keys).collect(),
    );
    if !keys_only_chaos.is_empty() || !keys_only_calm.is_empty() {
        table.push_str(&format!(
            "dedup keys sent only after faults: {keys_only_chaos:?}\ndedup keys sent only without: {keys_only_calm:?}\n"
        ));
    }
    println!("{table}");

    assert!(count(KILLS) >= 10, "{table}");
    assert_eq!((count(BROKER), count(DATABASE)), (1, 1), "{table}");
    assert_eq!(calm.ambiguous, 0, "the fault-free run resent nothing");
    assert_eq!(
        calm.emails.len(),
        WAVES * orders_per_wave(),
        "every customer of the fault-free run got email"
    );
    assert_eq!(lost, 0, "no email lost: {table}");
    assert_eq!(
        unexplained, 0,
        "every duplicate is an ambiguous resend the sender counted: {table}"
    );
    assert_eq!(chaos.sent_keys, calm.sent_keys, "the same dedup keys were sent");
    assert_eq!(chaos.ledger_rows, calm.ledger_rows, "no extra ledger rows");
    assert_eq!((chaos.failed_timers, calm.failed_timers), (0, 0), "no timer failed");
    assert_eq!(
        (chaos.dead_letters, calm.dead_letters),
        (0, 0),
        "nothing dead-lettered: the scenario's events are all valid"
    );
    assert!(
        answered("switch") > 0 && answered("credit") > 0 && lines_of("offer:") > lines_of("campaign:"),
        "the scenario answered both kinds of campaign and sent reminders: {table}"
    );
    assert_eq!(
        (calm.delays_repeated, calm.decisions_repeated),
        (0, 0),
        "the fault-free run published every delay and decision once"
    );
    assert_eq!(
        chaos.delays, calm.delays,
        "the same significant delays on backorder-delays.v1"
    );
    assert_eq!(
        chaos.decisions, calm.decisions,
        "the same decisions on backorder-decisions.v1"
    );
    for (what, a, b) in [
        ("arrivals, allocations, stock and promises", &chaos.stock, &calm.stock),
        ("orders and lines", &chaos.database, &calm.database),
        ("campaigns, offers and decisions", &chaos.campaigns, &calm.campaigns),
    ] {
        let (only_chaos, only_calm) = difference(a, b);
        assert!(
            only_chaos.is_empty() && only_calm.is_empty(),
            "the same {what}; only after faults: {only_chaos:#?}; only without: {only_calm:#?}"
        );
    }
}
