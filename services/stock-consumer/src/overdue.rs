//! Overdue promises (DESIGN "Overdue promise"): when a line's promised
//! window ended (plus the grace) with no stock and no newer ETA, the
//! customer is told at once that it is late and that no new date is known.
//! That is a significant slip: the line goes to segmentation on
//! `backorder-delays.v1` with reason `OVERDUE` and an unknown window, and
//! segmentation sends the one email with the apology and the options. The
//! promise becomes "not known yet", so the next known ETA is news again.

use backorder_core::codec::Codec;
use backorder_core::events::internal::{BackorderDelayed, DelayedLine, OVERDUE_REASON};
use backorder_core::kafka::{HandlerError, OutboundRecord, topics};
use backorder_core::promises::OVERDUE_TIMER;
use backorder_core::service::Service;
use backorder_core::timers::{Timer, TimerHandler};
use backorder_core::tokio_postgres::Transaction;
use chrono::{DateTime, NaiveDate, Utc};

use crate::error::StockError;

/// Fires `promise-overdue` timers.
pub struct OverdueTimers {
    codec: Codec,
    delays_topic: String,
}

impl OverdueTimers {
    pub fn new(service: &Service) -> Self {
        Self {
            codec: service.codec.clone(),
            delays_topic: service.topics.name(topics::BACKORDER_DELAYS),
        }
    }

    async fn overdue(&self, tx: &Transaction<'_>, timer: &Timer) -> Result<Option<BackorderDelayed>, StockError> {
        let field = |name: &str| timer.payload.get(name).and_then(|v| v.as_str()).map(str::to_string);
        let (Some(order_id), Some(line_id), Some(promised)) =
            (field("order_id"), field("line_id"), field("promised_to"))
        else {
            tracing::warn!(key = %timer.key, "overdue timer without its line; nothing to do");
            return Ok(None);
        };
        let Ok(promised_to) = promised.parse::<NaiveDate>() else {
            tracing::warn!(key = %timer.key, "overdue timer with an unreadable date; nothing to do");
            return Ok(None);
        };
        // Still waiting under the same promise? Stock, a cancellation or a
        // newer ETA (which moved the promise and this timer) mean no.
        let Some(row) = tx
            .query_opt(
                "SELECT l.sku, l.product_name, l.quantity, l.unit_price_minor, l.promised_from, o.currency,
                        o.customer_id, COALESCE(e.version, 0)
                   FROM order_lines l
                   JOIN orders o ON o.order_id = l.order_id
                   LEFT JOIN sku_eta e ON e.sku = l.sku
                  WHERE l.order_id = $1 AND l.line_id = $2 AND l.availability = 'BACKORDERED'
                    AND l.status = 'open' AND l.cancel_requested_at IS NULL AND l.promised_to = $3
                    FOR UPDATE OF l",
                &[&order_id, &line_id, &promised_to],
            )
            .await?
        else {
            return Ok(None);
        };
        let (sku, product_name, quantity, unit_price_minor): (String, String, i32, i64) =
            (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?, row.try_get(3)?);
        let promised_from: Option<NaiveDate> = row.try_get(4)?;
        let (currency, customer_id, version): (String, String, i64) =
            (row.try_get(5)?, row.try_get(6)?, row.try_get(7)?);
        // What the customer is told now: the date is not known.
        tx.execute(
            "UPDATE order_lines SET promised_from = NULL, promised_to = NULL, promise_told = true
              WHERE order_id = $1 AND line_id = $2",
            &[&order_id, &line_id],
        )
        .await?;
        metrics::counter!("backorder_promises_overdue_total").increment(1);
        tracing::info!(order_id, line_id, %promised_to, "promise overdue; the customer is told");
        let id = format!("promise-overdue_{order_id}_{line_id}_{promised_to}");
        Ok(Some(BackorderDelayed {
            event_id: uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, id.as_bytes()).to_string(),
            occurred_at: timer.due_at,
            order_id: order_id.clone(),
            customer_id,
            sku: sku.clone(),
            new_promise_from: None,
            new_promise_to: None,
            delayed_value_minor: unit_price_minor.saturating_mul(i64::from(quantity)),
            currency,
            eta_version: version,
            reason_code: Some(OVERDUE_REASON.to_string()),
            reason: String::new(),
            remedy: String::new(),
            reason_locale: "en".to_string(),
            lines: vec![DelayedLine {
                line_id,
                sku,
                product_name,
                quantity,
                unit_price_minor,
                old_promise_from: promised_from,
                old_promise_to: Some(promised_to),
            }],
        }))
    }
}

impl TimerHandler for OverdueTimers {
    fn kinds(&self) -> &[&'static str] {
        &[OVERDUE_TIMER]
    }

    async fn fire(
        &self,
        tx: &Transaction<'_>,
        timer: &Timer,
        _now: DateTime<Utc>,
    ) -> Result<Vec<OutboundRecord>, HandlerError> {
        let Some(event) = self.overdue(tx, timer).await? else {
            return Ok(Vec::new());
        };
        Ok(vec![
            OutboundRecord::encode(&self.codec, &self.delays_topic, &event)
                .await
                .map_err(StockError::from)?,
        ])
    }
}
