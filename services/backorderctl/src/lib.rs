//! `backorderctl`: the operator CLI of the backorder pipeline.
//!
//! `main.rs` only parses the command line and maps [`CtlError`] to an exit
//! code; every command lives in its own module here so that its parsing
//! and formatting can be unit-tested without a broker or a database:
//!
//! - [`migrate`]: apply the database migrations.
//! - [`topics`]: create every topic and dead-letter topic.
//! - [`publish`]: JSON lines in, Avro records on the input topics out.
//! - [`loadgen`]: a seeded, realistic mix of input events, for load tests.
//! - [`clock`]: show or move the controlled clock.
//! - [`emails`]: list the sender's ledger, recipients masked.
//! - [`report`]: compare backorder buyers with the other customers.
//! - [`schema`]: schema fingerprints, and decoding one raw message.
//! - [`dlq`]: list dead letters and re-publish them after a fix.

pub mod clock;
pub mod dlq;
pub mod emails;
pub mod loadgen;
pub mod migrate;
pub mod publish;
pub mod report;
pub mod schema;
pub mod topics;

use std::io::{self, Write};
use std::str::FromStr;
use std::time::Duration;

use backorder_core::codec::CodecError;
use backorder_core::config::{ConfigError, Settings};
use backorder_core::db::{self, DbError};
use backorder_core::deadpool_postgres::Pool;
use backorder_core::kafka::admin::AdminError;
use backorder_core::kafka::producer::ProduceError;
use backorder_core::tokio_postgres::config::Host;
use clap::{Parser, Subcommand};

pub use publish::LineError;

/// Exit code of a failure of infrastructure or configuration (database,
/// broker, schema registry unreachable; settings invalid).
pub const EXIT_FAILURE: u8 = 1;
/// Exit code of bad input: an unreadable or invalid input file (clap uses
/// the same code for a bad command line).
pub const EXIT_BAD_INPUT: u8 = 2;

/// How long to wait for the database to accept a connection.
const DB_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

const AFTER_HELP: &str = "\
Configuration (the environment wins over the local stack's .stack/env, which is
found in the working directory or a parent; BACKORDER_STACK_ENV names another file):
  KAFKA_BOOTSTRAP_SERVERS     brokers, host:port[,host:port]
  DATABASE_URL                PostgreSQL connection string
  SCHEMA_REGISTRY_URL         optional; Confluent framing when set
  BACKORDER_AVRO_FINGERPRINT  specification (default) or apache-avro: the fingerprint written
  BACKORDER_TOPIC_PREFIX      prepended to every topic name
  BACKORDER_CLOCK_CONTROLLED  whether services read the controlled clock
  BACKORDER_KAFKA__<PROPERTY> any librdkafka property, e.g. BACKORDER_KAFKA__SECURITY_PROTOCOL

Exit codes: 0 success; 1 infrastructure or configuration failure (database,
Kafka, schema registry, settings); 2 bad input (command line or input file).";

/// Operator tool for the backorder email pipeline.
#[derive(Debug, Parser)]
#[command(
    name = "backorderctl",
    version,
    about = "Operator tool for the backorder email pipeline",
    long_about = "Operator tool for the backorder email pipeline: applies database \
                  migrations, creates Kafka topics, publishes events from JSON lines, moves \
                  the controlled clock that all services share, shows the email ledger \
                  (recipients masked), prints schema fingerprints and decodes raw messages.",
    after_help = AFTER_HELP
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply pending database migrations and print how many ran.
    ///
    /// Safe to run at any time and from several places at once: migrations
    /// are applied under an advisory lock and each runs once.
    Migrate,
    /// Manage Kafka topics.
    Topics {
        #[command(subcommand)]
        command: topics::TopicsCommand,
    },
    /// Publish events from a JSON-lines file (or stdin) to the input topics.
    #[command(long_about = publish::LONG_ABOUT)]
    Publish(publish::PublishArgs),
    /// Publish a seeded, realistic mix of input events (load tests, `make bench`).
    #[command(long_about = loadgen::LONG_ABOUT)]
    Loadgen(loadgen::LoadgenArgs),
    /// Show or move the controlled clock that all services share.
    Clock {
        #[command(subcommand)]
        command: clock::ClockCommand,
    },
    /// List emails in the sender's ledger, newest first (recipients masked).
    #[command(long_about = emails::LONG_ABOUT)]
    Emails(emails::EmailsArgs),
    /// Reports over the stored orders (`report cohorts`: backorder buyers vs the rest).
    Report {
        #[command(subcommand)]
        command: report::ReportCommand,
    },
    /// Avro schemas (`schema fingerprints`: both fingerprint forms of each).
    Schema {
        #[command(subcommand)]
        command: schema::SchemaCommand,
    },
    /// Decode one raw message (hex or a file) and name its writer schema.
    #[command(long_about = schema::DECODE_ABOUT)]
    Decode(schema::DecodeArgs),
    /// Dead letters: `dlq list TOPIC` shows them (never payloads), `dlq
    /// replay TOPIC` re-publishes them to TOPIC after a fix (`--dry-run`).
    Dlq {
        #[command(subcommand)]
        command: dlq::DlqCommand,
    },
}

/// Everything that can go wrong, worded for the person at the terminal.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("cannot read {input}: {reason}")]
    ReadInput { input: String, reason: String },
    #[error("{}", publish::describe_bad_input(input, errors))]
    BadInput { input: String, errors: Vec<LineError> },
    #[error("database {target}: {}", with_causes(source))]
    Db {
        target: String,
        #[source]
        source: DbError,
    },
    #[error("database {target} did not accept a connection within {} s", DB_CONNECT_TIMEOUT.as_secs())]
    DbTimeout { target: String },
    #[error("{}", with_causes(.0))]
    Topics(#[source] AdminError),
    #[error("could not load the Avro schemas: {}", with_causes(.0))]
    Codec(#[source] CodecError),
    #[error("the message cannot be decoded: {}", with_causes(.0))]
    Undecodable(#[source] CodecError),
    #[error("line {line} ({record_type}): could not encode: {}", with_causes(source))]
    Encode {
        line: usize,
        record_type: &'static str,
        #[source]
        source: CodecError,
    },
    #[error("could not create a Kafka producer for {bootstrap}: {}", with_causes(source))]
    Producer {
        bootstrap: String,
        #[source]
        source: Box<ProduceError>,
    },
    #[error(
        "Kafka at {bootstrap} failed: {}\n{acknowledged} of {total} records were \
         acknowledged before the failure (records of the failed chunk may have been written too); \
         publishing the same input again is safe: the event ids are the same and consumers \
         deduplicate by event id",
        with_causes(source)
    )]
    Publish {
        bootstrap: String,
        acknowledged: usize,
        total: usize,
        #[source]
        source: Box<ProduceError>,
    },
    #[error("Kafka: could not {what}: {}", with_causes(source))]
    Kafka {
        what: String,
        #[source]
        source: backorder_core::rdkafka::error::KafkaError,
    },
    #[error("could not write the output: {0}")]
    Output(#[from] io::Error),
}

impl CtlError {
    /// The process exit code for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::ReadInput { .. } | CtlError::BadInput { .. } | CtlError::Undecodable(_) => EXIT_BAD_INPUT,
            _ => EXIT_FAILURE,
        }
    }

    /// True when stdout was closed by the reader (`backorderctl emails | head`):
    /// not worth an error message.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, CtlError::Output(e) if e.kind() == io::ErrorKind::BrokenPipe)
    }
}

/// Runs one command.
pub async fn run(cli: Cli) -> Result<(), CtlError> {
    let mut out = io::stdout().lock();
    match cli.command {
        Command::Migrate => migrate::run(&Settings::load()?, &mut out).await,
        Command::Topics { command } => topics::run(command, &Settings::load()?, &mut out).await,
        // Reads and validates its input before it loads settings, so bad
        // input is reported as such whatever the environment.
        Command::Publish(args) => publish::run(args, &mut out).await,
        Command::Loadgen(args) => loadgen::run(args, &mut out).await,
        Command::Clock { command } => clock::run(command, &Settings::load()?, &mut out).await,
        Command::Emails(args) => emails::run(args, &Settings::load()?, &mut out).await,
        Command::Report { command } => report::run(command, &Settings::load()?, &mut out).await,
        Command::Schema { command } => schema::run(command, &mut out).await,
        Command::Decode(args) => schema::run_decode(args, &mut out).await,
        Command::Dlq { command } => dlq::run(command, &Settings::load()?, &mut out).await,
    }?;
    out.flush()?;
    Ok(())
}

/// A pool whose database answered: fails fast with a clear message
/// instead of waiting on an unreachable server.
pub(crate) async fn connect(settings: &Settings) -> Result<Pool, CtlError> {
    let target = describe_database(&settings.database_url);
    let pool = db::pool(&settings.database_url, 1).map_err(|source| CtlError::Db {
        target: target.clone(),
        source,
    })?;
    match tokio::time::timeout(DB_CONNECT_TIMEOUT, pool.get()).await {
        Err(_) => Err(CtlError::DbTimeout { target }),
        Ok(Err(e)) => Err(CtlError::Db {
            target,
            source: DbError::Connect(e),
        }),
        Ok(Ok(_connection)) => Ok(pool),
    }
}

/// Runs `sql` once against the configured database and maps every row
/// with `from_row`; any failure is reported with where the database is.
pub(crate) async fn query_rows<T>(
    settings: &Settings,
    sql: &str,
    params: &[&(dyn backorder_core::tokio_postgres::types::ToSql + Sync)],
    from_row: fn(&backorder_core::tokio_postgres::Row) -> Result<T, backorder_core::tokio_postgres::Error>,
) -> Result<Vec<T>, CtlError> {
    let pool = connect(settings).await?;
    let to_db = db_error(settings);
    let client = pool.get().await.map_err(|e| to_db(DbError::Connect(e)))?;
    let rows = client.query(sql, params).await.map_err(|e| to_db(e.into()))?;
    rows.iter()
        .map(from_row)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| to_db(e.into()))
}

/// Prints `rows` as pretty JSON (`json`), else as the table `render` draws,
/// else `empty` when there are none. Returns whether a table was printed,
/// so the caller can add its legend.
pub(crate) fn print_rows<T: serde::Serialize>(
    out: &mut impl Write,
    rows: &[T],
    json: bool,
    empty: &str,
    render: impl FnOnce(&[T]) -> String,
) -> Result<bool, CtlError> {
    if json {
        serde_json::to_writer_pretty(&mut *out, rows).map_err(io::Error::from)?;
        writeln!(out)?;
        return Ok(false);
    }
    if rows.is_empty() {
        writeln!(out, "{empty}")?;
        return Ok(false);
    }
    writeln!(out, "{}", render(rows))?;
    Ok(true)
}

/// Wraps a database failure with where the database is.
pub(crate) fn db_error(settings: &Settings) -> impl Fn(DbError) -> CtlError + '_ {
    move |source| CtlError::Db {
        target: describe_database(&settings.database_url),
        source,
    }
}

/// `host:port/dbname` of a connection string, never its password.
pub fn describe_database(url: &str) -> String {
    let Ok(config) = backorder_core::tokio_postgres::Config::from_str(url) else {
        return "(DATABASE_URL)".to_string();
    };
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(name)) => name.clone(),
        Some(Host::Unix(path)) => path.display().to_string(),
        None => "localhost".to_string(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let dbname = config.get_dbname().unwrap_or("");
    format!("{host}:{port}/{dbname}")
}

/// An error's message followed by those of its causes that it does not
/// already quote ("error connecting to server: Connection refused").
pub fn with_causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        let message = inner.to_string();
        if !message.is_empty() && !text.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        cause = inner.source();
    }
    text
}

/// Prints a line on stderr; a closed stderr is not worth failing for.
pub(crate) fn warn(message: &str) {
    let _ = writeln!(io::stderr(), "warning: {message}");
}

/// Cuts `text` to at most `max` characters, marking the cut with `…`.
pub(crate) fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let kept: String = text.chars().take(max.saturating_sub(1)).collect();
    format!("{kept}…")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn database_description_hides_the_password() {
        let d = describe_database("postgres://app:s3cret@db.internal:6543/backorder");
        assert_eq!(d, "db.internal:6543/backorder");
        assert!(!describe_database("postgres://app:s3cret@db/x").contains("s3cret"));
        assert_eq!(describe_database("not a url at all ="), "(DATABASE_URL)");
    }

    #[test]
    fn causes_are_appended_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] std::io::Error);
        #[derive(Debug, thiserror::Error)]
        #[error("quoting: {0}")]
        struct Quoting(#[source] std::io::Error);
        let refused = || std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused");
        assert_eq!(with_causes(&Outer(refused())), "outer: Connection refused");
        assert_eq!(with_causes(&Quoting(refused())), "quoting: Connection refused");
    }

    #[test]
    fn truncation_counts_characters_not_bytes() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("Größenänderung", 6), "Größe…");
        assert_eq!(truncate("abcdef", 6), "abcdef");
    }

    #[test]
    fn bad_input_exits_2_and_infrastructure_exits_1() {
        let bad = CtlError::BadInput {
            input: "x".into(),
            errors: Vec::new(),
        };
        assert_eq!(bad.exit_code(), EXIT_BAD_INPUT);
        let db = CtlError::DbTimeout { target: "h:1/x".into() };
        assert_eq!(db.exit_code(), EXIT_FAILURE);
    }
}
