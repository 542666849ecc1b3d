//! Supplier ETA changes: keep the SKU's current ETA (a new `sku_eta`
//! version per change), debounce bursts of changes with a per-SKU durable
//! timer, and when it fires tell every customer whose window now ends later
//! than what they were last told: one delay notice per order (PLAYBOOK 5)
//! carrying the latest window, and a `BackorderDelayed` event per line whose
//! slip is significant (DESIGN policy). The promise becomes what the notice
//! said. A window that ends no later (or becomes known) updates the promise
//! quietly; the next email that goes out anyway carries it.
//!
//! A firing handles one page of orders ([`DELAY_PAGE_ORDERS`]) and schedules
//! the next page as a timer due at once, so a SKU thousands of customers
//! wait for is told in short transactions with bounded memory.

use std::collections::BTreeMap;

use backorder_core::codec::Codec;
use backorder_core::domain::ReasonForCustomer;
use backorder_core::email_decisions;
use backorder_core::events::internal::{BackorderDelayed, DelayedLine};
use backorder_core::events::stock::SupplierEtaChanged;
use backorder_core::kafka::{HandlerError, OutboundRecord, topics};
use backorder_core::links::LinkSigner;
use backorder_core::promises;
use backorder_core::service::Service;
use backorder_core::timers::{self, Timer, TimerHandler};
use backorder_core::tokio_postgres::Transaction;
use chrono::{DateTime, Duration, Utc};

use crate::emails::{self, Customer, DelayData, DelayedItem};
use crate::error::StockError;
use crate::policy::{Change, DELAY_PAGE_ORDERS, Window, classify};

/// The timer kind that ends a SKU's debounce window.
pub const TIMER_KIND: &str = "delay-notice";

fn timer_key(sku: &str) -> String {
    format!("{TIMER_KIND}:{sku}")
}

/// Applies one ETA change: records it (a replayed event id changes
/// nothing), bumps the SKU's `sku_eta` version, and moves the SKU's
/// debounce timer to `now + debounce`. Returns the new version, or None
/// for a replay.
pub async fn apply_change(
    tx: &Transaction<'_>,
    change: &SupplierEtaChanged,
    now: DateTime<Utc>,
    debounce: Duration,
) -> Result<Option<i64>, StockError> {
    let reason_code = change.reason_code.map(|c| c.as_str());
    let reason_locale = change.reason_locale.as_deref().unwrap_or("en");
    let inserted = tx
        .execute(
            "INSERT INTO eta_changes (event_id, sku, eta_version, eta_from, eta_to, reason, remedy, occurred_at, applied_at,
                                      reason_code, reason_locale)
             VALUES ($1, $2, 0, $3, $4, $5, $6, $7, $8, $9, $10)
             ON CONFLICT (event_id) DO NOTHING",
            &[
                &change.event_id,
                &change.sku,
                &change.eta_from,
                &change.eta_to,
                &change.reason,
                &change.remedy,
                &change.occurred_at,
                &now,
                &reason_code,
                &reason_locale,
            ],
        )
        .await?;
    if inserted == 0 {
        metrics::counter!("backorder_stock_eta_changes_total", "outcome" => "replayed").increment(1);
        return Ok(None);
    }
    let version: i64 = tx
        .query_one(
            "INSERT INTO sku_eta (sku, eta_from, eta_to, reason, remedy, version, changed_at, reason_code, reason_locale)
             VALUES ($1, $2, $3, $4, $5, 1, $6, $7, $8)
             ON CONFLICT (sku) DO UPDATE SET
                 eta_from = EXCLUDED.eta_from, eta_to = EXCLUDED.eta_to, reason = EXCLUDED.reason,
                 remedy = EXCLUDED.remedy, version = sku_eta.version + 1, changed_at = EXCLUDED.changed_at,
                 reason_code = EXCLUDED.reason_code, reason_locale = EXCLUDED.reason_locale
             RETURNING version",
            &[
                &change.sku,
                &change.eta_from,
                &change.eta_to,
                &change.reason,
                &change.remedy,
                &change.occurred_at,
                &reason_code,
                &reason_locale,
            ],
        )
        .await?
        .try_get(0)?;
    tx.execute(
        "UPDATE eta_changes SET eta_version = $2 WHERE event_id = $1",
        &[&change.event_id, &version],
    )
    .await?;
    // When the burst this change belongs to began (a pending timer's
    // `since`), so that a supplier who keeps changing the ETA cannot
    // postpone the notices for ever.
    let key = timer_key(&change.sku);
    let since = tx
        .query_opt(
            "SELECT payload->>'since' FROM timers WHERE timer_key = $1 AND state = 'pending'",
            &[&key],
        )
        .await?
        .map(|row| row.try_get::<_, Option<String>>(0))
        .transpose()?
        .flatten()
        .and_then(|text| DateTime::parse_from_rfc3339(&text).ok())
        .map_or(now, |t| t.with_timezone(&Utc));
    timers::reschedule(
        tx,
        &Timer {
            key,
            kind: TIMER_KIND.to_string(),
            due_at: debounced_due(now, since, debounce),
            payload: serde_json::json!({ "sku": change.sku, "since": since.to_rfc3339() }),
        },
    )
    .await?;
    metrics::counter!("backorder_stock_eta_changes_total", "outcome" => "applied").increment(1);
    tracing::info!(sku = %change.sku, version, "supplier ETA changed; delay notices debounced");
    Ok(Some(version))
}

/// A burst of changes waits at most this many debounce windows from its
/// first change.
pub const MAX_DEBOUNCE_WINDOWS: i32 = 3;

/// When the notices of a burst that began at `since` go out after a change
/// at `now`: one window after the last change, but no later than
/// [`MAX_DEBOUNCE_WINDOWS`] windows after the first.
pub fn debounced_due(now: DateTime<Utc>, since: DateTime<Utc>, window: Duration) -> DateTime<Utc> {
    (now + window).min(since + window * MAX_DEBOUNCE_WINDOWS)
}

/// Fires the debounce timers: compares the SKU's current ETA with every
/// open backordered line's promise.
pub struct DelayTimers {
    codec: Codec,
    /// Signs each delayed line's one-click cancel link.
    signer: LinkSigner,
    /// A slip is significant past this many days (policy file).
    significant_slip_days: i64,
    /// Days after a promised window before it is overdue (policy file).
    overdue_grace_days: i64,
    email_topic: String,
    delays_topic: String,
}

impl DelayTimers {
    pub fn new(service: &Service, signer: LinkSigner) -> Self {
        Self {
            codec: service.codec.clone(),
            signer,
            significant_slip_days: service.policy.delays.significant_slip_days,
            overdue_grace_days: service.policy.delays.overdue_grace_days,
            email_topic: service.topics.name(topics::EMAIL_REQUESTS),
            delays_topic: service.topics.name(topics::BACKORDER_DELAYS),
        }
    }
}

impl TimerHandler for DelayTimers {
    fn kinds(&self) -> &[&'static str] {
        &[TIMER_KIND]
    }

    async fn fire(
        &self,
        tx: &Transaction<'_>,
        timer: &Timer,
        now: DateTime<Utc>,
    ) -> Result<Vec<OutboundRecord>, HandlerError> {
        Ok(self.notify(tx, timer, now).await?)
    }
}

/// One open backordered line of the SKU, as the notice needs it.
struct Line {
    order_id: String,
    line_id: String,
    sku: String,
    product_name: String,
    quantity: i32,
    unit_price_minor: i64,
    told: Window,
    currency: String,
    customer: Customer,
}

impl DelayTimers {
    async fn notify(
        &self,
        tx: &Transaction<'_>,
        timer: &Timer,
        now: DateTime<Utc>,
    ) -> Result<Vec<OutboundRecord>, StockError> {
        let Some(sku) = timer.payload.get("sku").and_then(|v| v.as_str()) else {
            return Err(StockError::BadTimer { key: timer.key.clone() });
        };
        let Some(eta) = tx
            .query_opt(
                "SELECT eta_from, eta_to, reason, remedy, version, changed_at, reason_code, reason_locale
                   FROM sku_eta WHERE sku = $1",
                &[&sku],
            )
            .await?
        else {
            return Ok(Vec::new());
        };
        let new = Window {
            from: eta.try_get(0)?,
            to: eta.try_get(1)?,
        };
        let reason = Reason {
            code: eta.try_get(6)?,
            text: eta.try_get::<_, Option<String>>(2)?.unwrap_or_default(),
            remedy: eta.try_get::<_, Option<String>>(3)?.unwrap_or_default(),
            locale: eta.try_get::<_, Option<String>>(7)?.unwrap_or_else(|| "en".into()),
        };
        let version: i64 = eta.try_get(4)?;
        let changed_at: DateTime<Utc> = eta.try_get(5)?;

        // A continuation of an older version stops: the newer change's own
        // debounce timer goes through every order again.
        if let Some(expected) = timer.payload.get("version").and_then(|v| v.as_i64())
            && expected != version
        {
            return Ok(Vec::new());
        }
        let after = timer.payload.get("after").and_then(|v| v.as_str()).unwrap_or_default();

        // One page of orders per firing, so memory and the transaction stay
        // small however many customers wait for the SKU.
        let rows = tx
            .query(
                "WITH page AS (
                     SELECT DISTINCT order_id FROM order_lines
                      WHERE sku = $1 AND availability = 'BACKORDERED' AND status = 'open' AND promise_told
                        AND cancel_requested_at IS NULL AND order_id > $2
                      ORDER BY order_id
                      LIMIT $3)
                 SELECT l.order_id, l.line_id, l.sku, l.product_name, l.quantity, l.unit_price_minor,
                        l.promised_from, l.promised_to, o.currency,
                        c.customer_id, c.email, c.name, c.locale
                   FROM page p
                   JOIN order_lines l ON l.order_id = p.order_id
                   JOIN orders o ON o.order_id = l.order_id
                   JOIN customers c ON c.customer_id = o.customer_id
                  WHERE l.sku = $1 AND l.availability = 'BACKORDERED' AND l.status = 'open' AND l.promise_told
                    AND l.cancel_requested_at IS NULL
                  ORDER BY l.order_id, l.line_id
                    FOR UPDATE OF l",
                &[&sku, &after, &DELAY_PAGE_ORDERS],
            )
            .await?;
        let mut orders_in_page: i64 = 0;
        let mut last_order: Option<String> = None;
        for row in &rows {
            let order_id: &str = row.try_get(0)?;
            if last_order.as_deref() != Some(order_id) {
                orders_in_page += 1;
                last_order = Some(order_id.to_string());
            }
        }
        if let Some(last) = last_order.filter(|_| orders_in_page == DELAY_PAGE_ORDERS) {
            timers::schedule(
                tx,
                &Timer {
                    key: format!("{}:v{version}:{last}", timer_key(sku)),
                    kind: TIMER_KIND.to_string(),
                    due_at: now,
                    payload: serde_json::json!({ "sku": sku, "version": version, "after": last }),
                },
            )
            .await?;
        }

        // Slipped lines by order, lines whose window became known by order;
        // every line whose promise moves.
        let mut now_known: BTreeMap<String, Vec<Line>> = BTreeMap::new();
        let mut slipped: BTreeMap<String, Vec<(Line, bool)>> = BTreeMap::new();
        let (mut moved_orders, mut moved_lines): (Vec<String>, Vec<String>) = (Vec::new(), Vec::new());
        for row in rows {
            let line = Line {
                order_id: row.try_get(0)?,
                line_id: row.try_get(1)?,
                sku: row.try_get(2)?,
                product_name: row.try_get(3)?,
                quantity: row.try_get(4)?,
                unit_price_minor: row.try_get(5)?,
                told: Window {
                    from: row.try_get(6)?,
                    to: row.try_get(7)?,
                },
                currency: row.try_get(8)?,
                customer: Customer {
                    customer_id: row.try_get(9)?,
                    email: row.try_get(10)?,
                    name: row.try_get(11)?,
                    locale: row.try_get(12)?,
                },
            };
            match classify(line.told, new, self.significant_slip_days) {
                Change::Unchanged => continue,
                Change::Improved => {}
                Change::BecameKnown => {
                    moved_orders.push(line.order_id.clone());
                    moved_lines.push(line.line_id.clone());
                    now_known.entry(line.order_id.clone()).or_default().push(line);
                    continue;
                }
                Change::Slipped { significant } => {
                    moved_orders.push(line.order_id.clone());
                    moved_lines.push(line.line_id.clone());
                    slipped
                        .entry(line.order_id.clone())
                        .or_default()
                        .push((line, significant));
                    continue;
                }
            }
            moved_orders.push(line.order_id);
            moved_lines.push(line.line_id);
        }
        if moved_lines.is_empty() {
            return Ok(Vec::new());
        }
        tx.execute(
            "UPDATE order_lines l SET promised_from = $3, promised_to = $4, promise_told = true
               FROM unnest($1::text[], $2::text[]) AS m(order_id, line_id)
              WHERE l.order_id = m.order_id AND l.line_id = m.line_id",
            &[&moved_orders, &moved_lines, &new.from, &new.to],
        )
        .await?;
        // The promise moved: so does (or goes) its overdue timer.
        let ends: Vec<(&str, &str, Option<chrono::NaiveDate>)> = moved_orders
            .iter()
            .zip(&moved_lines)
            .map(|(o, l)| (o.as_str(), l.as_str(), new.to))
            .collect();
        promises::schedule_overdue(tx, &ends, self.overdue_grace_days).await?;

        // A significant slip of any line of an order: one BackorderDelayed
        // carrying all its slipped lines, and segmentation sends the one
        // email that is both apology and offer. Otherwise: the delay notice.
        let mut decisions = Vec::with_capacity(slipped.len());
        let mut delays = Vec::new();
        for (order_id, lines) in &slipped {
            let Some((first, _)) = lines.first() else { continue };
            if lines.iter().any(|(_, significant)| *significant) {
                delays.push(delayed_event(sku, version, order_id, lines, new, &reason, changed_at));
                continue;
            }
            let items: Vec<DelayedItem> = lines
                .iter()
                .map(|(l, _)| DelayedItem {
                    product_name: l.product_name.clone(),
                    quantity: l.quantity,
                    previous_from: emails::iso(l.told.from),
                    previous_to: emails::iso(l.told.to),
                    cancel_url: Some(self.signer.cancel_url(&l.order_id, &l.line_id, &l.customer.customer_id)),
                })
                .collect();
            let data = DelayData {
                order_id,
                items: &items,
                window_from: emails::iso(new.from),
                window_to: emails::iso(new.to),
                reason: ReasonForCustomer::new(
                    reason.code.as_deref(),
                    &reason.text,
                    &reason.remedy,
                    &reason.locale,
                    &first.customer.locale,
                ),
            };
            let request = emails::delay_notice(sku, version, &first.customer, &data, changed_at);
            let line_id = (lines.len() == 1).then(|| first.line_id.clone());
            decisions.push((request, line_id));
        }
        // "As soon as our supplier confirms it, you will hear from us":
        // one short update per order with the window now known.
        for (order_id, lines) in &now_known {
            let Some(first) = lines.first() else { continue };
            let items: Vec<DelayedItem> = lines
                .iter()
                .map(|l| DelayedItem {
                    product_name: l.product_name.clone(),
                    quantity: l.quantity,
                    previous_from: None,
                    previous_to: None,
                    cancel_url: Some(self.signer.cancel_url(&l.order_id, &l.line_id, &l.customer.customer_id)),
                })
                .collect();
            let request = emails::eta_known(sku, version, order_id, &first.customer, &items, new, changed_at);
            let line_id = (lines.len() == 1).then(|| first.line_id.clone());
            decisions.push((request, line_id));
        }
        let decided: Vec<_> = decisions.iter().map(|(r, l)| (r, l.as_deref())).collect();
        email_decisions::record_all(tx, &decided, now).await?;
        let requests: Vec<_> = decisions.iter().map(|(r, _)| r).collect();
        let mut outputs = OutboundRecord::encode_all(&self.codec, &self.email_topic, &requests).await?;
        for event in &delays {
            outputs.push(OutboundRecord::encode(&self.codec, &self.delays_topic, event).await?);
        }
        let significant: usize = delays.iter().map(|d| d.lines.len()).sum();
        metrics::counter!("backorder_stock_emails_requested_total", "template" => emails::DELAY_NOTICE)
            .increment((decisions.len() - now_known.len()) as u64);
        metrics::counter!("backorder_stock_emails_requested_total", "template" => emails::ETA_KNOWN)
            .increment(now_known.len() as u64);
        metrics::counter!("backorder_stock_significant_delays_total").increment(significant as u64);
        tracing::info!(
            sku,
            version,
            lines_moved = moved_lines.len(),
            notices = decisions.len(),
            significant,
            "delay notices decided"
        );
        Ok(outputs)
    }
}

/// Why the ETA moved, as the SKU's latest change said.
struct Reason {
    code: Option<String>,
    text: String,
    remedy: String,
    locale: String,
}

/// The significant slip of `order_id`'s lines, for segmentation. Its event
/// id derives from order, SKU and ETA version, so a replayed firing
/// produces the same event (and segmentation ignores the repeat).
fn delayed_event(
    sku: &str,
    version: i64,
    order_id: &str,
    lines: &[(Line, bool)],
    new: Window,
    reason: &Reason,
    at: DateTime<Utc>,
) -> BackorderDelayed {
    let id = format!("backorder-delayed_{order_id}_{sku}_{version}");
    let delayed_lines: Vec<DelayedLine> = lines
        .iter()
        .map(|(l, _)| DelayedLine {
            line_id: l.line_id.clone(),
            sku: l.sku.clone(),
            product_name: l.product_name.clone(),
            quantity: l.quantity,
            unit_price_minor: l.unit_price_minor,
            old_promise_from: l.told.from,
            old_promise_to: l.told.to,
        })
        .collect();
    let (customer_id, currency) = lines
        .first()
        .map(|(l, _)| (l.customer.customer_id.clone(), l.currency.clone()))
        .unwrap_or_default();
    BackorderDelayed {
        event_id: uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, id.as_bytes()).to_string(),
        occurred_at: at,
        order_id: order_id.to_string(),
        customer_id,
        sku: sku.to_string(),
        new_promise_from: new.from,
        new_promise_to: new.to,
        delayed_value_minor: lines
            .iter()
            .map(|(l, _)| l.unit_price_minor.saturating_mul(i64::from(l.quantity)))
            .sum(),
        currency,
        eta_version: version,
        reason_code: reason.code.clone(),
        reason: reason.text.clone(),
        remedy: reason.remedy.clone(),
        reason_locale: reason.locale.clone(),
        lines: delayed_lines,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_change_moves_the_notice_but_a_burst_waits_at_most_three_windows() {
        let start = DateTime::parse_from_rfc3339("2026-12-01T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let window = Duration::minutes(5);
        assert_eq!(debounced_due(start, start, window), start + Duration::minutes(5));
        let later = start + Duration::minutes(4);
        assert_eq!(debounced_due(later, start, window), start + Duration::minutes(9));
        let much_later = start + Duration::minutes(14);
        assert_eq!(debounced_due(much_later, start, window), start + Duration::minutes(15));
    }
}
