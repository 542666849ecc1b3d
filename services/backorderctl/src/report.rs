//! `backorderctl report cohorts`: do backorders make good customers?
//! (PLAYBOOK: tagging and comparing.) Compares customers tagged
//! `backorder-buyer` (they bought backordered goods at least once) with all
//! other customers who ordered: customers, total orders, orders per
//! customer, days between orders, average order value and lifetime value
//! (revenue per customer), per currency. Wholly cancelled orders and
//! orders whose every line was cancelled do not count, a cancelled line's
//! value is not revenue, and a customer whose backorders were all
//! cancelled is not a backorder buyer; customers who only abandoned carts
//! are not customers here.

use std::io::Write;

use backorder_core::config::Settings;
use backorder_core::tokio_postgres::Row;
use clap::{Args, Subcommand};
use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{CellAlignment, ContentArrangement, Table};
use serde::Serialize;

use crate::{CtlError, print_rows, query_rows};

/// `report` subcommands.
#[derive(Debug, Subcommand)]
pub enum ReportCommand {
    /// Compare backorder buyers with the other customers.
    #[command(long_about = COHORTS_ABOUT)]
    Cohorts(CohortsArgs),
}

const COHORTS_ABOUT: &str = "\
Compare customers who bought backordered goods (tag backorder-buyer) with the
other customers: customers, total orders, orders per customer, average days
between orders (customers with two or more orders), average order value and
lifetime value (revenue per customer), one row per cohort and currency.
Cancelled orders and cancelled lines' value are left out; a customer whose
backorders were all cancelled counts with the other customers.";

#[derive(Debug, Args)]
pub struct CohortsArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// One cohort in one currency.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cohort {
    /// `backorder-buyers` or `other-customers`.
    pub cohort: &'static str,
    pub currency: String,
    pub customers: i64,
    pub orders: i64,
    pub revenue_minor: i64,
    pub orders_per_customer: f64,
    pub average_order_value_minor: i64,
    pub lifetime_value_minor: i64,
    /// Average over customers with two or more orders; none without any.
    pub days_between_orders: Option<f64>,
}

impl Cohort {
    /// Derives the ratios from the counts.
    pub fn new(
        backorder_buyers: bool,
        currency: String,
        customers: i64,
        orders: i64,
        revenue_minor: i64,
        days_between_orders: Option<f64>,
    ) -> Self {
        let ratio = |a: i64, b: i64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        Self {
            cohort: if backorder_buyers {
                "backorder-buyers"
            } else {
                "other-customers"
            },
            currency,
            customers,
            orders,
            revenue_minor,
            orders_per_customer: ratio(orders, customers),
            average_order_value_minor: ratio(revenue_minor, orders).round() as i64,
            lifetime_value_minor: ratio(revenue_minor, customers).round() as i64,
            days_between_orders,
        }
    }

    fn from_row(row: &Row) -> Result<Self, backorder_core::tokio_postgres::Error> {
        Ok(Self::new(
            row.try_get(0)?,
            row.try_get(1)?,
            row.try_get(2)?,
            row.try_get(3)?,
            row.try_get(4)?,
            row.try_get(5)?,
        ))
    }
}

const QUERY: &str = "\
WITH kept_orders AS (
    -- An order counts with what the customer kept: wholly cancelled
    -- orders and orders whose every line was cancelled do not count, and
    -- a cancelled line's value is taken off the order's total.
    SELECT o.order_id, o.customer_id, o.currency, o.placed_at,
           o.total_minor - COALESCE(sum(l.quantity::bigint * l.unit_price_minor)
                                    FILTER (WHERE l.status = 'cancelled' OR l.cancel_requested_at IS NOT NULL), 0)
               AS value,
           bool_or(l.availability = 'BACKORDERED' AND l.status <> 'cancelled' AND l.cancel_requested_at IS NULL)
               AS kept_backorder
      FROM orders o JOIN order_lines l ON l.order_id = o.order_id
     WHERE o.cancelled_at IS NULL
     GROUP BY o.order_id
    HAVING bool_or(l.status <> 'cancelled' AND l.cancel_requested_at IS NULL)),
buyers AS (
    -- The tag says the customer once ordered backordered goods; a backorder
    -- they cancelled does not make them a backorder buyer here.
    SELECT k.customer_id, 'backorder-buyer' = ANY(c.tags) AND bool_or(k.kept_backorder) AS buyer
      FROM kept_orders k JOIN customers c ON c.customer_id = k.customer_id
     GROUP BY k.customer_id, c.tags),
per_customer AS (
    SELECT b.buyer, k.currency, count(*) AS orders, sum(k.value) AS revenue,
           CASE WHEN count(*) > 1
                THEN extract(epoch FROM max(k.placed_at) - min(k.placed_at)) / 86400.0 / (count(*) - 1)
           END AS gap_days
      FROM kept_orders k JOIN buyers b ON b.customer_id = k.customer_id
     GROUP BY k.customer_id, b.buyer, k.currency)
SELECT buyer, currency, count(*)::bigint, sum(orders)::bigint, sum(revenue)::bigint, avg(gap_days)::float8
  FROM per_customer
 GROUP BY buyer, currency
 ORDER BY currency, buyer DESC";

/// Digits after the decimal point: the project's one ISO 4217 table.
fn exponent(currency: &str) -> u32 {
    backorder_core::domain::currency::minor_unit_digits(currency)
}

/// `1,234.50 EUR`: minor units as a plain, locale-neutral amount.
pub fn money(minor: i64, currency: &str) -> String {
    let exp = exponent(currency);
    let scale = 10_u64.pow(exp);
    let abs = minor.unsigned_abs();
    let digits = (abs / scale).to_string();
    let mut grouped = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(c);
    }
    let sign = if minor < 0 { "-" } else { "" };
    if exp == 0 {
        format!("{sign}{grouped} {currency}")
    } else {
        format!("{sign}{grouped}.{:0w$} {currency}", abs % scale, w = exp as usize)
    }
}

/// The table `report cohorts` prints.
pub fn render_table(cohorts: &[Cohort]) -> String {
    let mut table = Table::new();
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header([
            "cohort",
            "currency",
            "customers",
            "orders",
            "orders/customer",
            "days between orders",
            "avg order value",
            "lifetime value",
        ]);
    for c in cohorts {
        table.add_row([
            c.cohort.to_string(),
            c.currency.clone(),
            c.customers.to_string(),
            c.orders.to_string(),
            format!("{:.2}", c.orders_per_customer),
            c.days_between_orders
                .map(|d| format!("{d:.1}"))
                .unwrap_or_else(|| "-".into()),
            money(c.average_order_value_minor, &c.currency),
            money(c.lifetime_value_minor, &c.currency),
        ]);
    }
    for column in 2..8 {
        if let Some(col) = table.column_mut(column) {
            col.set_cell_alignment(CellAlignment::Right);
        }
    }
    table.to_string()
}

/// Runs `report`.
pub async fn run(command: ReportCommand, settings: &Settings, out: &mut impl Write) -> Result<(), CtlError> {
    let ReportCommand::Cohorts(args) = command;
    let cohorts = query_rows(settings, QUERY, &[], Cohort::from_row).await?;
    if !print_rows(out, &cohorts, args.json, "no orders yet", render_table)? {
        return Ok(());
    }
    writeln!(
        out,
        "backorder-buyers: customers tagged backorder-buyer; lifetime value = revenue per customer"
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_are_derived_and_safe_with_zero() {
        let c = Cohort::new(true, "EUR".into(), 2, 3, 10_000, Some(12.5));
        assert_eq!(c.cohort, "backorder-buyers");
        assert!((c.orders_per_customer - 1.5).abs() < 1e-9);
        assert_eq!(c.average_order_value_minor, 3_333);
        assert_eq!(c.lifetime_value_minor, 5_000);
        let empty = Cohort::new(false, "EUR".into(), 0, 0, 0, None);
        assert_eq!(empty.orders_per_customer, 0.0);
        assert_eq!(empty.lifetime_value_minor, 0);
    }

    #[test]
    fn money_uses_the_currency_exponent() {
        assert_eq!(money(123_450, "EUR"), "1,234.50 EUR");
        assert_eq!(money(12_000, "KRW"), "12,000 KRW");
        assert_eq!(money(-5, "USD"), "-0.05 USD");
    }

    #[test]
    fn the_table_names_both_cohorts() {
        let table = render_table(&[
            Cohort::new(true, "EUR".into(), 2, 3, 10_000, Some(12.5)),
            Cohort::new(false, "EUR".into(), 1, 1, 2_500, None),
        ]);
        assert!(
            table.contains("backorder-buyers") && table.contains("other-customers"),
            "{table}"
        );
        assert!(table.contains("50.00 EUR") && table.contains("12.5"), "{table}");
    }
}
