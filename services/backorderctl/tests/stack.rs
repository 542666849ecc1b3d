//! `backorderctl` against the real local stack (`make up`): its own
//! database and topic prefix, so it disturbs nothing else on the stack.
//! Ignored by default because it needs the stack; run it with
//!
//! ```text
//! cargo test -p backorderctl --test stack -- --ignored
//! ```
//!
//! Connection settings come from the environment or `.stack/env`.

// The whole file is test code; clippy's test exemptions only cover
// `#[test]` functions, not the helpers they share.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::disallowed_methods)]

use std::collections::{BTreeMap, HashMap};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use backorder_core::codec::Codec;
use backorder_core::config::stack_env_value;
use backorder_core::events::TopicEvent;
use backorder_core::events::orders::OrderEvent;
use backorder_core::events::stock::StockEvent;
use backorder_core::rdkafka::consumer::{Consumer, StreamConsumer};
use backorder_core::rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use backorder_core::tokio_postgres::NoTls;

const DEMO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../infra/local/demo-scenario.jsonl");

/// A database and a topic prefix of this test's own.
struct World {
    admin_url: String,
    database: String,
    database_url: String,
    kafka: String,
    prefix: String,
}

impl World {
    async fn new() -> Self {
        let admin_url = stack_env_value("BACKORDER_PG_ADMIN_URL").expect("BACKORDER_PG_ADMIN_URL (make up)");
        let kafka = stack_env_value("KAFKA_BOOTSTRAP_SERVERS").expect("KAFKA_BOOTSTRAP_SERVERS (make up)");
        let id = uuid::Uuid::new_v4().simple().to_string();
        let database = format!("backorderctl_{id}");
        let (admin, connection) = backorder_core::tokio_postgres::connect(&admin_url, NoTls)
            .await
            .expect("admin connection");
        tokio::spawn(connection);
        admin
            .batch_execute(&format!("CREATE DATABASE {database}"))
            .await
            .unwrap();
        let base = admin_url.rsplit_once('/').map(|(b, _)| b).unwrap();
        Self {
            database_url: format!("{base}/{database}"),
            admin_url,
            database,
            kafka,
            prefix: format!("bctl-{id}-"),
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        let started = Instant::now();
        let output = Command::new(env!("CARGO_BIN_EXE_backorderctl"))
            .args(args)
            .env("BACKORDER_STACK_ENV", "/dev/null")
            .env("DATABASE_URL", &self.database_url)
            .env("KAFKA_BOOTSTRAP_SERVERS", &self.kafka)
            .env("BACKORDER_TOPIC_PREFIX", &self.prefix)
            .env("BACKORDER_CLOCK_CONTROLLED", "true")
            .env_remove("SCHEMA_REGISTRY_URL")
            .output()
            .unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{args:?} took {:?}",
            started.elapsed()
        );
        output
    }

    fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "backorderctl {args:?} failed: {}\n{stdout}",
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    }

    async fn sql(&self, statement: &str) {
        let (client, connection) = backorder_core::tokio_postgres::connect(&self.database_url, NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        client.batch_execute(statement).await.unwrap();
    }

    async fn drop_database(&self) {
        if let Ok((admin, connection)) = backorder_core::tokio_postgres::connect(&self.admin_url, NoTls).await {
            tokio::spawn(connection);
            let _ = admin
                .batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.database))
                .await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local stack (make up)"]
async fn migrate_topics_publish_clock_and_emails_against_the_stack() {
    let world = World::new().await;

    // migrate: once applies, twice is a no-op.
    assert!(world.ok(&["migrate"]).starts_with("applied "));
    assert!(world.ok(&["migrate"]).contains("0 migrations applied"));

    // topics create: everything created, then everything existing.
    let first = world.ok(&["topics", "create"]);
    assert!(first.contains(&format!("{}orders.v1.dlq", world.prefix)), "{first}");
    assert!(first.contains("13 created, 0 already existed"), "{first}");
    let second = world.ok(&["topics", "create"]);
    assert!(second.contains("0 created, 13 already existed"), "{second}");

    // publish: the demo scenario lands on the prefixed topics, keyed as
    // the contract says, decodable by the services' codec.
    let published = world.ok(&["publish", DEMO]);
    let p = &world.prefix;
    assert_eq!(
        published.trim(),
        format!("published 8 records ({p}orders.v1: 4, {p}stock.v1: 4)")
    );
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &world.kafka)
        .set("group.id", format!("{}reader", world.prefix))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let orders = format!("{}orders.v1", world.prefix);
    let stock = format!("{}stock.v1", world.prefix);
    // Read every partition from the start, without waiting for a group to form.
    let mut assignment = TopicPartitionList::new();
    for topic in [&orders, &stock] {
        for partition in 0..6 {
            assignment
                .add_partition_offset(topic, partition, Offset::Beginning)
                .unwrap();
        }
    }
    consumer.assign(&assignment).unwrap();
    let codec = Codec::new(None).unwrap();
    let mut keys: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut event_ids = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while keys.values().map(Vec::len).sum::<usize>() < 8 {
        assert!(Instant::now() < deadline, "only got {keys:?}");
        let Ok(Ok(message)) = tokio::time::timeout(Duration::from_secs(5), consumer.recv()).await else {
            continue;
        };
        let key = String::from_utf8(message.key().unwrap().to_vec()).unwrap();
        let payload = message.payload().unwrap();
        let event_id = if message.topic() == orders {
            let event: OrderEvent = codec.decode(payload).await.unwrap();
            assert_eq!(event.business_id(), key);
            event.event_id().to_string()
        } else {
            let event: StockEvent = codec.decode(payload).await.unwrap();
            assert_eq!(event.business_id(), key);
            event.event_id().to_string()
        };
        event_ids.push(event_id);
        keys.entry(message.topic().to_string()).or_default().push(key);
    }
    for list in keys.values_mut() {
        list.sort();
    }
    assert_eq!(keys[&orders], vec!["cart-2001", "o-1001", "o-1002", "o-1003"]);
    assert_eq!(keys[&stock], vec!["LAMP-01", "LAMP-01", "LAMP-02", "MUG-01"]);
    // Generated event ids are the ones the parser derives from each line.
    let demo = std::fs::read_to_string(DEMO).unwrap();
    let mut expected: Vec<String> = backorderctl::publish::parse_lines(&demo)
        .unwrap()
        .iter()
        .map(|l| l.record.event_id().to_string())
        .collect();
    expected.sort();
    event_ids.sort();
    assert_eq!(event_ids, expected);

    // clock: set, advance, show.
    let set = world.ok(&["clock", "set", "2026-11-24T09:00:00Z"]);
    assert!(set.starts_with("now:    2026-11-24T09:00:0"), "{set}");
    let advanced = world.ok(&["clock", "advance", "14d"]);
    assert!(advanced.starts_with("now:    2026-12-08T09:00:0"), "{advanced}");
    let back = world.ok(&["clock", "advance", "-1d12h"]);
    assert!(back.starts_with("now:    2026-12-06T21:00:0"), "{back}");
    let reset = world.ok(&["clock", "reset"]);
    assert!(reset.contains("offset: +0d 0h from system time"), "{reset}");

    // emails: newest first, filtered, masked everywhere.
    world
        .sql(
            "INSERT INTO email_ledger (dedup_key, template, locale, recipient, recipient_name, customer_id,
                                       order_id, category, data, event_occurred_at, state, attempts,
                                       subject, requested_at, sent_at, last_error)
             VALUES ('order-confirmation_o-1001', 'order-confirmation', 'en-GB', 'ada@example.com', 'Ada',
                     'c-ada', 'o-1001', 'TRANSACTIONAL', '{}', now(), 'sent', 1, 'Your order o-1001',
                     now() - interval '2 hours', now() - interval '2 hours', NULL),
                    ('order-confirmation_o-1002', 'order-confirmation', 'de-DE', 'bernd@example.com', 'Bernd',
                     'c-bernd', 'o-1002', 'TRANSACTIONAL', '{}', now(), 'failed', 5, 'Ihre Bestellung o-1002',
                     now() - interval '1 hour', NULL,
                     'MessageRejected: Email address is not verified: bernd@example.com')",
        )
        .await;
    let table = world.ok(&["emails"]);
    assert!(
        !table.contains("ada@example.com") && !table.contains("bernd@example.com"),
        "{table}"
    );
    assert!(
        table.contains("a***@e***.com") && table.contains("b***@e***.com"),
        "{table}"
    );
    let newest = table.find("o-1002").unwrap();
    let older = table.find("o-1001").unwrap();
    assert!(newest < older, "newest first:\n{table}");
    assert!(table.contains("2 emails, newest first"), "{table}");

    let json = world.ok(&["emails", "--json", "--state", "failed"]);
    assert!(!json.contains("bernd@example.com"), "{json}");
    let rows: Vec<HashMap<String, serde_json::Value>> = serde_json::from_str(&json).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["dedup_key"], "order-confirmation_o-1002");
    assert_eq!(rows[0]["recipient"], "b***@e***.com");
    assert_eq!(rows[0]["attempts"], 5);
    assert!(rows[0]["last_error"].as_str().unwrap().ends_with("b***@e***.com"));

    let json = world.ok(&["emails", "--json", "--order", "o-1001", "--limit", "5"]);
    let rows: Vec<HashMap<String, serde_json::Value>> = serde_json::from_str(&json).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["state"], "sent");
    let limited = world.ok(&["emails", "--limit", "1"]);
    assert!(limited.contains("the limit; --limit N shows more"), "{limited}");
    assert_eq!(world.ok(&["emails", "--order", "nope"]).trim(), "no emails match");

    world.drop_database().await;
}
