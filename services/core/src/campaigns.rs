//! Ending campaigns when their lines close. A campaign (segmentation's
//! time-limited offers for a significant delay) ends at once when the
//! customer decides, when its lines are cancelled or ship, or when stock
//! is allocated to them: no further offer or reminder goes out for it
//! (PLAYBOOK: a customer who decides leaves every sequence at once).
//!
//! The deciders of those events (offers-consumer, orders-consumer,
//! shipments-consumer, stock-consumer) call [`end_for_lines`] in the
//! transaction that applies the event; segmentation's offer timer also
//! re-checks the lines when it fires, so an event that arrives in any order
//! still stops the series.

use chrono::{DateTime, Utc};
use tokio_postgres::GenericClient;

use crate::db::DbError;

/// The timer kind of an offer's expiry (segmentation fires it).
pub const OFFER_EXPIRY_TIMER: &str = "offer-expiry";

/// The expiry timer key of one offer.
pub fn offer_expiry_key(offer_id: &str) -> String {
    format!("{OFFER_EXPIRY_TIMER}:{offer_id}")
}

/// Why a campaign ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// The customer chose an option (offers-consumer).
    Decided,
    /// The order or the lines were cancelled.
    Cancelled,
    /// The lines shipped.
    Shipped,
    /// Stock arrived and was allocated to the lines.
    Allocated,
    /// Every offer of the series expired unanswered.
    Expired,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Decided => "decided",
            EndReason::Cancelled => "cancelled",
            EndReason::Shipped => "shipped",
            EndReason::Allocated => "allocated",
            EndReason::Expired => "expired",
        }
    }
}

/// Ends the open campaign of `order_id` when it covers any of `line_ids`
/// (all lines of the order when `None`): the campaign is marked, its open
/// offer closed and the offer's expiry timer cancelled, so nothing further
/// goes out for it. Returns the campaign ids ended (empty: none was open).
pub async fn end_for_lines<C: GenericClient>(
    client: &C,
    order_id: &str,
    line_ids: Option<&[String]>,
    reason: EndReason,
    now: DateTime<Utc>,
) -> Result<Vec<String>, DbError> {
    let state = if reason == EndReason::Decided {
        "decided"
    } else {
        "ended"
    };
    let rows = client
        .query(
            "UPDATE campaigns c SET state = $3, end_reason = $4, ended_at = $5
              WHERE c.order_id = $1 AND c.state = 'open'
                AND ($2::text[] IS NULL OR EXISTS (
                    SELECT 1 FROM campaign_lines cl
                     WHERE cl.campaign_id = c.campaign_id AND cl.line_id = ANY($2::text[])))
              RETURNING c.campaign_id",
            &[&order_id, &line_ids, &state, &reason.as_str(), &now],
        )
        .await?;
    let ended: Vec<String> = rows.iter().map(|r| r.try_get(0)).collect::<Result<_, _>>()?;
    if ended.is_empty() {
        return Ok(ended);
    }
    let offers = client
        .query(
            "UPDATE offers SET state = 'closed'
              WHERE campaign_id = ANY($1::text[]) AND state = 'open'
              RETURNING offer_id",
            &[&ended],
        )
        .await?;
    let keys: Vec<String> = offers
        .iter()
        .map(|r| r.try_get::<_, String>(0).map(|id| offer_expiry_key(&id)))
        .collect::<Result<_, _>>()?;
    client
        .execute(
            "UPDATE timers SET state = 'cancelled' WHERE timer_key = ANY($1::text[]) AND state = 'pending'",
            &[&keys],
        )
        .await?;
    metrics::counter!("backorder_campaign_exits_total", "reason" => reason.as_str()).increment(ended.len() as u64);
    tracing::info!(
        order_id,
        reason = reason.as_str(),
        campaigns = ended.len(),
        "campaign ended"
    );
    Ok(ended)
}

/// Whether a line is in a campaign that is open or was decided: nurture
/// leaves such lines alone (no hollow update while an offer is open, nothing
/// after the customer chose).
pub const LINE_IN_ACTIVE_CAMPAIGN_SQL: &str =
    "EXISTS (SELECT 1 FROM campaign_lines cl JOIN campaigns c ON c.campaign_id = cl.campaign_id
          WHERE cl.order_id = l.order_id AND cl.line_id = l.line_id AND c.state IN ('open', 'decided'))";
