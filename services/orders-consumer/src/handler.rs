//! Applies a batch of `orders.v1` events in one transaction.

use backorder_core::campaigns::{self, EndReason};
use backorder_core::clock::Clock;
use backorder_core::codec::Codec;
use backorder_core::deadpool_postgres::Pool;
use backorder_core::email_decisions;
use backorder_core::events::orders::{Availability, OrderEvent};
use backorder_core::kafka::{Handler, HandlerError, Incoming, OutboundRecord, parking, topics};
use backorder_core::links::LinkSigner;
use backorder_core::order_lines;
use backorder_core::promises;
use backorder_core::service::Service;
use backorder_core::stock_release;
use backorder_core::timers;

use crate::nurture::NurturePolicy;
use crate::{confirmation, store};
use backorder_core::timer_keys as keys;

/// The orders.v1 handler.
pub struct OrdersHandler {
    pool: Pool,
    codec: Codec,
    clock: Clock,
    nurture: NurturePolicy,
    /// Signs the one-click cancel links of backordered lines.
    signer: LinkSigner,
    /// Days after a promised window before it is overdue (policy).
    overdue_grace_days: i64,
    /// Full name of `email-requests.v1` (with the configured prefix).
    email_requests_topic: String,
}

impl OrdersHandler {
    pub fn new(service: &Service, nurture: NurturePolicy, signer: LinkSigner) -> Self {
        Self {
            signer,
            overdue_grace_days: service.policy.delays.overdue_grace_days,
            pool: service.pool.clone(),
            codec: service.codec.clone(),
            clock: service.clock.clone(),
            nurture,
            email_requests_topic: service.topics.name(topics::EMAIL_REQUESTS),
        }
    }
}

impl Handler for OrdersHandler {
    type Event = OrderEvent;

    async fn handle(&self, batch: &[Incoming<OrderEvent>]) -> Result<Vec<OutboundRecord>, HandlerError> {
        // "Now" of the controlled clock: when decisions are recorded and
        // from when timers count. Replays keep the first decision and timer.
        let now = self.clock.now().await?;
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let mut emails = Vec::new();
        let mut stored_orders = Vec::new();
        for incoming in batch {
            match &incoming.event {
                OrderEvent::Placed(order) => {
                    let has_backorder = order.lines.iter().any(|l| l.availability == Availability::Backordered);
                    let tag = has_backorder.then_some(store::CUSTOMER_TAG_BACKORDER_BUYER);
                    store::upsert_customer(&tx, &order.customer, order.occurred_at, tag).await?;
                    let new = store::insert_order(&tx, order, has_backorder).await?;
                    let skus: Vec<&str> = order.lines.iter().map(|l| l.sku.as_str()).collect();
                    store::record_co_purchases(&tx, &order.customer.customer_id, &order.order_id, &skus).await?;
                    let promises = store::promise_backordered_lines(&tx, &order.order_id).await?;
                    // Each known promise gets its overdue timer.
                    let ends: Vec<(&str, &str, Option<chrono::NaiveDate>)> = promises
                        .iter()
                        .map(|(id, p)| (order.order_id.as_str(), id.as_str(), p.to))
                        .collect();
                    promises::schedule_overdue(&*tx, &ends, self.overdue_grace_days).await?;
                    tracing::info!(order_id = %order.order_id, new, has_backorder, "order recorded");
                    // Requested again on replay: the sender's ledger keeps
                    // one email per dedup key, so this is safe and means a
                    // crash after commit but before produce loses nothing.
                    stored_orders.push(keys::order_state(&order.order_id));
                    let email = confirmation::order_confirmation(order, &promises, &self.signer);
                    email_decisions::record(&*tx, &email, None, now).await?;
                    emails.push(email);
                    if has_backorder {
                        // The nurture cadence starts one interval after the
                        // order; lines with a long ETA are enrolled now.
                        let today = now.date_naive();
                        let enrolled = promises
                            .iter()
                            .filter(|(_, p)| self.nurture.enrols(today, p.from))
                            .map(|(id, _)| id.clone())
                            .collect();
                        timers::schedule(&*tx, &self.nurture.first_timer(&order.order_id, now, enrolled)).await?;
                    }
                }
                OrderEvent::Cancelled(cancel) => {
                    // Units the lines held go back to their SKU's queue,
                    // in this transaction (core's shared release).
                    let released =
                        stock_release::release_for_cancelled_lines(&*tx, &cancel.order_id, &cancel.line_ids, now)
                            .await?;
                    let changed = store::cancel_lines(&tx, cancel).await?;
                    // A cancelled line's campaign ends at once (the whole
                    // order's when no line is named).
                    let lines = (!cancel.line_ids.is_empty()).then_some(cancel.line_ids.as_slice());
                    campaigns::end_for_lines(&*tx, &cancel.order_id, lines, EndReason::Cancelled, now).await?;
                    // Every pending email about the cancelled lines stops:
                    // the nurture cadence when no open backordered line is
                    // left, the follow-up of every shipment whose lines are
                    // all cancelled. Timers also re-check when they fire,
                    // which covers a delivery stored after this cancellation.
                    let mut stopped = 0;
                    if !order_lines::has_open_backorder(&*tx, &cancel.order_id).await? {
                        stopped += timers::cancel_prefix(&*tx, &keys::nurture_prefix(&cancel.order_id)).await?;
                    }
                    for shipment_id in store::fully_cancelled_shipments(&tx, &cancel.order_id).await? {
                        stopped +=
                            u64::from(timers::cancel(&*tx, &keys::followup(&cancel.order_id, &shipment_id)).await?);
                    }
                    tracing::info!(order_id = %cancel.order_id, changed, stopped, released = released.len(), "lines cancelled");
                }
                OrderEvent::CartAbandoned(cart) => {
                    store::upsert_cart_with_customer(&tx, cart).await?;
                    tracing::info!(cart_id = %cart.cart_id, "cart recorded");
                }
            }
        }
        // Events other consumers parked waiting for these orders are
        // retried as soon as this commits (DESIGN invariant 4).
        parking::state_arrived(&*tx, &stored_orders).await?;
        tx.commit().await?;
        let emails: Vec<&backorder_core::events::internal::EmailRequested> = emails.iter().collect();
        OutboundRecord::encode_all(&self.codec, &self.email_requests_topic, &emails)
            .await
            .map_err(|e| HandlerError::Transient(e.to_string()))
    }
}
