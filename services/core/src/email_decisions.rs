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
    record_all(client, &[(request, line_id)], decided_at).await
}

/// Records many decisions in one multi-row statement, with the semantics
/// of [`record`]: a restock can decide tens of thousands of emails at once.
pub async fn record_all<C: GenericClient>(
    client: &C,
    decisions: &[(&EmailRequested, Option<&str>)],
    decided_at: DateTime<Utc>,
) -> Result<(), DbError> {
    if decisions.is_empty() {
        return Ok(());
    }
    let keys: Vec<&str> = decisions.iter().map(|(r, _)| r.dedup_key.as_str()).collect();
    let orders: Vec<Option<&str>> = decisions.iter().map(|(r, _)| r.order_id.as_deref()).collect();
    let lines: Vec<Option<&str>> = decisions.iter().map(|(_, l)| *l).collect();
    let templates: Vec<&str> = decisions.iter().map(|(r, _)| r.template.as_str()).collect();
    client
        .execute(
            "INSERT INTO email_decisions (dedup_key, order_id, line_id, template, decided_at)
             SELECT k, o, l, t, $5 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS u(k, o, l, t)
             ON CONFLICT (dedup_key) DO NOTHING",
            &[&keys, &orders, &lines, &templates, &decided_at],
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
    Ok(row.try_get(0)?)
}
