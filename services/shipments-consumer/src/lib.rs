//! shipments-consumer: turns `shipments.v1` into the shipped email
//! (PLAYBOOK 3), and, after a delivery, the follow-up (PLAYBOOK 4, three
//! days later) and the win-back email (PLAYBOOK 10, thirty days after a
//! backorder customer's first delivery), plus the delivery metrics.
//!
//! - [`handler`]: applies a batch of shipment events in one transaction.
//! - [`store`]: the SQL of shipments and what the emails need.
//! - [`emails`]: composes the three emails.
//! - [`followups`]: the durable timers of the follow-up and the win-back.
//!
//! Order across topics is not guaranteed (DESIGN invariant 4): a shipment
//! event for an order the orders-consumer has not stored yet (or a delivery
//! of a shipment not stored yet) is *missing* state. The shared runtime
//! parks it (with every later event of the same order behind it) and the
//! partition keeps flowing; it is retried as soon as the orders-consumer
//! stores the order (or this consumer the dispatch), else on a schedule,
//! and dead-lettered with the reason after `BACKORDER_PARK_MAX_AGE_SECS`.

pub mod emails;
pub mod followups;
pub mod handler;
pub mod store;

use backorder_core::kafka::topics;
use backorder_core::service::{Service, ServiceError};

/// Starts the HTTP endpoints, the consumer loop and the timer loop.
pub async fn start(service: &Service) -> Result<(), ServiceError> {
    service.serve_http(axum::Router::new()).await?;
    service.consume(topics::SHIPMENTS, handler::ShipmentsHandler::new(service));
    service.run_timers(followups::FollowupTimers::new(service));
    Ok(())
}
