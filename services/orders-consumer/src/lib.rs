//! orders-consumer: turns `orders.v1` into stored orders, customers and
//! carts, and decides the emails an order triggers.
//!
//! - [`handler`]: applies a batch of order events in one transaction.
//! - [`store`]: the SQL that records orders, lines, customers and carts.
//! - [`confirmation`]: decides the order confirmation (PLAYBOOK email 1).
//! - [`nurture`]: the nurture cadence of long backorders (PLAYBOOK email 8),
//!   fired by durable timers this service runs.
//!
//! Timer keys of the lifecycle are `backorder_core::timer_keys`.

pub mod confirmation;
pub mod handler;
pub mod nurture;
pub mod store;

use backorder_core::kafka::topics;
use backorder_core::service::{Service, ServiceError};

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Service(#[from] ServiceError),
}

/// Starts the HTTP endpoints, the consumer loop and the nurture timers.
pub async fn start(service: &Service) -> Result<(), StartError> {
    let policy = nurture::NurturePolicy::from_policy(&service.policy.nurture);
    let signer = service.settings.link_signer().map_err(ServiceError::from)?;
    service.serve_http(axum::Router::new()).await?;
    service.consume(
        topics::ORDERS,
        handler::OrdersHandler::new(service, policy, signer.clone()),
    );
    service.run_timers(nurture::NurtureTimers::new(service, policy, signer));
    Ok(())
}
