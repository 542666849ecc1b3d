//! Layered configuration: built-in defaults, then an optional TOML file,
//! then `.stack/env` (the local stack's connection settings), then the
//! process environment, which always wins.
//!
//! Names follow the ecosystem where one exists (`KAFKA_BOOTSTRAP_SERVERS`,
//! `DATABASE_URL`, `SCHEMA_REGISTRY_URL`, the AWS SDK's own chain for SES);
//! the project's own settings are `BACKORDER_*`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::{Dict, Value};
use serde::{Deserialize, Serialize};

use crate::codec::FingerprintForm;

/// Where configuration could not be assembled, with the setting at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid configuration: {0}")]
    Invalid(#[from] Box<figment::Error>),
    #[error("{name}: {reason}")]
    Setting { name: &'static str, reason: String },
    #[error("could not read the local stack file {path}: {source}")]
    StackFile {
        path: PathBuf,
        #[source]
        source: dotenvy::Error,
    },
}

/// Every setting a service, the CLI or a test needs. One struct for all
/// binaries so that a deployment sets the same variables everywhere.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    /// `KAFKA_BOOTSTRAP_SERVERS`: comma-separated host:port list.
    pub kafka_bootstrap_servers: String,
    /// `DATABASE_URL`: the PostgreSQL connection string.
    pub database_url: String,
    /// `SCHEMA_REGISTRY_URL`: when set, events are written with Confluent
    /// framing and ids resolved through the registry; otherwise Avro
    /// single-object encoding. Decoders always accept both.
    pub schema_registry_url: Option<String>,
    /// `BACKORDER_AVRO_FINGERPRINT`: the schema fingerprint single-object
    /// encoding writes. `specification` (default): the specification's, as
    /// the Java reference implementation and fastavro compute it, so JVM
    /// consumers decode our records; `apache-avro`: the form apache-avro
    /// (Rust) and Apache's Python `avro` compute, for consumers built on
    /// those. Decoders accept both (docs/producers.md).
    pub avro_fingerprint: FingerprintForm,
    /// `BACKORDER_TOPIC_PREFIX`: prepended to every topic name, so several
    /// environments (or tests) can share one cluster.
    pub topic_prefix: String,
    /// `BACKORDER_GROUP_ID`: consumer group; defaults to the service name.
    pub group_id: Option<String>,
    /// `BACKORDER_HTTP_ADDR`: where `/healthz`, `/readyz` and `/metrics` listen.
    /// Port 0 picks a free port (logged at start).
    pub http_addr: SocketAddr,
    /// `BACKORDER_LOG_FORMAT`: `json` in production, `pretty` locally.
    pub log_format: LogFormat,
    /// `BACKORDER_RUN_MIGRATIONS`: apply pending migrations at start.
    pub run_migrations: bool,
    /// `BACKORDER_CLOCK_CONTROLLED`: read "now" from the shared, movable clock
    /// in PostgreSQL (local stack, demo, tests). Off in production.
    pub clock_controlled: bool,
    /// `BACKORDER_KAFKA_SESSION_TIMEOUT_MS`: short in tests so a killed
    /// consumer's partitions move quickly.
    pub kafka_session_timeout_ms: u32,
    /// `BACKORDER_KAFKA_MESSAGE_MAX_BYTES`: the largest record this service
    /// produces (librdkafka's `message.max.bytes`). Keep it at or below the
    /// brokers' `message.max.bytes` and the topics' `max.message.bytes`: a
    /// larger output is then refused here, at once, and its input event is
    /// dead-lettered instead of being retried for ever.
    pub kafka_message_max_bytes: u32,
    /// `BACKORDER_BATCH_MAX_MESSAGES`: most messages handled in one transaction.
    pub batch_max_messages: usize,
    /// `BACKORDER_BATCH_LINGER_MS`: how long to wait to fill a batch once the
    /// first message of it arrived.
    pub batch_linger_ms: u64,
    /// `BACKORDER_DB_POOL_SIZE`: connections per process.
    pub db_pool_size: usize,
    /// `BACKORDER_SES_FROM`: verified sender identity.
    pub ses_from: String,
    /// `BACKORDER_SUPPORT_EMAIL`: reply-to address and the support contact
    /// shown in every email.
    pub support_email: String,
    /// `BACKORDER_SHOP_NAME`: how the shop signs its emails.
    pub shop_name: String,
    /// `BACKORDER_SES_CONFIGURATION_SET`: optional SES configuration set.
    pub ses_configuration_set: Option<String>,
    /// `BACKORDER_SES_MAX_SEND_RATE`: recipients per second used when SES
    /// does not answer `GetAccount` (the local emulator does not).
    pub ses_fallback_send_rate: f64,
    /// `BACKORDER_SENDER_WORKERS`: the least number of concurrent SES calls
    /// per sender replica; more are used when the send rate needs them.
    pub sender_workers: usize,
    /// `BACKORDER_SENDER_LEASE_MS`: how long a claimed ledger row belongs to
    /// the replica that claimed it. Longer than the SES call timeout, so a
    /// live sender never loses a row mid-call; a dead one's rows come back
    /// after it.
    pub sender_lease_ms: u64,
    /// `BACKORDER_SENDER_GIVE_UP_AFTER_SECS`: how old (since it was
    /// requested, on the injectable clock) an email may get while its
    /// sends keep failing retryably before it is recorded as failed with
    /// its last error. Retries are not counted against a limit: throttling
    /// and pauses can last long and are not the email's fault.
    pub sender_give_up_after_secs: u64,
    /// `BACKORDER_SENDER_RETRY_BASE_MS`, `BACKORDER_SENDER_RETRY_MAX_MS`: the
    /// first retry's delay and the cap of the jittered exponential backoff.
    pub sender_retry_base_ms: u64,
    pub sender_retry_max_ms: u64,
    /// `BACKORDER_SENDER_POLL_MS`: how often idle workers look for due rows
    /// (new rows from this replica's intake wake them at once).
    pub sender_poll_ms: u64,
    /// `BACKORDER_SES_TIMEOUT_MS`: one SES call's time limit.
    pub ses_timeout_ms: u64,
    /// `BACKORDER_SES_SEND_RATE_OVERRIDE`: recipients per second to send at,
    /// instead of `GetAccount`'s MaxSendRate (never above it when known).
    pub ses_send_rate_override: Option<f64>,
    /// `BACKORDER_SES_DAILY_QUOTA`: emails per 24 hours when SES does not
    /// answer `GetAccount`; unset there means no quota is enforced.
    pub ses_daily_quota: Option<u64>,
    /// `BACKORDER_SES_ACCOUNT_REFRESH_SECS`: how often the sender re-reads
    /// `GetAccount` (send rate and daily quota).
    pub ses_account_refresh_secs: u64,
    /// `BACKORDER_UNSUBSCRIBE_SECRET`: HMAC key of one-click unsubscribe
    /// links (at least 16 bytes). Required: the sender refuses to start
    /// without it unless `BACKORDER_CLOCK_CONTROLLED` is on (local stack,
    /// tests), where a fixed local key is used.
    pub unsubscribe_secret: Option<String>,
    /// `BACKORDER_PUBLIC_BASE_URL`: where customers reach the sender's
    /// unsubscribe endpoint; defaults to `http://<BACKORDER_HTTP_ADDR>`.
    /// Must be `https` unless its host is a loopback address.
    pub public_base_url: Option<String>,
    /// `BACKORDER_OFFERS_BASE_URL`: where customers reach the offer and
    /// cancel pages of the offers service. Defaults to
    /// `BACKORDER_PUBLIC_BASE_URL` (one ingress in front of both); the local
    /// stack, which has no ingress, points it at the offers service.
    pub offers_base_url: Option<String>,
    /// `BACKORDER_LINK_SECRET`: HMAC key of the one-click offer and cancel
    /// links. Required unless the controlled clock is on (local stack, tests).
    pub link_secret: Option<String>,
    /// `BACKORDER_SNS_CERT_URL_PREFIX`: when set, SNS signing certificates
    /// are fetched only from URLs starting with it (tests serve one
    /// locally); unset (production) they must be
    /// `https://sns.<region>.amazonaws.com/....pem`.
    pub sns_cert_url_prefix: Option<String>,
    /// `BACKORDER_SNS_TOPIC_ARNS`: comma-separated topics whose SNS
    /// messages the sender accepts (SNS signs every topic's messages, so
    /// without it anyone's topic could feed the suppression list). Unset:
    /// every SNS message is refused (a warning at start).
    pub sns_topic_arns: Option<String>,
    /// `BACKORDER_SENDER_PAUSE_PROBE_MS`: while SES refuses the account's
    /// sends (SendingPaused, AccountSuspended, AccessDenied, ...), how often
    /// one email is sent as a probe; the pause ends when a probe succeeds.
    pub sender_pause_probe_ms: u64,
    /// `BACKORDER_TIMER_POLL_MS`: how often a service looks for due timers.
    pub timer_poll_ms: u64,
    /// `BACKORDER_PARK_MAX_AGE_SECS`: how long (on the injectable clock) an
    /// event may wait, parked, for state from another topic (a shipment for
    /// an order not stored yet) before it goes to the dead-letter topic.
    pub park_max_age_secs: u64,
    /// `BACKORDER_PARK_RETRY_MAX_SECS`: the longest wait between two retries
    /// of a parked event (they start at one second and double); it is also
    /// retried at once when the state it waits for is stored.
    pub park_retry_max_secs: u64,
    /// `BACKORDER_DRAIN_GRACE_MS`: after SIGTERM, how long in-flight work
    /// may take before it is abandoned (uncommitted, so replayed) and the
    /// process exits 0. Below the pod's termination grace period.
    pub drain_grace_ms: u64,
    /// `BACKORDER_TOPIC_REPLICATION_FACTOR`: replicas of every topic that
    /// `backorderctl topics create` creates (3 for a production cluster;
    /// the local single-broker stack sets 1).
    pub topic_replication_factor: i32,
}

/// The link key of the local stack and tests (controlled clock on); never
/// used otherwise.
pub const LOCAL_LINK_SECRET: &str = "local-only-link-secret";

/// Log output shape.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Pretty,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            kafka_bootstrap_servers: "127.0.0.1:9092".into(),
            database_url: "postgres://postgres@127.0.0.1:5432/backorder".into(),
            schema_registry_url: None,
            avro_fingerprint: FingerprintForm::Specification,
            topic_prefix: String::new(),
            group_id: None,
            http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log_format: LogFormat::Json,
            run_migrations: false,
            clock_controlled: false,
            kafka_session_timeout_ms: 10_000,
            kafka_message_max_bytes: 1_000_000,
            batch_max_messages: 500,
            batch_linger_ms: 20,
            db_pool_size: 8,
            ses_from: "orders@shop.example".into(),
            support_email: "support@shop.example".into(),
            shop_name: "Shop".into(),
            ses_configuration_set: None,
            ses_fallback_send_rate: 14.0,
            sender_workers: 4,
            sender_lease_ms: 30_000,
            sender_give_up_after_secs: 72 * 3600,
            sender_retry_base_ms: 1_000,
            sender_retry_max_ms: 300_000,
            sender_poll_ms: 250,
            ses_timeout_ms: 10_000,
            ses_send_rate_override: None,
            ses_daily_quota: None,
            ses_account_refresh_secs: 300,
            unsubscribe_secret: None,
            public_base_url: None,
            offers_base_url: None,
            link_secret: None,
            sns_cert_url_prefix: None,
            sns_topic_arns: None,
            sender_pause_probe_ms: 60_000,
            timer_poll_ms: 500,
            park_max_age_secs: 86_400,
            park_retry_max_secs: 300,
            drain_grace_ms: 8_000,
            topic_replication_factor: 3,
        }
    }
}

/// The environment variables that keep their ecosystem names.
const ECOSYSTEM_NAMES: [(&str, &str); 3] = [
    ("KAFKA_BOOTSTRAP_SERVERS", "kafka_bootstrap_servers"),
    ("DATABASE_URL", "database_url"),
    ("SCHEMA_REGISTRY_URL", "schema_registry_url"),
];

impl Settings {
    /// Loads settings the way every binary does: defaults, `BACKORDER_CONFIG`
    /// (a TOML file) when set, the local stack's `.stack/env` when present,
    /// then the environment.
    pub fn load() -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        if let Ok(path) = std::env::var("BACKORDER_CONFIG") {
            figment = figment.merge(Toml::file(path));
        }
        figment = figment
            .merge(Serialized::defaults(stack_env_layer()?))
            .merge(Env::raw().filter_map(|key| field_for_env_name(key.as_str()).map(Into::into)));
        figment.extract().map_err(|e| ConfigError::Invalid(Box::new(e)))
    }

    /// The signer of one-click links, from `BACKORDER_LINK_SECRET` and
    /// `BACKORDER_OFFERS_BASE_URL` (or `BACKORDER_PUBLIC_BASE_URL`). Without
    /// a secret only the local stack (controlled clock) gets a built-in key;
    /// outside loopback the base URL must be https.
    pub fn link_signer(&self) -> Result<crate::links::LinkSigner, ConfigError> {
        let secret = match (&self.link_secret, self.clock_controlled) {
            (Some(secret), _) if !secret.is_empty() => secret.as_str(),
            (_, true) => LOCAL_LINK_SECRET,
            _ => {
                return Err(ConfigError::Setting {
                    name: "BACKORDER_LINK_SECRET",
                    reason: "must be set (the signing key of offer and cancel links)".into(),
                });
            }
        };
        let base = self
            .offers_base_url
            .clone()
            .or_else(|| self.public_base_url.clone())
            .unwrap_or_else(|| format!("http://{}", self.http_addr));
        check_public_url("BACKORDER_OFFERS_BASE_URL", &base)?;
        crate::links::LinkSigner::new(secret, &base).map_err(|e| ConfigError::Setting {
            name: "BACKORDER_LINK_SECRET",
            reason: e.to_string(),
        })
    }

    /// Every environment variable [`Settings::load`] reads: one per
    /// setting (the ecosystem name or `BACKORDER_<FIELD>`), the aliases,
    /// and the two that locate files. Deployments are checked against it,
    /// because an unknown `BACKORDER_*` name is otherwise silently ignored.
    pub fn env_names() -> Vec<String> {
        let fields = match serde_json::to_value(Settings::default()) {
            Ok(serde_json::Value::Object(fields)) => fields.keys().cloned().collect(),
            _ => Vec::new(),
        };
        let mut names: Vec<String> = fields
            .iter()
            .map(|field| {
                ECOSYSTEM_NAMES.iter().find(|(_, f)| f == field).map_or_else(
                    || format!("BACKORDER_{}", field.to_ascii_uppercase()),
                    |(env, _)| (*env).to_string(),
                )
            })
            .collect();
        names.extend(["BACKORDER_SES_MAX_SEND_RATE", "BACKORDER_CONFIG", "BACKORDER_STACK_ENV"].map(String::from));
        names
    }

    /// The consumer group for `service`, unless overridden.
    pub fn group_id_for(&self, service: &str) -> String {
        self.group_id.clone().unwrap_or_else(|| service.to_string())
    }
}

/// A public link base must be https, except on loopback (local stack, tests).
fn check_public_url(name: &'static str, raw: &str) -> Result<(), ConfigError> {
    let url = url::Url::parse(raw).map_err(|e| ConfigError::Setting {
        name,
        reason: format!("{raw:?} is not a URL: {e}"),
    })?;
    let loopback = match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    if url.scheme() == "https" || (url.scheme() == "http" && loopback) {
        return Ok(());
    }
    Err(ConfigError::Setting {
        name,
        reason: format!("{raw:?} must be an https URL (http only on loopback)"),
    })
}

/// Maps an environment variable name to the settings field it sets, if any.
fn field_for_env_name(name: &str) -> Option<String> {
    if let Some((_, field)) = ECOSYSTEM_NAMES.iter().find(|(env, _)| name.eq_ignore_ascii_case(env)) {
        return Some((*field).to_string());
    }
    let rest = name.strip_prefix("BACKORDER_")?.to_ascii_lowercase();
    Some(match rest.as_str() {
        "ses_max_send_rate" => "ses_fallback_send_rate".to_string(),
        _ => rest,
    })
}

/// Reads `.stack/env` (or the file `BACKORDER_STACK_ENV` names) as a layer
/// below the environment. It is parsed, not loaded into the process
/// environment, so nothing mutates global state in a running program.
/// The working directory and its parents are searched, so binaries and
/// tests started anywhere in the repository find it.
fn stack_env_layer() -> Result<Dict, ConfigError> {
    let mut layer = Dict::new();
    let Some(path) = stack_env_path() else {
        return Ok(layer);
    };
    let entries = dotenvy::from_path_iter(&path).map_err(|source| ConfigError::StackFile {
        path: path.clone(),
        source,
    })?;
    for entry in entries {
        let (key, value) = entry.map_err(|source| ConfigError::StackFile {
            path: path.clone(),
            source,
        })?;
        if let Some(field) = field_for_env_name(&key) {
            let parsed = value.parse::<Value>().unwrap_or(Value::from(value));
            layer.insert(field, parsed);
        }
    }
    Ok(layer)
}

/// Puts `.stack/env`'s values into the process environment, without
/// overriding anything set, for libraries that read the environment
/// themselves (the AWS SDK's credential and endpoint chain). Call it first
/// thing in `main`, before any thread exists.
pub fn load_stack_env_into_process() -> Result<(), ConfigError> {
    if let Some(path) = stack_env_path() {
        dotenvy::from_path(&path).map_err(|source| ConfigError::StackFile { path, source })?;
    }
    Ok(())
}

/// Reads one `KEY=value` from `.stack/env` for tools that need a value the
/// services do not (the emulator's URL in tests, for example).
pub fn stack_env_value(key: &str) -> Option<String> {
    if let Ok(v) = std::env::var(key) {
        return Some(v);
    }
    let path = stack_env_path()?;
    dotenvy::from_path_iter(path)
        .ok()?
        .filter_map(Result::ok)
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
}

/// `BACKORDER_STACK_ENV`, else `.stack/env` in the working directory or a
/// parent; only if it is a file.
fn stack_env_path() -> Option<PathBuf> {
    let path = match std::env::var_os("BACKORDER_STACK_ENV") {
        Some(p) => Some(PathBuf::from(p)),
        None => std::env::current_dir()
            .ok()
            .and_then(|dir| find_upwards(&dir, Path::new(".stack/env"))),
    };
    path.filter(|p| p.is_file())
}

fn find_upwards(start: &Path, relative: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .map(|dir| dir.join(relative))
        .find(|candidate| candidate.is_file())
}
