//! The series of a campaign without double-dipping (PLAYBOOK: the next
//! campaign email waits until the previous offer's time limit passed).
//! Each offer has a durable expiry timer; when it fires and the offer is
//! still unanswered, the offer expires and, if the campaign's lines are
//! still waiting and the series is not exhausted, the next offer goes out.
//! A decision, cancellation or shipment closes the offer and cancels the
//! timer first (`backorder_core::campaigns::end_for_lines`); the timer also
//! re-checks the lines, so an event handled in any order still stops it.

use backorder_core::campaigns::{self, EndReason, OFFER_EXPIRY_TIMER};
use backorder_core::codec::Codec;
use backorder_core::events::internal::EmailRequested;
use backorder_core::kafka::{HandlerError, OutboundRecord, topics};
use backorder_core::links::LinkSigner;
use backorder_core::policy::CampaignPolicy;
use backorder_core::service::Service;
use backorder_core::timers::{Timer, TimerHandler};
use backorder_core::tokio_postgres::Transaction;
use chrono::{DateTime, Utc};

use crate::error::SegmentationError;
use crate::offers;

/// Fires offer-expiry timers.
pub struct OfferExpiryTimers {
    codec: Codec,
    policy: CampaignPolicy,
    signer: LinkSigner,
    email_topic: String,
}

impl OfferExpiryTimers {
    pub fn new(service: &Service, signer: LinkSigner) -> Self {
        Self {
            codec: service.codec.clone(),
            policy: service.policy.campaigns.clone(),
            signer,
            email_topic: service.topics.name(topics::EMAIL_REQUESTS),
        }
    }

    async fn expire(
        &self,
        tx: &Transaction<'_>,
        timer: &Timer,
        now: DateTime<Utc>,
    ) -> Result<Option<EmailRequested>, SegmentationError> {
        // A timer without an offer (written by hand or by a test's
        // catch-up probe) must not hold up the others: say so and let it
        // be marked fired.
        let Some(offer_id) = timer.payload.get("offer_id").and_then(|v| v.as_str()) else {
            tracing::warn!(key = %timer.key, "offer-expiry timer without an offer id; nothing to do");
            return Ok(None);
        };
        // The campaign row is the lock every decider of this campaign takes.
        let Some(row) = tx
            .query_opt(
                "SELECT o.state, o.seq, c.campaign_id, c.state, c.order_id
                   FROM offers o JOIN campaigns c ON c.campaign_id = o.campaign_id
                  WHERE o.offer_id = $1
                    FOR UPDATE OF c",
                &[&offer_id],
            )
            .await?
        else {
            return Ok(None);
        };
        let offer_state: String = row.try_get(0)?;
        let seq: i32 = row.try_get(1)?;
        let campaign_id: String = row.try_get(2)?;
        let campaign_state: String = row.try_get(3)?;
        let order_id: String = row.try_get(4)?;
        if offer_state != "open" || campaign_state != "open" {
            return Ok(None);
        }
        tx.execute("UPDATE offers SET state = 'expired' WHERE offer_id = $1", &[&offer_id])
            .await?;
        metrics::counter!("backorder_campaign_offers_expired_total").increment(1);

        if let Some(reason) = lines_closed(tx, &campaign_id).await? {
            campaigns::end_for_lines(tx, &order_id, None, reason, now).await?;
            return Ok(None);
        }
        if seq >= self.policy.max_offers {
            campaigns::end_for_lines(tx, &order_id, None, EndReason::Expired, now).await?;
            tracing::info!(
                order_id,
                campaign_id,
                seq,
                "campaign series exhausted without an answer"
            );
            return Ok(None);
        }
        let email = offers::send_offer(tx, &campaign_id, seq + 1, None, now, &self.policy, &self.signer).await?;
        Ok(Some(email))
    }
}

/// Why none of the campaign's lines waits any more, if none does: the
/// campaign ends with that reason instead of sending another offer.
async fn lines_closed(tx: &Transaction<'_>, campaign_id: &str) -> Result<Option<EndReason>, SegmentationError> {
    let row = tx
        .query_one(
            "SELECT count(*) FILTER (WHERE l.status = 'open' AND l.cancel_requested_at IS NULL),
                    count(*) FILTER (WHERE l.status = 'shipped'),
                    count(*) FILTER (WHERE l.status = 'allocated')
               FROM campaign_lines cl
               JOIN order_lines l ON l.order_id = cl.order_id AND l.line_id = cl.line_id
              WHERE cl.campaign_id = $1",
            &[&campaign_id],
        )
        .await?;
    let (open, shipped, allocated): (i64, i64, i64) = (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
    Ok(match (open, shipped, allocated) {
        (0, s, _) if s > 0 => Some(EndReason::Shipped),
        (0, _, a) if a > 0 => Some(EndReason::Allocated),
        (0, _, _) => Some(EndReason::Cancelled),
        _ => None,
    })
}

impl TimerHandler for OfferExpiryTimers {
    fn kinds(&self) -> &[&'static str] {
        &[OFFER_EXPIRY_TIMER]
    }

    async fn fire(
        &self,
        tx: &Transaction<'_>,
        timer: &Timer,
        now: DateTime<Utc>,
    ) -> Result<Vec<OutboundRecord>, HandlerError> {
        let Some(email) = self.expire(tx, timer, now).await? else {
            return Ok(Vec::new());
        };
        Ok(vec![
            OutboundRecord::encode(&self.codec, &self.email_topic, &email)
                .await
                .map_err(SegmentationError::from)?,
        ])
    }
}
