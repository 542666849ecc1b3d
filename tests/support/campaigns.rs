//! Building blocks of the campaign scenarios: a catalog with needs and
//! seasons, orders from customers in a given country and currency, the
//! clock set to a calendar date, and what segmentation stored.

use backorder_core::events::orders::{Availability, Customer, OrderLine, OrderPlaced};
use backorder_core::events::stock::{ProductUpserted, Season, SupplierEtaChanged};
use chrono::{DateTime, NaiveDate, Utc};

use crate::TestApp;
use crate::scenario::clock_now;

/// A catalog entry of `need`, available in `seasons` (empty: all year).
pub fn catalog(
    sku: &str,
    need: &str,
    seasons: &[Season],
    price_minor: i64,
    available: i32,
    currency: &str,
) -> ProductUpserted {
    ProductUpserted {
        event_id: uuid::Uuid::new_v4().to_string(),
        occurred_at: Utc::now(),
        sku: sku.to_string(),
        name: format!("Item {sku}"),
        category: "outdoor".to_string(),
        need: need.to_string(),
        seasons: seasons.to_vec(),
        price_minor,
        currency: currency.to_string(),
        available_quantity: available,
    }
}

/// One line of [`order`]: (sku, unit price, quantity, backordered).
pub type Line<'a> = (&'a str, i64, i32, bool);

/// An order of `customer_id` in `country`, paid in `currency`.
#[allow(clippy::too_many_arguments)]
pub fn order(
    order_id: &str,
    customer_id: &str,
    recipient: &str,
    locale: &str,
    country: &str,
    currency: &str,
    lines: &[Line<'_>],
    at: DateTime<Utc>,
) -> OrderPlaced {
    OrderPlaced {
        event_id: uuid::Uuid::new_v4().to_string(),
        occurred_at: at,
        order_id: order_id.to_string(),
        customer: Customer {
            customer_id: customer_id.to_string(),
            email: recipient.to_string(),
            name: "Kim".to_string(),
            locale: locale.to_string(),
            country: Some(country.to_string()),
        },
        lines: lines
            .iter()
            .enumerate()
            .map(|(i, (sku, price, quantity, backordered))| OrderLine {
                line_id: format!("l{}", i + 1),
                sku: (*sku).to_string(),
                product_name: format!("Item {sku}"),
                category: Some("outdoor".to_string()),
                quantity: *quantity,
                unit_price_minor: *price,
                availability: if *backordered {
                    Availability::Backordered
                } else {
                    Availability::InStock
                },
            })
            .collect(),
        currency: currency.to_string(),
        total_minor: lines.iter().map(|(_, p, q, _)| p * i64::from(*q)).sum(),
    }
}

/// An ETA of `sku` from `from` to `to` with a coded reason.
pub fn eta_window(sku: &str, from: NaiveDate, to: NaiveDate, at: DateTime<Utc>) -> SupplierEtaChanged {
    SupplierEtaChanged {
        event_id: uuid::Uuid::new_v4().to_string(),
        occurred_at: at,
        sku: sku.to_string(),
        eta_from: Some(from),
        eta_to: Some(to),
        reason: "The factory lost a week to a power cut".to_string(),
        remedy: "We moved our order to their next production run".to_string(),
        reason_code: Some(backorder_core::events::stock::DelayReasonCode::ProductionDelay),
        reason_locale: Some("en".to_string()),
    }
}

/// Sets the controlled clock to `at` (it keeps flowing from there).
pub async fn set_clock(app: &TestApp, at: DateTime<Utc>) {
    let now = clock_now(app).await;
    backorder_core::clock::advance(&app.pool, at - now)
        .await
        .expect("set the clock");
}

/// The offers of `order_id`'s campaigns: (seq, state, credit_minor,
/// alternative skus in the order shown).
pub async fn offers(app: &TestApp, order_id: &str) -> Vec<(i32, String, i64, Vec<String>)> {
    let client = app.pool.get().await.expect("db");
    client
        .query(
            "SELECT o.seq, o.state, o.credit_minor, o.alternatives
               FROM offers o JOIN campaigns c ON c.campaign_id = o.campaign_id
              WHERE c.order_id = $1 ORDER BY o.seq",
            &[&order_id],
        )
        .await
        .expect("offers")
        .into_iter()
        .map(|r| {
            let alternatives: serde_json::Value = r.get(3);
            let skus = alternatives
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.get("sku").and_then(|s| s.as_str()).map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            (r.get(0), r.get(1), r.get(2), skus)
        })
        .collect()
}

/// `order_id`'s campaign: (kind, state, end_reason).
pub async fn campaign(app: &TestApp, order_id: &str) -> Option<(String, String, Option<String>)> {
    let client = app.pool.get().await.expect("db");
    client
        .query_opt(
            "SELECT kind, state, end_reason FROM campaigns WHERE order_id = $1 ORDER BY started_at DESC LIMIT 1",
            &[&order_id],
        )
        .await
        .expect("campaign")
        .map(|r| (r.get(0), r.get(1), r.get(2)))
}

/// The HTML of an email with the entities minijinja writes in attributes
/// decoded (`&#x2f;` for `/`, `&amp;`), so links can be found and followed.
pub fn unescape(html: &str) -> String {
    html.replace("&#x2f;", "/")
        .replace("&#x27;", "'")
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}
