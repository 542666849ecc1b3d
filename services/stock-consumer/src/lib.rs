//! stock-consumer: turns `stock.v1` into the right emails for the right
//! customers and into significant-delay events for segmentation.
//!
//! - [`handler`]: applies a batch of stock events in partition order.
//! - [`catalog`]: `ProductUpserted` -> `products` (segmentation reads it).
//! - [`allocation`]: `StockArrival` -> first-come-first-served allocation
//!   in short chunks, arrival notices (PLAYBOOK 2) and back in stock for
//!   carts (PLAYBOOK 9); the partial-line policy is documented there.
//! - [`delays`]: `SupplierEtaChanged` -> debounced delay notices
//!   (PLAYBOOK 5) and `backorder-delays.v1` events.
//! - [`overdue`]: a promised window that passed without stock or news is
//!   told at once (a significant slip, for segmentation).
//! - [`release`]: units a cancelled line held go back to the queue (or
//!   to available stock and carts) through the allocator.
//! - [`policy`]: thresholds and the comparison of a new window with a promise.
//! - [`emails`]: dedup keys, template data, decision records.

pub mod allocation;
pub mod catalog;
pub mod delays;
pub mod emails;
pub mod error;
pub mod handler;
pub mod overdue;
pub mod policy;
pub mod release;

use backorder_core::kafka::topics;
use backorder_core::service::{Service, ServiceError};

/// Starts the HTTP endpoints, the debounce-timer loop and the consumer loop.
pub async fn start(service: &Service) -> Result<(), ServiceError> {
    let signer = service.settings.link_signer()?;
    service.serve_http(axum::Router::new()).await?;
    service.run_timers(delays::DelayTimers::new(service, signer));
    service.run_timers(overdue::OverdueTimers::new(service));
    service.run_timers(release::ReleaseTimers::new(service));
    service.consume(topics::STOCK, handler::StockHandler::new(service));
    Ok(())
}
