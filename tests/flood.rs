//! A flood of hostile input: 10,000 malformed messages (random bytes,
//! truncated Avro, wrong fingerprints, valid Avro with invalid values,
//! oversized) mixed with 1,000 valid orders on `orders.v1`, against the real
//! orders-consumer binary, Tansu and PostgreSQL. Every bad message lands on
//! the dead-letter topic once with a reason, every valid order is stored,
//! the service never restarts and its peak memory stays bounded.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::disallowed_methods)]

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use backorder_core::codec::MAX_MESSAGE_BYTES;
use backorder_core::events::orders::Availability::{Backordered, InStock};
use backorder_core::events::orders::OrderPlaced;
use backorder_core::kafka::topics::ORDERS;
use backorder_core::kafka::{OutboundRecord, Topics, dead_letter};
use backorder_tests::{TestApp, order_placed, wait_until};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, RngCore, SeedableRng};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

const VALID: usize = 1_000;
const RANDOM_BYTES: usize = 2_500;
const TRUNCATED: usize = 2_500;
const WRONG_FINGERPRINT: usize = 2_500;
const INVALID_VALUES: usize = 2_450;
const OVERSIZED: usize = 50;
const BAD: usize = RANDOM_BYTES + TRUNCATED + WRONG_FINGERPRINT + INVALID_VALUES + OVERSIZED;

/// The orders-consumer's peak resident memory must stay under this. Why
/// this much: librdkafka may prefetch up to `queued.max.messages.kbytes`
/// (64 MiB by default) per consumer; a batch in hand is at most 500
/// messages, copied once more for its dead letters (the oversized ones are
/// 612 KiB each, so a batch that caught all 50 holds 60 MiB with its copy);
/// the runtime, pools and clients take a few tens of MiB more. That sums to
/// under 200 MiB. A leak of the flood's payload, or an allocation a hostile
/// length prefix asks for (up to 512 MiB by apache-avro's default), would
/// cross it. Measured on the local stack: 64 MiB (2026-12-02).
const PEAK_MEMORY_BOUND_KIB: u64 = 256 * 1024;

const PATIENCE: Duration = Duration::from_secs(120);

/// Which malformation a bad message has, to check its reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Flaw {
    RandomBytes,
    Truncated,
    WrongFingerprint,
    InvalidValues,
    Oversized,
}

fn valid_order(app: &TestApp, i: usize) -> OrderPlaced {
    let locale = ["en-GB", "de-DE", "fr-FR", "es-ES", "it-IT"][i % 5];
    let availability = if i.is_multiple_of(2) { Backordered } else { InStock };
    order_placed(
        &format!("good-{i}"),
        &app.recipient(&format!("c{i}")),
        locale,
        &[("LAMP-01", availability)],
    )
}

/// An order broken in one of several ways the schema cannot express.
fn invalid_order(app: &TestApp, i: usize) -> OrderPlaced {
    let mut order = order_placed(
        &format!("bad-order-{i}"),
        &app.recipient("x"),
        "en-GB",
        &[("LAMP-01", Backordered)],
    );
    match i % 6 {
        0 => order.lines[0].quantity = -(i as i32) - 1,
        1 => order.lines.clear(),
        2 => order.customer.email = format!("not-an-address-{i}"),
        3 => order.currency = "EURO".into(),
        4 => order.order_id.clear(),
        _ => order.lines[0].unit_price_minor = -1,
    }
    order
}

async fn encode(app: &TestApp, order: &OrderPlaced) -> Vec<u8> {
    app.codec.encode("orders.v1", order).await.expect("encode")
}

/// Reads the dead-letter topic from the beginning until `expected` records
/// arrived: key -> every reason seen for it (more than one is a duplicate).
async fn read_dead_letters(app: &TestApp, expected: usize) -> HashMap<String, Vec<String>> {
    let topic = Topics::dead_letter_of(&app.topics.name(ORDERS));
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &app.settings.kafka_bootstrap_servers)
        .set("group.id", format!("{}flood-dlq-reader", app.settings.topic_prefix))
        .set("enable.auto.commit", "false")
        .create()
        .expect("dlq reader");
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(&topic, 0, Offset::Beginning)
        .expect("partition");
    consumer.assign(&list).expect("assign");
    let mut letters: HashMap<String, Vec<String>> = HashMap::new();
    let mut count = 0;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while count < expected {
        let message = tokio::time::timeout_at(deadline, consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("only {count} of {expected} dead letters on {topic}"))
            .expect("dlq message");
        let key = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
        let reason = message
            .headers()
            .and_then(|h| {
                h.iter()
                    .find(|h| h.key == dead_letter::REASON)
                    .map(|h| String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned())
            })
            .unwrap_or_default();
        letters.entry(key).or_default().push(reason);
        count += 1;
    }
    letters
}

/// `VmHWM` (peak resident set) of a process, in KiB.
fn peak_resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_hostile_messages_is_dead_lettered_while_valid_orders_flow_in_bounded_memory() {
    let app = TestApp::spawn().await;
    let mut orders = app.start_service("orders-consumer").await;
    let pid = orders.pid();
    let topic = app.topics.name(ORDERS);
    // A fixed seed: a failure can be replayed with the same messages.
    let mut rng = StdRng::seed_from_u64(14);

    let mut messages: Vec<OutboundRecord> = Vec::with_capacity(VALID + BAD);
    let mut flaws: HashMap<String, Flaw> = HashMap::new();
    let mut push_bad = |messages: &mut Vec<OutboundRecord>, flaw: Flaw, i: usize, payload: Vec<u8>| {
        let key = format!("bad-{i}");
        flaws.insert(key.clone(), flaw);
        messages.push(OutboundRecord {
            topic: topic.clone(),
            key,
            payload,
            headers: vec![],
        });
    };
    let template = encode(&app, &valid_order(&app, 0)).await;
    let mut i = 0;
    for _ in 0..RANDOM_BYTES {
        let mut bytes = vec![0u8; rng.random_range(0..300)];
        rng.fill_bytes(&mut bytes);
        push_bad(&mut messages, Flaw::RandomBytes, i, bytes);
        i += 1;
    }
    for _ in 0..TRUNCATED {
        let cut = rng.random_range(0..template.len());
        push_bad(&mut messages, Flaw::Truncated, i, template[..cut].to_vec());
        i += 1;
    }
    for _ in 0..WRONG_FINGERPRINT {
        let mut bytes = template.clone();
        rng.fill_bytes(&mut bytes[2..10]);
        push_bad(&mut messages, Flaw::WrongFingerprint, i, bytes);
        i += 1;
    }
    for n in 0..INVALID_VALUES {
        let payload = encode(&app, &invalid_order(&app, n)).await;
        push_bad(&mut messages, Flaw::InvalidValues, i, payload);
        i += 1;
    }
    for _ in 0..OVERSIZED {
        let mut order = valid_order(&app, 0);
        order.customer.name = "x".repeat(MAX_MESSAGE_BYTES + 100 * 1024);
        let payload = encode(&app, &order).await;
        push_bad(&mut messages, Flaw::Oversized, i, payload);
        i += 1;
    }
    for n in 0..VALID {
        let order = valid_order(&app, n);
        let payload = encode(&app, &order).await;
        messages.push(OutboundRecord {
            topic: topic.clone(),
            key: order.order_id.clone(),
            payload,
            headers: vec![],
        });
    }
    messages.shuffle(&mut rng);
    for chunk in messages.chunks(1_000) {
        app.producer.send_all(chunk).await.expect("publish the flood");
    }

    // Every bad message on the dead-letter topic, exactly once, with a
    // reason that says what is wrong with it.
    let letters = read_dead_letters(&app, BAD).await;
    let keys: HashSet<&String> = letters.keys().collect();
    let expected: HashSet<&String> = flaws.keys().collect();
    assert_eq!(keys, expected, "the dead letters are exactly the bad messages");
    for (key, reasons) in &letters {
        assert_eq!(reasons.len(), 1, "{key} dead-lettered once: {reasons:?}");
        let reason = &reasons[0];
        assert!(!reason.is_empty(), "{key} has a reason");
        let fits = match flaws[key] {
            Flaw::RandomBytes | Flaw::Truncated => true,
            Flaw::WrongFingerprint => reason.contains("no known schema has fingerprint"),
            Flaw::InvalidValues => ["lines", "customer.email", "currency", "order_id"]
                .iter()
                .any(|field| reason.contains(field)),
            Flaw::Oversized => reason.contains("more than the") && reason.contains("bytes an event may have"),
        };
        assert!(fits, "{key} ({:?}): {reason}", flaws[key]);
    }

    // Every valid order stored, and the whole topic consumed.
    wait_until("the 1,000 valid orders in the database", PATIENCE, || async {
        let client = app.pool.get().await.expect("db");
        let row = client
            .query_one("SELECT count(*) FROM orders WHERE order_id LIKE 'good-%'", &[])
            .await
            .expect("count orders");
        (row.get::<_, i64>(0) == VALID as i64).then_some(())
    })
    .await;
    wait_until("every message of the flood committed", PATIENCE, || async {
        (app.committed_total("orders-consumer", ORDERS).await == (VALID + BAD) as i64).then_some(())
    })
    .await;

    // The same process all along, still ready, within its memory bound.
    assert!(
        orders.wait_exit(Duration::ZERO).await.is_none(),
        "orders-consumer exited: {}",
        orders.log_tail()
    );
    assert_eq!(orders.pid(), pid);
    let ready = reqwest::get(format!("http://127.0.0.1:{}/readyz", orders.http_port))
        .await
        .expect("readyz");
    assert!(ready.status().is_success(), "still ready");
    let peak = peak_resident_kib(pid);
    println!("orders-consumer peak resident memory (VmHWM): {} MiB", peak / 1024);
    assert!(
        peak < PEAK_MEMORY_BOUND_KIB,
        "peak resident memory {peak} KiB over the bound of {PEAK_MEMORY_BOUND_KIB} KiB"
    );
}
