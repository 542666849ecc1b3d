//! When each email was decided, on the injectable clock (see the
//! `email_decisions` table). Consumers and timers record every email
//! request they emit here, in the transaction that decided it.

use chrono::{DateTime, Utc};
use tokio_postgres::GenericClient;

use crate::db::DbError;
use crate::events::internal::EmailRequested;

/// Records that `request` (about `line_id`, if one line) was decided at
/// `decided_at`. Idempotent: a replay keeps the first time.
pub async fn record<C: GenericClient>(
    client: &C,
    request: &EmailRequested,
    line_id: Option<&str>,
    decided_at: DateTime<Utc>,
) -> Result<(), DbError> {
    client
        .execute(
            "INSERT INTO email_decisions (dedup_key, order_id, line_id, template, decided_at)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (dedup_key) DO NOTHING",
            &[
                &request.dedup_key,
                &request.order_id,
                &line_id,
                &request.template,
                &decided_at,
            ],
        )
        .await?;
    Ok(())
}

/// The latest decision of any email about `order_id`.
pub async fn last_for_order<C: GenericClient>(client: &C, order_id: &str) -> Result<Option<DateTime<Utc>>, DbError> {
    let row = client
        .query_one(
            "SELECT max(decided_at) FROM email_decisions WHERE order_id = $1",
            &[&order_id],
        )
        .await?;
    Ok(row.get(0))
}
