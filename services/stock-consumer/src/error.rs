//! The one error type of this crate, and how the runtime should treat it.

use backorder_core::codec::CodecError;
use backorder_core::db::{self, DbError};
use backorder_core::kafka::HandlerError;
use backorder_core::kafka::producer::ProduceError;

/// Why applying stock events or firing a delay timer failed.
#[derive(Debug, thiserror::Error)]
pub enum StockError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("could not encode an output record: {0}")]
    Codec(#[from] CodecError),
    #[error("outputs not acknowledged by the broker: {0}")]
    Produce(#[from] ProduceError),
    #[error("timer {key} carries no sku in its payload")]
    BadTimer { key: String },
    /// Shutdown began between two chunks of an arrival: the work done so
    /// far is committed, the offset is not, and the next owner resumes.
    #[error("shutting down in the middle of arrival {arrival_id}; it resumes on replay")]
    Interrupted { arrival_id: String },
}

impl From<backorder_core::tokio_postgres::Error> for StockError {
    fn from(error: backorder_core::tokio_postgres::Error) -> Self {
        StockError::Db(DbError::from(error))
    }
}

impl From<backorder_core::deadpool_postgres::PoolError> for StockError {
    fn from(error: backorder_core::deadpool_postgres::PoolError) -> Self {
        StockError::Db(DbError::from(error))
    }
}

impl From<StockError> for HandlerError {
    /// Connection trouble, registry outages and unacknowledged outputs are
    /// retried with the partition held; a statement the data breaks is
    /// permanent, so the runtime isolates and dead-letters that event.
    fn from(error: StockError) -> Self {
        let transient = match &error {
            // A schema behind the code is neither: the runtime holds the
            // partition with readiness down and dead-letters nothing.
            StockError::Db(e) if db::classify(e) == db::ErrorClass::SchemaBehind => {
                return HandlerError::SchemaBehind(error.to_string());
            }
            StockError::Db(e) => db::is_transient(e),
            StockError::Codec(e) => e.is_transient(),
            StockError::Produce(_) | StockError::Interrupted { .. } => true,
            StockError::BadTimer { .. } => false,
        };
        if transient {
            HandlerError::Transient(error.to_string())
        } else {
            HandlerError::Permanent(error.to_string())
        }
    }
}
