//! Applies a batch of `shipments.v1` events in one transaction.

use backorder_core::campaigns::{self, EndReason};
use backorder_core::clock::Clock;
use backorder_core::codec::Codec;
use backorder_core::deadpool_postgres::Pool;
use backorder_core::email_decisions;
use backorder_core::events::shipments::ShipmentEvent;
use backorder_core::kafka::{Handler, HandlerError, Incoming, OutboundRecord, parking, topics};
use backorder_core::order_lines;
use backorder_core::service::Service;
use backorder_core::timer_keys as keys;
use backorder_core::timers::{self, Timer};
use chrono::Duration;

use crate::store::{self, DeliveryFacts};
use crate::{emails, followups};

/// The shipments.v1 handler.
pub struct ShipmentsHandler {
    pool: Pool,
    codec: Codec,
    clock: Clock,
    /// The delivered follow-up goes out this long after the delivery (policy).
    followup_after: Duration,
    /// The win-back goes out this long after the qualifying delivery (policy).
    win_back_after: Duration,
    email_requests_topic: String,
}

impl ShipmentsHandler {
    pub fn new(service: &Service) -> Self {
        Self {
            pool: service.pool.clone(),
            codec: service.codec.clone(),
            clock: service.clock.clone(),
            followup_after: Duration::days(service.policy.after_delivery.followup_after_days),
            win_back_after: Duration::days(service.policy.after_delivery.win_back_after_days),
            email_requests_topic: service.topics.name(topics::EMAIL_REQUESTS),
        }
    }
}

impl Handler for ShipmentsHandler {
    type Event = ShipmentEvent;

    async fn handle(&self, batch: &[Incoming<ShipmentEvent>]) -> Result<Vec<OutboundRecord>, HandlerError> {
        let now = self.clock.now().await?;
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let mut emails = Vec::new();
        let mut deliveries: Vec<DeliveryFacts> = Vec::new();
        for incoming in batch {
            match &incoming.event {
                ShipmentEvent::Dispatched(shipment) => {
                    let order_id = shipment.order_id.as_str();
                    // Invariant 4: the order may not be stored yet. The
                    // runtime parks the shipment (and later events of the
                    // order) until it is, and the partition moves on.
                    let Some(contact) = store::order_contact(&tx, order_id).await? else {
                        return Err(HandlerError::missing(
                            keys::order_state(order_id),
                            format!(
                                "shipment {} is for order {order_id}, which is not stored yet",
                                shipment.shipment_id
                            ),
                        ));
                    };
                    store::record_dispatch(&tx, shipment).await?;
                    // Shipped lines leave their campaign at once: no offer
                    // or reminder after the item is on its way.
                    campaigns::end_for_lines(&*tx, order_id, Some(&shipment.line_ids), EndReason::Shipped, now).await?;
                    parking::state_arrived(&tx, &[keys::shipment_state(&shipment.shipment_id)]).await?;
                    if !order_lines::has_open_backorder(&*tx, order_id).await? {
                        // Nothing left waiting for stock: the nurture cadence ends.
                        timers::cancel_prefix(&*tx, &keys::nurture_prefix(order_id)).await?;
                    }
                    let shipped = store::lines(&tx, order_id, &shipment.line_ids).await?;
                    if shipped.is_empty() {
                        tracing::warn!(order_id, shipment_id = %shipment.shipment_id, "shipment carries only cancelled or unknown lines; no email");
                        continue;
                    }
                    let pending = store::pending_lines(&tx, order_id).await?;
                    let email = emails::shipped(shipment, &contact, &shipped, &pending);
                    email_decisions::record(&tx, &email, None, now).await?;
                    tracing::info!(order_id, shipment_id = %shipment.shipment_id, pending = pending.len(), "shipped email decided");
                    emails.push(email);
                }
                ShipmentEvent::Delivered(delivered) => {
                    let order_id = delivered.order_id.as_str();
                    let Some(shipment) = store::shipment(&tx, &delivered.shipment_id).await? else {
                        return Err(HandlerError::missing(
                            keys::shipment_state(&delivered.shipment_id),
                            format!(
                                "delivery of shipment {} (order {order_id}) arrived before its dispatch was stored",
                                delivered.shipment_id
                            ),
                        ));
                    };
                    let Some(contact) = store::order_contact(&tx, &shipment.order_id).await? else {
                        return Err(HandlerError::missing(
                            keys::order_state(&shipment.order_id),
                            format!("order {order_id} is not stored yet"),
                        ));
                    };
                    if let Some(facts) = store::record_delivery(&tx, delivered).await? {
                        deliveries.push(facts);
                    }
                    // Both timers count from the controlled clock's now at
                    // the first handling; a replay finds them scheduled.
                    timers::schedule(
                        &*tx,
                        &Timer {
                            key: keys::followup(&shipment.order_id, &delivered.shipment_id),
                            kind: keys::DELIVERED_FOLLOWUP.to_string(),
                            due_at: now + self.followup_after,
                            payload: followups::payload(&shipment.order_id, Some(&delivered.shipment_id)),
                        },
                    )
                    .await?;
                    // The win-back waits for the delivery that completes the
                    // order's backordered lines, not an earlier in-stock one.
                    if contact.backorder && store::backorders_complete(&tx, &shipment.order_id).await? {
                        timers::schedule(
                            &*tx,
                            &Timer {
                                key: keys::win_back(&contact.customer_id, &shipment.order_id),
                                kind: keys::WIN_BACK.to_string(),
                                due_at: now + self.win_back_after,
                                payload: followups::payload(&shipment.order_id, None),
                            },
                        )
                        .await?;
                    }
                    tracing::info!(order_id, shipment_id = %delivered.shipment_id, "delivery recorded");
                }
            }
        }
        tx.commit().await?;
        // Counted once per delivery, after it is durable.
        for facts in deliveries {
            metrics::histogram!("backorder_order_to_delivery_seconds").record(facts.order_to_delivery_seconds);
            let promise = match facts.promise_kept {
                Some(true) => "kept",
                Some(false) => "broken",
                None => "none",
            };
            metrics::counter!("backorder_deliveries_total", "promise" => promise).increment(1);
        }
        let emails: Vec<&backorder_core::events::internal::EmailRequested> = emails.iter().collect();
        OutboundRecord::encode_all(&self.codec, &self.email_requests_topic, &emails)
            .await
            .map_err(|e| HandlerError::Transient(e.to_string()))
    }
}
