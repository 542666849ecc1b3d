//! offers-consumer: consumes offer-responses.v1 (customers' one-click choices).
//!
//! It runs the shared consumer runtime already (decoding, validation,
//! dead letters, offsets, health, metrics, graceful shutdown); the business
//! handler arrives with its issue.

use backorder_core::events::offers::OfferResponseEvent;
use backorder_core::kafka::{AcknowledgeOnly, topics};
use backorder_core::service::{Service, ServiceError};

/// Starts the HTTP endpoints and the consumer loop.
pub async fn start(service: &Service) -> Result<(), ServiceError> {
    service.serve_http(axum::Router::new()).await?;
    service.consume(
        topics::OFFER_RESPONSES,
        AcknowledgeOnly::<OfferResponseEvent>::default(),
    );
    Ok(())
}
