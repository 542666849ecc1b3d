//! The consumer runtime through rebalances, against the local stack's real
//! broker (`make up`): two replicas of one group consume a topic while
//! events keep arriving (the first alone at first, so the second takes
//! partitions from it); a third joins and then the first leaves, so partitions
//! change hands while batches are being gathered and applied. Nothing may
//! be applied twice, nothing may be lost, and the group's committed offsets
//! never move backwards.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::disallowed_methods)]

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backorder_core::codec::Codec;
use backorder_core::config::Settings;
use backorder_core::events::shipments::{ShipmentDelivered, ShipmentEvent};
use backorder_core::kafka::runtime::RuntimeOptions;
use backorder_core::kafka::{Handler, HandlerError, Incoming, OutboundRecord, Producer, Topics};
use backorder_core::lifecycle::Lifecycle;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const PARTITIONS: i32 = 4;
/// The feeder publishes at least this many events, and goes on until the
/// first replica has left, however long the joins take on a slow machine.
const MIN_EVENTS: usize = 600;

/// Which replica applied which (partition, offset), in order.
type Applied = Arc<Mutex<Vec<(usize, i32, i64)>>>;

/// Sets its flag when dropped, so the offsets watcher (a blocking task the
/// runtime waits for at shutdown) also stops when an assertion fails first.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

struct Recording {
    replica: usize,
    applied: Applied,
}

impl Handler for Recording {
    type Event = ShipmentEvent;

    async fn handle(&self, batch: &[Incoming<ShipmentEvent>]) -> Result<Vec<OutboundRecord>, HandlerError> {
        // Stands for the database round trip of a real handler, so a batch
        // takes time like a real one does.
        tokio::time::sleep(Duration::from_millis(40)).await;
        let mut applied = self.applied.lock().unwrap();
        applied.extend(batch.iter().map(|i| (self.replica, i.partition, i.offset)));
        Ok(Vec::new())
    }
}

fn settings(prefix: &str) -> Settings {
    let mut settings = Settings::load().expect("settings: start the local stack with `make up`");
    settings.topic_prefix = prefix.to_string();
    settings.kafka_session_timeout_ms = 6000;
    settings
}

fn replica(settings: &Settings, topic: &str, group: &str, id: usize, applied: &Applied) -> Lifecycle {
    let lifecycle = Lifecycle::new();
    let config = backorder_core::kafka::consumer_config(settings, group);
    let options = RuntimeOptions {
        max_batch: 50,
        // A long linger: batches are gathered while the rebalance happens.
        linger: Duration::from_millis(400),
        min_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(500),
        partition_concurrency: 2,
        parking: None,
    };
    let handler = Recording {
        replica: id,
        applied: applied.clone(),
    };
    let (codec, producer) = (Codec::new(None).unwrap(), Producer::new(settings).unwrap());
    let (topic, task_lifecycle) = (topic.to_string(), lifecycle.clone());
    lifecycle.tasks.spawn(async move {
        backorder_core::kafka::run_consumer(config, &topic, handler, codec, producer, options, task_lifecycle)
            .await
            .unwrap();
    });
    lifecycle
}

/// The group's committed offsets per partition (absent: none yet).
fn committed(reader: &BaseConsumer, topic: &str) -> BTreeMap<i32, i64> {
    let mut list = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        list.add_partition(topic, p);
    }
    let Ok(offsets) = reader.committed_offsets(list, Duration::from_secs(5)) else {
        return BTreeMap::new();
    };
    offsets
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect()
}

async fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_mid_batch_applies_nothing_twice_loses_nothing_and_never_moves_an_offset_back() {
    let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
    let settings = settings(&format!("rb{id}."));
    let topic = Topics::new(&settings.topic_prefix).name("rebalance.v1");
    let group = format!("rb{id}");
    backorder_core::kafka::admin::create_topics(
        &settings,
        &[(topic.clone(), PARTITIONS), (Topics::dead_letter_of(&topic), 1)],
    )
    .await
    .unwrap();

    // Watches the group's committed offsets for any step back.
    let stop = Arc::new(AtomicBool::new(false));
    let stop_watcher = StopOnDrop(stop.clone());
    let watcher = {
        let (stop, topic) = (stop.clone(), topic.clone());
        let reader: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &settings.kafka_bootstrap_servers)
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        tokio::task::spawn_blocking(move || {
            let mut highest: BTreeMap<i32, i64> = BTreeMap::new();
            let mut backwards = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                for (p, o) in committed(&reader, &topic) {
                    let top = highest.entry(p).or_insert(o);
                    if o < *top {
                        backwards.push((p, *top, o));
                    }
                    *top = (*top).max(o);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            backwards
        })
    };

    let applied: Applied = Arc::default();
    // A starts alone and owns every partition for a while, so every
    // later assignment moves partitions away from it.
    let a = replica(&settings, &topic, &group, 0, &applied);

    // Events keep arriving until A has left (and at least MIN_EVENTS of
    // them), so every replica is always gathering or applying a batch when
    // the group rebalances, however long the joins take.
    let producer = Producer::new(&settings).unwrap();
    let keep_feeding = Arc::new(AtomicBool::new(true));
    let feeder = {
        let (topic, producer, keep_feeding) = (topic.clone(), producer.clone(), keep_feeding.clone());
        tokio::spawn(async move {
            let codec = Codec::new(None).unwrap();
            let mut published = 0;
            while published < MIN_EVENTS || keep_feeding.load(Ordering::SeqCst) {
                let mut records = Vec::new();
                for i in published..published + 10 {
                    let event = ShipmentDelivered {
                        event_id: uuid::Uuid::new_v4().to_string(),
                        occurred_at: chrono::Utc::now(),
                        shipment_id: format!("s-{i}"),
                        order_id: format!("o-{i}"),
                    };
                    records.push(OutboundRecord::encode(&codec, &topic, &event).await.unwrap());
                }
                producer.send_all(&records).await.unwrap();
                published += records.len();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            published
        })
    };

    let count_of = |replica: usize| applied.lock().unwrap().iter().filter(|(r, ..)| *r == replica).count();
    wait_for("the first replica to apply events", Duration::from_secs(30), || {
        (count_of(0) >= 30).then_some(())
    })
    .await;
    let b = replica(&settings, &topic, &group, 1, &applied);
    wait_for(
        "the second replica to be given partitions and apply events",
        Duration::from_secs(30),
        || (count_of(1) > 0).then_some(()),
    )
    .await;
    let c = replica(&settings, &topic, &group, 2, &applied);
    wait_for(
        "the third replica to be given partitions and apply events",
        Duration::from_secs(30),
        || (count_of(2) > 0).then_some(()),
    )
    .await;
    let applied_by_a_before_leaving = count_of(0);
    a.begin_shutdown();
    assert!(
        a.wait_for_tasks(Duration::from_secs(20)).await,
        "replica A left the group"
    );
    keep_feeding.store(false, Ordering::SeqCst);
    let events = feeder.await.unwrap();

    wait_for("every event to be applied", Duration::from_secs(60), || {
        let distinct: std::collections::HashSet<(i32, i64)> =
            applied.lock().unwrap().iter().map(|(_, p, o)| (*p, *o)).collect();
        (distinct.len() == events).then_some(())
    })
    .await;
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &settings.kafka_bootstrap_servers)
        .set("group.id", &group)
        .create()
        .unwrap();
    let topic_for_reader = topic.clone();
    let final_commits = wait_for(
        "the group's offsets to cover every event",
        Duration::from_secs(30),
        || {
            let offsets = committed(&reader, &topic_for_reader);
            (offsets.values().sum::<i64>() == events as i64).then_some(offsets)
        },
    )
    .await;

    drop(stop_watcher);
    let backwards = watcher.await.unwrap();
    for lifecycle in [&b, &c] {
        lifecycle.begin_shutdown();
        assert!(lifecycle.wait_for_tasks(Duration::from_secs(20)).await);
    }

    let applied = applied.lock().unwrap().clone();
    let mut times: HashMap<(i32, i64), Vec<usize>> = HashMap::new();
    for (replica, p, o) in &applied {
        times.entry((*p, *o)).or_default().push(*replica);
    }
    let twice: Vec<_> = times.iter().filter(|(_, r)| r.len() > 1).collect();
    assert!(
        twice.is_empty(),
        "{} events applied more than once, e.g. {:?}",
        twice.len(),
        twice.iter().take(5).collect::<Vec<_>>()
    );
    assert_eq!(times.len(), events, "every event applied");
    assert!(applied_by_a_before_leaving > 0, "A worked before it left");
    assert!(backwards.is_empty(), "committed offsets moved back: {backwards:?}");
    assert_eq!(final_commits.values().sum::<i64>(), events as i64, "{final_commits:?}");
}
