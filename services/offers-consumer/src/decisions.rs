//! What a customer may decide, and recording it (PLAYBOOK 7, DESIGN
//! "Offer links"). One set of rules for every way a decision arrives: the
//! offer and cancel pages check them to answer with the right page and
//! status; offers-consumer checks them again, authoritatively, for every
//! `offer-responses.v1` event, whoever produced it.

use backorder_core::campaigns::{self, EndReason};
use backorder_core::links::{LinkSigner, OfferOption};
use backorder_core::stock_release;
use backorder_core::tokio_postgres::GenericClient;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::OffersError;

/// Why a decision is refused. Each maps to the page's status code and to
/// a metric label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("malformed: {0}")]
    Malformed(String),
    #[error("the link's signature is not valid for this offer, customer and option")]
    Forged,
    #[error("no such offer")]
    UnknownOffer,
    #[error("no such order line")]
    UnknownLine,
    #[error("the option is not part of this offer")]
    NotInOffer,
    #[error("the offer expired at {0}")]
    Expired(DateTime<Utc>),
    #[error("the offer was already answered")]
    AlreadyAnswered,
    #[error("nothing is waiting any more (the items shipped, arrived or were cancelled)")]
    Closed,
}

impl Rejection {
    /// The HTTP status the pages answer with.
    pub fn status(&self) -> u16 {
        match self {
            Rejection::Malformed(_) | Rejection::NotInOffer => 400,
            Rejection::Forged => 403,
            Rejection::UnknownOffer | Rejection::UnknownLine => 404,
            Rejection::Expired(_) => 410,
            Rejection::AlreadyAnswered | Rejection::Closed => 409,
        }
    }

    /// A fixed label for metrics (no customer data).
    pub fn label(&self) -> &'static str {
        match self {
            Rejection::Malformed(_) => "malformed",
            Rejection::Forged => "forged",
            Rejection::UnknownOffer => "unknown_offer",
            Rejection::UnknownLine => "unknown_line",
            Rejection::NotInOffer => "not_in_offer",
            Rejection::Expired(_) => "expired",
            Rejection::AlreadyAnswered => "already_answered",
            Rejection::Closed => "closed",
        }
    }
}

/// An alternative an offer showed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alternative {
    pub line_id: String,
    pub sku: String,
    pub product_name: String,
    pub price_minor: i64,
}

/// One line of a campaign, as decisions need it.
#[derive(Debug, Clone)]
pub struct Line {
    pub line_id: String,
    pub product_name: String,
    pub quantity: i32,
    pub unit_price_minor: i64,
    /// Still waiting: open and no cancellation asked for.
    pub open: bool,
}

/// An offer with everything the page and the decision need.
#[derive(Debug, Clone)]
pub struct Offer {
    pub offer_id: String,
    pub order_id: String,
    pub customer_id: String,
    pub customer_name: String,
    pub email: String,
    pub locale: String,
    pub country: Option<String>,
    pub state: String,
    pub campaign_state: String,
    pub sent_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub credit_minor: i64,
    pub currency: String,
    pub alternatives: Vec<Alternative>,
    pub lines: Vec<Line>,
}

impl Offer {
    /// Every option this offer shows, in the order of the email.
    pub fn options(&self) -> Vec<OfferOption> {
        let mut options: Vec<OfferOption> = self
            .alternatives
            .iter()
            .map(|a| OfferOption::Switch(a.sku.clone()))
            .collect();
        if self.credit_minor > 0 {
            options.push(OfferOption::TakeStoreCredit);
        }
        options.push(OfferOption::KeepWaitingExpedited);
        options.push(OfferOption::Cancel);
        options
    }

    pub fn open_lines(&self) -> Vec<&Line> {
        self.lines.iter().filter(|l| l.open).collect()
    }

    /// Checks that `token` is this customer's signature of `option`, that
    /// the option belongs to the offer, and that the offer is still open
    /// at `at`. Signature first: nothing about the offer is revealed to a
    /// forged link.
    pub fn check(
        &self,
        signer: &LinkSigner,
        option: &OfferOption,
        token: &str,
        at: DateTime<Utc>,
    ) -> Result<(), Rejection> {
        self.verify(signer, option, token)?;
        self.check_open(option, at)
    }

    /// Whether `token` is this offer's customer's signature of `option`
    /// (the pages check it before anything else is shown).
    pub fn verify(&self, signer: &LinkSigner, option: &OfferOption, token: &str) -> Result<(), Rejection> {
        signer
            .verify_offer_token(token, &self.offer_id, &self.customer_id, option, self.expires_at)
            .map_err(|_| Rejection::Forged)
    }

    /// The checks after the signature: option, state, time, lines.
    pub fn check_open(&self, option: &OfferOption, at: DateTime<Utc>) -> Result<(), Rejection> {
        if !self.options().contains(option) {
            return Err(Rejection::NotInOffer);
        }
        match self.state.as_str() {
            "answered" => return Err(Rejection::AlreadyAnswered),
            "expired" => return Err(Rejection::Expired(self.expires_at)),
            "closed" => return Err(Rejection::Closed),
            _ => {}
        }
        if at > self.expires_at {
            return Err(Rejection::Expired(self.expires_at));
        }
        if self.campaign_state != "open" || self.open_lines().is_empty() {
            return Err(Rejection::Closed);
        }
        Ok(())
    }
}

/// Loads `offer_id` (None: no such offer). `lock` takes the campaign row
/// lock every decider of the campaign takes (segmentation's timers too).
pub async fn load_offer<C: GenericClient>(
    client: &C,
    offer_id: &str,
    lock: bool,
) -> Result<Option<Offer>, OffersError> {
    let sql = format!(
        "SELECT o.offer_id, c.order_id, o.customer_id, cu.name, cu.email, cu.locale, cu.country, o.state, c.state,
                o.sent_at, o.expires_at, o.credit_minor, o.currency, o.alternatives, c.campaign_id
           FROM offers o
           JOIN campaigns c ON c.campaign_id = o.campaign_id
           JOIN customers cu ON cu.customer_id = o.customer_id
          WHERE o.offer_id = $1{}",
        if lock { " FOR UPDATE OF c" } else { "" }
    );
    let Some(row) = client.query_opt(&sql, &[&offer_id]).await? else {
        return Ok(None);
    };
    let alternatives: serde_json::Value = row.try_get(13)?;
    let alternatives: Vec<Alternative> =
        serde_json::from_value(alternatives).map_err(|e| OffersError::BadDecision {
            decision_id: offer_id.to_string(),
            reason: e.to_string(),
        })?;
    let campaign_id: String = row.try_get(14)?;
    let lines = client
        .query(
            "SELECT cl.line_id, cl.product_name, cl.quantity, cl.unit_price_minor,
                    (l.status = 'open' AND l.cancel_requested_at IS NULL)
               FROM campaign_lines cl
               JOIN order_lines l ON l.order_id = cl.order_id AND l.line_id = cl.line_id
              WHERE cl.campaign_id = $1 ORDER BY cl.line_id",
            &[&campaign_id],
        )
        .await?
        .into_iter()
        .map(|r| {
            Ok(Line {
                line_id: r.try_get(0)?,
                product_name: r.try_get(1)?,
                quantity: r.try_get(2)?,
                unit_price_minor: r.try_get(3)?,
                open: r.try_get(4)?,
            })
        })
        .collect::<Result<Vec<_>, backorder_core::tokio_postgres::Error>>()?;
    Ok(Some(Offer {
        offer_id: row.try_get(0)?,
        order_id: row.try_get(1)?,
        customer_id: row.try_get(2)?,
        customer_name: row.try_get(3)?,
        email: row.try_get(4)?,
        locale: row.try_get(5)?,
        country: row.try_get(6)?,
        state: row.try_get(7)?,
        campaign_state: row.try_get(8)?,
        sent_at: row.try_get(9)?,
        expires_at: row.try_get(10)?,
        credit_minor: row.try_get(11)?,
        currency: row.try_get(12)?,
        alternatives,
        lines,
    }))
}

/// One order line a cancel link names, with its customer.
#[derive(Debug, Clone)]
pub struct CancelTarget {
    pub order_id: String,
    pub line: Line,
    pub currency: String,
    pub customer_id: String,
    pub customer_name: String,
    pub email: String,
    pub locale: String,
    /// A backordered line: cancel links exist only for those.
    pub backordered: bool,
}

impl CancelTarget {
    /// The refund: what the customer paid for the line.
    pub fn refund_minor(&self) -> i64 {
        self.line.unit_price_minor.saturating_mul(i64::from(self.line.quantity))
    }

    pub fn check(&self, signer: &LinkSigner, token: &str) -> Result<(), Rejection> {
        signer
            .verify_cancel_token(token, &self.order_id, &self.line.line_id, &self.customer_id)
            .map_err(|_| Rejection::Forged)?;
        if !self.backordered || !self.line.open {
            return Err(Rejection::Closed);
        }
        Ok(())
    }
}

/// Loads the line a cancel link names (None: no such line).
pub async fn load_cancel_target<C: GenericClient>(
    client: &C,
    order_id: &str,
    line_id: &str,
    lock: bool,
) -> Result<Option<CancelTarget>, OffersError> {
    let sql = format!(
        "SELECT l.product_name, l.quantity, l.unit_price_minor,
                (l.status = 'open' AND l.cancel_requested_at IS NULL), l.availability = 'BACKORDERED',
                o.currency, cu.customer_id, cu.name, cu.email, cu.locale
           FROM order_lines l
           JOIN orders o ON o.order_id = l.order_id
           JOIN customers cu ON cu.customer_id = o.customer_id
          WHERE l.order_id = $1 AND l.line_id = $2{}",
        if lock { " FOR UPDATE OF l" } else { "" }
    );
    let Some(row) = client.query_opt(&sql, &[&order_id, &line_id]).await? else {
        return Ok(None);
    };
    Ok(Some(CancelTarget {
        order_id: order_id.to_string(),
        line: Line {
            line_id: line_id.to_string(),
            product_name: row.try_get(0)?,
            quantity: row.try_get(1)?,
            unit_price_minor: row.try_get(2)?,
            open: row.try_get(3)?,
        },
        backordered: row.try_get(4)?,
        currency: row.try_get(5)?,
        customer_id: row.try_get(6)?,
        customer_name: row.try_get(7)?,
        email: row.try_get(8)?,
        locale: row.try_get(9)?,
    }))
}

/// A recorded decision, as stored.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub response_event_id: String,
    pub kind: String,
    pub alternative_sku: Option<String>,
    pub outputs: serde_json::Value,
}

/// The decision already recorded under `decision_id`, if any.
pub async fn recorded<C: GenericClient>(client: &C, decision_id: &str) -> Result<Option<Recorded>, OffersError> {
    let Some(row) = client
        .query_opt(
            "SELECT response_event_id, kind, alternative_sku, outputs FROM decisions WHERE decision_id = $1",
            &[&decision_id],
        )
        .await?
    else {
        return Ok(None);
    };
    Ok(Some(Recorded {
        response_event_id: row.try_get(0)?,
        kind: row.try_get(1)?,
        alternative_sku: row.try_get(2)?,
        outputs: row.try_get(3)?,
    }))
}

/// Marks the decided lines: the offer answered (for an offer), the
/// campaign ended as decided, and for a cancellation the lines' pending
/// emails stopped (nurture and delay notices skip lines whose cancellation
/// was asked for).
pub async fn close_for_decision<C: GenericClient + backorder_core::db::Statements>(
    client: &C,
    order_id: &str,
    offer: Option<(&str, &OfferOption)>,
    line_ids: &[String],
    cancel: bool,
    now: DateTime<Utc>,
) -> Result<(), OffersError> {
    if let Some((offer_id, option)) = offer {
        client
            .execute(
                "UPDATE offers SET state = 'answered', answered_at = $2, choice = $3, alternative_sku = $4
                  WHERE offer_id = $1",
                &[&offer_id, &now, &option.as_param(), &option.alternative_sku()],
            )
            .await?;
    }
    campaigns::end_for_lines(client, order_id, Some(line_ids), EndReason::Decided, now).await?;
    if cancel {
        // Units the lines held go back to their SKU's queue, in this
        // transaction (core's shared release), before the lines are marked.
        stock_release::release_for_cancelled_lines(client, order_id, line_ids, now).await?;
        client
            .execute(
                "UPDATE order_lines SET cancel_requested_at = COALESCE(cancel_requested_at, $3)
                  WHERE order_id = $1 AND line_id = ANY($2::text[])",
                &[&order_id, &line_ids, &now],
            )
            .await?;
    }
    Ok(())
}
