//! Units released by a cancellation (core's `stock_release`): the
//! `stock-release` timer, due at once and committed with the
//! cancellation, hands the SKU's reserve to the allocator as an arrival of
//! its own (`release:{order}:{line}`), so the next waiting lines are served
//! in order with their arrival notices, or the units become available
//! stock and reach carts when nobody waits. The same code as a supplier
//! arrival: one allocation rule for every unit.
//!
//! The `stock-settle` timer ends a supplier arrival's settle time the same
//! way (`settle:{arrival}`): whatever is still unallocated serves lines
//! placed meanwhile, and the rest becomes available stock for carts.

use backorder_core::kafka::{HandlerError, OutboundRecord};
use backorder_core::service::Service;
use backorder_core::stock_release::{RELEASE_TIMER, release_arrival_id};
use backorder_core::timers::{Timer, TimerHandler};
use backorder_core::tokio_postgres::Transaction;
use chrono::{DateTime, Utc};

use crate::allocation::{Allocator, ArrivalKind, SETTLE_TIMER, settle_arrival_id};
use crate::error::StockError;

/// Fires `stock-release` and `stock-settle` timers.
pub struct ReleaseTimers {
    allocator: Allocator,
}

impl ReleaseTimers {
    pub fn new(service: &Service) -> Self {
        Self {
            allocator: Allocator::new(service),
        }
    }

    async fn release(&self, timer: &Timer, now: DateTime<Utc>) -> Result<(), StockError> {
        let field = |name: &str| timer.payload.get(name).and_then(|v| v.as_str()).map(str::to_string);
        let bad = || StockError::BadTimer { key: timer.key.clone() };
        let sku = field("sku").ok_or_else(bad)?;
        let (arrival_id, kind) = if timer.kind == SETTLE_TIMER {
            (
                settle_arrival_id(&field("arrival_id").ok_or_else(bad)?),
                ArrivalKind::Settle,
            )
        } else {
            let (Some(order_id), Some(line_id)) = (field("order_id"), field("line_id")) else {
                return Err(bad());
            };
            (release_arrival_id(&order_id, &line_id), ArrivalKind::Release)
        };
        // Its own transactions (the allocator commits chunk by chunk and
        // acknowledges its emails): a timer fired again after a crash finds
        // the arrival registered and only finishes it.
        if self.allocator.register_release(&arrival_id, &sku, kind, now).await? {
            tracing::info!(%arrival_id, %sku, kind = kind.as_str(), "the SKU's reserve goes back to the queue");
            self.allocator.run(&arrival_id, now).await?;
        }
        Ok(())
    }
}

impl TimerHandler for ReleaseTimers {
    fn kinds(&self) -> &[&'static str] {
        &[RELEASE_TIMER, SETTLE_TIMER]
    }

    async fn fire(
        &self,
        _tx: &Transaction<'_>,
        timer: &Timer,
        now: DateTime<Utc>,
    ) -> Result<Vec<OutboundRecord>, HandlerError> {
        self.release(timer, now).await?;
        Ok(Vec::new())
    }
}
