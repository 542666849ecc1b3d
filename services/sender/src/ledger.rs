//! The sender's ledger: one row per dedup key, ever (DESIGN invariant 1),
//! and the durable queue the send workers drain.
//!
//! A row is claimed by moving it to `sending` with a lease, in a committed
//! transaction, *before* SES is called; it becomes `sent` after SES
//! accepted it. A row found in `sending` with an expired lease belongs to
//! a sender that died mid-call: whether SES accepted it is unknowable (SES
//! has no idempotency token), so it is sent again and counted as an
//! ambiguous resend. That is the only duplicate the design allows.

use std::time::Duration;

use backorder_core::db::DbError;
use backorder_core::deadpool_postgres::Pool;
use backorder_core::events::internal::EmailRequested;
use chrono::{DateTime, Utc};

/// Inserts requests whose dedup key is new; returns how many were new.
pub async fn record_requests(pool: &Pool, requests: &[&EmailRequested]) -> Result<u64, DbError> {
    if requests.is_empty() {
        return Ok(0);
    }
    macro_rules! column {
        ($field:ident) => {
            requests.iter().map(|r| r.$field.as_str()).collect::<Vec<&str>>()
        };
    }
    let order_ids: Vec<Option<&str>> = requests.iter().map(|r| r.order_id.as_deref()).collect();
    let campaigns: Vec<Option<&str>> = requests.iter().map(|r| r.campaign.as_deref()).collect();
    let categories: Vec<&str> = requests.iter().map(|r| r.category.as_str()).collect();
    let occurred: Vec<DateTime<Utc>> = requests.iter().map(|r| r.occurred_at).collect();
    let client = pool.get().await?;
    let inserted = client
        .execute(
            "INSERT INTO email_ledger (dedup_key, template, locale, recipient, recipient_name,
                                       customer_id, order_id, category, campaign, data,
                                       event_occurred_at)
             SELECT k, t, l, r, n, c, o, cat, camp, d::jsonb, occ
               FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                           $7::text[], $8::text[], $9::text[], $10::text[], $11::timestamptz[])
                    AS x(k, t, l, r, n, c, o, cat, camp, d, occ)
             ON CONFLICT (dedup_key) DO NOTHING",
            &[
                &column!(dedup_key),
                &column!(template),
                &column!(locale),
                &column!(recipient),
                &column!(recipient_name),
                &column!(customer_id),
                &order_ids,
                &categories,
                &campaigns,
                &column!(data_json),
                &occurred,
            ],
        )
        .await?;
    Ok(inserted)
}

/// A ledger row claimed for sending.
#[derive(Debug, Clone)]
pub struct ClaimedEmail {
    pub dedup_key: String,
    pub template: String,
    pub locale: String,
    pub recipient: String,
    pub recipient_name: String,
    pub category: String,
    pub campaign: Option<String>,
    pub data: serde_json::Value,
    pub event_occurred_at: DateTime<Utc>,
    /// Including this attempt.
    pub attempts: i32,
    /// The previous claimant died while calling SES: this may be a resend.
    pub ambiguous: bool,
}

/// Claims up to `limit` due rows (queued and due, or `sending` with an
/// expired lease) with `FOR UPDATE SKIP LOCKED`, so concurrent workers and
/// replicas never claim the same row.
pub async fn claim_due(pool: &Pool, limit: i64, lease: Duration) -> Result<Vec<ClaimedEmail>, DbError> {
    let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
    let client = pool.get().await?;
    let rows = client
        .query(
            "WITH due AS (
                 SELECT dedup_key, state AS prior_state
                   FROM email_ledger
                  WHERE (state = 'queued' AND next_attempt_at <= now())
                     OR (state = 'sending' AND lease_until < now())
                  ORDER BY next_attempt_at
                  LIMIT $1
                  FOR UPDATE SKIP LOCKED)
             UPDATE email_ledger l
                SET state = 'sending', attempts = l.attempts + 1,
                    lease_until = now() + $2::bigint * interval '1 millisecond', updated_at = now()
               FROM due
              WHERE l.dedup_key = due.dedup_key
          RETURNING l.dedup_key, l.template, l.locale, l.recipient, l.recipient_name, l.category,
                    l.campaign, l.data, l.event_occurred_at, l.attempts, due.prior_state = 'sending'",
            &[&limit, &lease_ms],
        )
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| ClaimedEmail {
            dedup_key: r.get(0),
            template: r.get(1),
            locale: r.get(2),
            recipient: r.get(3),
            recipient_name: r.get(4),
            category: r.get(5),
            campaign: r.get(6),
            data: r.get(7),
            event_occurred_at: r.get(8),
            attempts: r.get(9),
            ambiguous: r.get(10),
        })
        .collect())
}

/// SES accepted the email.
pub async fn mark_sent(pool: &Pool, dedup_key: &str, message_id: &str, subject: &str) -> Result<(), DbError> {
    let client = pool.get().await?;
    client
        .execute(
            "UPDATE email_ledger
                SET state = 'sent', ses_message_id = $2, subject = $3, sent_at = now(),
                    lease_until = NULL, last_error = NULL, updated_at = now()
              WHERE dedup_key = $1",
            &[&dedup_key, &message_id, &subject],
        )
        .await?;
    Ok(())
}

/// A retryable failure: queue again after `delay`, keeping the error.
pub async fn schedule_retry(pool: &Pool, dedup_key: &str, delay: Duration, error: &str) -> Result<(), DbError> {
    let delay_ms = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
    let client = pool.get().await?;
    client
        .execute(
            "UPDATE email_ledger
                SET state = 'queued', next_attempt_at = now() + $2::bigint * interval '1 millisecond',
                    lease_until = NULL, last_error = $3, updated_at = now()
              WHERE dedup_key = $1",
            &[&dedup_key, &delay_ms, &error],
        )
        .await?;
    Ok(())
}

/// Gives a claimed row back untouched (shutdown before the SES call, or
/// sending paused): the attempt did not happen, so it is not counted.
pub async fn release(pool: &Pool, dedup_key: &str, delay: Duration) -> Result<(), DbError> {
    let delay_ms = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
    let client = pool.get().await?;
    client
        .execute(
            "UPDATE email_ledger
                SET state = 'queued', attempts = greatest(attempts - 1, 0), lease_until = NULL,
                    next_attempt_at = now() + $2::bigint * interval '1 millisecond', updated_at = now()
              WHERE dedup_key = $1",
            &[&dedup_key, &delay_ms],
        )
        .await?;
    Ok(())
}

/// A permanent failure: the row stays, with the reason, and is never
/// retried (nothing is deleted silently).
pub async fn mark_failed(pool: &Pool, dedup_key: &str, reason: &str) -> Result<(), DbError> {
    let client = pool.get().await?;
    client
        .execute(
            "UPDATE email_ledger
                SET state = 'failed', last_error = $2, lease_until = NULL, updated_at = now()
              WHERE dedup_key = $1",
            &[&dedup_key, &reason],
        )
        .await?;
    Ok(())
}

/// Queue depth and the age of the oldest queued row, for metrics.
pub async fn queue_stats(pool: &Pool) -> Result<(i64, f64), DbError> {
    let client = pool.get().await?;
    let row = client
        .query_one(
            "SELECT count(*), COALESCE(EXTRACT(EPOCH FROM now() - min(requested_at))::float8, 0)
               FROM email_ledger WHERE state IN ('queued', 'sending')",
            &[],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}
