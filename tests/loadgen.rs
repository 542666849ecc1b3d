//! `backorderctl loadgen` against the real broker: a seeded run publishes
//! the same records every time, and every record decodes under the schema
//! of the topic it landed on.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use backorder_core::codec::Codec;
use backorder_core::events::offers::OfferResponseEvent;
use backorder_core::events::orders::OrderEvent;
use backorder_core::events::shipments::ShipmentEvent;
use backorder_core::events::stock::StockEvent;
use backorder_core::kafka::Topics;
use backorder_core::kafka::topics::{OFFER_RESPONSES, ORDERS, SHIPMENTS, STOCK};
use backorder_tests::TestApp;
use backorderctl::loadgen::{self, LoadgenArgs};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

const INPUTS: [&str; 4] = [ORDERS, STOCK, SHIPMENTS, OFFER_RESPONSES];

/// Every message on the input topics of `prefix`, as (base topic, key,
/// payload), sorted: partitions interleave differently from run to run,
/// the records themselves must not differ.
async fn read_inputs(bootstrap: &str, prefix: &str, expected: usize) -> Vec<(String, String, Vec<u8>)> {
    let bootstrap = bootstrap.to_string();
    let topics = Topics::new(prefix);
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", format!("{}loadgen-reader", topics.name("")))
            .set("enable.auto.commit", "false")
            .create()
            .expect("reader");
        let mut assignment = TopicPartitionList::new();
        let mut base_of = BTreeMap::new();
        for base in INPUTS {
            let topic = topics.name(base);
            base_of.insert(topic.clone(), base.to_string());
            let metadata = consumer
                .fetch_metadata(Some(&topic), Duration::from_secs(10))
                .expect("metadata");
            for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
                assignment
                    .add_partition_offset(&topic, partition.id(), Offset::Beginning)
                    .expect("assign");
            }
        }
        consumer.assign(&assignment).expect("assign");
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut messages = Vec::new();
        while messages.len() < expected {
            assert!(
                Instant::now() < deadline,
                "read {} of {expected} records",
                messages.len()
            );
            let Some(message) = consumer.poll(Duration::from_millis(100)) else {
                continue;
            };
            let message = message.expect("message");
            messages.push((
                base_of[message.topic()].clone(),
                String::from_utf8(message.key().expect("key").to_vec()).expect("UTF-8 key"),
                message.payload().expect("payload").to_vec(),
            ));
        }
        messages.sort();
        messages
    })
    .await
    .expect("reader task")
}

#[tokio::test]
async fn a_seeded_run_publishes_the_same_records_and_each_decodes_under_its_topic() {
    let app = TestApp::spawn().await;
    let args = LoadgenArgs {
        orders: 400,
        seed: 42,
        ..LoadgenArgs::default()
    };
    let first = loadgen::publish(&args, &app.settings, false).await.expect("first run");

    let again = format!("{}again.", app.settings.topic_prefix);
    backorder_core::kafka::admin::create_topics(&app.settings, &Topics::new(&again).all())
        .await
        .expect("topics of the second run");
    let second_args = LoadgenArgs {
        topic_prefix: Some(again.clone()),
        ..args.clone()
    };
    let second = loadgen::publish(&second_args, &app.settings, false)
        .await
        .expect("second run");

    let counts = |summary: &loadgen::LoadgenSummary, prefix: &str| -> BTreeMap<(String, String), u64> {
        summary
            .per_type
            .iter()
            .map(|((record, topic), n)| ((record.to_string(), topic.replacen(prefix, "", 1)), *n))
            .collect()
    };
    assert_eq!(counts(&first, &app.settings.topic_prefix), counts(&second, &again));
    let types: std::collections::BTreeSet<&str> = first.per_type.keys().map(|(record, _)| *record).collect();
    for record in [
        "ProductUpserted",
        "SupplierEtaChanged",
        "OrderPlaced",
        "ShipmentDispatched",
        "ShipmentDelivered",
    ] {
        assert!(types.contains(record), "no {record} in {types:?}");
    }
    let total = usize::try_from(first.total).unwrap();

    let one = read_inputs(&app.settings.kafka_bootstrap_servers, &app.settings.topic_prefix, total).await;
    let other = read_inputs(&app.settings.kafka_bootstrap_servers, &again, total).await;
    assert_eq!(one.len(), total);
    assert!(one == other, "the two runs published different records");

    let codec = Codec::new(None).unwrap();
    let mut orders_by_locale = BTreeMap::new();
    for (base, key, payload) in &one {
        match base.as_str() {
            ORDERS => match codec.decode::<OrderEvent>(payload).await {
                Ok(OrderEvent::Placed(order)) => {
                    assert_eq!(&order.order_id, key);
                    *orders_by_locale.entry(order.customer.locale).or_insert(0) += 1;
                }
                Ok(other) => panic!("loadgen published {other:?} on orders"),
                Err(e) => panic!("an orders record does not decode: {e}"),
            },
            STOCK => {
                codec
                    .decode::<StockEvent>(payload)
                    .await
                    .expect("a stock record decodes");
            }
            SHIPMENTS => {
                codec
                    .decode::<ShipmentEvent>(payload)
                    .await
                    .expect("a shipments record decodes");
            }
            OFFER_RESPONSES => {
                codec
                    .decode::<OfferResponseEvent>(payload)
                    .await
                    .expect("an offer response decodes");
            }
            other => panic!("a record on {other}"),
        }
    }
    assert_eq!(orders_by_locale.values().sum::<i32>(), 400);
    assert_eq!(
        orders_by_locale.keys().map(String::as_str).collect::<Vec<_>>(),
        ["de-DE", "en-GB", "id-ID", "ko-KR", "tr-TR"]
    );
}
