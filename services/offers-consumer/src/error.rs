//! The one error type of offers-consumer, and how the runtime treats it.

use backorder_core::codec::CodecError;
use backorder_core::db::{self, DbError};
use backorder_core::kafka::HandlerError;

use crate::decisions::Rejection;

/// Why applying a response failed.
#[derive(Debug, thiserror::Error)]
pub enum OffersError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("could not encode an output record: {0}")]
    Codec(#[from] CodecError),
    /// The response breaks a rule (forged, expired, second answer...):
    /// dead-lettered with the reason, nothing changed.
    #[error("response {event_id} rejected: {rejection}")]
    Rejected { event_id: String, rejection: Rejection },
    #[error("stored decision {decision_id} is unreadable: {reason}")]
    BadDecision { decision_id: String, reason: String },
}

impl From<backorder_core::tokio_postgres::Error> for OffersError {
    fn from(error: backorder_core::tokio_postgres::Error) -> Self {
        OffersError::Db(DbError::from(error))
    }
}

impl From<backorder_core::deadpool_postgres::PoolError> for OffersError {
    fn from(error: backorder_core::deadpool_postgres::PoolError) -> Self {
        OffersError::Db(DbError::from(error))
    }
}

impl From<OffersError> for HandlerError {
    fn from(error: OffersError) -> Self {
        let transient = match &error {
            OffersError::Db(e) => db::is_transient(e),
            OffersError::Codec(e) => e.is_transient(),
            OffersError::Rejected { .. } | OffersError::BadDecision { .. } => false,
        };
        if transient {
            HandlerError::Transient(error.to_string())
        } else {
            HandlerError::Permanent(error.to_string())
        }
    }
}
