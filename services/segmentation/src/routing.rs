//! Routing a significant delay into a campaign (DESIGN "Routing"): find the
//! in-stock alternatives that fill the same need, make sense in the
//! customer's season and cost about the same; rank them by what customers
//! who bought the delayed item also bought; with none, offer store credit.

use backorder_core::domain::currency;
use backorder_core::domain::geo::{self, Season};
use backorder_core::policy::CampaignPolicy;
use backorder_core::tokio_postgres::Transaction;
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

use crate::error::SegmentationError;

/// One alternative shown in an offer, for one delayed line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alternative {
    /// The delayed line it would replace.
    pub line_id: String,
    pub sku: String,
    pub product_name: String,
    pub price_minor: i64,
    /// Customers who bought the delayed SKU and also this one.
    pub co_purchases: i64,
}

/// A delayed line as routing needs it.
#[derive(Debug, Clone)]
pub struct DelayedLine {
    pub line_id: String,
    pub sku: String,
    pub quantity: i32,
    pub unit_price_minor: i64,
}

/// Which campaign a customer enters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CampaignKind {
    Alternative,
    StoreCredit,
}

impl CampaignKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CampaignKind::Alternative => "alternative",
            CampaignKind::StoreCredit => "store_credit",
        }
    }
}

/// The qualifying alternatives of `lines`, best first, at most
/// `policy.max_alternatives` in all: for each delayed line, products of the
/// same need, in stock, in season for `country` on `today` (empty seasons:
/// all year), in the order's currency and within the price band; ranked by
/// co-purchases, then by how close the price is.
pub async fn alternatives(
    tx: &Transaction<'_>,
    lines: &[DelayedLine],
    currency: &str,
    country: Option<&str>,
    today: NaiveDate,
    policy: &CampaignPolicy,
) -> Result<Vec<Alternative>, SegmentationError> {
    let season: Season = geo::season_at(today, country);
    let band = policy.price_band_percent / 100.0;
    let limit = i64::from(policy.max_alternatives);
    let mut found: Vec<Alternative> = Vec::new();
    for line in lines {
        let rows = tx
            .query(
                "SELECT p.sku, p.name, p.price_minor, COALESCE(cp.customers, 0)::bigint AS co
                   FROM products d
                   JOIN products p ON p.need = d.need AND p.sku <> d.sku
                   LEFT JOIN co_purchases cp
                          ON cp.sku = least(d.sku, p.sku) AND cp.other_sku = greatest(d.sku, p.sku)
                  WHERE d.sku = $1 AND d.need IS NOT NULL
                    AND p.cataloged_at IS NOT NULL AND p.available_quantity > 0
                    AND (cardinality(p.seasons) = 0 OR $2 = ANY(p.seasons))
                    AND p.currency = $3
                    AND p.price_minor BETWEEN $4 AND $5
                  ORDER BY co DESC, abs(p.price_minor - $6) ASC, p.sku
                  LIMIT $7",
                &[
                    &line.sku,
                    &season.as_str(),
                    &currency,
                    &((line.unit_price_minor as f64 * (1.0 - band)).floor() as i64),
                    &((line.unit_price_minor as f64 * (1.0 + band)).ceil() as i64),
                    &line.unit_price_minor,
                    &limit,
                ],
            )
            .await?;
        for row in rows {
            let sku: String = row.try_get(0)?;
            if found.iter().any(|a| a.sku == sku) {
                continue;
            }
            found.push(Alternative {
                line_id: line.line_id.clone(),
                sku,
                product_name: row.try_get(1)?,
                price_minor: row.try_get(2)?,
                co_purchases: row.try_get(3)?,
            });
        }
    }
    // Best first across lines, then at most the policy's number.
    found.sort_by_key(|a| std::cmp::Reverse(a.co_purchases));
    found.truncate(policy.max_alternatives.max(0) as usize);
    Ok(found)
}

/// The store credit for `lines`: the policy's share of their value, at
/// least its minimum, in whole minor units of `currency`.
pub fn store_credit(lines: &[DelayedLine], currency: &str, policy: &CampaignPolicy) -> i64 {
    let value: i64 = lines
        .iter()
        .map(|l| l.unit_price_minor.saturating_mul(i64::from(l.quantity)))
        .sum();
    currency::share_of(value, policy.credit_share_percent)
        .max(currency::major_to_minor(policy.credit_minimum, currency))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(price: i64, quantity: i32) -> DelayedLine {
        DelayedLine {
            line_id: "l".into(),
            sku: "s".into(),
            quantity,
            unit_price_minor: price,
        }
    }

    #[test]
    fn credit_is_ten_percent_with_a_minimum_of_five() {
        let policy = CampaignPolicy::default();
        assert_eq!(store_credit(&[line(12_000, 1)], "EUR", &policy), 1_200);
        assert_eq!(store_credit(&[line(4_000, 1)], "EUR", &policy), 500);
        assert_eq!(store_credit(&[line(2_500, 2), line(3_000, 1)], "EUR", &policy), 800);
    }

    #[test]
    fn zero_decimal_currencies_round_to_whole_units() {
        let policy = CampaignPolicy::default();
        assert_eq!(store_credit(&[line(12_345, 1)], "JPY", &policy), 1_235);
        assert_eq!(store_credit(&[line(30, 1)], "JPY", &policy), 5);
    }
}
