//! `bench` (`make bench`): measures the pipeline's release build on the
//! local stack, beside the raw limits of the same run, and writes
//! `bench/report.md` and `bench/report.png`.
//!
//! Every measurement gets its own database and topic prefix ([`world`]),
//! starts the release services itself, and times from the first event
//! published to the consumer group's committed offsets reaching the last
//! one (orders-consumer commits only once an order is stored, its promise
//! recorded and its confirmation request acknowledged by the broker).

mod chart;
mod copy;
mod profile;
mod report;
mod ses;
mod world;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use backorder_core::config::Settings;
use backorder_core::events::stock::StockArrival;
use backorder_core::kafka::{OutboundRecord, topics};
use backorderctl::loadgen::{self, LoadgenArgs};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use crate::profile::{Profile, Profiler};
use crate::report::{Cpu, Fanout, Growth, Ingest, Latency, Report, SenderRun};
use crate::ses::PrivateSes;
use crate::world::World;

/// Orders in each ingest backlog (override with BENCH_ORDERS).
const DEFAULT_ORDERS: u64 = 20_000;
/// Orders stored before the cost-growth backlogs.
const GROWTH_STORED: [u64; 3] = [10_000, 100_000, 1_000_000];
/// The longest one ingest may take before the run gives up on it.
const INGEST_DEADLINE: Duration = Duration::from_secs(240);
/// The steady order rate of the latency measurement, and for how long.
const LATENCY_RATE: u32 = 500;
const LATENCY_SECONDS: u64 = 10;
/// The send rate the sender is configured with in the latency measurement:
/// above the order rate, so that the configured rate is not what limits.
const SENDER_RATE: u32 = 1_000;
/// Waiting lines one StockArrival covers in the fan-out measurement, their SKU,
/// and how long the fan-out may take before the run stops waiting.
const FANOUT_LINES: i64 = 100_000;
const FANOUT_SKU: &str = "BENCH-FANOUT";
const FANOUT_DEADLINE: Duration = Duration::from_secs(180);
/// How long the ledger may take to drain after the last order.
const DRAIN_DEADLINE: Duration = Duration::from_secs(180);
/// Confirmations queued for each sender measurement, and the configured
/// rates: one below what the local SES endpoint accepts (does the sender
/// keep its configured pace?), one far above it (where is the ceiling?).
const SENDER_QUEUE: u64 = 2_000;
const SENDER_RATES: [u32; 2] = [200, 20_000];

/// What the run needs to know about where it runs.
struct Run {
    /// Short id of this run: databases and topic prefixes carry it.
    id: String,
    settings: Settings,
    /// The release binaries.
    bin_dir: PathBuf,
    /// Service logs of this run.
    log_dir: PathBuf,
    orders: u64,
    /// BENCH_ONLY: the measurements to run (comma-separated names of
    /// [`MEASUREMENTS`]); None runs them all. A partial run prints its
    /// figures and leaves bench/report.md alone, which must come from one
    /// whole run.
    only: Option<Vec<String>>,
}

/// The measurements BENCH_ONLY may name.
const MEASUREMENTS: [&str; 6] = ["ingest", "ingest1", "latency", "sender", "fanout", "growth"];

impl Run {
    fn wants(&self, measurement: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|only| only.iter().any(|m| m == measurement))
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let started = Instant::now();
    let settings = Settings::load().context("loading settings (is the local stack up? `make up`)")?;
    let orders = match std::env::var("BENCH_ORDERS") {
        Ok(raw) => raw.parse().with_context(|| format!("BENCH_ORDERS={raw:?}"))?,
        Err(_) => DEFAULT_ORDERS,
    };
    let run = Run {
        id: uuid::Uuid::new_v4().simple().to_string()[..8].to_string(),
        settings,
        bin_dir: PathBuf::from(std::env::var("BENCH_BIN_DIR").unwrap_or_else(|_| "target/release".into())),
        log_dir: PathBuf::from("target/bench-logs"),
        orders,
        only: match std::env::var("BENCH_ONLY") {
            Ok(raw) => {
                let only: Vec<String> = raw.split(',').map(|m| m.trim().to_string()).collect();
                if let Some(unknown) = only.iter().find(|m| !MEASUREMENTS.contains(&m.as_str())) {
                    bail!("BENCH_ONLY names {unknown:?}; known: {}", MEASUREMENTS.join(", "));
                }
                Some(only)
            }
            Err(_) => None,
        },
    };
    for service in ["orders-consumer", "stock-consumer", "sender"] {
        if !run.bin_dir.join(service).is_file() {
            bail!(
                "{}/{service} is missing: `make bench` builds it first",
                run.bin_dir.display()
            );
        }
    }
    let mut report = Report::new(report::machine(&run.bin_dir).await?, orders);

    if run.wants("ingest") {
        eprintln!("bench: orders ingest, one replica ({orders} orders)");
        let ingest = measure_ingest(&run).await?;
        report.ingest = Some(ingest);
    } else if run.wants("ingest1") {
        eprintln!("bench: orders ingest, one replica only ({orders} orders)");
        let world = World::create(&run.settings, &run.id, "ingest1").await?;
        let one = pipeline(&run, &world, &backlog(run.orders, "lg"), 1, true).await?;
        eprintln!(
            "bench:   pipeline {:.0} orders/s, peak RSS {:.1?} MiB; {}",
            one.rate,
            one.rss,
            one.cpu.describe()
        );
        world.drop_database().await?;
    }

    if run.wants("latency") {
        eprintln!("bench: latency at {LATENCY_RATE} orders/s for {LATENCY_SECONDS} s");
        let latency = measure_latency(&run).await?;
        eprintln!(
            "bench:   p50 {:.0} ms, p95 {:.0} ms, p99 {:.0} ms; {:.0} sends/s",
            latency.p50_ms, latency.p95_ms, latency.p99_ms, latency.send_rate
        );
        report.latency = Some(latency);
    }

    if run.wants("sender") {
        for rate in SENDER_RATES {
            eprintln!("bench: sender draining {SENDER_QUEUE} emails at a configured {rate}/s");
            let sender = measure_sender(&run, rate).await?;
            eprintln!(
                "bench:   {:.1} sends/s, {} of {} sent",
                sender.send_rate, sender.sent, sender.queued
            );
            report.sender.push(sender);
        }
    }

    if run.wants("fanout") {
        eprintln!("bench: restock fan-out to {FANOUT_LINES} waiting lines");
        let fanout = measure_fanout(&run).await?;
        eprintln!(
            "bench:   {} of {} in the ledger after {:.1} s (allocation {:?} s, handled {:?} s)",
            fanout.in_ledger, fanout.lines, fanout.seconds, fanout.allocation, fanout.handled
        );
        report.fanout = Some(fanout);
    }

    if run.wants("growth") {
        eprintln!("bench: cost growth");
        for stored in GROWTH_STORED {
            eprintln!("bench:   {stored} orders stored");
            report.growth.push(measure_growth(&run, stored).await?);
        }
    }

    report.elapsed = started.elapsed();
    if run.only.is_some() {
        eprintln!(
            "bench: partial run (BENCH_ONLY) done in {:.0} s; bench/report.md left as it was",
            report.elapsed.as_secs_f64()
        );
        return Ok(());
    }
    let dir = Path::new("bench");
    std::fs::write(dir.join("report.md"), report.markdown())?;
    chart::draw(&dir.join("report.png"), &report.panels())?;
    eprintln!(
        "bench: wrote bench/report.md and bench/report.png in {:.0} s",
        report.elapsed.as_secs_f64()
    );
    Ok(())
}

/// The partition count `topics create` gives a base topic.
fn partitions_of(base: &str) -> usize {
    topics::TOPICS
        .iter()
        .find(|(name, _)| *name == base)
        .map_or(1, |(_, partitions)| usize::try_from(*partitions).unwrap_or(1))
}

/// The loadgen arguments of an ingest backlog: `orders` two-line orders,
/// 30% with a backordered line, published as fast as the broker takes them.
fn backlog(orders: u64, id_prefix: &str) -> LoadgenArgs {
    LoadgenArgs {
        orders,
        orders_only: true,
        id_prefix: id_prefix.to_string(),
        customers: (orders / 2).max(1),
        ..LoadgenArgs::default()
    }
}

/// Orders ingest with one and two replicas, the broker's plain consume
/// rate of the same messages, and PostgreSQL's COPY rate of the same rows.
async fn measure_ingest(run: &Run) -> Result<Ingest> {
    let args = backlog(run.orders, "lg");

    let world = World::create(&run.settings, &run.id, "ingest1").await?;
    let one = pipeline(run, &world, &args, 1, true).await?;
    let (one_replica, rss_one, cpu) = (one.rate, one.rss, one.cpu);
    let profile = one.profile.unwrap_or_else(|| Err("not recorded".into()));
    eprintln!("bench:   pipeline {one_replica:.0} orders/s; {}", cpu.describe());
    let raw_consume = raw_consume(&world, run.orders).await?;
    eprintln!("bench:   plain consume {raw_consume:.0} messages/s");
    world.drop_database().await?;

    let world = World::create(&run.settings, &run.id, "copy").await?;
    let copy_time = copy::copy_orders(&world.pool, &args).await?;
    let copy = run.orders as f64 / copy_time.as_secs_f64();
    eprintln!("bench:   COPY {copy:.0} orders/s");
    world.drop_database().await?;

    eprintln!("bench: orders ingest, two replicas in one group");
    let world = World::create(&run.settings, &run.id, "ingest2").await?;
    let two = pipeline(run, &world, &args, 2, false).await?;
    let (two_replicas, rss_two) = (two.rate, two.rss);
    eprintln!("bench:   pipeline {two_replicas:.0} orders/s");
    world.drop_database().await?;

    Ok(Ingest {
        one_replica,
        two_replicas,
        raw_consume,
        copy,
        rss_one,
        rss_two,
        cpu,
        profile,
    })
}

/// Ingest rate and memory with `stored` orders already in the tables.
async fn measure_growth(run: &Run, stored: u64) -> Result<Growth> {
    let label = format!("growth{stored}");
    let world = World::create(&run.settings, &run.id, &label).await?;
    let prefill = backlog(stored, "pre");
    let copy_time = copy::copy_orders(&world.pool, &prefill).await?;
    eprintln!("bench:     pre-filled in {:.1} s", copy_time.as_secs_f64());
    let Pipeline { rate, rss, .. } = pipeline(run, &world, &backlog(run.orders / 2, "lg"), 1, false).await?;
    eprintln!("bench:     pipeline {rate:.0} orders/s");
    world.drop_database().await?;
    Ok(Growth {
        stored,
        rate,
        rss: rss.into_iter().fold(0.0, f64::max),
    })
}

/// What one pipeline measurement gave.
struct Pipeline {
    /// Orders per second from the first publish to the last commit.
    rate: f64,
    /// Each replica's peak RSS (MiB).
    rss: Vec<f64>,
    /// Where the CPU went meanwhile.
    cpu: Cpu,
    /// The perf profile of the timed part, when asked for (Err: why none).
    profile: Option<Result<Profile, String>>,
}

/// Starts `replicas` orders-consumers in one group, publishes the backlog
/// and waits until the group has committed all of it: orders per second
/// from the first publish to the last commit, each replica's peak RSS, and
/// the CPU seconds the consumers, their PostgreSQL backends and the broker
/// used in that time (from /proc), and with `profile` a perf profile of
/// the whole machine over the timed part.
async fn pipeline(run: &Run, world: &World, args: &LoadgenArgs, replicas: usize, profile: bool) -> Result<Pipeline> {
    let mut services = Vec::new();
    for _ in 0..replicas {
        services.push(world.start(&run.bin_dir, &run.log_dir, "orders-consumer", &[]).await?);
    }
    world::wait_assigned(&services.iter().collect::<Vec<_>>(), partitions_of(topics::ORDERS)).await?;
    let consumers_before: f64 = services.iter().map(|s| s.cpu_seconds()).sum::<Result<f64>>()?;
    let backends_before = world.backend_cpu().await?;
    let broker_before = world::broker_cpu_seconds();
    let profiler = if profile {
        Some(Profiler::start(&run.log_dir, &world.label).await?)
    } else {
        None
    };
    let started = Instant::now();
    let published = loadgen::publish(args, &world.settings, false).await?;
    let expected = i64::try_from(published.total)?;
    let outcome = world
        .wait_committed("orders-consumer", topics::ORDERS, expected, INGEST_DEADLINE)
        .await;
    let elapsed = started.elapsed();
    let rss = services.iter().map(|s| s.peak_rss_mib()).collect::<Result<Vec<_>>>();
    let consumers_after: Result<f64> = services.iter().map(|s| s.cpu_seconds()).sum();
    let backends_after = world.backend_cpu().await?;
    let broker_after = world::broker_cpu_seconds();
    let profile = match profiler {
        Some(Ok(profiler)) => {
            let consumers = services.iter().filter_map(world::Service::pid).collect();
            let broker = world::broker_pid().into_iter().collect();
            Some(Ok(profiler
                .stop(&[("orders-consumer", consumers), ("broker", broker)])
                .await?))
        }
        Some(Err(why)) => Some(Err(why)),
        None => None,
    };
    for service in services {
        service.stop().await?;
    }
    outcome?;
    let cpu = Cpu {
        wall: elapsed.as_secs_f64(),
        consumers: consumers_after? - consumers_before,
        // A backend opened during the run counts from zero.
        postgres: backends_after
            .iter()
            .map(|(pid, after)| after - backends_before.get(pid).copied().unwrap_or(0.0))
            .sum(),
        broker: broker_after.zip(broker_before).map(|(after, before)| after - before),
    };
    Ok(Pipeline {
        rate: published.total as f64 / elapsed.as_secs_f64(),
        rss: rss?,
        cpu,
        profile,
    })
}

/// The broker's plain consume rate: one rdkafka consumer that reads the
/// world's order messages from the beginning and does nothing else.
async fn raw_consume(world: &World, expected: u64) -> Result<f64> {
    let topic = world.topics.name(topics::ORDERS);
    let config =
        backorder_core::kafka::consumer_config(&world.settings, &format!("{}plain-reader", world.topics.name("")));
    tokio::task::spawn_blocking(move || -> Result<f64> {
        let consumer: BaseConsumer = config.create()?;
        let metadata = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
        let mut assignment = TopicPartitionList::new();
        for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
            assignment.add_partition_offset(&topic, partition.id(), Offset::Beginning)?;
        }
        consumer.assign(&assignment)?;
        let started = Instant::now();
        let mut read = 0u64;
        while read < expected {
            if started.elapsed() > INGEST_DEADLINE {
                bail!("the plain reader read {read} of {expected} messages");
            }
            if let Some(message) = consumer.poll(Duration::from_millis(100)) {
                message?;
                read += 1;
            }
        }
        Ok(read as f64 / started.elapsed().as_secs_f64())
    })
    .await?
}

/// A world for a measurement that sends: its services send to a private
/// SES endpoint, which stops when the returned handle is dropped (keep it
/// for the whole measurement).
async fn sending_world(run: &Run, label: &str) -> Result<(World, PrivateSes)> {
    let mut world = World::create(&run.settings, &run.id, label).await?;
    let ses = PrivateSes::start(&run.log_dir).await?;
    world.ses_endpoint.clone_from(&ses.url);
    Ok((world, ses))
}

/// Starts a sender held to `rate` sends per second (the account rate
/// SES would report, which moto does not), polling often so that the
/// measurement sees its pace rather than its idle wake-ups.
async fn start_sender(run: &Run, world: &World, rate: u32) -> Result<world::Service> {
    let rate = rate.to_string();
    world
        .start(
            &run.bin_dir,
            &run.log_dir,
            "sender",
            &[
                ("BACKORDER_SES_MAX_SEND_RATE", rate.clone()),
                ("BACKORDER_SES_SEND_RATE_OVERRIDE", rate),
                ("BACKORDER_SENDER_POLL_MS", "50".into()),
            ],
        )
        .await
}

/// Event to SES-accepted latency at a steady order rate: orders-consumer
/// and the sender run against moto; loadgen stamps each order with the
/// time it is sent; the ledger's `sent_at` is when SES accepted the email.
async fn measure_latency(run: &Run) -> Result<Latency> {
    let (world, _ses) = sending_world(run, "latency").await?;
    let orders = world.start(&run.bin_dir, &run.log_dir, "orders-consumer", &[]).await?;
    let sender = start_sender(run, &world, SENDER_RATE).await?;
    world::wait_assigned(&[&orders], partitions_of(topics::ORDERS)).await?;
    world::wait_assigned(&[&sender], partitions_of(topics::EMAIL_REQUESTS)).await?;
    let args = LoadgenArgs {
        rate: LATENCY_RATE,
        wall_clock: true,
        ..backlog(u64::from(LATENCY_RATE) * LATENCY_SECONDS, "lt")
    };
    let published = loadgen::publish(&args, &world.settings, false).await?;
    let expected = i64::try_from(published.total)?;
    let committed = world
        .wait_committed("orders-consumer", topics::ORDERS, expected, INGEST_DEADLINE)
        .await;
    // Drained: every email the orders asked for has left the queue.
    let client = world.pool.get().await?;
    let until = Instant::now() + DRAIN_DEADLINE;
    let drained = loop {
        let row = client
            .query_one(
                "SELECT count(*) FILTER (WHERE state IN ('queued', 'sending')), count(*) FROM email_ledger",
                &[],
            )
            .await?;
        let (open, total): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
        if committed.is_ok() && open == 0 && total > 0 {
            break true;
        }
        if Instant::now() > until {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let rss_orders = orders.peak_rss_mib()?;
    let rss_sender = sender.peak_rss_mib()?;
    orders.stop().await?;
    sender.stop().await?;
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE state = 'sent'), count(*),
                    percentile_cont(ARRAY[0.5, 0.95, 0.99]::float8[]) WITHIN GROUP
                        (ORDER BY extract(epoch FROM sent_at - event_occurred_at)::float8)
                        FILTER (WHERE state = 'sent'),
                    extract(epoch FROM max(sent_at) - min(sent_at))::float8
             FROM email_ledger",
            &[],
        )
        .await?;
    let sent: i64 = row.try_get(0)?;
    let requested: i64 = row.try_get(1)?;
    let percentiles: Option<Vec<f64>> = row.try_get(2)?;
    let span: Option<f64> = row.try_get(3)?;
    drop(client);
    world.drop_database().await?;
    let percentiles = percentiles.unwrap_or_default();
    let at = |i: usize| percentiles.get(i).map_or(f64::NAN, |s| s * 1000.0);
    Ok(Latency {
        orders: published.total,
        sent: u64::try_from(sent)?,
        requested: u64::try_from(requested)?,
        drained,
        p50_ms: at(0),
        p95_ms: at(1),
        p99_ms: at(2),
        send_rate: span.filter(|s| *s > 0.0).map_or(0.0, |s| sent as f64 / s),
        configured_rate: f64::from(SENDER_RATE),
        rss_orders,
        rss_sender,
        publish_rate: published.total as f64 / published.elapsed.as_secs_f64().max(1e-9),
    })
}

/// The sender draining a full queue: `SENDER_QUEUE` orders are ingested
/// first (their confirmations requested), then the sender starts at the
/// configured `rate`; sends per second from the first accepted email to
/// the last.
async fn measure_sender(run: &Run, rate: u32) -> Result<SenderRun> {
    let (world, _ses) = sending_world(run, &format!("sender{rate}")).await?;
    let orders = world.start(&run.bin_dir, &run.log_dir, "orders-consumer", &[]).await?;
    let published = loadgen::publish(&backlog(SENDER_QUEUE, "sd"), &world.settings, false).await?;
    let outcome = world
        .wait_committed(
            "orders-consumer",
            topics::ORDERS,
            i64::try_from(published.total)?,
            INGEST_DEADLINE,
        )
        .await;
    orders.stop().await?;
    outcome?;
    let sender = start_sender(run, &world, rate).await?;
    let client = world.pool.get().await?;
    let until = Instant::now() + DRAIN_DEADLINE;
    let queued = i64::try_from(published.total)?;
    loop {
        let row = client
            .query_one(
                "SELECT count(*) FILTER (WHERE state IN ('queued', 'sending')), count(*) FROM email_ledger",
                &[],
            )
            .await?;
        let (open, total): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
        if (open == 0 && total >= queued) || Instant::now() > until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rss = sender.peak_rss_mib()?;
    sender.stop().await?;
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE state = 'sent'),
                    extract(epoch FROM max(sent_at) - min(sent_at))::float8
               FROM email_ledger",
            &[],
        )
        .await?;
    let sent: i64 = row.try_get(0)?;
    let span: Option<f64> = row.try_get(1)?;
    drop(client);
    world.drop_database().await?;
    Ok(SenderRun {
        configured_rate: f64::from(rate),
        send_rate: span.filter(|s| *s > 0.0).map_or(0.0, |s| sent as f64 / s),
        sent: u64::try_from(sent)?,
        queued: published.total,
        rss,
    })
}

/// Restock fan-out: `FANOUT_LINES` one-line backorders of one SKU are
/// written straight into the tables (not timed), then one `StockArrival`
/// covering them all is published; timed until every order's
/// arrival-notice request is in the sender's ledger.
async fn measure_fanout(run: &Run) -> Result<Fanout> {
    let (world, _ses) = sending_world(run, "fanout").await?;
    let client = world.pool.get().await?;
    client
        .batch_execute(&format!(
            "INSERT INTO customers (customer_id, email, name, locale, first_seen_at)
             SELECT 'fan-c' || i, 'fan-c' || i || '@example.com', 'Customer ' || i,
                    (ARRAY['en-GB', 'de-DE', 'ko-KR', 'tr-TR', 'id-ID'])[1 + i % 5], now()
               FROM generate_series(1, {FANOUT_LINES}) i;
             INSERT INTO orders (order_id, customer_id, placed_at, currency, total_minor, tags, event_id)
             SELECT 'fan-o' || lpad(i::text, 7, '0'), 'fan-c' || i,
                    now() - interval '2 days' + i * interval '1 second', 'EUR', 2500, '{{backorder}}', 'fan-ev-' || i
               FROM generate_series(1, {FANOUT_LINES}) i;
             INSERT INTO order_lines (order_id, line_id, sku, product_name, quantity, unit_price_minor,
                                      availability, promise_told)
             SELECT 'fan-o' || lpad(i::text, 7, '0'), 'l1', '{FANOUT_SKU}', 'Reading Lamp', 1, 2500, 'BACKORDERED', true
               FROM generate_series(1, {FANOUT_LINES}) i;
             ANALYZE customers; ANALYZE orders; ANALYZE order_lines;"
        ))
        .await?;
    // Its log of the arrival says how long allocation and emission took.
    let stock = world
        .start(
            &run.bin_dir,
            &run.log_dir,
            "stock-consumer",
            &[("RUST_LOG", "warn,stock_consumer::allocation=info".into())],
        )
        .await?;
    // The sender records requests in its ledger at once; it sends them
    // slowly, so that sending does not compete with the fan-out for the
    // two cores (the sender's rate is measured on its own).
    let sender = world
        .start(
            &run.bin_dir,
            &run.log_dir,
            "sender",
            &[
                ("BACKORDER_SES_MAX_SEND_RATE", "1".into()),
                ("BACKORDER_SES_SEND_RATE_OVERRIDE", "1".into()),
            ],
        )
        .await?;
    world::wait_assigned(&[&stock], partitions_of(topics::STOCK)).await?;
    world::wait_assigned(&[&sender], partitions_of(topics::EMAIL_REQUESTS)).await?;
    let arrival = StockArrival {
        event_id: format!("bench-fanout-{}", run.id),
        occurred_at: chrono::Utc::now(),
        arrival_id: "bench-fanout".into(),
        sku: FANOUT_SKU.into(),
        quantity: i32::try_from(FANOUT_LINES)?,
        warehouse: "BER-1".into(),
    };
    let codec = backorder_core::codec::Codec::from_settings(&world.settings)?;
    let producer = backorder_core::kafka::Producer::new(&world.settings)?;
    let record = OutboundRecord::encode(&codec, &world.topics.name(topics::STOCK), &arrival).await?;
    let started = Instant::now();
    producer.send_all(&[record]).await?;
    let until = started + FANOUT_DEADLINE;
    let mut in_ledger = 0;
    while in_ledger < FANOUT_LINES {
        if Instant::now() > until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        in_ledger = client
            .query_one(
                "SELECT count(*) FROM email_ledger WHERE template = 'arrival_notice'",
                &[],
            )
            .await?
            .try_get(0)?;
    }
    let elapsed = started.elapsed();
    let rss_stock = stock.peak_rss_mib()?;
    let rss_sender = sender.peak_rss_mib()?;
    let (allocation, handled) = arrival_timings(&stock.log);
    stock.stop().await?;
    sender.stop().await?;
    drop(client);
    world.drop_database().await?;
    Ok(Fanout {
        lines: u64::try_from(FANOUT_LINES)?,
        in_ledger: u64::try_from(in_ledger)?,
        seconds: elapsed.as_secs_f64(),
        rss_stock,
        rss_sender,
        allocation,
        handled,
    })
}

/// Seconds allocating and seconds in all, from stock-consumer's
/// `arrival handled` log line (JSON), if it is there.
fn arrival_timings(log: &Path) -> (Option<f64>, Option<f64>) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let Some(line) = text.lines().rev().find(|l| l.contains("\"arrival handled\"")) else {
        return (None, None);
    };
    // Flat numeric fields: `"allocation_ms":1234,`.
    let seconds = |field: &str| {
        let rest = line.split(&format!("\"{field}\":")).nth(1)?;
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<f64>().ok().map(|ms| ms / 1000.0)
    };
    (seconds("allocation_ms"), seconds("elapsed_ms"))
}
