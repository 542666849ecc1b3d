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
    let mut object = pool.get().await?;
    let client: &mut tokio_postgres::Client = &mut object;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await?;
    let report = embedded::migrations::runner()
        .run_async(client)
        .await
        .map_err(DbError::from);
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK_KEY])
        .await?;
    Ok(report?.applied_migrations().len())
}

/// True when the error is worth retrying (connection lost, server shutting
/// down, serialization conflicts) rather than a bug in a statement.
pub fn is_transient(error: &DbError) -> bool {
    match error {
        DbError::Connect(_) => true,
        DbError::Query(e) => {
            e.is_closed()
                || e.code().is_none_or(|code| {
                    let class = &code.code()[..2];
                    // 08: connection exception, 40: transaction rollback
                    // (serialization, deadlock), 53: insufficient resources,
                    // 57: operator intervention (shutdown), 58: system error.
                    matches!(class, "08" | "40" | "53" | "57" | "58")
                })
        }
        DbError::BadUrl(_) | DbError::Pool(_) | DbError::Migration(_) => false,
    }
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
