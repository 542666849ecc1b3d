//! SQL for orders, lines, customers and carts. Every write is idempotent
//! (`ON CONFLICT`), so a replayed event changes nothing. The writes of a
//! batch of placed orders are multi-row statements over `unnest` arrays,
//! prepared once per connection (`prepare_cached`): a batch costs the
//! same few round trips whatever its size.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};

use backorder_core::deadpool_postgres::Transaction;
use backorder_core::events::orders::{Availability, CartAbandoned, Customer, OrderCancelled, OrderLine, OrderPlaced};
use backorder_core::tokio_postgres::Error;
use chrono::{DateTime, NaiveDate, Utc};

/// Tag on orders with at least one backordered line (PLAYBOOK).
pub const ORDER_TAG_BACKORDER: &str = "backorder";
/// Tag on customers who bought backordered goods (PLAYBOOK).
pub const CUSTOMER_TAG_BACKORDER_BUYER: &str = "backorder-buyer";

/// A customer's contact details as a batch leaves them: what applying its
/// events one after another would store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerUpsert<'a> {
    pub customer_id: &'a str,
    /// The latest event's details win, as they would one event at a time.
    pub email: &'a str,
    pub name: &'a str,
    pub locale: &'a str,
    /// The latest known country: an event without one keeps the earlier.
    pub country: Option<&'a str>,
    /// Tags to add (never removed), sorted and distinct.
    pub tags: Vec<&'a str>,
    /// The earliest time the batch saw the customer.
    pub seen_at: DateTime<Utc>,
}

impl<'a> CustomerUpsert<'a> {
    /// The customer as one event describes it.
    pub fn new(customer: &'a Customer, seen_at: DateTime<Utc>, tag: Option<&'a str>) -> Self {
        Self {
            customer_id: &customer.customer_id,
            email: customer.email.trim(),
            name: &customer.name,
            locale: &customer.locale,
            country: customer.country.as_deref(),
            tags: tag.into_iter().collect(),
            seen_at,
        }
    }

    /// Folds a later event about the same customer into this one.
    fn merge(&mut self, later: CustomerUpsert<'a>) {
        self.email = later.email;
        self.name = later.name;
        self.locale = later.locale;
        self.country = later.country.or(self.country);
        self.tags.extend(later.tags);
        self.tags.sort_unstable();
        self.tags.dedup();
        self.seen_at = self.seen_at.min(later.seen_at);
    }
}

/// Merges events about customers into one upsert per customer (a
/// multi-row upsert may touch a row only once), sorted by id so that
/// concurrent batches lock customers in the same order.
pub fn merge_customers<'a>(events: impl IntoIterator<Item = CustomerUpsert<'a>>) -> Vec<CustomerUpsert<'a>> {
    let mut merged: BTreeMap<&'a str, CustomerUpsert<'a>> = BTreeMap::new();
    for event in events {
        match merged.entry(event.customer_id) {
            Entry::Occupied(mut known) => known.get_mut().merge(event),
            Entry::Vacant(slot) => {
                slot.insert(event);
            }
        }
    }
    merged.into_values().collect()
}

/// Upserts customers' contact details in one statement; tags are added,
/// never removed. `customers` must hold each customer once
/// ([`merge_customers`]).
pub async fn upsert_customers(tx: &Transaction<'_>, customers: &[CustomerUpsert<'_>]) -> Result<(), Error> {
    if customers.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = customers.iter().map(|c| c.customer_id).collect();
    let emails: Vec<&str> = customers.iter().map(|c| c.email).collect();
    let names: Vec<&str> = customers.iter().map(|c| c.name).collect();
    let locales: Vec<&str> = customers.iter().map(|c| c.locale).collect();
    let countries: Vec<Option<&str>> = customers.iter().map(|c| c.country).collect();
    // PostgreSQL has no arrays of arrays of varying length, so the tags
    // travel as one comma-separated text per customer (tags hold no comma).
    let tags: Vec<String> = customers.iter().map(|c| c.tags.join(",")).collect();
    let seen: Vec<DateTime<Utc>> = customers.iter().map(|c| c.seen_at).collect();
    let statement = tx
        .prepare_cached(
            "INSERT INTO customers (customer_id, email, name, locale, country, tags, first_seen_at)
             SELECT i, e, n, l, c, COALESCE(string_to_array(NULLIF(t, ''), ','), '{}'), s
               FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                           $7::timestamptz[]) AS u(i, e, n, l, c, t, s)
             ON CONFLICT (customer_id) DO UPDATE SET
                 email = EXCLUDED.email, name = EXCLUDED.name, locale = EXCLUDED.locale,
                 country = COALESCE(EXCLUDED.country, customers.country),
                 tags = ARRAY(SELECT DISTINCT unnest(customers.tags || EXCLUDED.tags) ORDER BY 1),
                 first_seen_at = LEAST(customers.first_seen_at, EXCLUDED.first_seen_at),
                 updated_at = now()
             -- A returning customer whose details did not change is not
             -- written again: no new row version, no index entries.
             WHERE (customers.email, customers.name, customers.locale, customers.country, customers.tags,
                    customers.first_seen_at)
                   IS DISTINCT FROM
                   (EXCLUDED.email, EXCLUDED.name, EXCLUDED.locale, COALESCE(EXCLUDED.country, customers.country),
                    ARRAY(SELECT DISTINCT unnest(customers.tags || EXCLUDED.tags) ORDER BY 1),
                    LEAST(customers.first_seen_at, EXCLUDED.first_seen_at))",
        )
        .await?;
    tx.execute(&statement, &[&ids, &emails, &names, &locales, &countries, &tags, &seen])
        .await?;
    Ok(())
}

/// Records orders and their lines, two statements whatever their number.
/// `orders` must hold each order once. Returns the ids of the orders that
/// were new (a known order, a replay, keeps what was stored first).
pub async fn insert_orders(tx: &Transaction<'_>, orders: &[&OrderPlaced]) -> Result<HashSet<String>, Error> {
    if orders.is_empty() {
        return Ok(HashSet::new());
    }
    let ids: Vec<&str> = orders.iter().map(|o| o.order_id.as_str()).collect();
    let customers: Vec<&str> = orders.iter().map(|o| o.customer.customer_id.as_str()).collect();
    let placed: Vec<DateTime<Utc>> = orders.iter().map(|o| o.occurred_at).collect();
    let currencies: Vec<&str> = orders.iter().map(|o| o.currency.as_str()).collect();
    let totals: Vec<i64> = orders.iter().map(|o| o.total_minor).collect();
    let backordered: Vec<bool> = orders.iter().map(|o| has_backorder(o)).collect();
    let event_ids: Vec<&str> = orders.iter().map(|o| o.event_id.as_str()).collect();
    let statement = tx
        .prepare_cached(
            "INSERT INTO orders (order_id, customer_id, placed_at, currency, total_minor, tags, event_id)
             SELECT o, c, p, cur, t, CASE WHEN b THEN ARRAY[$8::text] ELSE '{}' END, e
               FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::bigint[],
                           $6::bool[], $7::text[]) AS u(o, c, p, cur, t, b, e)
             ON CONFLICT (order_id) DO NOTHING
             RETURNING order_id",
        )
        .await?;
    let rows = tx
        .query(
            &statement,
            &[
                &ids,
                &customers,
                &placed,
                &currencies,
                &totals,
                &backordered,
                &event_ids,
                &ORDER_TAG_BACKORDER,
            ],
        )
        .await?;
    let new: HashSet<String> = rows.iter().map(|r| r.try_get(0)).collect::<Result<_, _>>()?;
    // One multi-row statement for all lines of the new orders.
    let lines: Vec<(&str, &OrderLine)> = orders
        .iter()
        .filter(|o| new.contains(&o.order_id))
        .flat_map(|o| o.lines.iter().map(move |l| (o.order_id.as_str(), l)))
        .collect();
    if lines.is_empty() {
        return Ok(new);
    }
    let order_ids: Vec<&str> = lines.iter().map(|(o, _)| *o).collect();
    let line_ids: Vec<&str> = lines.iter().map(|(_, l)| l.line_id.as_str()).collect();
    let skus: Vec<&str> = lines.iter().map(|(_, l)| l.sku.as_str()).collect();
    let names: Vec<&str> = lines.iter().map(|(_, l)| l.product_name.as_str()).collect();
    let categories: Vec<Option<&str>> = lines.iter().map(|(_, l)| l.category.as_deref()).collect();
    let quantities: Vec<i32> = lines.iter().map(|(_, l)| l.quantity).collect();
    let prices: Vec<i64> = lines.iter().map(|(_, l)| l.unit_price_minor).collect();
    let availability: Vec<&str> = lines.iter().map(|(_, l)| l.availability.as_str()).collect();
    let statement = tx
        .prepare_cached(
            "INSERT INTO order_lines (order_id, line_id, sku, product_name, category, quantity,
                                      unit_price_minor, availability)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int[],
                                  $7::bigint[], $8::text[])
             ON CONFLICT (order_id, line_id) DO NOTHING",
        )
        .await?;
    tx.execute(
        &statement,
        &[
            &order_ids,
            &line_ids,
            &skus,
            &names,
            &categories,
            &quantities,
            &prices,
            &availability,
        ],
    )
    .await?;
    Ok(new)
}

/// Whether the order has at least one backordered line.
pub fn has_backorder(order: &OrderPlaced) -> bool {
    order.lines.iter().any(|l| l.availability == Availability::Backordered)
}

/// The promise recorded for one line: what the customer was told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Promise {
    pub from: Option<NaiveDate>,
    pub to: Option<NaiveDate>,
}

/// Fixes the promise of every backordered line of the orders that has
/// none yet, from the SKU's current supplier ETA ("unknown" when there is
/// none), and returns the promise of every backordered line by order id,
/// then line id. The first promise is also kept apart
/// (`first_promised_*`), for the on-time metric. On replay the recorded
/// promise is returned unchanged, so the email is the same.
pub async fn promise_backordered_lines(
    tx: &Transaction<'_>,
    order_ids: &[&str],
) -> Result<HashMap<String, Vec<(String, Promise)>>, Error> {
    if order_ids.is_empty() {
        return Ok(HashMap::new());
    }
    let statement = tx
        .prepare_cached(
            "WITH told AS (
                 UPDATE order_lines l
                    SET promised_from = e.eta_from, promised_to = e.eta_to, promise_told = true,
                        first_promised_from = e.eta_from, first_promised_to = e.eta_to
                   FROM order_lines src
                   LEFT JOIN sku_eta e ON e.sku = src.sku
                  WHERE l.order_id = ANY($1) AND src.order_id = l.order_id AND src.line_id = l.line_id
                    AND l.availability = 'BACKORDERED' AND NOT l.promise_told
              RETURNING l.order_id, l.line_id, l.promised_from, l.promised_to)
             SELECT order_id, line_id, promised_from, promised_to FROM told
             UNION ALL
             SELECT order_id, line_id, promised_from, promised_to FROM order_lines
              WHERE order_id = ANY($1) AND availability = 'BACKORDERED' AND promise_told
                AND (order_id, line_id) NOT IN (SELECT order_id, line_id FROM told)",
        )
        .await?;
    let rows = tx.query(&statement, &[&order_ids]).await?;
    let mut promises: HashMap<String, Vec<(String, Promise)>> = HashMap::new();
    for row in rows {
        let promise = Promise {
            from: row.try_get(2)?,
            to: row.try_get(3)?,
        };
        promises
            .entry(row.try_get(0)?)
            .or_default()
            .push((row.try_get(1)?, promise));
    }
    // Line ids sort the same on every replay, so what is derived from the
    // list (the nurture enrolment) does not depend on the row order.
    for lines in promises.values_mut() {
        lines.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    }
    Ok(promises)
}

/// Cancels the named lines (all when empty) that have not shipped, and
/// records that a cancellation was asked for on every named line, shipped
/// or not (a delivered line cancelled later is a return: it gets no
/// follow-up). Returns how many lines changed status.
pub async fn cancel_lines(tx: &Transaction<'_>, cancel: &OrderCancelled) -> Result<u64, Error> {
    let changed = tx
        .execute(
            "UPDATE order_lines SET status = 'cancelled'
              WHERE order_id = $1 AND status NOT IN ('shipped', 'cancelled')
                AND (cardinality($2::text[]) = 0 OR line_id = ANY($2))",
            &[&cancel.order_id, &cancel.line_ids],
        )
        .await?;
    tx.execute(
        "UPDATE order_lines SET cancel_requested_at = $3
          WHERE order_id = $1 AND cancel_requested_at IS NULL
            AND (cardinality($2::text[]) = 0 OR line_id = ANY($2))",
        &[&cancel.order_id, &cancel.line_ids, &cancel.occurred_at],
    )
    .await?;
    if cancel.line_ids.is_empty() {
        tx.execute(
            "UPDATE orders SET cancelled_at = COALESCE(cancelled_at, $2) WHERE order_id = $1",
            &[&cancel.order_id, &cancel.occurred_at],
        )
        .await?;
    }
    Ok(changed)
}

/// The order's shipments whose every line had its cancellation asked for.
pub async fn fully_cancelled_shipments(tx: &Transaction<'_>, order_id: &str) -> Result<Vec<String>, Error> {
    let rows = tx
        .query(
            "SELECT s.shipment_id FROM shipments s
              WHERE s.order_id = $1
                AND NOT EXISTS (SELECT 1 FROM order_lines l
                                 WHERE l.order_id = s.order_id AND l.line_id = ANY(s.line_ids)
                                   AND l.cancel_requested_at IS NULL)",
            &[&order_id],
        )
        .await?;
    rows.iter().map(|r| r.try_get(0)).collect()
}

/// Records an abandoned cart and its customer (for back-in-stock emails).
pub async fn upsert_cart_with_customer(tx: &Transaction<'_>, cart: &CartAbandoned) -> Result<(), Error> {
    upsert_customers(tx, &[CustomerUpsert::new(&cart.customer, cart.occurred_at, None)]).await?;
    tx.execute(
        "INSERT INTO carts (cart_id, customer_id, skus, abandoned_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (cart_id) DO UPDATE SET skus = EXCLUDED.skus, abandoned_at = EXCLUDED.abandoned_at",
        &[&cart.cart_id, &cart.customer.customer_id, &cart.skus, &cart.occurred_at],
    )
    .await?;
    Ok(())
}

/// Counts, for ranking alternatives, that each customer bought each SKU of
/// their orders together with everything they bought before: only SKUs
/// new to the customer add pairs (one row per unordered pair, the lower SKU
/// first), so a replayed order or a repeat purchase counts nothing twice.
/// Several orders of one customer in one batch count what they would one
/// after another (every pair with at least one new SKU, once). One
/// statement for the batch.
/// `purchases` are (customer, order, sku) in event order.
pub async fn record_co_purchases(tx: &Transaction<'_>, purchases: &[(&str, &str, &str)]) -> Result<(), Error> {
    // The first order that brought a SKU to a customer is the one kept, as
    // one event at a time would; sorted so concurrent batches lock alike.
    let mut first: BTreeMap<(&str, &str), &str> = BTreeMap::new();
    for (customer, order, sku) in purchases {
        first.entry((customer, sku)).or_insert(order);
    }
    if first.is_empty() {
        return Ok(());
    }
    let customers: Vec<&str> = first.keys().map(|(c, _)| *c).collect();
    let skus: Vec<&str> = first.keys().map(|(_, s)| *s).collect();
    let orders: Vec<&str> = first.values().copied().collect();
    let statement = tx
        .prepare_cached(
            "WITH new AS (
                 INSERT INTO customer_skus (customer_id, sku, order_id)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[])
                 ON CONFLICT DO NOTHING
                 RETURNING customer_id, sku),
             -- The statement's snapshot does not see `new`'s rows in
             -- customer_skus: `old` is what the customers had bought before.
             old AS (SELECT customer_id, sku FROM customer_skus
                      WHERE customer_id = ANY(ARRAY(SELECT DISTINCT unnest($1::text[])))),
             -- One row per unordered pair, the lower SKU first (V303).
             pairs AS (
                 SELECT least(n.sku, o.sku) AS a, greatest(n.sku, o.sku) AS b
                   FROM new n JOIN old o USING (customer_id)
                 UNION ALL SELECT n1.sku, n2.sku FROM new n1 JOIN new n2
                                  ON n1.customer_id = n2.customer_id AND n1.sku < n2.sku)
             INSERT INTO co_purchases (sku, other_sku, customers)
             SELECT a, b, count(*) FROM pairs GROUP BY a, b ORDER BY a, b
             ON CONFLICT (sku, other_sku) DO UPDATE SET customers = co_purchases.customers + EXCLUDED.customers",
        )
        .await?;
    tx.execute(&statement, &[&customers, &skus, &orders]).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn customer(email: &str, country: Option<&str>) -> Customer {
        Customer {
            customer_id: "cust-1".into(),
            email: email.into(),
            name: format!("name of {email}"),
            locale: "en".into(),
            country: country.map(str::to_string),
        }
    }

    #[test]
    fn a_customer_seen_several_times_in_a_batch_ends_as_one_event_at_a_time_would_leave_it() {
        let at = |day: u32| chrono::TimeZone::with_ymd_and_hms(&Utc, 2026, 11, day, 9, 0, 0).unwrap();
        let (first, second, third) = (
            customer("a@example.com", Some("DE")),
            customer(" b@example.com ", None),
            customer("c@example.com", None),
        );
        let other = Customer {
            customer_id: "cust-0".into(),
            ..customer("z@example.com", Some("FR"))
        };
        let merged = merge_customers([
            CustomerUpsert::new(&first, at(3), None),
            CustomerUpsert::new(&second, at(2), Some(CUSTOMER_TAG_BACKORDER_BUYER)),
            CustomerUpsert::new(&other, at(5), None),
            CustomerUpsert::new(&third, at(4), Some(CUSTOMER_TAG_BACKORDER_BUYER)),
        ]);
        let ids: Vec<&str> = merged.iter().map(|c| c.customer_id).collect();
        assert_eq!(ids, ["cust-0", "cust-1"], "one upsert per customer, sorted");
        let merged = &merged[1];
        assert_eq!(merged.email, "c@example.com", "the latest details win");
        assert_eq!(merged.name, "name of c@example.com");
        assert_eq!(
            merged.country,
            Some("DE"),
            "an event without a country keeps the known one"
        );
        assert_eq!(merged.tags, [CUSTOMER_TAG_BACKORDER_BUYER], "tags added once");
        assert_eq!(merged.seen_at, at(2), "the earliest sighting");
    }
}
