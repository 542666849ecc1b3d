//! One measurement's isolated world on the local stack (its own database
//! and topic prefix, so figures do not disturb one another), and the
//! release service processes that run in it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use backorder_core::config::{Settings, stack_env_value};
use backorder_core::deadpool_postgres::Pool;
use backorder_core::kafka::Topics;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::process::{Child, Command};

/// A database and a topic prefix of their own.
pub struct World {
    /// Names the database (`bench_<label>_<run>`), the topic prefix and the groups.
    pub label: String,
    pub settings: Settings,
    pub pool: Pool,
    pub topics: Topics,
    /// The SES endpoint its services send to: the stack's moto, unless a
    /// measurement that sends gives it a private one.
    pub ses_endpoint: String,
    /// The cluster's admin connection string, to drop the database after.
    admin_url: String,
    db_name: String,
}

/// A value of the local stack's environment (`.stack/env`), or why not.
pub fn stack_value(key: &str) -> Result<String> {
    stack_env_value(key).with_context(|| format!("{key} is not set: start the local stack with `make up`"))
}

impl World {
    /// A new database (migrated) and topics (created) for `label`.
    pub async fn create(base: &Settings, run_id: &str, label: &str) -> Result<Self> {
        let admin_url = stack_value("BACKORDER_PG_ADMIN_URL")?;
        let db_name = format!("bench_{label}_{run_id}");
        admin_execute(&admin_url, &format!("CREATE DATABASE \"{db_name}\"")).await?;
        let server = admin_url
            .rsplit_once('/')
            .map(|(server, _)| server)
            .context("the admin URL names no database")?;
        let mut settings = base.clone();
        settings.database_url = format!("{server}/{db_name}");
        settings.topic_prefix = format!("bench{run_id}.{label}.");
        let pool = backorder_core::db::pool(&settings.database_url, 4)?;
        backorder_core::db::migrate(&pool).await?;
        let topics = Topics::new(&settings.topic_prefix);
        backorder_core::kafka::admin::create_topics(&settings, &topics.all()).await?;
        Ok(Self {
            label: label.to_string(),
            settings,
            pool,
            topics,
            ses_endpoint: stack_value("AWS_ENDPOINT_URL_SESV2")?,
            admin_url,
            db_name,
        })
    }

    /// The consumer group of `service` in this world.
    pub fn group(&self, service: &str) -> String {
        format!("{}{service}", self.settings.topic_prefix)
    }

    /// Drops the database (the topics stay: Tansu keeps them cheaply).
    pub async fn drop_database(self) -> Result<()> {
        self.pool.close();
        admin_execute(
            &self.admin_url,
            &format!("DROP DATABASE \"{}\" WITH (FORCE)", self.db_name),
        )
        .await
    }

    /// Sum over partitions of the group's committed offsets on `base_topic`:
    /// the topics are new, so this is how many messages the group has
    /// durably consumed. (High watermarks are not used: the local Tansu
    /// build reports them per record batch, not per record.)
    pub async fn committed_total(&self, service: &str, base_topic: &str) -> Result<i64> {
        let topic = self.topics.name(base_topic);
        let config = {
            let mut config = ClientConfig::new();
            config
                .set("bootstrap.servers", &self.settings.kafka_bootstrap_servers)
                .set("group.id", self.group(service))
                .set("enable.auto.commit", "false");
            config
        };
        tokio::task::spawn_blocking(move || -> Result<i64> {
            let consumer: BaseConsumer = config.create()?;
            let metadata = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
            let mut list = TopicPartitionList::new();
            for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
                list.add_partition(&topic, partition.id());
            }
            let committed = consumer.committed_offsets(list, Duration::from_secs(10))?;
            Ok(committed
                .elements()
                .iter()
                .map(|e| match e.offset() {
                    Offset::Offset(o) => o,
                    _ => 0,
                })
                .sum())
        })
        .await?
    }

    /// Waits until `service`'s group has committed `expected` messages of
    /// `base_topic`, polling every 50 ms, within `deadline`.
    pub async fn wait_committed(
        &self,
        service: &str,
        base_topic: &str,
        expected: i64,
        deadline: Duration,
    ) -> Result<()> {
        let until = Instant::now() + deadline;
        loop {
            let committed = self.committed_total(service, base_topic).await?;
            if committed >= expected {
                return Ok(());
            }
            if Instant::now() > until {
                bail!(
                    "{service} in {} committed {committed} of {expected} after {} s",
                    self.label,
                    deadline.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The environment a service of this world runs with: the local
    /// stack's endpoints, this world's database, prefix and group.
    fn service_env(&self, service: &str) -> Result<Vec<(String, String)>> {
        let mut env = vec![
            ("KAFKA_BOOTSTRAP_SERVERS", self.settings.kafka_bootstrap_servers.clone()),
            ("DATABASE_URL", self.settings.database_url.clone()),
            ("BACKORDER_TOPIC_PREFIX", self.settings.topic_prefix.clone()),
            ("BACKORDER_GROUP_ID", self.group(service)),
            ("BACKORDER_LOG_FORMAT", "json".into()),
            ("BACKORDER_CLOCK_CONTROLLED", "true".into()),
            // Everything comes from here, nothing from .stack/env.
            ("BACKORDER_STACK_ENV", "/nonexistent".into()),
            ("BACKORDER_SES_FROM", stack_value("BACKORDER_SES_FROM")?),
            ("AWS_ENDPOINT_URL_SESV2", self.ses_endpoint.clone()),
            ("AWS_REGION", stack_value("AWS_REGION")?),
            ("AWS_ACCESS_KEY_ID", stack_value("AWS_ACCESS_KEY_ID")?),
            ("AWS_SECRET_ACCESS_KEY", stack_value("AWS_SECRET_ACCESS_KEY")?),
            // BENCH_LOG: the services' log filter, to look inside a run.
            ("RUST_LOG", std::env::var("BENCH_LOG").unwrap_or_else(|_| "warn".into())),
        ];
        env.retain(|(_, value)| !value.is_empty());
        let mut env: Vec<(String, String)> = env.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        // BENCH_SERVICE_ENV: `KEY=value` pairs (comma-separated) for every
        // service, to compare settings (e.g. BACKORDER_DB_POOL_SIZE=4).
        if let Ok(extra) = std::env::var("BENCH_SERVICE_ENV") {
            env.extend(
                extra
                    .split(',')
                    .filter_map(|pair| pair.split_once('='))
                    .map(|(k, v)| (k.trim().to_string(), v.trim().to_string())),
            );
        }
        Ok(env)
    }

    /// Starts the release build of `service` in this world (plus `extra`
    /// environment) and waits until it answers `/readyz`.
    pub async fn start(
        &self,
        bin_dir: &Path,
        log_dir: &Path,
        service: &str,
        extra: &[(&str, String)],
    ) -> Result<Service> {
        std::fs::create_dir_all(log_dir)?;
        let port = free_port()?;
        let log = log_dir.join(format!("{}-{service}-{port}.log", self.label));
        let file = std::fs::File::create(&log)?;
        let binary = bin_dir.join(service);
        let mut command = Command::new(&binary);
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.service_env(service)?)
            .env("BACKORDER_HTTP_ADDR", format!("127.0.0.1:{port}"))
            .stdout(Stdio::from(file.try_clone()?))
            .stderr(Stdio::from(file))
            .kill_on_drop(true);
        for (key, value) in extra {
            command.env(key, value);
        }
        let child = command
            .spawn()
            .with_context(|| format!("could not start {}", binary.display()))?;
        let mut service = Service {
            name: service.to_string(),
            child,
            port,
            log,
        };
        service.wait_ready().await?;
        Ok(service)
    }
}

async fn admin_execute(admin_url: &str, sql: &str) -> Result<()> {
    let (client, connection) = tokio_postgres::connect(admin_url, tokio_postgres::NoTls).await?;
    let driver = tokio::spawn(connection);
    client.batch_execute(sql).await.with_context(|| sql.to_string())?;
    drop(client);
    let _ = driver.await;
    Ok(())
}

pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// CPU time (user and system) process `pid` has used, in seconds.
pub fn process_cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces: fields are counted after its `)`.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    Ok((ticks(11) + ticks(12)) / clock_ticks())
}

/// Clock ticks per second of /proc times (USER_HZ, 100 on Linux).
fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(100.0)
}

impl World {
    /// CPU seconds used so far by each PostgreSQL backend serving this
    /// world's database (the services' connections), by pid.
    pub async fn backend_cpu(&self) -> Result<std::collections::HashMap<u32, f64>> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
                &[],
            )
            .await?;
        let mut cpu = std::collections::HashMap::new();
        for row in rows {
            let pid: i32 = row.try_get(0)?;
            let pid = u32::try_from(pid)?;
            // A backend may exit between the query and the read.
            if let Ok(seconds) = process_cpu_seconds(pid) {
                cpu.insert(pid, seconds);
            }
        }
        Ok(cpu)
    }
}

/// CPU seconds used so far by the local broker (`.stack/tansu.pid`), if known.
pub fn broker_cpu_seconds() -> Option<f64> {
    process_cpu_seconds(broker_pid()?).ok()
}

/// The local broker's pid, from `make up`'s pid file.
pub fn broker_pid() -> Option<u32> {
    std::fs::read_to_string(".stack/tansu.pid").ok()?.trim().parse().ok()
}

/// Waits until the consumers of one group (`replicas`) own all
/// `partitions` of their topic between them, each at least one: joining a
/// group takes the broker seconds (the coordinator waits for more members
/// before it assigns), which is start-up, not throughput, so the timed
/// part of a measurement starts after it.
pub async fn wait_assigned(replicas: &[&Service], partitions: usize) -> Result<()> {
    const ASSIGNED: &str = "backorder_consumer_assigned_partitions";
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let mut owned = Vec::with_capacity(replicas.len());
        for replica in replicas {
            owned.push(replica.metric(ASSIGNED).await?);
        }
        let total: f64 = owned.iter().sum();
        let each = owned.iter().all(|o| *o >= 1.0) || replicas.len() > partitions;
        if total >= partitions as f64 && each {
            return Ok(());
        }
        if Instant::now() > until {
            bail!("after 60 s the group owns {total} of {partitions} partitions ({owned:?} per replica)");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A running release service.
pub struct Service {
    pub name: String,
    child: Child,
    port: u16,
    /// Where its output goes, named in errors.
    pub log: PathBuf,
}

impl Service {
    async fn wait_ready(&mut self) -> Result<()> {
        let url = format!("http://127.0.0.1:{}/readyz", self.port);
        let client = reqwest::Client::new();
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(response) = client.get(&url).send().await
                && response.status().is_success()
            {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("{} exited ({status}); see {}", self.name, self.log.display());
            }
            if Instant::now() > until {
                bail!("{} not ready after 60 s; see {}", self.name, self.log.display());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The sum of a metric's samples on the service's `/metrics` (0 when
    /// it has none yet).
    pub async fn metric(&self, name: &str) -> Result<f64> {
        let text = reqwest::get(format!("http://127.0.0.1:{}/metrics", self.port))
            .await?
            .text()
            .await?;
        Ok(text
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| {
                let (key, value) = line.rsplit_once(' ')?;
                let metric = key.split('{').next()?;
                if metric == name {
                    value.parse::<f64>().ok()
                } else {
                    None
                }
            })
            .sum())
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// CPU time the process has used so far (user and system), in seconds.
    pub fn cpu_seconds(&self) -> Result<f64> {
        let pid = self.child.id().context("the service has exited")?;
        process_cpu_seconds(pid)
    }

    /// Peak resident memory so far (VmHWM), in MiB.
    pub fn peak_rss_mib(&self) -> Result<f64> {
        let pid = self.child.id().context("the service has exited")?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let kib: f64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|rest| rest.split_whitespace().next())
            .context("no VmHWM in /proc/<pid>/status")?
            .parse()?;
        Ok(kib / 1024.0)
    }

    /// SIGTERM, then waits (at most 15 s) for a clean exit; kills after that.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(pid) = self.child.id() {
            Command::new("kill").arg("-TERM").arg(pid.to_string()).status().await?;
        }
        if tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .is_err()
        {
            self.child.kill().await?;
        }
        Ok(())
    }
}
