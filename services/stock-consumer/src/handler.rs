//! Applies a batch of `stock.v1` events in partition order: catalog and
//! ETA changes in one transaction with everything up to the next arrival,
//! then that arrival's allocation (in its own short transactions), then on.

use backorder_core::clock::Clock;
use backorder_core::deadpool_postgres::Pool;
use backorder_core::events::stock::StockEvent;
use backorder_core::kafka::{Handler, HandlerError, Incoming, OutboundRecord};
use backorder_core::service::Service;
use chrono::Duration;

use crate::allocation::{self, Allocator};
use crate::error::StockError;
use crate::{catalog, delays};

/// The stock.v1 handler.
pub struct StockHandler {
    pool: Pool,
    clock: Clock,
    allocator: Allocator,
    /// How long an ETA change waits for further changes of its SKU (policy).
    debounce: Duration,
}

impl StockHandler {
    pub fn new(service: &Service) -> Self {
        Self {
            pool: service.pool.clone(),
            clock: service.clock.clone(),
            allocator: Allocator::new(service),
            debounce: service.policy.delays.debounce(),
        }
    }

    async fn apply(&self, batch: &[Incoming<StockEvent>]) -> Result<(), StockError> {
        let now = self.clock.now().await?;
        let mut client = self.pool.get().await?;
        let mut rest = batch;
        while !rest.is_empty() {
            let tx = client.transaction().await?;
            let mut arrival = None;
            let mut applied = 0;
            for incoming in rest {
                applied += 1;
                match &incoming.event {
                    StockEvent::ProductUpserted(product) => {
                        let changed = catalog::upsert(&tx, product, now).await?;
                        tracing::info!(sku = %product.sku, changed, "product upserted");
                    }
                    StockEvent::SupplierEtaChanged(change) => {
                        delays::apply_change(&tx, change, now, self.debounce).await?;
                    }
                    StockEvent::StockArrival(stock) => {
                        let new = allocation::register(&tx, stock, now).await?;
                        tracing::info!(arrival_id = %stock.arrival_id, sku = %stock.sku, quantity = stock.quantity, new, "stock arrived");
                        arrival = Some(stock.arrival_id.as_str());
                        break;
                    }
                }
            }
            tx.commit().await?;
            rest = &rest[applied..];
            // A replayed arrival allocates nothing more; it only produces
            // emails whose acknowledgement was never recorded.
            if let Some(arrival_id) = arrival {
                self.allocator.run(arrival_id, now).await?;
            }
        }
        Ok(())
    }
}

impl Handler for StockHandler {
    type Event = StockEvent;

    /// Arrival emails are produced (and acknowledged) inside, page by page,
    /// before this returns, so the runtime still commits the offset only
    /// after every output is durable.
    async fn handle(&self, batch: &[Incoming<StockEvent>]) -> Result<Vec<OutboundRecord>, HandlerError> {
        self.apply(batch).await.map_err(HandlerError::from)?;
        Ok(Vec::new())
    }
}
