//! The one error type of segmentation, and how the runtime treats it.

use backorder_core::codec::CodecError;
use backorder_core::db::{self, DbError};
use backorder_core::kafka::HandlerError;

/// Why applying a delay or firing an offer timer failed.
#[derive(Debug, thiserror::Error)]
pub enum SegmentationError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("could not encode an output record: {0}")]
    Codec(#[from] CodecError),
    /// The delayed order is not stored: stock-consumer read it from the
    /// database, so this means the event came from elsewhere or the data was
    /// removed. Dead-lettered with the order id.
    #[error("order {order_id} of delay {event_id} is not stored")]
    UnknownOrder { order_id: String, event_id: String },
    #[error("stored offer {offer_id} is unreadable: {reason}")]
    BadOffer { offer_id: String, reason: String },
}

impl From<backorder_core::tokio_postgres::Error> for SegmentationError {
    fn from(error: backorder_core::tokio_postgres::Error) -> Self {
        SegmentationError::Db(DbError::from(error))
    }
}

impl From<backorder_core::deadpool_postgres::PoolError> for SegmentationError {
    fn from(error: backorder_core::deadpool_postgres::PoolError) -> Self {
        SegmentationError::Db(DbError::from(error))
    }
}

impl From<SegmentationError> for HandlerError {
    /// Connection trouble and registry outages are retried with the
    /// partition held; anything the data breaks is permanent (dead letter).
    fn from(error: SegmentationError) -> Self {
        let transient = match &error {
            SegmentationError::Db(e) => db::is_transient(e),
            SegmentationError::Codec(e) => e.is_transient(),
            SegmentationError::UnknownOrder { .. } | SegmentationError::BadOffer { .. } => false,
        };
        if transient {
            HandlerError::Transient(error.to_string())
        } else {
            HandlerError::Permanent(error.to_string())
        }
    }
}
