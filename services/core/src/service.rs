//! What every service binary does around its business logic: load
//! settings, install logs and metrics, connect, serve the operational
//! endpoints, run its loops, and drain on SIGTERM.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use deadpool_postgres::Pool;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::clock::Clock;
use crate::codec::{Codec, CodecError};
use crate::config::{ConfigError, Settings};
use crate::db::{self, DbError};
use crate::kafka::parking::ParkingLot;
use crate::kafka::producer::ProduceError;
use crate::kafka::runtime::RuntimeOptions;
use crate::kafka::{self, Handler, Producer, Topics};
use crate::lifecycle::Lifecycle;
use crate::telemetry::{self, TelemetryError};

/// How often a service whose database schema is behind re-checks it, and
/// how often it says so in the log.
const SCHEMA_CHECK_EVERY: Duration = Duration::from_millis(500);
const SCHEMA_LOG_EVERY: Duration = Duration::from_secs(30);

/// Start-up and run failures of a service.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    #[error(transparent)]
    Telemetry(#[from] TelemetryError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error(transparent)]
    Producer(#[from] ProduceError),
    #[error("could not serve HTTP on {addr}: {source}")]
    Http {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("could not install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    #[error("a task of {service} failed; see the log above")]
    TaskFailed { service: &'static str },
    #[error("could not start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("{service} could not start: {reason}")]
    Start { service: &'static str, reason: String },
}

/// The whole `main` of a service: reads `.stack/env` into the environment
/// while the process is still single-threaded, starts the runtime, runs
/// `start` (which spawns the service's loops) and waits for shutdown.
pub fn run_service<S, Fut, E>(name: &'static str, start: S) -> Result<(), ServiceError>
where
    S: FnOnce(Service) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    crate::config::load_stack_env_into_process()?;
    let runtime = tokio::runtime::Runtime::new().map_err(ServiceError::Runtime)?;
    let result = runtime.block_on(async move {
        let service = Service::init(name).await?;
        if let Err(error) = start(service.clone()).await {
            service.lifecycle.begin_shutdown();
            return Err(ServiceError::Start {
                service: name,
                reason: error.to_string(),
            });
        }
        service.run_until_shutdown().await
    });
    // Dropping the runtime would wait for every blocking task; a lag sample
    // blocked on an unreachable broker must not hold up the exit once the
    // tracked work has drained.
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
    result
}

/// How long the exit waits for untracked background work (samplers).
const RUNTIME_SHUTDOWN: Duration = Duration::from_secs(1);

/// Spawns `task` on `lifecycle`'s tracker. An error or a panic marks the
/// process `failed` and begins shutdown, so a process whose loop died never
/// keeps reporting ready while doing nothing.
fn spawn_tracked<F>(lifecycle: &Lifecycle, failed: &Arc<AtomicBool>, what: &'static str, task: F)
where
    F: std::future::Future<Output = Result<(), String>> + Send + 'static,
{
    use futures::FutureExt;
    let (lifecycle, failed) = (lifecycle.clone(), failed.clone());
    lifecycle.clone().tasks.spawn(async move {
        let error = match std::panic::AssertUnwindSafe(task).catch_unwind().await {
            Ok(Ok(())) => return,
            Ok(Err(error)) => error,
            Err(panic) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a non-string panic payload".to_string());
                format!("panicked: {message}")
            }
        };
        tracing::error!(task = what, %error, "task failed; shutting down");
        failed.store(true, Ordering::SeqCst);
        lifecycle.begin_shutdown();
    });
}

/// A started service: everything its loops share.
#[derive(Clone)]
pub struct Service {
    pub name: &'static str,
    pub settings: Settings,
    /// The business policy (`BACKORDER_POLICY_FILE`), validated at start.
    pub policy: Arc<crate::policy::Policy>,
    pub lifecycle: Lifecycle,
    pub pool: Pool,
    pub codec: Codec,
    pub producer: Producer,
    pub topics: Topics,
    pub clock: Clock,
    metrics: PrometheusHandle,
    /// Set when a loop stopped with an error, so `main` exits non-zero.
    failed: Arc<AtomicBool>,
}

impl Service {
    /// Loads settings and connects. Migrations run here when
    /// `BACKORDER_RUN_MIGRATIONS` is on.
    pub async fn init(name: &'static str) -> Result<Self, ServiceError> {
        let settings = Settings::load()?;
        telemetry::init_tracing(settings.log_format);
        // Before anything connects: a bad policy file stops the start with
        // a message naming the key.
        let policy = Arc::new(crate::policy::Policy::load()?);
        let metrics = telemetry::init_metrics()?;
        let lifecycle = Lifecycle::new();
        lifecycle.listen_for_signals().map_err(ServiceError::Signals)?;
        let pool = db::pool(&settings.database_url, settings.db_pool_size)?;
        if settings.run_migrations {
            let applied = db::migrate(&pool).await?;
            tracing::info!(applied, "migrations applied");
        }
        let codec = Codec::from_settings(&settings)?;
        let producer = Producer::new(&settings)?;
        let topics = Topics::new(&settings.topic_prefix);
        let clock = Clock::from_settings(settings.clock_controlled, &pool);
        Ok(Self {
            name,
            settings,
            policy,
            lifecycle,
            pool,
            codec,
            producer,
            topics,
            clock,
            metrics,
            failed: Arc::default(),
        })
    }

    /// Serves `/healthz`, `/readyz`, `/metrics` and `extra`.
    pub async fn serve_http(&self, extra: Router) -> Result<SocketAddr, ServiceError> {
        let addr = self.settings.http_addr;
        let bound = crate::http::serve(addr, &self.lifecycle, self.metrics.clone(), extra)
            .await
            .map_err(|source| ServiceError::Http { addr, source })?;
        tracing::info!(service = self.name, http = %bound, "operational endpoints up");
        Ok(bound)
    }

    /// Runs the consumer runtime over `base_topic` as a tracked task.
    pub fn consume<H: Handler>(&self, base_topic: &str, handler: H) {
        let topic = self.topics.name(base_topic);
        let config = kafka::consumer_config(&self.settings, &self.settings.group_id_for(self.name));
        let parking = ParkingLot::new(self.pool.clone(), self.clock.clone(), &self.settings);
        let options = RuntimeOptions::from_settings(&self.settings).with_parking(parking);
        // Not tracked: a lag sample blocked on an unreachable broker must
        // not hold up the drain; the sampler ends with the process.
        tokio::spawn(kafka::lag::run_lag_sampler(
            config.clone(),
            topic.clone(),
            kafka::lag::LAG_SAMPLE_INTERVAL,
            self.lifecycle.clone(),
        ));
        let (codec, producer, lifecycle) = (self.codec.clone(), self.producer.clone(), self.lifecycle.clone());
        self.spawn("consumer", async move {
            kafka::run_consumer(config, &topic, handler, codec, producer, options, lifecycle)
                .await
                .map_err(|e| e.to_string())
        });
    }

    /// Runs the durable-timer loop for `handler`'s kinds as a tracked task.
    pub fn run_timers<H: crate::timers::TimerHandler>(&self, handler: H) {
        let (pool, clock, producer, lifecycle) = (
            self.pool.clone(),
            self.clock.clone(),
            self.producer.clone(),
            self.lifecycle.clone(),
        );
        let poll = Duration::from_millis(self.settings.timer_poll_ms.max(10));
        // Not tracked, like the lag sampler: a sample waiting on the
        // database must not hold up the drain.
        tokio::spawn(crate::backlog::run_backlog_sampler(
            self.pool.clone(),
            self.clock.clone(),
            handler.kinds().iter().map(|kind| (*kind).to_string()).collect(),
            crate::backlog::BACKLOG_SAMPLE_INTERVAL,
            self.lifecycle.clone(),
        ));
        self.spawn("timers", async move {
            crate::timers::run_timer_loop(pool, clock, handler, producer, lifecycle, poll)
                .await
                .map_err(|e| e.to_string())
        });
    }

    /// Spawns a tracked task; if it fails or panics, the whole service
    /// shuts down and exits non-zero (infrastructure errors stop the loop;
    /// Kubernetes restarts the pod).
    pub fn spawn<F>(&self, what: &'static str, task: F)
    where
        F: std::future::Future<Output = Result<(), String>> + Send + 'static,
    {
        spawn_tracked(&self.lifecycle, &self.failed, what, task);
    }

    /// Waits until the database has every migration this build embeds
    /// (or shutdown): a service must not report ready, and so receive
    /// traffic, against a schema behind its code. The loops are already
    /// running meanwhile; they hold their work on the missing tables and
    /// dead-letter nothing.
    async fn wait_for_schema(&self) {
        let mut last_log: Option<std::time::Instant> = None;
        loop {
            match db::missing_migrations(&self.pool).await {
                Ok(missing) if missing.is_empty() => return,
                Ok(missing) => {
                    if last_log.is_none_or(|t| t.elapsed() >= SCHEMA_LOG_EVERY) {
                        tracing::error!(
                            service = self.name,
                            ?missing,
                            "the database schema is behind this build: apply the migrations (`backorderctl migrate`); not ready until then"
                        );
                        last_log = Some(std::time::Instant::now());
                    }
                }
                Err(error) => {
                    if last_log.is_none_or(|t| t.elapsed() >= SCHEMA_LOG_EVERY) {
                        tracing::warn!(service = self.name, %error, "could not check the database schema; not ready until it can be checked");
                        last_log = Some(std::time::Instant::now());
                    }
                }
            }
            tokio::select! {
                () = self.lifecycle.shutdown.cancelled() => return,
                () = tokio::time::sleep(SCHEMA_CHECK_EVERY) => {}
            }
        }
    }

    /// Marks the service ready, waits for SIGTERM/SIGINT (or a failed
    /// task), then waits for in-flight work.
    pub async fn run_until_shutdown(self) -> Result<(), ServiceError> {
        self.wait_for_schema().await;
        self.lifecycle.readiness.mark_started();
        tracing::info!(service = self.name, "ready");
        self.lifecycle.shutdown.cancelled().await;
        let grace = Duration::from_millis(self.settings.drain_grace_ms);
        let drained = self.lifecycle.wait_for_tasks(grace).await;
        if self.failed.load(Ordering::SeqCst) {
            return Err(ServiceError::TaskFailed { service: self.name });
        }
        if !drained {
            // Work that could not finish (a dependency is down) is
            // abandoned: nothing of it was committed, so its events are
            // replayed by the next owner. Leaving the tasks behind is safe,
            // and SIGTERM still means a clean exit within the grace period.
            tracing::warn!(
                service = self.name,
                grace_ms = self.settings.drain_grace_ms,
                "in-flight work did not finish within the drain time; abandoned, it will be replayed"
            );
            return Ok(());
        }
        tracing::info!(service = self.name, "stopped cleanly");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_task_marks_the_process_failed_and_begins_shutdown() {
        let (lifecycle, failed) = (Lifecycle::new(), Arc::new(AtomicBool::new(false)));
        lifecycle.readiness.mark_started();
        spawn_tracked(&lifecycle, &failed, "doomed", async {
            let items: Vec<u8> = Vec::new();
            // An out-of-bounds index: a bug that panics at run time.
            let first = items[std::hint::black_box(0)];
            Err(format!("unreachable: {first}"))
        });
        assert!(lifecycle.wait_for_tasks(Duration::from_secs(5)).await);
        assert!(failed.load(Ordering::SeqCst), "the exit status will be non-zero");
        assert!(lifecycle.shutdown.is_cancelled());
        assert!(!lifecycle.readiness.is_ready());
    }
}
