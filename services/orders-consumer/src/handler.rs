//! Applies a batch of `orders.v1` events in one transaction; runs of
//! placed orders with multi-row statements.

use std::collections::HashSet;

use backorder_core::campaigns::{self, EndReason};
use backorder_core::clock::Clock;
use backorder_core::codec::Codec;
use backorder_core::deadpool_postgres::{Pool, Transaction};
use backorder_core::email_decisions;
use backorder_core::events::internal::EmailRequested;
use backorder_core::events::orders::{OrderEvent, OrderPlaced};
use backorder_core::kafka::{Handler, HandlerError, Incoming, OutboundRecord, parking, topics};
use backorder_core::links::LinkSigner;
use backorder_core::order_lines;
use backorder_core::promises;
use backorder_core::service::Service;
use backorder_core::stock_release;
use backorder_core::timers::{self, Timer};
use chrono::{DateTime, NaiveDate, Utc};

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

impl OrdersHandler {
    /// Applies a run of consecutive `OrderPlaced` events with a few
    /// multi-row statements (the same whatever the run's length), with the
    /// result of applying them one after another. The confirmation of each
    /// event, including a replay within the run, goes to `emails`; each
    /// stored order's state reference to `stored_orders`.
    async fn record_placed(
        &self,
        tx: &Transaction<'_>,
        placed: &[&OrderPlaced],
        now: DateTime<Utc>,
        emails: &mut Vec<EmailRequested>,
        stored_orders: &mut Vec<String>,
    ) -> Result<(), HandlerError> {
        if placed.is_empty() {
            return Ok(());
        }
        let customers = store::merge_customers(placed.iter().map(|order| {
            let tag = store::has_backorder(order).then_some(store::CUSTOMER_TAG_BACKORDER_BUYER);
            store::CustomerUpsert::new(&order.customer, order.occurred_at, tag)
        }));
        store::upsert_customers(tx, &customers).await?;
        // A replay of an order within the run changes nothing, as one event
        // at a time: the first occurrence is the one stored.
        let mut seen = HashSet::with_capacity(placed.len());
        let distinct: Vec<&OrderPlaced> = placed
            .iter()
            .copied()
            .filter(|o| seen.insert(o.order_id.as_str()))
            .collect();
        let new = store::insert_orders(tx, &distinct).await?;
        let order_ids: Vec<&str> = distinct.iter().map(|o| o.order_id.as_str()).collect();
        let promises = store::promise_backordered_lines(tx, &order_ids).await?;
        let no_promises = Vec::new();
        let promises_of = |order_id: &str| promises.get(order_id).unwrap_or(&no_promises);
        // Each known promise gets its overdue timer.
        let ends: Vec<(&str, &str, Option<NaiveDate>)> = distinct
            .iter()
            .flat_map(|o| {
                promises_of(&o.order_id)
                    .iter()
                    .map(|(line_id, p)| (o.order_id.as_str(), line_id.as_str(), p.to))
            })
            .collect();
        promises::schedule_overdue(tx, &ends, self.overdue_grace_days).await?;
        // The nurture cadence starts one interval after the order; lines
        // with a long ETA are enrolled now.
        let today = now.date_naive();
        let nurture: Vec<Timer> = distinct
            .iter()
            .filter(|o| store::has_backorder(o))
            .map(|o| {
                let enrolled = promises_of(&o.order_id)
                    .iter()
                    .filter(|(_, p)| self.nurture.enrols(today, p.from))
                    .map(|(id, _)| id.clone())
                    .collect();
                self.nurture.first_timer(&o.order_id, now, enrolled)
            })
            .collect();
        timers::schedule_all(tx, &nurture).await?;
        let first_email = emails.len();
        for order in placed {
            tracing::debug!(order_id = %order.order_id, new = new.contains(&order.order_id), "order recorded");
            // Requested again on replay: the sender's ledger keeps one
            // email per dedup key, so this is safe and means a crash after
            // commit but before produce loses nothing.
            stored_orders.push(keys::order_state(&order.order_id));
            emails.push(confirmation::order_confirmation(
                order,
                promises_of(&order.order_id),
                &self.signer,
            ));
        }
        let decisions: Vec<(&EmailRequested, Option<&str>)> = emails[first_email..].iter().map(|e| (e, None)).collect();
        email_decisions::record_all(tx, &decisions, now).await?;
        // Last: co-purchase counts are shared rows (a pair of popular SKUs
        // is counted by every partition's batches), so their row locks are
        // taken as late as possible and held only until the commit, not
        // through the rest of the batch.
        let purchases: Vec<(&str, &str, &str)> = placed
            .iter()
            .flat_map(|o| {
                o.lines
                    .iter()
                    .map(|l| (o.customer.customer_id.as_str(), o.order_id.as_str(), l.sku.as_str()))
            })
            .collect();
        store::record_co_purchases(tx, &purchases).await?;
        tracing::info!(orders = placed.len(), new = new.len(), "orders recorded");
        Ok(())
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
        // Consecutive placed orders are applied together; an event of
        // another kind first applies the run before it, so every order's
        // events keep their order.
        let mut placed: Vec<&OrderPlaced> = Vec::new();
        for incoming in batch {
            match &incoming.event {
                OrderEvent::Placed(order) => placed.push(order),
                OrderEvent::Cancelled(cancel) => {
                    self.record_placed(&tx, &placed, now, &mut emails, &mut stored_orders)
                        .await?;
                    placed.clear();
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
                    self.record_placed(&tx, &placed, now, &mut emails, &mut stored_orders)
                        .await?;
                    placed.clear();
                    store::upsert_cart_with_customer(&tx, cart).await?;
                    tracing::info!(cart_id = %cart.cart_id, "cart recorded");
                }
            }
        }
        self.record_placed(&tx, &placed, now, &mut emails, &mut stored_orders)
            .await?;
        // Events other consumers parked waiting for these orders are
        // retried as soon as this commits (DESIGN invariant 4).
        parking::state_arrived(&tx, &stored_orders).await?;
        tx.commit().await?;
        let emails: Vec<&EmailRequested> = emails.iter().collect();
        OutboundRecord::encode_all(&self.codec, &self.email_requests_topic, &emails)
            .await
            .map_err(|e| HandlerError::Transient(e.to_string()))
    }
}
