//! PostgreSQL: the connection pool and the versioned migrations.

use std::str::FromStr;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// A key for `pg_advisory_lock`, so that replicas starting together apply
/// migrations one at a time instead of racing.
const MIGRATION_LOCK_KEY: i64 = 0x6261_636b_6f72_6472; // "backordr"

/// Database failures, with what we were doing.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("DATABASE_URL is not a valid PostgreSQL connection string: {0}")]
    BadUrl(#[source] tokio_postgres::Error),
    #[error("could not build the connection pool: {0}")]
    Pool(#[from] deadpool_postgres::BuildError),
    #[error("could not get a database connection: {0}")]
    Connect(#[from] deadpool_postgres::PoolError),
    #[error("database query failed: {}", describe(.0))]
    Query(#[from] tokio_postgres::Error),
    #[error("migration failed: {0}")]
    Migration(#[from] refinery::Error),
}

/// A client or transaction the shared SQL helpers run on, and how they
/// prepare their statements: from the connection's statement cache when
/// it comes from the pool (`deadpool_postgres` types: one round trip per
/// statement once the connection has seen it), or afresh for a plain
/// `tokio_postgres` client or transaction (parse, then execute), as before.
/// Hot paths pass the pool's transaction to get the cache.
pub trait Statements: Sync {
    /// What the prepared statements run on.
    type Client: tokio_postgres::GenericClient + Sync;

    fn client(&self) -> &Self::Client;

    fn prepared(
        &self,
        query: &str,
    ) -> impl std::future::Future<Output = Result<tokio_postgres::Statement, tokio_postgres::Error>> + Send;
}

impl<'a> Statements for deadpool_postgres::Transaction<'a> {
    type Client = tokio_postgres::Transaction<'a>;

    fn client(&self) -> &Self::Client {
        self
    }

    fn prepared(
        &self,
        query: &str,
    ) -> impl std::future::Future<Output = Result<tokio_postgres::Statement, tokio_postgres::Error>> + Send {
        self.prepare_cached(query)
    }
}

impl Statements for deadpool_postgres::Object {
    type Client = tokio_postgres::Client;

    fn client(&self) -> &Self::Client {
        self
    }

    fn prepared(
        &self,
        query: &str,
    ) -> impl std::future::Future<Output = Result<tokio_postgres::Statement, tokio_postgres::Error>> + Send {
        self.prepare_cached(query)
    }
}

impl<'a> Statements for tokio_postgres::Transaction<'a> {
    type Client = Self;

    fn client(&self) -> &Self::Client {
        self
    }

    fn prepared(
        &self,
        query: &str,
    ) -> impl std::future::Future<Output = Result<tokio_postgres::Statement, tokio_postgres::Error>> + Send {
        self.prepare(query)
    }
}

impl Statements for tokio_postgres::Client {
    type Client = Self;

    fn client(&self) -> &Self::Client {
        self
    }

    fn prepared(
        &self,
        query: &str,
    ) -> impl std::future::Future<Output = Result<tokio_postgres::Statement, tokio_postgres::Error>> + Send {
        self.prepare(query)
    }
}

/// Builds a pool of at most `size` connections. Connections are opened
/// lazily, so building succeeds while the database is down.
pub fn pool(database_url: &str, size: usize) -> Result<Pool, DbError> {
    let config = tokio_postgres::Config::from_str(database_url).map_err(DbError::BadUrl)?;
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Ok(Pool::builder(manager).max_size(size).build()?)
}

/// Applies pending migrations under an advisory lock; returns how many ran.
pub async fn migrate(pool: &Pool) -> Result<usize, DbError> {
    migrate_to(pool, None).await
}

/// Like [`migrate`], up to and including `version` when given (tests use
/// it to build a database whose schema is behind the code).
pub async fn migrate_to(pool: &Pool, version: Option<u32>) -> Result<usize, DbError> {
    let mut object = pool.get().await?;
    let client: &mut tokio_postgres::Client = &mut object;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await?;
    let mut runner = embedded::migrations::runner();
    if let Some(version) = version {
        runner = runner.set_target(refinery::Target::Version(version));
    }
    let report = runner.run_async(client).await.map_err(DbError::from);
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK_KEY])
        .await?;
    Ok(report?.applied_migrations().len())
}

/// What a database failure means for whoever hit it. The one place where
/// PostgreSQL errors are classified; everything else asks [`classify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Worth retrying as is: the connection or server is unavailable, a
    /// read-only server after a failover (25006), a lock timeout (55P03),
    /// a serialization failure or deadlock (40001, 40P01).
    Transient,
    /// The database schema is behind this build (a missing table 42P01 or
    /// column 42703): no event is at fault, so nothing may be
    /// dead-lettered; the service holds its work and reports not ready
    /// until the migrations are applied.
    SchemaBehind,
    /// A statement the data breaks (a constraint, a bad value): retrying
    /// will not help.
    Permanent,
}

/// Classifies `error` (see [`ErrorClass`]).
pub fn classify(error: &DbError) -> ErrorClass {
    match error {
        DbError::Connect(deadpool_postgres::PoolError::Backend(e)) => classify_pg(e),
        DbError::Connect(_) => ErrorClass::Transient,
        DbError::Query(e) => classify_pg(e),
        DbError::BadUrl(_) | DbError::Pool(_) | DbError::Migration(_) => ErrorClass::Permanent,
    }
}

/// Classifies a tokio-postgres error by its SQLSTATE, or, without one, by
/// whether an I/O failure (a lost or refused connection) caused it; other
/// errors without a code (a value that does not convert) are permanent,
/// so they are not retried forever.
pub fn classify_pg(error: &tokio_postgres::Error) -> ErrorClass {
    if error.is_closed() {
        return ErrorClass::Transient;
    }
    let Some(code) = error.code() else {
        let mut source = std::error::Error::source(error);
        while let Some(cause) = source {
            if cause.is::<std::io::Error>() {
                return ErrorClass::Transient;
            }
            source = cause.source();
        }
        // tokio-postgres reports a connection that could not be set up or
        // timed out without an io::Error in the chain.
        let text = error.to_string();
        return if text.contains("connection") || text.contains("timeout") {
            ErrorClass::Transient
        } else {
            ErrorClass::Permanent
        };
    };
    match code.code() {
        // read_only_sql_transaction, lock_not_available,
        // serialization_failure, deadlock_detected
        "25006" | "55P03" | "40001" | "40P01" => ErrorClass::Transient,
        // undefined_table, undefined_column
        "42P01" | "42703" => ErrorClass::SchemaBehind,
        // 08: connection exception, 53: insufficient resources,
        // 57: operator intervention (shutdown, cancel), 58: system error.
        other => match &other[..2] {
            "08" | "53" | "57" | "58" => ErrorClass::Transient,
            _ => ErrorClass::Permanent,
        },
    }
}

/// True when the error is worth retrying as is (see [`classify`]).
pub fn is_transient(error: &DbError) -> bool {
    classify(error) == ErrorClass::Transient
}

/// The migrations this build embeds that the database has not applied,
/// as `V<version>__<name>`; empty when the schema is current. A database
/// without the history table has applied none.
pub async fn missing_migrations(pool: &Pool) -> Result<Vec<String>, DbError> {
    let client = pool.get().await?;
    let applied: Vec<i32> = match client.query("SELECT version FROM refinery_schema_history", &[]).await {
        Ok(rows) => rows.iter().map(|r| r.try_get::<_, i32>(0)).collect::<Result<_, _>>()?,
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    let runner = embedded::migrations::runner();
    Ok(runner
        .get_migrations()
        .iter()
        .filter(|m| !applied.iter().any(|v| i64::from(*v) == i64::from(m.version())))
        .map(|m| format!("V{}__{}", m.version(), m.name()))
        .collect())
}

/// tokio-postgres prints only "db error"; say what the server said.
pub fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => {
            let mut text = format!("{} ({})", db.message(), db.code().code());
            if let Some(detail) = db.detail() {
                text.push_str(": ");
                text.push_str(detail);
            }
            text
        }
        None => error.to_string(),
    }
}
