//! Broker conformance: the guarantees the pipeline relies on, checked
//! against the real broker (Tansu locally) with the real client (rdkafka),
//! so that a broker change cannot hide message loss. Produce to
//! partitions, commit mid-partition, resume in a new consumer of the same
//! group, rebalance between two consumers: nothing skipped, nothing lost.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::disallowed_methods)]

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backorder_core::config::Settings;
use backorder_core::kafka::{OutboundRecord, Producer};
use backorder_tests::wait_until;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

/// Messages produced (keys spread them over the two partitions).
const MESSAGES: i64 = 6000;

fn consumer(settings: &Settings, group: &str) -> StreamConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", &settings.kafka_bootstrap_servers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        .create()
        .expect("consumer")
}

fn commit(consumer: &StreamConsumer, topic: &str, partition: i32, next: i64) {
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(topic, partition, Offset::Offset(next))
        .unwrap();
    consumer.commit(&list, CommitMode::Sync).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_offsets_resume_exactly_and_rebalances_lose_nothing() {
    let settings = Settings::load().expect("settings (make up)");
    let id = uuid::Uuid::new_v4().simple().to_string();
    let topic = format!("conformance-{id}");
    let group = format!("conformance-group-{id}");
    backorder_core::kafka::admin::create_topics(&settings, &[(topic.clone(), 2)])
        .await
        .unwrap();

    // Produce to two partitions; the key decides which.
    let producer = Producer::new(&settings).unwrap();
    let records: Vec<OutboundRecord> = (0..MESSAGES)
        .map(|i| OutboundRecord {
            topic: topic.clone(),
            key: format!("k{i}"),
            payload: i.to_string().into_bytes(),
            headers: vec![],
        })
        .collect();
    // Where each record landed, from the broker's acknowledgements.
    let mut ends: HashMap<i32, i64> = HashMap::new();
    for chunk in records.chunks(1000) {
        for (partition, offset) in producer.send_all(chunk).await.unwrap() {
            let end = ends.entry(partition).or_default();
            *end = (*end).max(offset + 1);
        }
    }
    assert_eq!(ends.values().sum::<i64>(), MESSAGES, "offsets are dense: {ends:?}");
    assert!(
        ends.values().all(|end| *end > 1000),
        "both partitions hold enough messages: {ends:?}"
    );

    // 1. Consumer A reads part of the stream and commits mid-partition.
    let a = consumer(&settings, &group);
    a.subscribe(&[&topic]).unwrap();
    let mut first_seen: HashMap<i32, i64> = HashMap::new();
    let mut commit_points: HashMap<i32, i64> = HashMap::new();
    while commit_points.len() < 2 {
        let m = tokio::time::timeout(Duration::from_secs(30), a.recv())
            .await
            .expect("A receives")
            .unwrap();
        first_seen.entry(m.partition()).or_insert(m.offset());
        if m.offset() == 250 + i64::from(m.partition()) * 100 && !commit_points.contains_key(&m.partition()) {
            commit(&a, &topic, m.partition(), m.offset() + 1);
            commit_points.insert(m.partition(), m.offset() + 1);
        }
    }
    assert!(
        first_seen.values().all(|o| *o == 0),
        "a new group starts at the beginning"
    );
    drop(a);

    // 2. Consumer B of the same group resumes exactly at the commit, and
    // 3. consumer C joins while B is working: a rebalance mid-stream.
    let seen: Arc<Mutex<HashMap<i32, BTreeSet<i64>>>> = Arc::default();
    let b_first: Arc<Mutex<HashMap<i32, i64>>> = Arc::default();
    let spawn_member = |first: Option<Arc<Mutex<HashMap<i32, i64>>>>| {
        let c = Arc::new(consumer(&settings, &group));
        c.subscribe(&[&topic]).unwrap();
        let seen = seen.clone();
        let topic = topic.clone();
        let member = c.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(2), member.recv()).await else {
                    continue;
                };
                if let Some(first) = &first {
                    first.lock().unwrap().entry(m.partition()).or_insert(m.offset());
                }
                seen.lock()
                    .unwrap()
                    .entry(m.partition())
                    .or_default()
                    .insert(m.offset());
                // Commit every message, as a careful consumer would; a commit
                // that races a rebalance may fail and is simply replayed.
                let _ = commit_ok(&member, &topic, m.partition(), m.offset() + 1);
            }
        });
        (c, task)
    };
    let (_b, b_task) = spawn_member(Some(b_first.clone()));
    wait_until("B to consume some messages", Duration::from_secs(30), || async {
        let n: usize = seen.lock().unwrap().values().map(BTreeSet::len).sum();
        (n >= 200).then_some(())
    })
    .await;
    let (c, c_task) = spawn_member(None);
    wait_until(
        "C to be assigned a partition (rebalance)",
        Duration::from_secs(30),
        || async { c.assignment().ok().filter(|a| a.count() > 0).map(|_| ()) },
    )
    .await;
    wait_until(
        "every message after the commit to be seen",
        Duration::from_secs(90),
        || async {
            let seen = seen.lock().unwrap();
            commit_points
                .iter()
                .all(|(p, start)| seen.get(p).is_some_and(|s| (*start..ends[p]).all(|o| s.contains(&o))))
                .then_some(())
        },
    )
    .await;
    b_task.abort();
    c_task.abort();

    let b_first = b_first.lock().unwrap();
    for (partition, committed) in &commit_points {
        let first = b_first.get(partition).copied();
        assert!(
            first.is_none() || first == Some(*committed),
            "B resumed partition {partition} at {first:?}, committed {committed}"
        );
    }
    // The messages at the committed offsets themselves were delivered
    // (the loss mode seen with the published tansu crate).
    let seen = seen.lock().unwrap();
    for (partition, committed) in &commit_points {
        assert!(
            seen[partition].contains(committed),
            "message at committed offset {committed} of p{partition} lost"
        );
        assert_eq!(
            seen[partition].first(),
            Some(committed),
            "nothing before the commit was re-read by B/C on p{partition}"
        );
        let total = seen[partition].len() as i64;
        assert_eq!(
            total,
            ends[partition] - committed,
            "p{partition}: contiguous, nothing skipped"
        );
    }
}

fn commit_ok(consumer: &StreamConsumer, topic: &str, partition: i32, next: i64) -> bool {
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(topic, partition, Offset::Offset(next))
        .is_ok()
        && consumer.commit(&list, CommitMode::Sync).is_ok()
}
