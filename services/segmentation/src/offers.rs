//! One offer of a campaign's series: what it offers (fresh from the catalog
//! at the time it is sent), its signed one-click links, the email that is
//! both apology and offer (PLAYBOOK 5 and 6 in one), its expiry timer.

use backorder_core::campaigns::{OFFER_EXPIRY_TIMER, offer_expiry_key};
use backorder_core::domain::geo;
use backorder_core::domain::{DedupKey, ReasonForCustomer};
use backorder_core::email_decisions;
use backorder_core::events::internal::{EmailCategory, EmailRequested, Recipient};
use backorder_core::links::{LinkSigner, OfferOption};
use backorder_core::policy::CampaignPolicy;
use backorder_core::timers::{self, Timer};
use backorder_core::tokio_postgres::Transaction;
use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;

use crate::error::SegmentationError;
use crate::routing::{self, Alternative, CampaignKind, DelayedLine};

/// The template of the combined delay-and-offer email and its reminders.
pub const TEMPLATE: &str = "delay_offer";

/// The id of offer `seq` of `campaign_id`: opaque in links (no order id in
/// a URL a customer may forward), the same on every replay.
pub fn offer_id(campaign_id: &str, seq: i32) -> String {
    uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_OID,
        format!("offer:{campaign_id}:{seq}").as_bytes(),
    )
    .simple()
    .to_string()
}

/// What the offer email shows of one delayed line.
#[derive(Debug, Serialize)]
struct Item {
    product_name: String,
    quantity: i32,
    /// What the customer had been told (`YYYY-MM-DD`; absent: unknown).
    previous_from: Option<String>,
    previous_to: Option<String>,
    /// One click cancels just this item.
    cancel_url: String,
}

#[derive(Debug, Serialize)]
struct ShownAlternative {
    product_name: String,
    price_minor: i64,
    /// The delayed item it replaces.
    replaces: String,
    url: String,
}

#[derive(Debug, Serialize)]
struct Credit {
    amount_minor: i64,
    url: String,
}

/// The template data of `delay_offer`.
#[derive(Debug, Serialize)]
struct OfferData {
    order_id: String,
    offer_id: String,
    /// 1 for the first email of the series; later ones are reminders.
    offer_number: i32,
    reminder: bool,
    kind: &'static str,
    currency: String,
    items: Vec<Item>,
    window_from: Option<String>,
    window_to: Option<String>,
    reason: ReasonForCustomer,
    alternatives: Vec<ShownAlternative>,
    credit: Option<Credit>,
    expedite_url: String,
    cancel_url: String,
    /// RFC 3339 instant the offer expires; shown in `timezone`.
    deadline: String,
    timezone: String,
}

/// A campaign as stored, with its customer.
struct CampaignRow {
    order_id: String,
    kind: CampaignKind,
    currency: String,
    window_from: Option<NaiveDate>,
    window_to: Option<NaiveDate>,
    reason_code: Option<String>,
    reason: String,
    remedy: String,
    reason_locale: String,
    customer_id: String,
    email: String,
    name: String,
    locale: String,
    country: Option<String>,
}

/// Sends offer `seq` of `campaign_id` at `now`: stores it (a replay finds
/// it and returns the same request), schedules its expiry and records the
/// decision. Alternatives are looked up again for every reminder, so it
/// never offers what sold out meanwhile; the first offer takes `routed`,
/// what routing found moments before in the same transaction.
pub async fn send_offer(
    tx: &Transaction<'_>,
    campaign_id: &str,
    seq: i32,
    routed: Option<Vec<Alternative>>,
    now: DateTime<Utc>,
    policy: &CampaignPolicy,
    signer: &LinkSigner,
) -> Result<EmailRequested, SegmentationError> {
    let id = offer_id(campaign_id, seq);
    if let Some(stored) = stored_email(tx, &id).await? {
        return Ok(stored);
    }
    let campaign = load_campaign(tx, campaign_id).await?;
    let lines = tx
        .query(
            "SELECT line_id, sku, product_name, quantity, unit_price_minor, old_promise_from, old_promise_to
               FROM campaign_lines WHERE campaign_id = $1 ORDER BY line_id",
            &[&campaign_id],
        )
        .await?;
    let mut delayed = Vec::with_capacity(lines.len());
    let mut items = Vec::with_capacity(lines.len());
    for row in &lines {
        let line = DelayedLine {
            line_id: row.try_get(0)?,
            sku: row.try_get(1)?,
            quantity: row.try_get(3)?,
            unit_price_minor: row.try_get(4)?,
        };
        let from: Option<NaiveDate> = row.try_get(5)?;
        let to: Option<NaiveDate> = row.try_get(6)?;
        items.push(Item {
            product_name: row.try_get(2)?,
            quantity: line.quantity,
            previous_from: iso(from),
            previous_to: iso(to),
            cancel_url: signer.cancel_url(&campaign.order_id, &line.line_id, &campaign.customer_id),
        });
        delayed.push(line);
    }
    let expires_at = now + policy.offer_expiry();
    let found = match (routed, campaign.kind) {
        (Some(found), _) => found,
        (None, CampaignKind::Alternative) => {
            routing::alternatives(
                tx,
                &delayed,
                &campaign.currency,
                campaign.country.as_deref(),
                now.date_naive(),
                policy,
            )
            .await?
        }
        (None, CampaignKind::StoreCredit) => Vec::new(),
    };
    // The store-credit campaign offers credit; so does an alternative
    // campaign whose alternatives all sold out before this reminder.
    let credit_minor = if found.is_empty() {
        routing::store_credit(&delayed, &campaign.currency, policy)
    } else {
        0
    };
    let link = |option: &OfferOption| signer.offer_url(&id, &campaign.customer_id, option, expires_at);
    let product_of = |line_id: &str| {
        items
            .iter()
            .zip(&delayed)
            .find(|(_, d)| d.line_id == line_id)
            .map(|(i, _)| i.product_name.clone())
            .unwrap_or_default()
    };
    let alternatives: Vec<ShownAlternative> = found
        .iter()
        .map(|a: &Alternative| ShownAlternative {
            product_name: a.product_name.clone(),
            price_minor: a.price_minor,
            replaces: product_of(&a.line_id),
            url: link(&OfferOption::Switch(a.sku.clone())),
        })
        .collect();
    let timezone = geo::timezone_of(campaign.country.as_deref());
    let data = OfferData {
        order_id: campaign.order_id.clone(),
        offer_id: id.clone(),
        offer_number: seq,
        reminder: seq > 1,
        kind: campaign.kind.as_str(),
        currency: campaign.currency.clone(),
        items,
        window_from: iso(campaign.window_from),
        window_to: iso(campaign.window_to),
        reason: ReasonForCustomer::new(
            campaign.reason_code.as_deref(),
            &campaign.reason,
            &campaign.remedy,
            &campaign.reason_locale,
            &campaign.locale,
        ),
        alternatives,
        credit: (credit_minor > 0).then(|| Credit {
            amount_minor: credit_minor,
            url: link(&OfferOption::TakeStoreCredit),
        }),
        expedite_url: link(&OfferOption::KeepWaitingExpedited),
        cancel_url: link(&OfferOption::Cancel),
        deadline: expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        timezone: timezone.name().to_string(),
    };
    let request = EmailRequested::compose(
        &DedupKey::new("delay-offer", &[&campaign.order_id, &id]),
        TEMPLATE,
        EmailCategory::Transactional,
        Recipient {
            customer_id: &campaign.customer_id,
            email: &campaign.email,
            name: &campaign.name,
            locale: &campaign.locale,
        },
        Some(&campaign.order_id),
        Some(campaign.kind.as_str()),
        now,
        &data,
    );
    let alternatives_json = serde_json::to_value(&found).map_err(|e| SegmentationError::BadOffer {
        offer_id: id.clone(),
        reason: e.to_string(),
    })?;
    let email_json = serde_json::to_value(&request).map_err(|e| SegmentationError::BadOffer {
        offer_id: id.clone(),
        reason: e.to_string(),
    })?;
    tx.execute(
        "INSERT INTO offers (offer_id, campaign_id, seq, customer_id, credit_minor, currency, alternatives,
                             sent_at, expires_at, email)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        &[
            &id,
            &campaign_id,
            &seq,
            &campaign.customer_id,
            &credit_minor,
            &campaign.currency,
            &alternatives_json,
            &now,
            &expires_at,
            &email_json,
        ],
    )
    .await?;
    tx.execute(
        "UPDATE campaigns SET offers_sent = $2 WHERE campaign_id = $1",
        &[&campaign_id, &seq],
    )
    .await?;
    timers::schedule(
        tx,
        &Timer {
            key: offer_expiry_key(&id),
            kind: OFFER_EXPIRY_TIMER.to_string(),
            due_at: expires_at,
            payload: serde_json::json!({ "offer_id": id }),
        },
    )
    .await?;
    email_decisions::record(tx, &request, None, now).await?;
    metrics::counter!("backorder_campaign_offers_sent_total", "kind" => campaign.kind.as_str()).increment(1);
    tracing::info!(
        order_id = %campaign.order_id,
        campaign_id,
        offer_id = %id,
        seq,
        alternatives = found.len(),
        credit_minor,
        "offer decided"
    );
    Ok(request)
}

/// The email an offer was sent with, if the offer exists (replays).
pub async fn stored_email(tx: &Transaction<'_>, offer_id: &str) -> Result<Option<EmailRequested>, SegmentationError> {
    let Some(row) = tx
        .query_opt("SELECT email FROM offers WHERE offer_id = $1", &[&offer_id])
        .await?
    else {
        return Ok(None);
    };
    let json: serde_json::Value = row.try_get(0)?;
    serde_json::from_value(json)
        .map(Some)
        .map_err(|e| SegmentationError::BadOffer {
            offer_id: offer_id.to_string(),
            reason: e.to_string(),
        })
}

async fn load_campaign(tx: &Transaction<'_>, campaign_id: &str) -> Result<CampaignRow, SegmentationError> {
    let row = tx
        .query_one(
            "SELECT c.order_id, c.kind, c.currency, c.window_from, c.window_to, c.reason_code, c.reason, c.remedy,
                    c.reason_locale, cu.customer_id, cu.email, cu.name, cu.locale, cu.country
               FROM campaigns c JOIN customers cu ON cu.customer_id = c.customer_id
              WHERE c.campaign_id = $1",
            &[&campaign_id],
        )
        .await?;
    let kind: String = row.try_get(1)?;
    Ok(CampaignRow {
        order_id: row.try_get(0)?,
        kind: if kind == CampaignKind::Alternative.as_str() {
            CampaignKind::Alternative
        } else {
            CampaignKind::StoreCredit
        },
        currency: row.try_get(2)?,
        window_from: row.try_get(3)?,
        window_to: row.try_get(4)?,
        reason_code: row.try_get(5)?,
        reason: row.try_get(6)?,
        remedy: row.try_get(7)?,
        reason_locale: row.try_get(8)?,
        customer_id: row.try_get(9)?,
        email: row.try_get(10)?,
        name: row.try_get(11)?,
        locale: row.try_get(12)?,
        country: row.try_get(13)?,
    })
}

fn iso(date: Option<NaiveDate>) -> Option<String> {
    date.map(|d| d.format("%Y-%m-%d").to_string())
}
