//! `TestApp`: one test's isolated world on the shared local stack.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use backorder_core::codec::Codec;
use backorder_core::config::{Settings, stack_env_value};
use backorder_core::deadpool_postgres::Pool;
use backorder_core::events::AvroRecord;
use backorder_core::events::orders::{Availability, Customer, OrderLine, OrderPlaced};
use backorder_core::kafka::{OutboundRecord, Producer, Topics};
use chrono::Utc;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::Headers;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use crate::moto::{self, SentEmail};
use crate::process::ServiceProcess;

pub struct TestApp {
    /// Short unique id: database name, topic prefix and addresses use it.
    pub id: String,
    pub settings: Settings,
    pub pool: Pool,
    pub codec: Codec,
    pub producer: Producer,
    pub topics: Topics,
    pub moto_url: String,
    pub log_dir: PathBuf,
}

fn required(key: &str) -> String {
    stack_env_value(key).unwrap_or_else(|| panic!("{key} is not set: start the local stack with `make up`"))
}

impl TestApp {
    /// A new database on the shared PostgreSQL, new topics, new groups.
    pub async fn spawn() -> Self {
        Self::spawn_on(&required("BACKORDER_PG_ADMIN_URL")).await
    }

    /// Like [`spawn`], with the database on the cluster at `admin_url`.
    pub async fn spawn_on(admin_url: &str) -> Self {
        Self::spawn_with(admin_url, None).await
    }

    /// Like [`spawn_on`], with the topics on the broker at `bootstrap`
    /// (a private one a test may restart) instead of the stack's.
    pub async fn spawn_with(admin_url: &str, bootstrap: Option<&str>) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        let db_name = format!("t_{id}");
        let (admin, connection) = tokio_postgres::connect(admin_url, tokio_postgres::NoTls)
            .await
            .expect("PostgreSQL admin connection");
        tokio::spawn(connection);
        admin
            .execute(&format!("CREATE DATABASE \"{db_name}\""), &[])
            .await
            .expect("create test database");
        let base = admin_url
            .rsplit_once('/')
            .map(|(b, _)| b)
            .expect("admin url has a database");
        let mut settings = Settings::load().expect("settings");
        settings.database_url = format!("{base}/{db_name}");
        settings.topic_prefix = format!("t{id}.");
        if let Some(bootstrap) = bootstrap {
            settings.kafka_bootstrap_servers = bootstrap.to_string();
        }
        let pool = backorder_core::db::pool(&settings.database_url, 4).expect("pool");
        backorder_core::db::migrate(&pool).await.expect("migrations");
        let topics = Topics::new(&settings.topic_prefix);
        backorder_core::kafka::admin::create_topics(&settings, &topics.all())
            .await
            .expect("create topics");
        let codec = Codec::new(None).expect("codec");
        let producer = Producer::new(&settings).expect("producer");
        let log_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../target/test-logs")
            .join(&id);
        Self {
            id,
            settings,
            pool,
            codec,
            producer,
            topics,
            moto_url: required("BACKORDER_MOTO_URL"),
            log_dir,
        }
    }

    /// The environment a service process of this test runs with.
    pub fn service_env(&self, service: &str) -> HashMap<String, String> {
        let mut env: HashMap<String, String> = [
            ("KAFKA_BOOTSTRAP_SERVERS", self.settings.kafka_bootstrap_servers.clone()),
            ("DATABASE_URL", self.settings.database_url.clone()),
            ("BACKORDER_TOPIC_PREFIX", self.settings.topic_prefix.clone()),
            ("BACKORDER_GROUP_ID", self.group(service)),
            ("BACKORDER_KAFKA_SESSION_TIMEOUT_MS", "6000".into()),
            ("BACKORDER_BATCH_LINGER_MS", "10".into()),
            ("BACKORDER_LOG_FORMAT", "json".into()),
            ("BACKORDER_CLOCK_CONTROLLED", "true".into()),
            ("BACKORDER_STACK_ENV", "/nonexistent".into()),
            ("BACKORDER_SES_FROM", required("BACKORDER_SES_FROM")),
            ("BACKORDER_SES_MAX_SEND_RATE", "500".into()),
            ("BACKORDER_SENDER_LEASE_MS", "3000".into()),
            ("BACKORDER_SENDER_POLL_MS", "100".into()),
            ("AWS_ENDPOINT_URL_SESV2", required("AWS_ENDPOINT_URL_SESV2")),
            ("AWS_REGION", required("AWS_REGION")),
            ("AWS_ACCESS_KEY_ID", required("AWS_ACCESS_KEY_ID")),
            ("AWS_SECRET_ACCESS_KEY", required("AWS_SECRET_ACCESS_KEY")),
            ("RUST_LOG", "info".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        env.insert("BACKORDER_TEST_ID".into(), self.id.clone());
        env.insert("BACKORDER_POLICY_FILE".into(), self.write_policy("default", ""));
        env
    }

    /// The consumer group `service` uses in this test.
    pub fn group(&self, service: &str) -> String {
        format!("{}{service}", self.settings.topic_prefix)
    }

    /// Starts a service process and waits until it is ready.
    pub async fn start_service(&self, name: &str) -> ServiceProcess {
        self.start_service_with(name, &[]).await
    }

    /// Like [`start_service`] with extra environment.
    pub async fn start_service_with(&self, name: &str, extra: &[(&str, &str)]) -> ServiceProcess {
        let mut env = self.service_env(name);
        for (k, v) in extra {
            env.insert((*k).to_string(), (*v).to_string());
        }
        let mut process = ServiceProcess::start(name, &env, &self.log_dir);
        process.wait_ready().await;
        process
    }

    /// Writes a policy file (`BACKORDER_POLICY_FILE`) for this test's
    /// services and returns its path. Unless `toml` names them, quiet
    /// hours are off and an arrival's surplus does not settle: the real
    /// time of day (the controlled clock starts at it) must not decide
    /// whether a marketing email goes at once, and tests of carts should
    /// not all wait out a settle time. Tests of those features name the
    /// sections.
    pub fn write_policy(&self, name: &str, toml: &str) -> String {
        std::fs::create_dir_all(&self.log_dir).expect("log dir");
        let path = self.log_dir.join(format!("{name}.policy.toml"));
        let mut text = toml.to_string();
        if !toml.contains("[quiet_hours") {
            text.push_str("\n[quiet_hours]\nstart_hour = 0\nend_hour = 0\n");
        }
        if !toml.contains("[stock]") {
            text.push_str("\n[stock]\narrival_settle_seconds = 0.0\n");
        }
        std::fs::write(&path, text).expect("write policy file");
        path.to_string_lossy().into_owned()
    }

    /// Runs `service` with this test's environment plus `extra` until it
    /// exits by itself (a refusal to start): whether it succeeded, and its
    /// log.
    pub async fn run_to_exit(&self, service: &str, extra: &[(&str, String)]) -> (bool, String) {
        let mut env = self.service_env(service);
        for (k, v) in extra {
            env.insert((*k).to_string(), v.clone());
        }
        let binary = crate::process::binary(service);
        let run = tokio::task::spawn_blocking(move || {
            std::process::Command::new(binary)
                .env_clear()
                .envs(env)
                .env("BACKORDER_HTTP_ADDR", "127.0.0.1:0")
                .output()
        });
        let output = tokio::time::timeout(std::time::Duration::from_secs(45), run)
            .await
            .expect("exits by itself")
            .expect("the run finished")
            .expect("the binary started");
        let log = String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr);
        (output.status.success(), log)
    }

    /// A unique address for `who` in this test.
    pub fn recipient(&self, who: &str) -> String {
        format!("{who}+{}@example.com", self.id)
    }

    /// Encodes and publishes `record` to `base_topic` (with this test's
    /// prefix), waiting for the broker's acknowledgement.
    pub async fn publish<T: AvroRecord>(&self, base_topic: &str, record: &T) {
        let out = OutboundRecord::encode(&self.codec, &self.topics.name(base_topic), record)
            .await
            .expect("encode");
        self.producer.send_all(&[out]).await.expect("publish");
    }

    /// Publishes `records` to `base_topic` in one go (the producer batches
    /// them per partition), waiting for every acknowledgement.
    pub async fn publish_all<T: AvroRecord>(&self, base_topic: &str, records: &[T]) {
        let refs: Vec<&T> = records.iter().collect();
        let out = OutboundRecord::encode_all(&self.codec, &self.topics.name(base_topic), &refs)
            .await
            .expect("encode");
        self.producer.send_all(&out).await.expect("publish");
    }

    /// Publishes raw bytes (for garbage tests).
    pub async fn publish_raw(&self, base_topic: &str, key: &str, payload: &[u8]) {
        let out = OutboundRecord {
            topic: self.topics.name(base_topic),
            key: key.to_string(),
            payload: payload.to_vec(),
            headers: vec![],
        };
        self.producer.send_all(&[out]).await.expect("publish raw");
    }

    /// What the SES endpoint received for `recipient`.
    pub async fn emails_to(&self, recipient: &str) -> Vec<SentEmail> {
        moto::sent_to(&self.moto_url, recipient).await
    }

    /// Rows in the sender's ledger, by state.
    pub async fn ledger_states(&self) -> HashMap<String, i64> {
        let client = self.pool.get().await.expect("db");
        client
            .query("SELECT state, count(*) FROM email_ledger GROUP BY state", &[])
            .await
            .expect("ledger query")
            .into_iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    }

    /// The sum over partitions of `service`'s committed offsets on
    /// `base_topic`. Topics are new per test and start at offset 0, so this
    /// is how many messages the group has durably consumed: compare it with
    /// how many the test published. (High watermarks are not used: the
    /// local Tansu build reports them per record batch, not per record.)
    pub async fn committed_total(&self, service: &str, base_topic: &str) -> i64 {
        self.committed_by_partition(service, base_topic)
            .await
            .iter()
            .map(|(_, committed)| committed.unwrap_or(0))
            .sum()
    }

    /// Like [`committed_total`], `None` while the broker cannot answer.
    pub async fn try_committed_total(&self, service: &str, base_topic: &str) -> Option<i64> {
        let offsets =
            try_committed_by_partition_of(&self.settings, &self.group(service), &self.topics.name(base_topic)).await?;
        Some(offsets.iter().map(|(_, committed)| committed.unwrap_or(0)).sum())
    }

    /// Per partition: (partition, committed offset if any).
    pub async fn committed_by_partition(&self, service: &str, base_topic: &str) -> Vec<(i32, Option<i64>)> {
        committed_by_partition_of(&self.settings, &self.group(service), &self.topics.name(base_topic)).await
    }

    /// Every record on `base_topic`'s dead-letter topic: (payload, headers).
    pub async fn dead_letters(&self, base_topic: &str, expected: usize) -> Vec<(Vec<u8>, HashMap<String, String>)> {
        let topic = Topics::dead_letter_of(&self.topics.name(base_topic));
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.settings.kafka_bootstrap_servers)
            .set(
                "group.id",
                format!("{}dlq-reader-{}", self.settings.topic_prefix, uuid::Uuid::new_v4()),
            )
            .set("enable.auto.commit", "false")
            .create()
            .expect("dlq reader");
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(&topic, 0, Offset::Beginning)
            .expect("partition");
        consumer.assign(&list).expect("assign");
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while out.len() < expected {
            let message = tokio::time::timeout_at(deadline, consumer.recv())
                .await
                .unwrap_or_else(|_| panic!("only {} of {expected} dead letters on {topic}", out.len()))
                .expect("dlq message");
            let headers = message
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| {
                            (
                                h.key.to_string(),
                                String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.push((message.payload().unwrap_or_default().to_vec(), headers));
        }
        out
    }
}

/// `group`'s committed offsets on the full `topic` name, per partition:
/// (partition, committed offset if any).
pub async fn committed_by_partition_of(settings: &Settings, group: &str, topic: &str) -> Vec<(i32, Option<i64>)> {
    try_committed_by_partition_of(settings, group, topic)
        .await
        .expect("committed offsets")
}

/// Like [`committed_by_partition_of`], `None` while the broker cannot
/// answer (a test that restarts it waits that out).
pub async fn try_committed_by_partition_of(
    settings: &Settings,
    group: &str,
    topic: &str,
) -> Option<Vec<(i32, Option<i64>)>> {
    let topic = topic.to_string();
    let group = group.to_string();
    let bootstrap = settings.kafka_bootstrap_servers.clone();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .create()
            .ok()?;
        let metadata = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10)).ok()?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        let mut list = TopicPartitionList::new();
        for p in &partitions {
            list.add_partition(&topic, *p);
        }
        let committed = consumer.committed_offsets(list, Duration::from_secs(10)).ok()?;
        let offsets = partitions
            .iter()
            .map(|p| {
                let committed = match committed.find_partition(&topic, *p).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) => Some(o),
                    _ => None,
                };
                (*p, committed)
            })
            .collect();
        Some(offsets)
    })
    .await
    .ok()
    .flatten()
}

/// The sum of [`committed_by_partition_of`]: how many messages of a topic
/// created empty `group` has durably consumed.
pub async fn committed_total_of(settings: &Settings, group: &str, topic: &str) -> i64 {
    committed_by_partition_of(settings, group, topic)
        .await
        .iter()
        .map(|(_, committed)| committed.unwrap_or(0))
        .sum()
}

/// An `OrderPlaced` for `recipient` with one line per `(sku, availability)`.
pub fn order_placed(order_id: &str, recipient: &str, locale: &str, lines: &[(&str, Availability)]) -> OrderPlaced {
    OrderPlaced {
        event_id: uuid::Uuid::new_v4().to_string(),
        occurred_at: Utc::now(),
        order_id: order_id.to_string(),
        customer: Customer {
            customer_id: format!("cust-{order_id}"),
            email: recipient.to_string(),
            name: "Ada Lovelace".to_string(),
            locale: locale.to_string(),
            country: Some("GB".to_string()),
        },
        lines: lines
            .iter()
            .enumerate()
            .map(|(i, (sku, availability))| OrderLine {
                line_id: format!("l{}", i + 1),
                sku: (*sku).to_string(),
                product_name: format!("Product {sku}"),
                category: Some("home".to_string()),
                quantity: 1,
                unit_price_minor: 2500,
                availability: *availability,
            })
            .collect(),
        currency: "EUR".to_string(),
        total_minor: 2500 * lines.len() as i64,
    }
}
