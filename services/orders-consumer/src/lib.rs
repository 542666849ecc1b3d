//! orders-consumer: turns `orders.v1` into stored orders, customers and
//! carts, and decides the emails an order triggers.
//!
//! - [`handler`]: applies a batch of order events in one transaction.
//! - [`store`]: the SQL that records orders, lines, customers and carts.
//! - [`confirmation`]: decides the order confirmation (PLAYBOOK email 1).

pub mod confirmation;
pub mod handler;
pub mod store;

use backorder_core::kafka::topics;
use backorder_core::service::{Service, ServiceError};

/// Starts the HTTP endpoints and the consumer loop.
pub async fn start(service: &Service) -> Result<(), ServiceError> {
    service.serve_http(axum::Router::new()).await?;
    let handler = handler::OrdersHandler::new(service);
    service.consume(topics::ORDERS, handler);
    Ok(())
}
