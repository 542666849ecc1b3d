//! When each email was decided, on the injectable clock (see the
//! `email_decisions` table). Consumers and timers record every email
//! request they emit here, in the transaction that decided it.

use chrono::{DateTime, Utc};

use tokio_postgres::GenericClient as _;

use crate::db::{DbError, Statements};
use crate::events::internal::EmailRequested;

/// Records that `request` (about `line_id`, if one line) was decided at
/// `decided_at`. Idempotent: a replay keeps the first time.
pub async fn record<C: Statements>(
    client: &C,
    request: &EmailRequested,
    line_id: Option<&str>,
    decided_at: DateTime<Utc>,
) -> Result<(), DbError> {
    record_all(client, &[(request, line_id)], decided_at).await
}

/// Records many decisions in one multi-row statement, with the semantics
/// of [`record`]: a restock can decide tens of thousands of emails at once.
pub async fn record_all<C: Statements>(
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
        .client()
        .execute(
            &client
                .prepared(
                    "INSERT INTO email_decisions (dedup_key, order_id, line_id, template, decided_at)
             SELECT k, o, l, t, $5 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS u(k, o, l, t)
             ON CONFLICT (dedup_key) DO NOTHING",
                )
                .await?,
            &[&keys, &orders, &lines, &templates, &decided_at],
        )
        .await?;
    Ok(())
}

/// The latest decision of any email about `order_id`.
pub async fn last_for_order<C: Statements>(client: &C, order_id: &str) -> Result<Option<DateTime<Utc>>, DbError> {
    let row = client
        .client()
        .query_one(
            &client
                .prepared("SELECT max(decided_at) FROM email_decisions WHERE order_id = $1")
                .await?,
            &[&order_id],
        )
        .await?;
    Ok(row.try_get(0)?)
}
