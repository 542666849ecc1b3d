//! Nurture updates (PLAYBOOK email 8, DESIGN default policy): lines whose
//! supplier ETA is more than 21 days away get a short status update with
//! something useful about the product every 12 days (configurable within
//! 10-14), until the ETA is within 7 days or the line ships, is allocated
//! or is cancelled. A round is skipped when any email about the order was
//! decided in the last 3 days (a confirmation, a shipped email, a delay
//! notice...), measured on the controlled clock in `email_decisions`.
//!
//! Mechanism: one durable timer per order and step (`nurture:<order>:<n>`),
//! the first one interval after the order was placed. Each firing decides
//! this round and schedules the next step on the same cadence, as long as
//! the order has an open backordered line; cancelling or shipping the last
//! one cancels the pending step. A line is *enrolled* once its ETA was more
//! than 21 days away at a check (or when the order was placed); enrolment
//! is carried in the timer's payload, so a line enrolled at day 12 is still
//! nurtured at day 48 when its ETA is 12 days away, and stops at 7.
//! Lines with an unknown ETA are not enrolled by it, but an enrolled line
//! whose ETA becomes unknown keeps getting updates.

use backorder_core::campaigns;
use backorder_core::codec::Codec;
use backorder_core::domain::DedupKey;
use backorder_core::domain::product_kind;
use backorder_core::email_decisions;
use backorder_core::events::internal::{EmailCategory, EmailRequested, Recipient};
use backorder_core::kafka::{HandlerError, OutboundRecord, topics};
use backorder_core::links::LinkSigner;
use backorder_core::service::Service;
use backorder_core::timers::{self, Timer, TimerHandler};
use backorder_core::tokio_postgres::Transaction;
use chrono::{DateTime, Duration, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use backorder_core::timer_keys as keys;

pub const TEMPLATE: &str = "nurture_update";

/// The nurture rules of the default campaign policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NurturePolicy {
    /// Time between two nurture emails.
    pub interval: Duration,
    /// A line is enrolled when its ETA is more than this many days away.
    pub enrol_beyond_days: i64,
    /// Nurture stops while the ETA is at most this many days away.
    pub stop_within_days: i64,
    /// A round is skipped when an email about the order went out this recently.
    pub quiet: Duration,
}

impl Default for NurturePolicy {
    fn default() -> Self {
        Self::from_policy(&backorder_core::policy::NurturePolicy::default())
    }
}

impl NurturePolicy {
    /// The `[nurture]` section of the policy file (validated at start).
    pub fn from_policy(policy: &backorder_core::policy::NurturePolicy) -> Self {
        Self {
            interval: Duration::days(policy.interval_days),
            enrol_beyond_days: policy.enrol_beyond_days,
            stop_within_days: policy.stop_within_days,
            quiet: Duration::days(policy.quiet_days),
        }
    }

    /// Days from `today` to `eta_from`.
    fn days_until(today: NaiveDate, eta_from: NaiveDate) -> i64 {
        (eta_from - today).num_days()
    }

    /// Whether a line with this ETA joins the nurture cadence.
    pub fn enrols(&self, today: NaiveDate, eta_from: Option<NaiveDate>) -> bool {
        eta_from.is_some_and(|eta| Self::days_until(today, eta) > self.enrol_beyond_days)
    }

    /// Whether an enrolled line with this ETA is too close to arrival for
    /// a nurture email (stock is physically arriving: status emails take over).
    pub fn arriving(&self, today: NaiveDate, eta_from: Option<NaiveDate>) -> bool {
        eta_from.is_some_and(|eta| Self::days_until(today, eta) <= self.stop_within_days)
    }

    /// The first step's timer of an order placed at `now`.
    pub fn first_timer(&self, order_id: &str, now: DateTime<Utc>, enrolled: Vec<String>) -> Timer {
        step_timer(order_id, 1, now + self.interval, enrolled)
    }
}

/// What a nurture timer carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NurturePayload {
    pub order_id: String,
    pub step: u32,
    /// Lines enrolled so far (sticky).
    pub enrolled: Vec<String>,
}

fn step_timer(order_id: &str, step: u32, due_at: DateTime<Utc>, enrolled: Vec<String>) -> Timer {
    let payload = NurturePayload {
        order_id: order_id.to_string(),
        step,
        enrolled,
    };
    Timer {
        key: keys::nurture(order_id, step),
        kind: keys::NURTURE.to_string(),
        due_at,
        payload: serde_json::to_value(&payload).unwrap_or_default(),
    }
}

/// One line as a nurture email shows it.
#[derive(Debug, Serialize)]
struct NurtureLine {
    line_id: String,
    product_name: String,
    quantity: i32,
    kind: &'static str,
    /// `YYYY-MM-DD`; both absent: the supplier has no date yet.
    window_from: Option<String>,
    window_to: Option<String>,
    /// The line's signed one-click cancel link.
    cancel_url: String,
}

#[derive(Debug, Serialize)]
struct NurtureData<'a> {
    order_id: &'a str,
    lines: &'a [NurtureLine],
}

/// Fires nurture timers.
pub struct NurtureTimers {
    codec: Codec,
    email_requests_topic: String,
    policy: NurturePolicy,
    /// Signs each line's one-click cancel link.
    signer: LinkSigner,
}

impl NurtureTimers {
    pub fn new(service: &Service, policy: NurturePolicy, signer: LinkSigner) -> Self {
        Self {
            codec: service.codec.clone(),
            email_requests_topic: service.topics.name(topics::EMAIL_REQUESTS),
            policy,
            signer,
        }
    }
}

/// Any database failure fails the round, which is rolled back and retried
/// at the next poll (nothing is marked fired).
fn db(error: impl Into<backorder_core::db::DbError>) -> HandlerError {
    HandlerError::Transient(format!("nurture: {}", error.into()))
}

fn outcome(outcome: &'static str) {
    metrics::counter!("backorder_nurture_checks_total", "outcome" => outcome).increment(1);
}

impl TimerHandler for NurtureTimers {
    fn kinds(&self) -> &[&'static str] {
        &[keys::NURTURE]
    }

    async fn fire(
        &self,
        tx: &Transaction<'_>,
        timer: &Timer,
        now: DateTime<Utc>,
    ) -> Result<Vec<OutboundRecord>, HandlerError> {
        // A payload we cannot read must not block every other timer: the
        // round would fail forever. Say so and let it be marked fired.
        let payload: NurturePayload = match serde_json::from_value(timer.payload.clone()) {
            Ok(p) => p,
            Err(error) => {
                tracing::error!(%error, "unreadable nurture timer payload; dropping it");
                outcome("unreadable");
                return Ok(Vec::new());
            }
        };
        let order_id = payload.order_id.as_str();
        let rows = tx
            .query(
                &format!(
                    "SELECT l.line_id, l.product_name, l.category, l.quantity, e.eta_from, e.eta_to, {} AS in_campaign
                   FROM order_lines l
                   JOIN orders o ON o.order_id = l.order_id AND o.cancelled_at IS NULL
                   LEFT JOIN sku_eta e ON e.sku = l.sku
                  WHERE l.order_id = $1 AND l.availability = 'BACKORDERED' AND l.status = 'open'
                    AND l.cancel_requested_at IS NULL
                  ORDER BY l.line_id",
                    campaigns::LINE_IN_ACTIVE_CAMPAIGN_SQL
                ),
                &[&order_id],
            )
            .await
            .map_err(db)?;
        if rows.is_empty() {
            // Shipped, allocated or cancelled: the cadence ends here.
            outcome("ended");
            return Ok(Vec::new());
        }
        let today = now.date_naive();
        let mut enrolled = payload.enrolled.clone();
        let mut due = Vec::new();
        for row in &rows {
            let line_id: String = row.try_get(0).map_err(db)?;
            let eta_from: Option<NaiveDate> = row.try_get(4).map_err(db)?;
            let eta_to: Option<NaiveDate> = row.try_get(5).map_err(db)?;
            if !enrolled.contains(&line_id) && self.policy.enrols(today, eta_from) {
                enrolled.push(line_id.clone());
            }
            // A line in an open or decided campaign hears from the campaign
            // (or has decided): no nurture email beside it, but the cadence
            // goes on for when an unanswered campaign ends.
            let in_campaign: bool = row.try_get(6).map_err(db)?;
            if enrolled.contains(&line_id) && !self.policy.arriving(today, eta_from) && !in_campaign {
                let category: Option<String> = row.try_get(2).map_err(db)?;
                due.push(NurtureLine {
                    line_id,
                    product_name: row.try_get(1).map_err(db)?,
                    quantity: row.try_get(3).map_err(db)?,
                    kind: product_kind(category.as_deref()),
                    window_from: eta_from.map(|d| d.to_string()),
                    window_to: eta_to.map(|d| d.to_string()),
                    cancel_url: String::new(),
                });
            }
        }
        // The next step keeps the cadence of the first (a clock that jumped
        // several intervals fires once, not once per missed interval).
        let mut next_due = timer.due_at + self.policy.interval;
        while next_due <= now {
            next_due += self.policy.interval;
        }
        timers::schedule(tx, &step_timer(order_id, payload.step + 1, next_due, enrolled))
            .await
            .map_err(db)?;
        if due.is_empty() {
            outcome("not_due");
            return Ok(Vec::new());
        }
        let last = email_decisions::last_for_order(tx, order_id).await.map_err(db)?;
        if last.is_some_and(|at| at > now - self.policy.quiet) {
            tracing::info!(
                order_id,
                step = payload.step,
                "nurture skipped: an email about the order went out recently"
            );
            outcome("skipped_recent_email");
            return Ok(Vec::new());
        }
        let Some(customer) = tx
            .query_opt(
                "SELECT c.customer_id, c.email, c.name, c.locale
                   FROM orders o JOIN customers c ON c.customer_id = o.customer_id
                  WHERE o.order_id = $1",
                &[&order_id],
            )
            .await
            .map_err(db)?
        else {
            outcome("ended");
            return Ok(Vec::new());
        };
        let (customer_id, email, name, locale): (String, String, String, String) = (
            customer.try_get(0).map_err(db)?,
            customer.try_get(1).map_err(db)?,
            customer.try_get(2).map_err(db)?,
            customer.try_get(3).map_err(db)?,
        );
        for line in &mut due {
            line.cancel_url = self.signer.cancel_url(order_id, &line.line_id, &customer_id);
        }
        let request = EmailRequested::compose(
            &DedupKey::new("nurture", &[order_id, &payload.step.to_string()]),
            TEMPLATE,
            EmailCategory::Transactional,
            Recipient {
                customer_id: &customer_id,
                email: &email,
                name: &name,
                locale: &locale,
            },
            Some(order_id),
            None,
            timer.due_at,
            &NurtureData { order_id, lines: &due },
        );
        let line = match due.as_slice() {
            [only] => Some(only.line_id.as_str()),
            _ => None,
        };
        email_decisions::record(tx, &request, line, now).await.map_err(db)?;
        tracing::info!(
            order_id,
            step = payload.step,
            lines = due.len(),
            "nurture update decided"
        );
        outcome("sent");
        let record = OutboundRecord::encode(&self.codec, &self.email_requests_topic, &request)
            .await
            .map_err(|e| HandlerError::Transient(e.to_string()))?;
        Ok(vec![record])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(n: i64) -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 1, 1).unwrap_or_default() + Duration::days(n)
    }

    #[test]
    fn enrols_beyond_21_days_and_stops_within_7() {
        let p = NurturePolicy::default();
        assert!(p.enrols(day(0), Some(day(22))));
        assert!(!p.enrols(day(0), Some(day(21))));
        assert!(!p.enrols(day(0), None));
        assert!(p.arriving(day(0), Some(day(7))));
        assert!(!p.arriving(day(0), Some(day(8))));
        assert!(!p.arriving(day(0), None));
    }
}
