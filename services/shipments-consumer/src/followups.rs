//! Durable timers of the shipments-consumer: the delivered follow-up
//! (`delivered-followup:<order>:<shipment>`, three days after delivery) and
//! the win-back (`win-back:<customer>`, thirty days after a backorder
//! customer's first delivery). Each re-checks the order when it fires: a
//! cancellation (or return) that arrived meanwhile means no email.

use backorder_core::codec::Codec;
use backorder_core::email_decisions;
use backorder_core::kafka::{HandlerError, OutboundRecord, topics};
use backorder_core::service::Service;
use backorder_core::timer_keys as keys;
use backorder_core::timers::{Timer, TimerHandler};
use backorder_core::tokio_postgres::Transaction;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{emails, store};

/// What both timers carry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FollowupPayload {
    pub order_id: String,
    #[serde(default)]
    pub shipment_id: Option<String>,
}

pub fn payload(order_id: &str, shipment_id: Option<&str>) -> serde_json::Value {
    serde_json::to_value(FollowupPayload {
        order_id: order_id.to_string(),
        shipment_id: shipment_id.map(str::to_string),
    })
    .unwrap_or_default()
}

/// Fires the follow-up and win-back timers.
pub struct FollowupTimers {
    codec: Codec,
    email_requests_topic: String,
    /// At most one win-back per customer in this period (policy).
    win_back_per_customer: chrono::Duration,
}

impl FollowupTimers {
    pub fn new(service: &Service) -> Self {
        Self {
            codec: service.codec.clone(),
            email_requests_topic: service.topics.name(topics::EMAIL_REQUESTS),
            win_back_per_customer: chrono::Duration::days(service.policy.after_delivery.win_back_per_customer_days),
        }
    }
}

/// Any database failure fails the round, which is rolled back and retried.
fn db(error: impl Into<backorder_core::db::DbError>) -> HandlerError {
    HandlerError::Transient(format!("follow-up timers: {}", error.into()))
}

fn outcome(kind: &'static str, outcome: &'static str) {
    metrics::counter!("backorder_lifecycle_timers_total", "kind" => kind, "outcome" => outcome).increment(1);
}

impl TimerHandler for FollowupTimers {
    fn kinds(&self) -> &[&'static str] {
        &[keys::DELIVERED_FOLLOWUP, keys::WIN_BACK]
    }

    async fn fire(
        &self,
        tx: &Transaction<'_>,
        timer: &Timer,
        now: DateTime<Utc>,
    ) -> Result<Vec<OutboundRecord>, HandlerError> {
        let kind: &'static str = if timer.kind == keys::WIN_BACK {
            keys::WIN_BACK
        } else {
            keys::DELIVERED_FOLLOWUP
        };
        // An unreadable payload must not block every other timer.
        let payload: FollowupPayload = match serde_json::from_value(timer.payload.clone()) {
            Ok(p) => p,
            Err(error) => {
                tracing::error!(%error, "unreadable timer payload; dropping it");
                outcome(kind, "unreadable");
                return Ok(Vec::new());
            }
        };
        let order_id = payload.order_id.as_str();
        let Some(contact) = store::order_contact(tx, order_id).await.map_err(db)? else {
            tracing::warn!(order_id, "timer for an unknown order; nothing to send");
            outcome(kind, "unknown_order");
            return Ok(Vec::new());
        };
        if contact.cancelled {
            outcome(kind, "cancelled");
            return Ok(Vec::new());
        }
        let request = if kind == keys::WIN_BACK {
            let bought = store::backordered_lines(tx, order_id).await.map_err(db)?;
            if bought.is_empty() {
                outcome(kind, "cancelled");
                return Ok(Vec::new());
            }
            // At most one win-back per customer per policy period.
            let last = store::last_win_back(tx, &contact.customer_id).await.map_err(db)?;
            if last.is_some_and(|at| at > now - self.win_back_per_customer) {
                outcome(kind, "recent_win_back");
                return Ok(Vec::new());
            }
            emails::win_back(order_id, &contact, &bought, timer.due_at)
        } else {
            let Some(shipment_id) = payload.shipment_id.as_deref() else {
                outcome(kind, "unreadable");
                return Ok(Vec::new());
            };
            let Some(shipment) = store::shipment(tx, shipment_id).await.map_err(db)? else {
                outcome(kind, "unknown_order");
                return Ok(Vec::new());
            };
            // Lines cancelled (returned) after delivery get no follow-up.
            let delivered = store::lines(tx, order_id, &shipment.line_ids).await.map_err(db)?;
            if delivered.is_empty() {
                outcome(kind, "cancelled");
                return Ok(Vec::new());
            }
            emails::delivered_followup(order_id, shipment_id, &contact, &delivered, timer.due_at)
        };
        email_decisions::record(tx, &request, None, now).await.map_err(db)?;
        tracing::info!(order_id, template = %request.template, "timer email decided");
        outcome(kind, "sent");
        let record = OutboundRecord::encode(&self.codec, &self.email_requests_topic, &request)
            .await
            .map_err(|e| HandlerError::Transient(e.to_string()))?;
        Ok(vec![record])
    }
}
