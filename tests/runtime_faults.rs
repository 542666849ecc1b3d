//! The shared runtime under faults of its dependencies: a database schema
//! behind the code, and PostgreSQL stopped while SIGTERM arrives. Real
//! service binaries, broker and PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use backorder_core::events::orders::Availability::{Backordered, InStock};
use backorder_core::kafka::topics::ORDERS;
use backorder_tests::private_pg::PrivatePostgres;
use backorder_tests::process::ServiceProcess;
use backorder_tests::scenario::{PATIENCE, metric_sum};
use backorder_tests::{TestApp, order_placed, wait_until};

async fn get(url: &str) -> Option<(u16, String)> {
    let response = reqwest::get(url).await.ok()?;
    let status = response.status().as_u16();
    Some((status, response.text().await.ok()?))
}

async fn orders_stored(app: &TestApp) -> i64 {
    let client = app.pool.get().await.unwrap();
    client
        .query_one("SELECT count(*) FROM orders", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_migrations_behind_the_code_the_service_is_not_ready_and_dead_letters_nothing() {
    let app = TestApp::spawn().await;
    // The schema as an older release left it: the project's first five
    // migrations, none of the newer ones this build expects.
    {
        let client = app.pool.get().await.unwrap();
        client
            .batch_execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
            .await
            .unwrap();
    }
    backorder_core::db::migrate_to(&app.pool, Some(5)).await.unwrap();

    let orders = ServiceProcess::start("orders-consumer", &app.service_env("orders-consumer"), &app.log_dir);
    let base = format!("http://127.0.0.1:{}", orders.http_port);
    app.publish(
        ORDERS,
        &order_placed("o-1", &app.recipient("ada"), "en", &[("LAMP-01", Backordered)]),
    )
    .await;
    let metrics = wait_until("the consumer to meet the missing table", PATIENCE, || async {
        let (_, text) = get(&format!("{base}/metrics")).await?;
        (metric_sum(&text, "backorder_consumer_errors_total", "kind=\"schema\"") >= 1.0).then_some(text)
    })
    .await;
    assert_eq!(
        metric_sum(&metrics, "backorder_dead_letters_total", ""),
        0.0,
        "nothing dead-lettered"
    );
    let (status, body) = get(&format!("{base}/readyz")).await.unwrap();
    assert_eq!(status, 503, "not ready while the schema is behind: {body}");
    assert_eq!(
        app.committed_total("orders-consumer", ORDERS).await,
        0,
        "the event is held"
    );

    // The migrations arrive: the service turns ready and applies the event.
    backorder_core::db::migrate(&app.pool).await.unwrap();
    wait_until("readiness", PATIENCE, || async {
        (get(&format!("{base}/readyz")).await?.0 == 200).then_some(())
    })
    .await;
    wait_until("the held order to be applied and committed", PATIENCE, || async {
        (app.committed_total("orders-consumer", ORDERS).await == 1).then_some(())
    })
    .await;
    assert_eq!(orders_stored(&app).await, 1);
    let metrics = orders.metrics().await;
    assert_eq!(
        metric_sum(&metrics, "backorder_dead_letters_total", ""),
        0.0,
        "nothing dead-lettered"
    );
}

async fn sigterm_with_postgres_down_exits_zero_within_the_drain_time_and_nothing_is_lost(frozen: bool) {
    let pg = PrivatePostgres::start(&format!("drain-{}", uuid::Uuid::new_v4().simple()));
    let app = TestApp::spawn_on(&pg.admin_url()).await;
    let drain = [
        ("BACKORDER_DRAIN_GRACE_MS", "3000"),
        ("BACKORDER_TIMER_POLL_MS", "100"),
        // "decoded" lines show which events the consumer has in hand.
        ("RUST_LOG", "info,backorder_core::kafka::runtime=debug"),
    ];
    let mut orders = app.start_service_with("orders-consumer", &drain).await;
    let order = |i: usize| {
        order_placed(
            &format!("o-{i}"),
            &app.recipient(&format!("c{i}")),
            "en",
            &[("LAMP-01", Backordered)],
        )
    };
    app.publish(ORDERS, &order(0)).await;
    wait_until("the first order to be applied", PATIENCE, || async {
        (app.committed_total("orders-consumer", ORDERS).await == 1).then_some(())
    })
    .await;

    // Stopped (connections refused) or frozen (every call hangs).
    if frozen {
        pg.freeze();
    } else {
        pg.stop();
    }
    for i in 1..5 {
        app.publish(ORDERS, &order(i)).await;
    }
    // Work is in flight: the consumer holds events it cannot store.
    let decoded = |log: &str| log.lines().filter(|l| l.contains("\"decoded\"")).count();
    wait_until("the consumer to hold events it cannot store", PATIENCE, || async {
        let log = std::fs::read_to_string(&orders.log).ok()?;
        (decoded(&log) >= 2).then_some(())
    })
    .await;

    let started = Instant::now();
    let status = orders
        .terminate(Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("no exit within 10 s of SIGTERM: {}", orders.log_tail()));
    assert!(status.success(), "exit status {status}: {}", orders.log_tail());
    assert!(
        started.elapsed() < Duration::from_millis(3000 + 1500),
        "exited within the drain time (3 s) plus process teardown: {:?}",
        started.elapsed()
    );

    assert!(
        app.committed_total("orders-consumer", ORDERS).await < 5,
        "work was in flight at the signal"
    );
    if frozen {
        pg.thaw();
    } else {
        pg.restart();
    }
    let _orders = app.start_service_with("orders-consumer", &drain).await;
    wait_until(
        "every order to be stored and committed after the restart",
        PATIENCE,
        || async { (app.committed_total("orders-consumer", ORDERS).await == 5).then_some(()) },
    )
    .await;
    assert_eq!(orders_stored(&app).await, 5, "nothing lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_postgres_stopped_exits_zero_within_the_drain_time_and_nothing_is_lost() {
    sigterm_with_postgres_down_exits_zero_within_the_drain_time_and_nothing_is_lost(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_postgres_frozen_exits_zero_within_the_drain_time_and_nothing_is_lost() {
    sigterm_with_postgres_down_exits_zero_within_the_drain_time_and_nothing_is_lost(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_keep_binary_keys_headers_and_tombstones_as_they_came() {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::{Header, Headers, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

    let app = TestApp::spawn().await;
    let orders = app.start_service("orders-consumer").await;
    let topic = app.topics.name(ORDERS);
    let raw: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &app.settings.kafka_bootstrap_servers)
        .create()
        .unwrap();
    let binary_key: &[u8] = &[0xc3, 0x28, 0x00, 0xff];
    let binary_header: &[u8] = &[0xff, 0xfe, 0x00];
    let headers = OwnedHeaders::new().insert(Header {
        key: "trace-bin",
        value: Some(binary_header),
    });
    raw.send(
        FutureRecord::to(&topic)
            .key(binary_key)
            .payload(&b"\x01 not avro"[..])
            .headers(headers),
        Duration::from_secs(10),
    )
    .await
    .map_err(|(e, _)| e)
    .unwrap();
    raw.send(
        FutureRecord::<[u8], [u8]>::to(&topic).key(&b"tombstone"[..]),
        Duration::from_secs(10),
    )
    .await
    .map_err(|(e, _)| e)
    .unwrap();
    app.publish(
        ORDERS,
        &order_placed("o-after", &app.recipient("after"), "en", &[("LAMP-01", Backordered)]),
    )
    .await;
    wait_until("the valid order after them to be applied", PATIENCE, || async {
        (app.committed_total("orders-consumer", ORDERS).await == 3).then_some(())
    })
    .await;
    assert_eq!(orders_stored(&app).await, 1);

    let reader: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &app.settings.kafka_bootstrap_servers)
        .set("group.id", format!("{}dlq-bytes", app.settings.topic_prefix))
        .create()
        .unwrap();
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(&format!("{topic}.dlq"), 0, Offset::Beginning)
        .unwrap();
    reader.assign(&list).unwrap();
    let mut letters = Vec::new();
    while letters.len() < 2 {
        let m = tokio::time::timeout(PATIENCE, reader.recv())
            .await
            .expect("two dead letters")
            .unwrap();
        let headers: Vec<(String, Option<Vec<u8>>)> = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default();
        letters.push((m.key().map(<[u8]>::to_vec), m.payload().map(<[u8]>::to_vec), headers));
    }
    let header = |h: &[(String, Option<Vec<u8>>)], k: &str| h.iter().find(|(n, _)| n == k).and_then(|(_, v)| v.clone());
    let garbage = letters
        .iter()
        .find(|(key, ..)| key.as_deref() == Some(binary_key))
        .expect("the binary key, byte for byte");
    assert_eq!(garbage.1.as_deref(), Some(&b"\x01 not avro"[..]));
    assert_eq!(
        header(&garbage.2, "trace-bin").as_deref(),
        Some(binary_header),
        "binary header kept"
    );
    let tombstone = letters
        .iter()
        .find(|(key, ..)| key.as_deref() == Some(&b"tombstone"[..]))
        .expect("the tombstone is dead-lettered, not skipped");
    assert_eq!(tombstone.1, None);
    assert_eq!(header(&tombstone.2, "dlq.kind").as_deref(), Some(&b"empty"[..]));
    let metrics = orders.metrics().await;
    assert_eq!(
        metric_sum(&metrics, "backorder_dead_letters_total", ""),
        2.0,
        "each counted once"
    );
}

/// A batch fails half way through its transaction (a real PostgreSQL error,
/// injected by a trigger: the confirmation decision of one order fails with
/// a serialization failure, after the batch already wrote customers,
/// orders, lines, co-purchases and timers), other partitions' batches
/// commit meanwhile, and the consumer is killed while it holds the failing
/// one. After the restart the replay leaves exactly one of everything: one
/// confirmation per order at SES, and the one counter that is not a plain
/// upsert (co-purchases) counted once per customer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_failed_half_way_is_replayed_after_a_crash_without_duplicate_output() {
    let app = TestApp::spawn().await;
    let client = app.pool.get().await.unwrap();
    client
        .batch_execute(
            "CREATE TABLE fault_switch (armed boolean NOT NULL);
             INSERT INTO fault_switch VALUES (true);
             CREATE FUNCTION fail_poison() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF NEW.order_id = 'o-poison' AND EXISTS (SELECT 1 FROM fault_switch) THEN
                     RAISE EXCEPTION 'injected failure' USING ERRCODE = '40001';
                 END IF;
                 RETURN NEW;
             END $$;
             CREATE TRIGGER fail_poison BEFORE INSERT ON email_decisions
                 FOR EACH ROW EXECUTE FUNCTION fail_poison();",
        )
        .await
        .unwrap();

    // 20 customers with 3 orders each (a customer repeats within a batch),
    // and the poison order: all published before the consumer starts, so
    // its first batches are large and span every partition.
    const CUSTOMERS: usize = 20;
    const PER_CUSTOMER: usize = 3;
    let customers: Vec<String> = (0..CUSTOMERS).map(|c| app.recipient(&format!("c{c}"))).collect();
    let poison_customer = app.recipient("poison");
    let mut orders = Vec::new();
    for round in 0..PER_CUSTOMER {
        for (c, customer) in customers.iter().enumerate() {
            let id = format!("o-{:03}", round * CUSTOMERS + c);
            let mut order = order_placed(&id, customer, "en", &[("LAMP-01", Backordered), ("MUG-01", InStock)]);
            order.customer.customer_id = format!("cust-{c}");
            orders.push(order);
        }
    }
    let mut poison = order_placed(
        "o-poison",
        &poison_customer,
        "en",
        &[("LAMP-01", Backordered), ("MUG-01", InStock)],
    );
    poison.customer.customer_id = "cust-poison".into();
    orders.push(poison);
    let total = orders.len() as i64;
    let mut records = Vec::new();
    for order in &orders {
        records.push(
            backorder_core::kafka::OutboundRecord::encode(&app.codec, &app.topics.name(ORDERS), order)
                .await
                .unwrap(),
        );
    }
    app.producer.send_all(&records).await.unwrap();

    let _sender = app.start_service("sender").await;
    let mut consumer = app.start_service("orders-consumer").await;
    wait_until(
        "the poison batch to fail and be retried while other batches commit",
        PATIENCE,
        || async {
            let retried = metric_sum(
                &consumer.metrics().await,
                "backorder_consumer_errors_total",
                "kind=\"transient\"",
            );
            (retried >= 2.0 && orders_stored(&app).await > 0).then_some(())
        },
    )
    .await;
    let poison_rows: i64 = client
        .query_one(
            "SELECT (SELECT count(*) FROM orders WHERE order_id = 'o-poison')
                  + (SELECT count(*) FROM order_lines WHERE order_id = 'o-poison')
                  + (SELECT count(*) FROM customer_skus WHERE customer_id = 'cust-poison')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(poison_rows, 0, "the failed batch left nothing behind");

    // Crash while the batch is held, then heal the database and restart.
    consumer.kill();
    assert!(
        app.committed_total("orders-consumer", ORDERS).await < total,
        "the failing batch was not committed"
    );
    client.execute("DELETE FROM fault_switch", &[]).await.unwrap();
    let _consumer = app.start_service("orders-consumer").await;
    wait_until("every order to be committed after the restart", PATIENCE, || async {
        (app.committed_total("orders-consumer", ORDERS).await == total).then_some(())
    })
    .await;
    wait_until("every confirmation at SES", Duration::from_secs(120), || async {
        let sent = backorder_tests::moto::sent_emails(&app.moto_url).await;
        let ours = sent.iter().filter(|e| e.to.iter().any(|t| t.contains(&app.id))).count();
        (ours as i64 >= total).then_some(())
    })
    .await;

    let sent = backorder_tests::moto::sent_emails(&app.moto_url).await;
    for order in &orders {
        let copies = sent
            .iter()
            .filter(|e| e.to.contains(&order.customer.email) && e.subject.contains(&order.order_id))
            .count();
        assert_eq!(copies, 1, "one confirmation of {}", order.order_id);
    }
    let count = |sql: &'static str| {
        let client = &client;
        async move { client.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    assert_eq!(count("SELECT count(*) FROM orders").await, total);
    assert_eq!(count("SELECT count(*) FROM order_lines").await, 2 * total);
    assert_eq!(count("SELECT count(*) FROM email_decisions").await, total);
    assert_eq!(count("SELECT count(*) FROM timers WHERE kind = 'nurture'").await, total);
    let pairs = client
        .query("SELECT sku, other_sku, customers FROM co_purchases ORDER BY sku", &[])
        .await
        .unwrap();
    let pairs: Vec<(String, String, i64)> = pairs.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
    let buyers = CUSTOMERS as i64 + 1;
    assert_eq!(
        pairs,
        vec![("LAMP-01".to_string(), "MUG-01".to_string(), buyers)],
        "each customer's pair counted once, however often it was replayed"
    );
}

/// An order whose confirmation request is large: many lines with long
/// product names (the request carries every line's name).
fn large_order(order_id: &str, recipient: &str) -> backorder_core::events::orders::OrderPlaced {
    let skus: Vec<String> = (0..40).map(|i| format!("SKU-{i:03}")).collect();
    let lines: Vec<(&str, backorder_core::events::orders::Availability)> =
        skus.iter().map(|s| (s.as_str(), Backordered)).collect();
    let mut order = order_placed(order_id, recipient, "en", &lines);
    for line in &mut order.lines {
        line.product_name = format!(
            "{} {}",
            line.sku,
            "with a very long descriptive product name ".repeat(4)
        );
    }
    order
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_larger_than_the_broker_accepts_dead_letters_its_event_and_the_rest_flows() {
    let app = TestApp::spawn().await;
    // The service may produce at most 12 kB: the large order (8 kB) fits,
    // its confirmation request (16 kB) does not, the small orders' are far
    // below.
    let orders = app
        .start_service_with("orders-consumer", &[("BACKORDER_KAFKA_MESSAGE_MAX_BYTES", "12000")])
        .await;
    let ada = app.recipient("ada");
    app.publish(
        ORDERS,
        &order_placed("o-before", &ada, "en", &[("LAMP-01", Backordered)]),
    )
    .await;
    app.publish(ORDERS, &large_order("o-large", &ada)).await;
    app.publish(
        ORDERS,
        &order_placed("o-after", &ada, "en", &[("LAMP-01", Backordered)]),
    )
    .await;

    wait_until("all three orders consumed", PATIENCE, || async {
        (app.committed_total("orders-consumer", ORDERS).await == 3).then_some(())
    })
    .await;
    let letters = app.dead_letters(ORDERS, 1).await;
    let (_, headers) = &letters[0];
    assert_eq!(headers["dlq.kind"], "oversized");
    assert!(
        headers["dlq.reason"].contains("larger than the broker accepts"),
        "{}",
        headers["dlq.reason"]
    );
    let requests = backorder_tests::stock::records_on_topic::<backorder_core::events::internal::EmailRequestEvent>(
        &app,
        backorder_core::kafka::topics::EMAIL_REQUESTS,
        2,
        Duration::from_secs(1),
    )
    .await;
    // A batch's outputs are produced again while the oversized one's event
    // is found (as after any failed produce), so a request may appear
    // twice: the sender deduplicates by its key.
    let confirmed: std::collections::BTreeSet<String> = requests
        .into_iter()
        .map(|backorder_core::events::internal::EmailRequestEvent::Requested(r)| r.order_id.unwrap_or_default())
        .collect();
    assert_eq!(
        confirmed.into_iter().collect::<Vec<_>>(),
        ["o-after", "o-before"],
        "the other orders' confirmations flowed, the large one's did not"
    );
    assert!(
        !headers.contains_key("dlq.payload.dropped"),
        "the event itself is kept whole"
    );
    let metrics = orders.metrics().await;
    assert_eq!(
        metric_sum(&metrics, "backorder_dead_letters_total", "kind=\"oversized\""),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_output_topic_holds_the_event_turns_readiness_off_and_resumes_when_created() {
    let app = TestApp::spawn().await;
    // This test's services use a prefix of their own where only the
    // orders topic exists: their output topics are missing.
    let prefix = format!("{}missing.", app.settings.topic_prefix);
    let topics = backorder_core::kafka::Topics::new(&prefix);
    backorder_core::kafka::admin::create_topics(
        &app.settings,
        &[
            (topics.name(ORDERS), 1),
            (backorder_core::kafka::Topics::dead_letter_of(&topics.name(ORDERS)), 1),
        ],
    )
    .await
    .unwrap();
    let mut env = app.service_env("orders-consumer");
    env.insert("BACKORDER_TOPIC_PREFIX".into(), prefix.clone());
    let mut orders = ServiceProcess::start("orders-consumer", &env, &app.log_dir);
    orders.wait_ready().await;
    let base = format!("http://127.0.0.1:{}", orders.http_port);
    let order = order_placed("o-1", &app.recipient("ada"), "en", &[("LAMP-01", Backordered)]);
    let record = backorder_core::kafka::OutboundRecord::encode(&app.codec, &topics.name(ORDERS), &order)
        .await
        .unwrap();
    app.producer.send_all(&[record]).await.unwrap();
    let group = app.group("orders-consumer");
    let orders_topic = topics.name(ORDERS);
    let committed = || backorder_tests::app::committed_total_of(&app.settings, &group, &orders_topic);
    let metrics = wait_until("the output topic to be reported blocked", PATIENCE, || async {
        let (_, text) = get(&format!("{base}/metrics")).await?;
        (metric_sum(&text, "backorder_output_blocked", "") >= 1.0).then_some(text)
    })
    .await;
    assert_eq!(metric_sum(&metrics, "backorder_dead_letters_total", ""), 0.0);
    let (status, body) = get(&format!("{base}/readyz")).await.unwrap();
    assert_eq!(status, 503, "not ready while an output topic is missing: {body}");
    assert_eq!(committed().await, 0, "the event is held");

    // The operator creates the topics: the held confirmation goes out.
    backorder_core::kafka::admin::create_topics(&app.settings, &topics.all())
        .await
        .unwrap();
    wait_until("the held order committed", PATIENCE, || async {
        (committed().await == 1).then_some(())
    })
    .await;
    wait_until("readiness back", PATIENCE, || async {
        (get(&format!("{base}/readyz")).await?.0 == 200).then_some(())
    })
    .await;
    let metrics = orders.metrics().await;
    assert_eq!(metric_sum(&metrics, "backorder_output_blocked", ""), 0.0);
    assert_eq!(metric_sum(&metrics, "backorder_dead_letters_total", ""), 0.0);
}
