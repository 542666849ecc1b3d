//! The catalog: what `ProductUpserted` says about a SKU, kept for
//! segmentation (need, seasons, price) and for the emails (name, price).

use backorder_core::events::stock::{ProductUpserted, Season};
use backorder_core::tokio_postgres::Transaction;
use chrono::{DateTime, Utc};

use crate::error::StockError;

fn season_name(season: Season) -> &'static str {
    match season {
        Season::Spring => "SPRING",
        Season::Summer => "SUMMER",
        Season::Autumn => "AUTUMN",
        Season::Winter => "WINTER",
    }
}

/// Upserts the product. The event's `available_quantity` is the shop's
/// count at that moment and replaces the stored one; a replay of the event
/// last applied (or an older one) changes nothing, so surplus added by
/// arrivals since is kept. Returns whether anything changed.
pub async fn upsert(tx: &Transaction<'_>, product: &ProductUpserted, now: DateTime<Utc>) -> Result<bool, StockError> {
    let seasons: Vec<&str> = product.seasons.iter().copied().map(season_name).collect();
    let changed = tx
        .execute(
            "INSERT INTO products (sku, name, category, need, seasons, price_minor, currency,
                                   available_quantity, upsert_event_id, upsert_occurred_at, cataloged_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11)
             ON CONFLICT (sku) DO UPDATE SET
                 name = EXCLUDED.name, category = EXCLUDED.category, need = EXCLUDED.need,
                 seasons = EXCLUDED.seasons, price_minor = EXCLUDED.price_minor, currency = EXCLUDED.currency,
                 available_quantity = EXCLUDED.available_quantity,
                 upsert_event_id = EXCLUDED.upsert_event_id, upsert_occurred_at = EXCLUDED.upsert_occurred_at,
                 cataloged_at = COALESCE(products.cataloged_at, EXCLUDED.cataloged_at),
                 updated_at = EXCLUDED.updated_at
             WHERE products.upsert_event_id IS DISTINCT FROM EXCLUDED.upsert_event_id
               AND (products.upsert_occurred_at IS NULL OR products.upsert_occurred_at <= EXCLUDED.upsert_occurred_at)",
            &[
                &product.sku,
                &product.name,
                &product.category,
                &product.need,
                &seasons,
                &product.price_minor,
                &product.currency,
                &product.available_quantity,
                &product.event_id,
                &product.occurred_at,
                &now,
            ],
        )
        .await?;
    Ok(changed == 1)
}
