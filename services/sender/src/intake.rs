//! Intake: `email-requests.v1` into the ledger.
//!
//! The batch is inserted with one multi-row `INSERT ... ON CONFLICT DO
//! NOTHING`: a request whose dedup key is already known (a replay, a
//! duplicate request, a second replica) changes nothing. The runtime
//! commits the offset only after this transaction committed, and sending
//! happens later from the ledger, so a slow SES never holds Kafka.

use std::sync::Arc;

use backorder_core::deadpool_postgres::Pool;
use backorder_core::events::internal::{EmailRequestEvent, EmailRequested};
use backorder_core::kafka::{Handler, HandlerError, Incoming, OutboundRecord};
use backorder_core::service::Service;
use tokio::sync::Notify;

use crate::ledger;

pub struct IntakeHandler {
    pool: Pool,
    /// Wakes the send workers of this replica as soon as rows are queued.
    wake: Arc<Notify>,
}

impl IntakeHandler {
    pub fn new(service: &Service, wake: Arc<Notify>) -> Self {
        Self {
            pool: service.pool.clone(),
            wake,
        }
    }
}

impl Handler for IntakeHandler {
    type Event = EmailRequestEvent;

    async fn handle(&self, batch: &[Incoming<EmailRequestEvent>]) -> Result<Vec<OutboundRecord>, HandlerError> {
        let requests: Vec<&EmailRequested> = batch
            .iter()
            .map(|i| match &i.event {
                EmailRequestEvent::Requested(r) => r,
            })
            .collect();
        // Classified in one place (core's `db::classify`).
        let inserted = ledger::record_requests(&self.pool, &requests)
            .await
            .map_err(HandlerError::from)?;
        metrics::counter!("backorder_sender_requests_total", "outcome" => "queued").increment(inserted);
        metrics::counter!("backorder_sender_requests_total", "outcome" => "duplicate")
            .increment(requests.len() as u64 - inserted);
        if inserted > 0 {
            self.wake.notify_waiters();
        }
        Ok(Vec::new())
    }
}
