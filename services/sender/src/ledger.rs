//! The sender's ledger: one row per dedup key, ever (DESIGN invariant 1),
//! and the durable queue the send workers drain.
//!
//! A row is claimed by moving it to `sending` with a lease and a claim
//! token, in a committed transaction, with `FOR UPDATE SKIP LOCKED`.
//! When its send slot comes, right before SES is called, [`start_send`]
//! checks the token (the claim still owns the row: no other replica took
//! it over after a lease ran out), checks the suppression list again (an
//! unsubscribe or a bounce may have arrived since the claim), renews the
//! lease, counts the attempt and sets `in_flight_since`. Every outcome
//! write is fenced by the token too. The answer of SES clears
//! `in_flight_since`; a row given back before [`start_send`] keeps it as
//! it was.
//!
//! A send that finds `in_flight_since` set (a sender died mid-call, or the
//! call timed out) cannot know whether SES accepted the email the first
//! time (SES has no idempotency token), so it sends again and counts an
//! ambiguous resend, in the same statement that marks it in flight: the
//! row's `ambiguous_resends` and the `backorder_sender_ambiguous_resends_total`
//! metric count exactly the resends that reached the point of calling
//! SES. That is the only duplicate the design allows. A row whose send
//! never got that far (released, suppressed, lost to another claim) counts
//! nothing. SES's answer is recorded with retries ([`mark_sent`] is
//! retried while the lease holds), so a database blip after a successful
//! send does not turn into a resend.

use std::time::Duration;

use backorder_core::db::DbError;
use backorder_core::deadpool_postgres::{Object, Pool};
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
    // Prepared once per connection: the intake runs this for every batch.
    let statement = client
        .prepare_cached(
            "INSERT INTO email_ledger (dedup_key, template, locale, recipient, recipient_name,
                                       customer_id, order_id, category, campaign, data,
                                       event_occurred_at)
             SELECT k, t, l, r, n, c, o, cat, camp, d::jsonb, occ
               FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                           $7::text[], $8::text[], $9::text[], $10::text[], $11::timestamptz[])
                    AS x(k, t, l, r, n, c, o, cat, camp, d, occ)
             ON CONFLICT (dedup_key) DO NOTHING",
        )
        .await?;
    let inserted = client
        .execute(
            &statement,
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
    /// When the request reached the ledger: emails are given up by age.
    pub requested_at: DateTime<Utc>,
    /// SES calls that counted as attempts before this claim (throttled
    /// and paused ones do not).
    pub attempts: i32,
    /// Sends SES throttled (not counted as attempts).
    pub throttles: i32,
    /// An earlier attempt reached SES and its answer was never recorded (a
    /// sender died mid-call, or the call timed out): sending it again may
    /// be a resend (counted by [`start_send`]).
    pub ambiguous: bool,
    /// Why the recipient's address is on the suppression list, if it is.
    pub suppressions: Vec<String>,
    /// Fences this claim: see [`start_send`].
    pub claim_token: i64,
    /// Sent while sending is paused, to find out whether SES accepts
    /// sends again.
    pub probe: bool,
    /// The customer's country (ISO 3166), for the local time of quiet
    /// hours; none when the customer is not known to the pipeline.
    pub country: Option<String>,
}

impl ClaimedEmail {
    pub fn is_marketing(&self) -> bool {
        self.category == "MARKETING"
    }
}

/// Claims up to `limit` due rows (queued and due, or `sending` with an
/// expired lease) with `FOR UPDATE SKIP LOCKED`, so concurrent workers and
/// replicas never claim the same row. A row held by quiet hours is due
/// only once the service clock reads `now` past its `not_before`.
///
/// The emails of one order go out in order:
/// - the confirmation first: every other email of the order waits while
///   its confirmation is queued or being sent, or was decided (in the
///   transaction that stored the order, so before anything else about it)
///   and has not reached the ledger yet. Another service's update can
///   reach the ledger first; the wait for a confirmation that never
///   arrives ends 10 minutes after its decision.
/// - the others in the order they were decided: a row waits while an
///   earlier-decided one of its order is queued or being sent (unless
///   quiet hours hold that one).
pub async fn claim_due(
    pool: &Pool,
    limit: i64,
    lease: Duration,
    now: DateTime<Utc>,
) -> Result<Vec<ClaimedEmail>, DbError> {
    if limit <= 0 {
        return Ok(Vec::new());
    }
    let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
    let token: i64 = rand::random();
    let client = pool.get().await?;
    // The ordering checks run only for a window of the earliest due rows,
    // so a claim costs the same whether ten or a hundred thousand emails
    // wait. Rows waiting for an earlier email of their order can fill the
    // window while that email is due later (retried, or behind the
    // window): then the claim finds nothing, and it looks at the whole
    // queue instead, so nothing waits for ever.
    let window = limit.saturating_mul(4).saturating_add(100);
    let claimed = claim_due_within(&client, limit, Some(window), lease_ms, token, now).await?;
    if !claimed.is_empty() {
        return Ok(claimed);
    }
    claim_due_within(&client, limit, None, lease_ms, token, now).await
}

/// [`claim_due`] among the first `window` due rows (None: all of them).
async fn claim_due_within(
    client: &Object,
    limit: i64,
    window: Option<i64>,
    lease_ms: i64,
    token: i64,
    now: DateTime<Utc>,
) -> Result<Vec<ClaimedEmail>, DbError> {
    // Not a cached prepared statement: PostgreSQL would move it to a
    // generic plan, and one for `LIMIT $1` over the queue can be far worse
    // than the custom plan each claim gets.
    // `OFFSET 0` keeps each NOT EXISTS a per-row lookup (by order id, on
    // `email_decisions_order` and `email_ledger_order`) instead of letting
    // the planner turn it into an anti-join: with statistics that lag a
    // fast-growing queue it chose to read every confirmation ever decided
    // on each claim, work that grows with the shop's whole history.
    let rows = client
        .query(
            "WITH earliest AS MATERIALIZED (
                 SELECT dedup_key
                   FROM email_ledger
                  WHERE (state = 'queued' AND next_attempt_at <= now()
                         AND (not_before IS NULL OR not_before <= $4))
                     OR (state = 'sending' AND lease_until < now())
                  ORDER BY next_attempt_at
                  LIMIT $5),
             due AS (
                 SELECT dedup_key, in_flight_since IS NOT NULL AS ambiguous
                   FROM email_ledger
                  WHERE dedup_key IN (SELECT dedup_key FROM earliest)
                    -- Again here, not only in `earliest`: FOR UPDATE re-checks
                    -- these conditions on a row another claim changed meanwhile.
                    AND ((state = 'queued' AND next_attempt_at <= now()
                          AND (not_before IS NULL OR not_before <= $4))
                         OR (state = 'sending' AND lease_until < now()))
                    AND NOT EXISTS (
                        SELECT 1
                          FROM email_decisions conf
                          LEFT JOIN email_ledger c ON c.dedup_key = conf.dedup_key
                         WHERE conf.order_id = email_ledger.order_id
                           AND conf.template = 'order_confirmation'
                           AND conf.dedup_key <> email_ledger.dedup_key
                           AND (c.state IN ('queued', 'sending')
                                OR (c.dedup_key IS NULL AND conf.decided_at > $4 - interval '10 minutes'))
                        OFFSET 0)
                    AND NOT EXISTS (
                        SELECT 1
                          FROM email_decisions mine, email_ledger e
                          JOIN email_decisions theirs ON theirs.dedup_key = e.dedup_key
                         WHERE mine.dedup_key = email_ledger.dedup_key
                           AND mine.template <> 'order_confirmation'
                           AND theirs.template <> 'order_confirmation'
                           AND e.order_id = email_ledger.order_id
                           AND e.state IN ('queued', 'sending')
                           AND (e.not_before IS NULL OR e.not_before <= $4)
                           AND (theirs.decided_at, theirs.dedup_key) < (mine.decided_at, mine.dedup_key)
                        OFFSET 0)
                  ORDER BY next_attempt_at
                  LIMIT $1
                  FOR UPDATE SKIP LOCKED)
             UPDATE email_ledger l
                SET state = 'sending', claim_token = $3,
                    lease_until = now() + $2::bigint * interval '1 millisecond', updated_at = now()
               FROM due
              WHERE l.dedup_key = due.dedup_key
          RETURNING l.dedup_key, l.template, l.locale, l.recipient, l.recipient_name, l.category,
                    l.campaign, l.data, l.event_occurred_at, l.attempts, due.ambiguous, l.requested_at, l.throttles,
                    ARRAY(SELECT s.reason FROM email_suppression s
                           WHERE s.address = lower(btrim(l.recipient)) ORDER BY s.reason),
                    (SELECT c.country FROM customers c WHERE c.customer_id = l.customer_id)",
            &[&limit, &lease_ms, &token, &now, &window],
        )
        .await?;
    rows.into_iter()
        .map(|r| {
            Ok(ClaimedEmail {
                dedup_key: r.try_get(0)?,
                template: r.try_get(1)?,
                locale: r.try_get(2)?,
                recipient: r.try_get(3)?,
                recipient_name: r.try_get(4)?,
                category: r.try_get(5)?,
                campaign: r.try_get(6)?,
                data: r.try_get(7)?,
                event_occurred_at: r.try_get(8)?,
                attempts: r.try_get(9)?,
                ambiguous: r.try_get(10)?,
                requested_at: r.try_get(11)?,
                throttles: r.try_get(12)?,
                suppressions: r.try_get(13)?,
                claim_token: token,
                probe: false,
                country: r.try_get(14)?,
            })
        })
        .collect()
}

/// What [`start_send`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Started {
    /// Marked in flight, the attempt counted: call SES now. `ambiguous`:
    /// this is a resend after an attempt with unknown outcome, counted in
    /// `ambiguous_resends`.
    Sending { ambiguous: bool },
    /// Past the slot's deadline: nothing changed; take a new slot.
    Late,
    /// Another claim took the row over (this claim's lease expired while
    /// it waited): it must not be sent.
    Lost,
    /// The address was suppressed since the claim (this reason stops this
    /// email): record it as suppressed, do not send.
    Suppressed(String),
}

/// Right before the SES call: checks that this claim still owns the row,
/// that the address is not suppressed for it, and that the send slot's
/// `deadline` (database time) has not passed; then renews the lease,
/// counts the attempt (and the ambiguous resend, if the row was left in
/// flight) and marks the call as in flight. All in one statement, so the
/// count and the mark cannot disagree.
pub async fn start_send(
    pool: &Pool,
    email: &ClaimedEmail,
    lease: Duration,
    deadline: DateTime<Utc>,
) -> Result<Started, DbError> {
    let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(
            "WITH owned AS (
                 SELECT l.dedup_key, clock_timestamp() <= $4 AS on_time,
                        l.in_flight_since IS NOT NULL AS ambiguous,
                        (SELECT s.reason FROM email_suppression s
                          WHERE s.address = lower(btrim(l.recipient))
                            AND (s.reason IN ('hard_bounce', 'complaint')
                                 OR (s.reason = 'unsubscribe' AND l.category = 'MARKETING'))
                          ORDER BY s.reason = 'hard_bounce' DESC, s.reason = 'complaint' DESC
                          LIMIT 1) AS suppressed
                   FROM email_ledger l
                  WHERE l.dedup_key = $1 AND l.state = 'sending' AND l.claim_token = $2
                  FOR UPDATE OF l),
             marked AS (
                 UPDATE email_ledger l
                    SET in_flight_since = now(), attempts = l.attempts + 1,
                        ambiguous_resends = l.ambiguous_resends + owned.ambiguous::int,
                        lease_until = now() + $3::bigint * interval '1 millisecond', updated_at = now()
                   FROM owned
                  WHERE l.dedup_key = owned.dedup_key AND owned.on_time AND owned.suppressed IS NULL
                 RETURNING 1)
             SELECT (SELECT count(*) FROM marked) > 0, owned.ambiguous, owned.suppressed FROM owned",
        )
        .await?;
    let row = client
        .query_opt(
            &statement,
            &[&email.dedup_key, &email.claim_token, &lease_ms, &deadline],
        )
        .await?;
    let Some(row) = row else {
        return Ok(Started::Lost);
    };
    let (marked, ambiguous, suppressed): (bool, bool, Option<String>) =
        (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
    Ok(match suppressed {
        Some(reason) => Started::Suppressed(reason),
        None if marked => Started::Sending { ambiguous },
        None => Started::Late,
    })
}

/// Keeps a claim during a slow SES call (a live sender never loses its
/// row mid-call; a dead sender's lease runs out).
pub async fn renew_lease(pool: &Pool, email: &ClaimedEmail, lease: Duration) -> Result<bool, DbError> {
    let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(
            "UPDATE email_ledger SET lease_until = now() + $3::bigint * interval '1 millisecond'
              WHERE dedup_key = $1 AND state = 'sending' AND claim_token = $2",
        )
        .await?;
    let updated = client
        .execute(&statement, &[&email.dedup_key, &email.claim_token, &lease_ms])
        .await?;
    Ok(updated == 1)
}

/// SES accepted the email. Returns `false` when the claim no longer owned
/// the row (logged by the caller; the send itself is then the duplicate
/// the other claimant counts as ambiguous).
pub async fn mark_sent(pool: &Pool, email: &ClaimedEmail, message_id: &str, subject: &str) -> Result<bool, DbError> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(
            "UPDATE email_ledger
                SET state = 'sent', ses_message_id = $3, subject = $4, sent_at = now(), in_flight_since = NULL,
                    lease_until = NULL, last_error = NULL, updated_at = now()
              WHERE dedup_key = $1 AND claim_token = $2 AND state = 'sending'",
        )
        .await?;
    let updated = client
        .execute(
            &statement,
            &[&email.dedup_key, &email.claim_token, &message_id, &subject],
        )
        .await?;
    Ok(updated == 1)
}

/// Why a send is retried, which decides what the ledger keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// SES answered and did not accept it (5xx): the attempt counts.
    Failed,
    /// A timeout: SES may have accepted it. The attempt counts and the
    /// in-flight mark stays, so the next send is an ambiguous resend.
    OutcomeUnknown,
    /// SES throttled it: not the email's fault, not an attempt.
    Throttled,
    /// SES refused the account, not the email (paused, access denied):
    /// not an attempt.
    Paused,
}

/// A retryable failure: queue again after `delay`, keeping the error.
pub async fn schedule_retry(
    pool: &Pool,
    email: &ClaimedEmail,
    delay: Duration,
    error: &str,
    why: Retry,
) -> Result<bool, DbError> {
    let delay_ms = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
    let outcome_unknown = why == Retry::OutcomeUnknown;
    let throttled = why == Retry::Throttled;
    let not_an_attempt = matches!(why, Retry::Throttled | Retry::Paused);
    let client = pool.get().await?;
    let updated = client
        .execute(
            "UPDATE email_ledger
                SET state = 'queued', next_attempt_at = now() + $3::bigint * interval '1 millisecond',
                    in_flight_since = CASE WHEN $5 THEN in_flight_since END,
                    attempts = attempts - $7::bool::int, throttles = throttles + $6::bool::int,
                    lease_until = NULL, last_error = $4, updated_at = now()
              WHERE dedup_key = $1 AND claim_token = $2 AND state = 'sending'",
            &[
                &email.dedup_key,
                &email.claim_token,
                &delay_ms,
                &error,
                &outcome_unknown,
                &throttled,
                &not_an_attempt,
            ],
        )
        .await?;
    Ok(updated == 1)
}

/// Gives a claimed row back before [`start_send`] (shutdown, a pause, the
/// quota): no attempt was counted, and whether an earlier attempt left it
/// in flight stays as it was.
pub async fn release(pool: &Pool, email: &ClaimedEmail, delay: Duration) -> Result<bool, DbError> {
    let delay_ms = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
    let client = pool.get().await?;
    let updated = client
        .execute(
            "UPDATE email_ledger
                SET state = 'queued', lease_until = NULL,
                    next_attempt_at = now() + $3::bigint * interval '1 millisecond', updated_at = now()
              WHERE dedup_key = $1 AND claim_token = $2 AND state = 'sending'",
            &[&email.dedup_key, &email.claim_token, &delay_ms],
        )
        .await?;
    Ok(updated == 1)
}

/// Quiet hours hold the email: it is given back, due again at
/// `not_before` on the service clock (nothing counted as an attempt).
pub async fn defer(pool: &Pool, email: &ClaimedEmail, not_before: DateTime<Utc>) -> Result<bool, DbError> {
    let client = pool.get().await?;
    let updated = client
        .execute(
            "UPDATE email_ledger
                SET state = 'queued', not_before = $3, lease_until = NULL, updated_at = now()
              WHERE dedup_key = $1 AND claim_token = $2 AND state = 'sending'",
            &[&email.dedup_key, &email.claim_token, &not_before],
        )
        .await?;
    Ok(updated == 1)
}

/// A permanent failure: the row stays, with the reason, and is never
/// retried (nothing is deleted silently).
pub async fn mark_failed(pool: &Pool, email: &ClaimedEmail, reason: &str) -> Result<bool, DbError> {
    let client = pool.get().await?;
    let updated = client
        .execute(
            "UPDATE email_ledger
                SET state = 'failed', last_error = $3, lease_until = NULL, in_flight_since = NULL,
                    updated_at = now()
              WHERE dedup_key = $1 AND claim_token = $2 AND state = 'sending'",
            &[&email.dedup_key, &email.claim_token, &reason],
        )
        .await?;
    Ok(updated == 1)
}

/// The address is suppressed for this email: recorded, not attempted.
pub async fn mark_suppressed(pool: &Pool, email: &ClaimedEmail, reason: &str) -> Result<bool, DbError> {
    let client = pool.get().await?;
    let updated = client
        .execute(
            "UPDATE email_ledger
                SET state = 'suppressed', suppressed_reason = $3, lease_until = NULL, updated_at = now()
              WHERE dedup_key = $1 AND claim_token = $2 AND state = 'sending'",
            &[&email.dedup_key, &email.claim_token, &reason],
        )
        .await?;
    Ok(updated == 1)
}

/// The recipient of a ledger row (for an unsubscribe link, which names the
/// email it came with rather than the address).
pub async fn recipient_of(pool: &Pool, dedup_key: &str) -> Result<Option<String>, DbError> {
    let client = pool.get().await?;
    let row = client
        .query_opt("SELECT recipient FROM email_ledger WHERE dedup_key = $1", &[&dedup_key])
        .await?;
    Ok(row.map(|r| r.try_get(0)).transpose()?)
}

/// Puts `address` on the suppression list for `reason`; returns whether it
/// was new. Idempotent: SNS redelivers, customers click twice.
pub async fn suppress(
    pool: &Pool,
    address: &str,
    reason: &str,
    source: &str,
    detail: &serde_json::Value,
) -> Result<bool, DbError> {
    let client = pool.get().await?;
    let inserted = client
        .execute(
            "INSERT INTO email_suppression (address, reason, source, detail)
             VALUES (lower(btrim($1)), $2, $3, $4)
             ON CONFLICT (address, reason) DO NOTHING",
            &[&address, &reason, &source, &detail],
        )
        .await?;
    Ok(inserted == 1)
}

/// Queue depth and the age of the oldest queued row, for metrics.
pub async fn queue_stats(pool: &Pool) -> Result<(i64, f64), DbError> {
    let client = pool.get().await?;
    let row = client
        .query_one(
            // A row held by quiet hours ages from the morning it waits for
            // (the night is not a backlog).
            "SELECT count(*),
                    GREATEST(COALESCE(EXTRACT(EPOCH FROM now() - min(GREATEST(requested_at, not_before)))::float8, 0), 0)
               FROM email_ledger WHERE state IN ('queued', 'sending')",
            &[],
        )
        .await?;
    Ok((row.try_get(0)?, row.try_get(1)?))
}
