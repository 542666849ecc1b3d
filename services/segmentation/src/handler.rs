//! Applies a batch of `backorder-delays.v1` events in one transaction:
//! each significant slip either starts a campaign for its order (routing,
//! the first offer email) or, when the order already has an open campaign,
//! joins it (its lines and new window go into the next offer email instead
//! of a second campaign).

use backorder_core::clock::Clock;
use backorder_core::codec::Codec;
use backorder_core::deadpool_postgres::Pool;
use backorder_core::events::internal::{BackorderDelayEvent, BackorderDelayed, EmailRequested};
use backorder_core::kafka::{Handler, HandlerError, Incoming, OutboundRecord, topics};
use backorder_core::links::LinkSigner;
use backorder_core::policy::CampaignPolicy;
use backorder_core::service::Service;
use backorder_core::tokio_postgres::Transaction;
use chrono::{DateTime, NaiveDate, Utc};
use tracing::Instrument;

use crate::error::SegmentationError;
use crate::offers;
use crate::routing::{self, CampaignKind, DelayedLine};

/// The backorder-delays.v1 handler.
pub struct DelaysHandler {
    pool: Pool,
    codec: Codec,
    clock: Clock,
    policy: CampaignPolicy,
    signer: LinkSigner,
    /// Full name of `email-requests.v1` (with the configured prefix).
    email_topic: String,
}

impl DelaysHandler {
    pub fn new(service: &Service, signer: LinkSigner) -> Self {
        Self {
            pool: service.pool.clone(),
            codec: service.codec.clone(),
            clock: service.clock.clone(),
            policy: service.policy.campaigns.clone(),
            signer,
            email_topic: service.topics.name(topics::EMAIL_REQUESTS),
        }
    }

    async fn apply(&self, batch: &[Incoming<BackorderDelayEvent>]) -> Result<Vec<OutboundRecord>, SegmentationError> {
        let now = self.clock.now().await?;
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let mut emails = Vec::new();
        for incoming in batch {
            let BackorderDelayEvent::Delayed(delay) = &incoming.event;
            let span = tracing::info_span!(
                "delay",
                partition = incoming.partition,
                offset = incoming.offset,
                order_id = %delay.order_id
            );
            if let Some(email) = self.apply_one(&tx, delay, now).instrument(span).await? {
                emails.push(email);
            }
        }
        tx.commit().await?;
        let refs: Vec<&EmailRequested> = emails.iter().collect();
        Ok(OutboundRecord::encode_all(&self.codec, &self.email_topic, &refs).await?)
    }

    /// One slip: a replay re-requests the email it started (the sender's
    /// ledger keeps one per key), so a crash between commit and produce
    /// loses nothing.
    async fn apply_one(
        &self,
        tx: &Transaction<'_>,
        delay: &BackorderDelayed,
        now: DateTime<Utc>,
    ) -> Result<Option<EmailRequested>, SegmentationError> {
        if let Some(row) = tx
            .query_opt(
                "SELECT offer_id FROM campaign_slips WHERE event_id = $1",
                &[&delay.event_id],
            )
            .await?
        {
            let offer_id: Option<String> = row.try_get(0)?;
            return match offer_id {
                Some(id) => offers::stored_email(tx, &id).await,
                None => Ok(None),
            };
        }
        let Some(order) = tx
            .query_opt(
                "SELECT o.currency, o.customer_id FROM orders o WHERE o.order_id = $1",
                &[&delay.order_id],
            )
            .await?
        else {
            return Err(SegmentationError::UnknownOrder {
                order_id: delay.order_id.clone(),
                event_id: delay.event_id.clone(),
            });
        };
        let currency: String = order.try_get(0)?;
        let customer_id: String = order.try_get(1)?;
        let lines = open_lines(tx, delay).await?;

        // Lock the order's open campaign, if any: a slip of another SKU of
        // the same order joins it.
        let open = tx
            .query_opt(
                "SELECT campaign_id FROM campaigns WHERE order_id = $1 AND state = 'open' FOR UPDATE",
                &[&delay.order_id],
            )
            .await?;
        if lines.is_empty() {
            // Shipped, allocated or cancelled since: nothing to offer.
            tracing::info!(order_id = %delay.order_id, "significant slip of lines no longer open; no campaign");
            metrics::counter!("backorder_campaign_slips_total", "outcome" => "lines_closed").increment(1);
            return Ok(None);
        }
        let campaign_id = match open {
            Some(row) => {
                let campaign_id: String = row.try_get(0)?;
                insert_lines(tx, &campaign_id, &delay.order_id, &lines).await?;
                update_window(tx, &campaign_id, delay).await?;
                record_slip(tx, delay, &campaign_id, None, now).await?;
                metrics::counter!("backorder_campaign_slips_total", "outcome" => "joined_open_campaign").increment(1);
                tracing::info!(order_id = %delay.order_id, campaign_id, "slip joined the open campaign; the next offer email carries it");
                return Ok(None);
            }
            None => campaign_id_for(&delay.event_id),
        };

        let country: Option<String> = tx
            .query_one("SELECT country FROM customers WHERE customer_id = $1", &[&customer_id])
            .await?
            .try_get(0)?;
        let routed: Vec<DelayedLine> = lines.iter().map(|l| l.routing.clone()).collect();
        let found = routing::alternatives(
            tx,
            &routed,
            &currency,
            country.as_deref(),
            now.date_naive(),
            &self.policy,
        )
        .await?;
        let kind = if found.is_empty() {
            CampaignKind::StoreCredit
        } else {
            CampaignKind::Alternative
        };
        metrics::histogram!("backorder_campaign_alternatives_found").record(found.len() as f64);
        metrics::counter!("backorder_campaigns_routed_total", "kind" => kind.as_str()).increment(1);
        tx.execute(
            "INSERT INTO campaigns (campaign_id, order_id, customer_id, kind, currency, window_from, window_to,
                                    reason_code, reason, remedy, reason_locale, started_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            &[
                &campaign_id,
                &delay.order_id,
                &customer_id,
                &kind.as_str(),
                &currency,
                &delay.new_promise_from,
                &delay.new_promise_to,
                &delay.reason_code,
                &delay.reason,
                &delay.remedy,
                &delay.reason_locale,
                &now,
            ],
        )
        .await?;
        insert_lines(tx, &campaign_id, &delay.order_id, &lines).await?;
        let alternatives = found.len();
        let email = offers::send_offer(tx, &campaign_id, 1, Some(found), now, &self.policy, &self.signer).await?;
        let offer_id = offers::offer_id(&campaign_id, 1);
        record_slip(tx, delay, &campaign_id, Some(&offer_id), now).await?;
        metrics::counter!("backorder_campaign_slips_total", "outcome" => "campaign_started").increment(1);
        tracing::info!(order_id = %delay.order_id, campaign_id, kind = kind.as_str(), alternatives, "campaign started");
        Ok(Some(email))
    }
}

impl Handler for DelaysHandler {
    type Event = BackorderDelayEvent;

    async fn handle(&self, batch: &[Incoming<BackorderDelayEvent>]) -> Result<Vec<OutboundRecord>, HandlerError> {
        Ok(self.apply(batch).await?)
    }
}

/// A campaign's id: derived from the slip that started it, so a replay
/// finds the same campaign.
fn campaign_id_for(event_id: &str) -> String {
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, format!("campaign:{event_id}").as_bytes())
        .simple()
        .to_string()
}

/// A slipped line that is still open, with what its customer was told.
struct OpenLine {
    routing: DelayedLine,
    product_name: String,
    old_from: Option<NaiveDate>,
    old_to: Option<NaiveDate>,
}

/// The slip's lines that are still open backorders. Version 1 events named
/// no lines: then every open backordered line of the order with the SKU.
async fn open_lines(tx: &Transaction<'_>, delay: &BackorderDelayed) -> Result<Vec<OpenLine>, SegmentationError> {
    let line_ids: Vec<&str> = delay.lines.iter().map(|l| l.line_id.as_str()).collect();
    let rows = tx
        .query(
            "SELECT l.line_id, l.sku, l.product_name, l.quantity, l.unit_price_minor
               FROM order_lines l
              WHERE l.order_id = $1 AND l.availability = 'BACKORDERED' AND l.status = 'open'
                AND l.cancel_requested_at IS NULL
                AND (CASE WHEN cardinality($2::text[]) = 0 THEN l.sku = $3 ELSE l.line_id = ANY($2::text[]) END)
              ORDER BY l.line_id",
            &[&delay.order_id, &line_ids, &delay.sku],
        )
        .await?;
    let mut lines = Vec::with_capacity(rows.len());
    for row in rows {
        let line_id: String = row.try_get(0)?;
        let told = delay.lines.iter().find(|l| l.line_id == line_id);
        lines.push(OpenLine {
            routing: DelayedLine {
                line_id,
                sku: row.try_get(1)?,
                quantity: row.try_get(3)?,
                unit_price_minor: row.try_get(4)?,
            },
            product_name: row.try_get(2)?,
            old_from: told.and_then(|l| l.old_promise_from),
            old_to: told.and_then(|l| l.old_promise_to),
        });
    }
    Ok(lines)
}

async fn insert_lines(
    tx: &Transaction<'_>,
    campaign_id: &str,
    order_id: &str,
    lines: &[OpenLine],
) -> Result<(), SegmentationError> {
    if lines.is_empty() {
        return Ok(());
    }
    // One multi-row statement for all lines of the campaign.
    let line_ids: Vec<&str> = lines.iter().map(|l| l.routing.line_id.as_str()).collect();
    let skus: Vec<&str> = lines.iter().map(|l| l.routing.sku.as_str()).collect();
    let names: Vec<&str> = lines.iter().map(|l| l.product_name.as_str()).collect();
    let quantities: Vec<i32> = lines.iter().map(|l| l.routing.quantity).collect();
    let prices: Vec<i64> = lines.iter().map(|l| l.routing.unit_price_minor).collect();
    let old_from: Vec<Option<NaiveDate>> = lines.iter().map(|l| l.old_from).collect();
    let old_to: Vec<Option<NaiveDate>> = lines.iter().map(|l| l.old_to).collect();
    tx.execute(
        "INSERT INTO campaign_lines (campaign_id, order_id, line_id, sku, product_name, quantity, unit_price_minor,
                                     old_promise_from, old_promise_to)
         SELECT $1, $2, * FROM unnest($3::text[], $4::text[], $5::text[], $6::int[], $7::bigint[],
                                      $8::date[], $9::date[])
         ON CONFLICT (campaign_id, line_id) DO NOTHING",
        &[
            &campaign_id,
            &order_id,
            &line_ids,
            &skus,
            &names,
            &quantities,
            &prices,
            &old_from,
            &old_to,
        ],
    )
    .await?;
    Ok(())
}

/// A new slip of an open campaign's order: the next offer email states
/// the latest window and reason.
async fn update_window(
    tx: &Transaction<'_>,
    campaign_id: &str,
    delay: &BackorderDelayed,
) -> Result<(), SegmentationError> {
    tx.execute(
        "UPDATE campaigns SET window_from = $2, window_to = $3, reason_code = $4, reason = $5, remedy = $6,
                              reason_locale = $7
          WHERE campaign_id = $1",
        &[
            &campaign_id,
            &delay.new_promise_from,
            &delay.new_promise_to,
            &delay.reason_code,
            &delay.reason,
            &delay.remedy,
            &delay.reason_locale,
        ],
    )
    .await?;
    Ok(())
}

async fn record_slip(
    tx: &Transaction<'_>,
    delay: &BackorderDelayed,
    campaign_id: &str,
    offer_id: Option<&str>,
    now: DateTime<Utc>,
) -> Result<(), SegmentationError> {
    tx.execute(
        "INSERT INTO campaign_slips (event_id, campaign_id, offer_id, received_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (event_id) DO NOTHING",
        &[&delay.event_id, &campaign_id, &offer_id, &now],
    )
    .await?;
    Ok(())
}
