//! The send workers: claim due rows from the ledger, check the suppression
//! list, render, reserve a send slot shared by every replica (rate and
//! daily quota, see [`crate::pace`]), mark the row in flight, call SES,
//! record the outcome.
//!
//! Around them: the SES account (send rate, daily quota, paused or not) is
//! read from `GetAccount` at start and every
//! `BACKORDER_SES_ACCOUNT_REFRESH_SECS`, and the queue's depth and age are
//! published as metrics.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;

use backorder_core::clock::Clock;
use backorder_core::db::DbError;
use backorder_core::deadpool_postgres::Pool;
use backorder_core::domain::mask_email;
use backorder_core::lifecycle::Lifecycle;
use backorder_core::policy::QuietHoursPolicy;
use backorder_core::service::Service;
use futures::StreamExt;
use tokio::sync::Notify;

use crate::ledger::{self, ClaimedEmail, Retry, Started};
use crate::pace::{self, LATE_TOLERANCE, Pacer, Quota, Reservation};
use crate::render::Renderer;
use crate::ses::{Outgoing, SendFailure, SendQuota, SesClient};
use crate::suppression::{self, UnsubscribeLinks};

/// How long before its slot a row is marked in flight: about one database
/// round trip, so the SES call starts on the slot. (A crash in between
/// counts an ambiguous resend for a call that had not started: a window
/// this short, no longer.)
const MARK_LEAD: Duration = Duration::from_millis(10);
/// How often an exhausted daily quota is looked at again.
const QUOTA_RECHECK: Duration = Duration::from_secs(1);
/// The most a send may start after its slot, after repeated late starts
/// (a database that answers slowly for a while must slow sending, not
/// stop it).
const MAX_LATE_TOLERANCE: Duration = Duration::from_millis(500);
/// What one SES call is assumed to take when sizing the worker pool.
const EXPECTED_CALL_SECONDS: f64 = 0.25;
/// The most concurrent SES calls per replica.
const MAX_CONCURRENCY: usize = 64;
/// How often queue depth and age are published.
const QUEUE_METRICS_INTERVAL: Duration = Duration::from_secs(2);

/// Delivery failures that stop the workers (the service then exits and is
/// restarted): only the database being unusable for good.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("ledger unavailable: {0}")]
    Ledger(#[from] DbError),
}

/// Whether SES lets this replica send. Kept apart from the process's
/// readiness: while sending is paused, `/sns` (SES reporting the bounces
/// that may have caused the pause) and `/unsubscribe` must stay served.
#[derive(Debug, Default)]
pub struct SendingState {
    /// Why sending is paused (a metric label), if it is.
    paused: Mutex<Option<&'static str>>,
}

impl SendingState {
    pub fn paused(&self) -> Option<&'static str> {
        self.paused.lock().map(|p| *p).unwrap_or(None)
    }

    /// Returns whether this paused a running sender.
    fn pause(&self, kind: &'static str) -> bool {
        self.paused
            .lock()
            .map(|mut p| p.replace(kind).is_none())
            .unwrap_or(false)
    }

    /// Returns whether this resumed a paused sender.
    fn resume(&self) -> bool {
        self.paused.lock().map(|mut p| p.take().is_some()).unwrap_or(false)
    }
}

/// `GET /readyz/sending`: 200 while this replica may send, 503 (with the
/// reason) while SES paused it. For dashboards and alerts; not a
/// Kubernetes readiness probe, which must keep the public endpoints routed.
pub async fn sending_readyz(State(state): State<Arc<SendingState>>) -> (StatusCode, String) {
    match state.paused() {
        Some(kind) => (StatusCode::SERVICE_UNAVAILABLE, format!("paused: {kind}")),
        None => (StatusCode::OK, "sending".to_string()),
    }
}

#[derive(Clone)]
pub struct Delivery {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    renderer: Renderer,
    ses: SesClient,
    links: UnsubscribeLinks,
    /// Intake wakes idle workers when it queued rows.
    wake: Arc<Notify>,
    pacer: Pacer,
    /// The daily quota, from `GetAccount` or configuration.
    quota: Mutex<Quota>,
    quota_exhausted: AtomicBool,
    lifecycle: Lifecycle,
    /// BACKORDER_SENDER_WORKERS: the least number of concurrent SES calls.
    workers: usize,
    /// The number of concurrent SES calls (see `run`).
    concurrency: AtomicUsize,
    lease: Duration,
    /// Emails older than this whose sends keep failing are given up.
    give_up_after: chrono::Duration,
    retry_base: Duration,
    retry_max: Duration,
    /// Ages are measured on the injectable clock (DESIGN invariant 5).
    clock: Clock,
    poll: Duration,
    fallback_rate: f64,
    rate_override: Option<f64>,
    configured_quota: Option<u64>,
    account_refresh: Duration,
    /// How often, while sending is paused, one email is sent as a probe.
    pause_probe: Duration,
    /// Paused or not, shared with `/readyz/sending`.
    sending: Arc<SendingState>,
    /// When marketing and nurture emails wait for the recipient's morning
    /// (policy file).
    quiet_hours: QuietHoursPolicy,
}

impl Delivery {
    pub async fn new(
        service: &Service,
        renderer: Renderer,
        ses: SesClient,
        links: UnsubscribeLinks,
        wake: Arc<Notify>,
        sending: Arc<SendingState>,
    ) -> Self {
        let settings = &service.settings;
        let initial = settings
            .ses_send_rate_override
            .unwrap_or(settings.ses_fallback_send_rate);
        let delivery = Self {
            inner: Arc::new(Inner {
                pool: service.pool.clone(),
                renderer,
                ses,
                links,
                wake,
                pacer: Pacer::new(initial),
                quota: Mutex::new(Quota::default()),
                quota_exhausted: AtomicBool::new(false),
                lifecycle: service.lifecycle.clone(),
                workers: settings.sender_workers.max(1),
                concurrency: AtomicUsize::new(settings.sender_workers.max(1)),
                lease: Duration::from_millis(settings.sender_lease_ms),
                give_up_after: chrono::Duration::seconds(
                    i64::try_from(settings.sender_give_up_after_secs).unwrap_or(i64::MAX / 1000),
                ),
                retry_base: Duration::from_millis(settings.sender_retry_base_ms.max(1)),
                retry_max: Duration::from_millis(settings.sender_retry_max_ms.max(1)),
                clock: service.clock.clone(),
                poll: Duration::from_millis(settings.sender_poll_ms),
                fallback_rate: settings.ses_fallback_send_rate,
                rate_override: settings.ses_send_rate_override,
                configured_quota: settings.ses_daily_quota,
                account_refresh: Duration::from_secs(settings.ses_account_refresh_secs.max(1)),
                pause_probe: Duration::from_millis(settings.sender_pause_probe_ms.max(100)),
                sending,
                quiet_hours: service.policy.quiet_hours.clone(),
            }),
        };
        delivery.refresh_account().await;
        metrics::gauge!("backorder_sender_paused").set(0.0);
        metrics::gauge!("backorder_sender_daily_quota_exhausted").set(0.0);
        delivery
    }

    /// Reads `GetAccount` and applies its rate, quota and paused state.
    async fn refresh_account(&self) {
        let this = &self.inner;
        let account = this.ses.quota().await;
        let rate = effective_rate(account, this.rate_override, this.fallback_rate);
        this.pacer.set_ceiling(rate);
        let limit = match account {
            Some(q) if q.max_24_hour_send >= 0.0 => Some(q.max_24_hour_send as i64),
            _ => this.configured_quota.map(|q| i64::try_from(q).unwrap_or(i64::MAX)),
        };
        if let Ok(mut quota) = this.quota.lock() {
            *quota = Quota {
                limit,
                account_used: account.map_or(0, |q| q.sent_last_24_hours as i64),
            };
        }
        if let Some(limit) = limit {
            metrics::gauge!("backorder_sender_daily_quota").set(limit as f64);
        }
        if account.is_some_and(|q| !q.sending_enabled) {
            self.pause("account_paused", "GetAccount reports sending disabled");
        }
        tracing::info!(rate, daily_quota = ?limit, "SES sending limits");
    }

    /// Re-reads `GetAccount` periodically until shutdown.
    pub async fn run_account_refresh(self) -> Result<(), DeliveryError> {
        loop {
            if !self.sleep(self.inner.account_refresh).await {
                return Ok(());
            }
            self.refresh_account().await;
        }
    }

    /// Publishes queue depth and the oldest queued age until shutdown.
    pub async fn run_queue_metrics(self) -> Result<(), DeliveryError> {
        loop {
            if let Ok((depth, oldest)) = ledger::queue_stats(&self.inner.pool).await {
                metrics::gauge!("backorder_sender_queue_depth").set(depth as f64);
                metrics::gauge!("backorder_sender_oldest_queued_age_seconds").set(oldest);
            }
            if !self.sleep(QUEUE_METRICS_INTERVAL).await {
                return Ok(());
            }
        }
    }

    /// Runs until shutdown. In-flight sends finish and are recorded before
    /// it returns; claimed rows not yet sent are released.
    pub async fn run(self) -> Result<(), DeliveryError> {
        // Enough concurrent SES calls to reach the send rate at 250 ms per
        // call (Little's law), at least BACKORDER_SENDER_WORKERS, at most 64.
        let workers = self
            .inner
            .workers
            .max((self.inner.pacer.ceiling() * EXPECTED_CALL_SECONDS).ceil() as usize)
            .min(MAX_CONCURRENCY);
        self.inner.concurrency.store(workers, Ordering::SeqCst);
        tracing::info!(workers, "send workers");
        // Claimed batches flattened into one stream: the next batch is
        // claimed as soon as the last row of the current one is taken by a
        // worker, so workers never wait for the slowest send of a batch.
        let claims = futures::stream::unfold(self.clone(), |this| async move {
            let batch = this.next_batch().await?;
            Some((futures::stream::iter(batch), this))
        })
        .flatten();
        claims.for_each_concurrent(workers, |email| self.deliver(email)).await;
        tracing::info!("send workers stopped");
        Ok(())
    }

    /// Waits for and claims the next non-empty batch; `None` at shutdown.
    async fn next_batch(&self) -> Option<Vec<ClaimedEmail>> {
        let this = &self.inner;
        let shutdown = this.lifecycle.shutdown.clone();
        let mut db_errors = 0u32;
        while !shutdown.is_cancelled() {
            // While paused, one email at a time is sent as a probe, once
            // per BACKORDER_SENDER_PAUSE_PROBE_MS; only its success ends
            // the pause (the pause never lapses by itself).
            let probing = this.sending.paused().is_some();
            if probing {
                if !self.sleep(this.pause_probe).await {
                    return None;
                }
                if this.sending.paused().is_none() {
                    continue;
                }
            }
            let budget = match self.quota_budget().await {
                Ok(budget) => budget,
                Err(error) => {
                    tracing::warn!(%error, "could not count today's sends; retrying");
                    self.sleep(this.poll).await;
                    continue;
                }
            };
            let limit = budget.min((this.concurrency.load(Ordering::SeqCst).max(1) * 2) as i64);
            let limit = if probing { limit.min(1) } else { limit };
            if limit <= 0 {
                self.sleep(this.poll.max(QUOTA_RECHECK)).await;
                continue;
            }
            // Rows held by quiet hours are due on the service clock; the
            // poll below brings this loop back after the clock passes them.
            let claimed = match this.clock.now().await {
                Ok(now) => ledger::claim_due(&this.pool, limit, this.lease, now).await,
                Err(error) => Err(error),
            };
            match claimed {
                Ok(mut claimed) if !claimed.is_empty() => {
                    if probing {
                        tracing::info!("probing SES with one email while sending is paused");
                        for email in &mut claimed {
                            email.probe = true;
                        }
                    }
                    return Some(claimed);
                }
                Ok(_) => {
                    db_errors = 0;
                    tokio::select! {
                        () = shutdown.cancelled() => return None,
                        () = this.wake.notified() => {}
                        () = tokio::time::sleep(this.poll) => {}
                    }
                }
                Err(error) => {
                    db_errors += 1;
                    tracing::warn!(%error, "could not claim from the ledger; retrying");
                    self.sleep(Duration::from_millis(200 * u64::from(db_errors.min(25))))
                        .await;
                }
            }
        }
        None
    }

    /// How many sends the daily quota still allows (`i64::MAX`: no quota
    /// known), from the count every replica shares, to size claims.
    /// Flips the exhausted gauge and logs an error once when the quota is
    /// reached: sending stops before exceeding it, rows stay queued. (The
    /// quota is enforced exactly when a send slot is reserved.)
    async fn quota_budget(&self) -> Result<i64, DbError> {
        let quota = self.quota();
        let Some(limit) = quota.limit else {
            self.set_quota_exhausted(false, 0, 0);
            return Ok(i64::MAX);
        };
        let used = pace::day_used(&self.inner.pool).await?.max(quota.account_used);
        metrics::gauge!("backorder_sender_daily_quota_used").set(used as f64);
        let budget = limit - used;
        self.set_quota_exhausted(budget <= 0, used, limit);
        Ok(budget.max(0))
    }

    fn quota(&self) -> Quota {
        self.inner.quota.lock().map(|q| *q).unwrap_or_default()
    }

    fn set_quota_exhausted(&self, exhausted: bool, used: i64, limit: i64) {
        let before = self.inner.quota_exhausted.swap(exhausted, Ordering::SeqCst);
        if exhausted != before {
            metrics::gauge!("backorder_sender_daily_quota_exhausted").set(if exhausted { 1.0 } else { 0.0 });
            if exhausted {
                tracing::error!(
                    used,
                    limit,
                    "SES daily sending quota reached: sending stopped, emails stay queued"
                );
            } else {
                tracing::info!("daily sending quota available again: sending resumed");
            }
        }
    }

    /// Sleeps unless shutdown comes first; returns false on shutdown.
    async fn sleep(&self, duration: Duration) -> bool {
        tokio::select! {
            () = self.inner.lifecycle.shutdown.cancelled() => false,
            () = tokio::time::sleep(duration) => true,
        }
    }

    /// Pauses every worker of this replica (SES refused the account, not
    /// an email): the gauge and the counter alert, `/readyz/sending`
    /// answers 503. The public endpoints keep being served.
    fn pause(&self, kind: &'static str, reason: &str) {
        if self.inner.sending.pause(kind) {
            metrics::counter!("backorder_sender_pauses_total", "reason" => kind).increment(1);
            tracing::error!(kind, %reason, "SES refuses the account's sends: sending paused until a probe succeeds");
        }
        metrics::gauge!("backorder_sender_paused").set(1.0);
    }

    fn resume(&self) {
        if self.inner.sending.resume() {
            tracing::info!("a probe send succeeded: sending resumed");
        }
        metrics::gauge!("backorder_sender_paused").set(0.0);
    }

    /// Delivers one claimed row and records what happened. Database errors
    /// while recording are logged; the row's lease then expires and it is
    /// retried (as an ambiguous resend if SES had been called).
    async fn deliver(&self, email: ClaimedEmail) {
        if let Err(error) = self.try_deliver(&email).await {
            tracing::error!(dedup_key = %email.dedup_key, %error, "could not record a delivery outcome");
        }
    }

    async fn try_deliver(&self, email: &ClaimedEmail) -> Result<(), DbError> {
        let this = &self.inner;
        let key = email.dedup_key.as_str();
        let template = email.template.as_str();
        if let Some(reason) = suppression::blocking_reason(&email.suppressions, email.is_marketing()) {
            count_outcome(template, "suppressed");
            metrics::counter!("backorder_sender_suppressed_total", "reason" => reason.to_string()).increment(1);
            tracing::info!(dedup_key = key, recipient = %mask_email(&email.recipient), reason, "address suppressed; recorded, not sent");
            return self.record(email, ledger::mark_suppressed(&this.pool, email, reason).await);
        }
        if this.quiet_hours.holds(email.is_marketing(), template) {
            let now = this.clock.now().await?;
            if let Some(until) = this.quiet_hours.deferred_until(now, email.country.as_deref()) {
                metrics::counter!("backorder_sender_quiet_time_deferrals_total", "template" => template.to_string())
                    .increment(1);
                tracing::info!(dedup_key = key, template, %until, "quiet hours in the recipient's time zone; deferred");
                return self.record(email, ledger::defer(&this.pool, email, until).await);
            }
        }
        let unsubscribe_url = if email.is_marketing() {
            match this.links.url(key) {
                Ok(url) => Some(url),
                Err(error) => {
                    tracing::error!(dedup_key = key, %error, "no unsubscribe link; not sending marketing email without one");
                    return self.record(email, ledger::release(&this.pool, email, this.poll).await);
                }
            }
        } else {
            None
        };
        let rendered = match this.renderer.render(
            &email.template,
            &email.locale,
            &email.recipient_name,
            &email.data,
            unsubscribe_url.as_deref(),
        ) {
            Ok(rendered) => rendered,
            Err(error) => {
                count_outcome(template, "failed");
                metrics::counter!("backorder_sender_permanent_failures_total", "reason" => "render").increment(1);
                tracing::error!(dedup_key = key, %error, "email could not be rendered; recorded as failed");
                let reason = format!("render: {error}");
                return self.record(email, ledger::mark_failed(&this.pool, email, &reason).await);
            }
        };
        let Some(ambiguous) = self.wait_for_slot(email).await? else {
            return Ok(());
        };
        if ambiguous {
            // An earlier attempt reached SES and no answer was recorded:
            // SES may have accepted it. The ledger counted this resend in
            // the statement that marked it in flight.
            metrics::counter!("backorder_sender_ambiguous_resends_total").increment(1);
            tracing::warn!(
                dedup_key = key,
                "resending after an attempt with unknown outcome (ambiguous)"
            );
        }
        let outgoing = Outgoing {
            recipient: &email.recipient,
            rendered: &rendered,
            dedup_key: key,
            template,
            campaign: email.campaign.as_deref(),
            unsubscribe_url: unsubscribe_url.as_deref(),
        };
        let started = Instant::now();
        let result = self.holding_lease(email, this.ses.send(&outgoing)).await;
        metrics::histogram!("backorder_sender_send_duration_seconds").record(started.elapsed().as_secs_f64());
        match result {
            Ok(message_id) => {
                this.pacer.succeeded();
                self.resume();
                let recorded = self.record_sent(email, &message_id, &rendered.subject).await;
                count_outcome(template, "sent");
                let since_event = chrono::Utc::now() - email.event_occurred_at;
                if let Ok(latency) = since_event.to_std() {
                    metrics::histogram!("backorder_sender_event_to_ses_seconds").record(latency.as_secs_f64());
                }
                tracing::info!(dedup_key = key, template, "sent");
                self.record(email, recorded)
            }
            Err(SendFailure::Retryable(reason)) => {
                let why = if is_throttle(&reason) {
                    Retry::Throttled
                } else {
                    Retry::Failed
                };
                self.retry_later(email, &reason, why).await
            }
            Err(SendFailure::Unknown(reason)) => self.retry_later(email, &reason, Retry::OutcomeUnknown).await,
            Err(SendFailure::Permanent { kind, reason }) => {
                count_outcome(template, "failed");
                metrics::counter!("backorder_sender_permanent_failures_total", "reason" => kind).increment(1);
                tracing::error!(dedup_key = key, kind, %reason, "SES rejected the email; recorded as failed");
                let reason = format!("{kind}: {reason}");
                self.record(email, ledger::mark_failed(&this.pool, email, &reason).await)
            }
            Err(SendFailure::Paused { kind, reason }) => {
                self.pause(kind, &reason);
                // SES refused it: nothing was sent, and it is not the
                // email's fault: not an attempt.
                self.record(
                    email,
                    ledger::schedule_retry(&this.pool, email, this.pause_probe, &reason, Retry::Paused).await,
                )
            }
        }
    }

    /// Reserves a send slot (shared by every replica: the account's rate
    /// and daily quota), waits for it, and marks the row in flight right
    /// before it ([`MARK_LEAD`]), fenced: the claim must still own the row (its lease
    /// may have run out while it waited, and another claim taken it). From
    /// the mark on, a crash makes the next send of the row an ambiguous resend.
    /// Returns `Some(ambiguous)` when SES is to be called now (`ambiguous`:
    /// a counted resend); `None` when the row was dealt with (released,
    /// suppressed meanwhile, or lost to another claim).
    async fn wait_for_slot(&self, email: &ClaimedEmail) -> Result<Option<bool>, DbError> {
        let this = &self.inner;
        let key = email.dedup_key.as_str();
        let shutdown = &this.lifecycle.shutdown;
        let horizon = pace::horizon(this.lease);
        let mut tolerance = LATE_TOLERANCE;
        loop {
            if this.sending.paused().is_some() && !email.probe {
                self.record(email, ledger::release(&this.pool, email, Duration::ZERO).await)?;
                return Ok(None);
            }
            let reservation = this.pacer.reserve(&this.pool, self.quota(), horizon, shutdown);
            let (slot, starts) = match self.holding_lease(email, reservation).await? {
                Reservation::Slot { at, wait } => {
                    // The mark is written just ahead of the slot, so that
                    // the database's latency does not make the call late.
                    if !self
                        .holding_lease(email, self.sleep(wait.saturating_sub(MARK_LEAD)))
                        .await
                    {
                        self.give_back(email, at, Duration::ZERO).await?;
                        return Ok(None);
                    }
                    (at, tokio::time::Instant::now() + wait.min(MARK_LEAD))
                }
                Reservation::QuotaExhausted { used, limit } => {
                    self.set_quota_exhausted(true, used, limit);
                    self.record(email, ledger::release(&this.pool, email, this.poll).await)?;
                    return Ok(None);
                }
                Reservation::Shutdown => {
                    self.record(email, ledger::release(&this.pool, email, Duration::ZERO).await)?;
                    return Ok(None);
                }
            };
            if this.sending.paused().is_some() && !email.probe {
                self.give_back(email, slot, Duration::ZERO).await?;
                return Ok(None);
            }
            let deadline = slot + chrono::Duration::from_std(tolerance).unwrap_or_default();
            match ledger::start_send(&this.pool, email, this.lease, deadline).await? {
                Started::Sending { ambiguous } => {
                    // The call starts on its slot, never before.
                    tokio::time::sleep_until(starts).await;
                    return Ok(Some(ambiguous));
                }
                Started::Suppressed(reason) => {
                    pace::unreserve(&this.pool, slot).await?;
                    count_outcome(&email.template, "suppressed");
                    metrics::counter!("backorder_sender_suppressed_total", "reason" => reason.clone()).increment(1);
                    tracing::info!(dedup_key = key, recipient = %mask_email(&email.recipient), reason, "address suppressed since the claim; recorded, not sent");
                    self.record(email, ledger::mark_suppressed(&this.pool, email, &reason).await)?;
                    return Ok(None);
                }
                Started::Late => {
                    // Sending now could crowd the next second at SES: take
                    // a new slot (the quota of this one is given back).
                    metrics::counter!("backorder_sender_late_slots_total").increment(1);
                    pace::unreserve(&this.pool, slot).await?;
                    tolerance = (tolerance * 2).min(MAX_LATE_TOLERANCE);
                }
                Started::Lost => {
                    pace::unreserve(&this.pool, slot).await?;
                    metrics::counter!("backorder_sender_lease_lost_total").increment(1);
                    tracing::warn!(
                        dedup_key = key,
                        "claim taken over by another sender before sending; skipped"
                    );
                    return Ok(None);
                }
            }
        }
    }

    /// Records SES's acceptance, retrying the write while the claim's lease
    /// holds: a database blip must not leave an accepted email to be sent
    /// again (after the lease, another claim would resend it, counted as
    /// ambiguous).
    async fn record_sent(&self, email: &ClaimedEmail, message_id: &str, subject: &str) -> Result<bool, DbError> {
        let this = &self.inner;
        let deadline = Instant::now() + this.lease / 2;
        let mut delay = Duration::from_millis(50);
        loop {
            match ledger::mark_sent(&this.pool, email, message_id, subject).await {
                Ok(recorded) => return Ok(recorded),
                Err(error) if Instant::now() + delay < deadline => {
                    metrics::counter!("backorder_sender_record_retries_total").increment(1);
                    tracing::warn!(dedup_key = %email.dedup_key, %error, "could not record a sent email; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Runs `work` while renewing the claim's lease: a live sender never
    /// loses its row while it waits for its turn, its slot or SES (a dead
    /// sender's lease runs out, and another claim takes the row).
    async fn holding_lease<T>(&self, email: &ClaimedEmail, work: impl std::future::Future<Output = T>) -> T {
        let this = &self.inner;
        tokio::pin!(work);
        loop {
            tokio::select! {
                out = &mut work => return out,
                () = tokio::time::sleep(this.lease / 3) => {
                    if let Err(error) = ledger::renew_lease(&this.pool, email, this.lease).await {
                        tracing::warn!(dedup_key = %email.dedup_key, %error, "could not renew a claim's lease");
                    }
                }
            }
        }
    }

    /// A reserved slot not used: its quota and the row go back.
    async fn give_back(
        &self,
        email: &ClaimedEmail,
        slot: chrono::DateTime<chrono::Utc>,
        delay: Duration,
    ) -> Result<(), DbError> {
        pace::unreserve(&self.inner.pool, slot).await?;
        self.record(email, ledger::release(&self.inner.pool, email, delay).await)
    }

    /// A retryable failure: queued again with backoff, unless the email is
    /// too old to keep trying.
    async fn retry_later(&self, email: &ClaimedEmail, reason: &str, why: Retry) -> Result<(), DbError> {
        let this = &self.inner;
        let key = email.dedup_key.as_str();
        if self.past_give_up(email).await {
            count_outcome(&email.template, "failed");
            metrics::counter!("backorder_sender_permanent_failures_total", "reason" => "gave_up").increment(1);
            let hours = this.give_up_after.num_hours();
            let attempts = email.attempts + 1;
            tracing::error!(dedup_key = key, attempts, %reason, "giving up: still failing {hours} h after the request");
            let reason = format!("gave up after {hours} h ({attempts} attempts): {reason}");
            return self.record(email, ledger::mark_failed(&this.pool, email, &reason).await);
        }
        if why == Retry::Throttled && this.pacer.throttled() {
            metrics::counter!("backorder_sender_rate_backoffs_total").increment(1);
            tracing::warn!(rate = this.pacer.rate(), "SES throttled: send rate lowered");
        }
        // Throttles do not count as attempts but do lengthen the backoff:
        // a long throttling storm spreads the retries out.
        let tries = email.attempts + email.throttles + 1;
        let delay = retry_delay(tries, this.retry_base, this.retry_max);
        let kind = match why {
            Retry::OutcomeUnknown => "unknown_outcome",
            Retry::Throttled => "throttled",
            Retry::Failed | Retry::Paused => "retryable",
        };
        metrics::counter!("backorder_sender_retries_total", "kind" => kind).increment(1);
        tracing::warn!(dedup_key = key, attempts = email.attempts + 1, retry_in_ms = delay.as_millis() as u64, kind, %reason, "send failed; will retry");
        self.record(
            email,
            ledger::schedule_retry(&this.pool, email, delay, reason, why).await,
        )
    }

    /// Whether `email` is older than BACKORDER_SENDER_GIVE_UP_AFTER_SECS on
    /// the injectable clock. When the clock cannot be read, it is not: the
    /// retry is safe, giving up is not.
    async fn past_give_up(&self, email: &ClaimedEmail) -> bool {
        match self.inner.clock.now().await {
            Ok(now) => now - email.requested_at >= self.inner.give_up_after,
            Err(error) => {
                tracing::warn!(%error, "could not read the clock; retrying instead of giving up");
                false
            }
        }
    }

    /// Logs when an outcome could not be recorded because the claim was
    /// taken over meanwhile (the lease expired during a very slow call).
    fn record(&self, email: &ClaimedEmail, recorded: Result<bool, DbError>) -> Result<(), DbError> {
        if !recorded? {
            metrics::counter!("backorder_sender_lease_lost_total").increment(1);
            tracing::warn!(dedup_key = %email.dedup_key, "claim was taken over before its outcome was recorded");
        }
        Ok(())
    }
}

fn count_outcome(template: &str, outcome: &'static str) {
    metrics::counter!("backorder_sender_emails_total", "template" => template.to_string(), "outcome" => outcome)
        .increment(1);
}

/// The rate to send at: the override (never above SES's), else SES's
/// MaxSendRate, else the configured fallback.
fn effective_rate(account: Option<SendQuota>, rate_override: Option<f64>, fallback: f64) -> f64 {
    let ses = account.map(|q| q.max_send_rate).filter(|r| *r >= 1.0);
    match (rate_override, ses) {
        (Some(o), Some(s)) => o.min(s),
        (Some(o), None) => o,
        (None, Some(s)) => s,
        (None, None) => fallback,
    }
}

fn is_throttle(reason: &str) -> bool {
    ["TooManyRequests", "Throttl", "LimitExceeded", "429"]
        .iter()
        .any(|needle| reason.contains(needle))
}

/// Jittered exponential backoff for try `n` (1-based): `base`, twice
/// that, four times, ... capped at `max` ("equal jitter": between half and
/// all of it).
fn retry_delay(tries: i32, base: Duration, max: Duration) -> Duration {
    let exp = tries.clamp(1, 31) as u32 - 1;
    let base_ms = base.as_millis().max(1) as u64;
    let ceiling_ms = base_ms
        .saturating_mul(1u64 << exp.min(30))
        .min(max.as_millis().max(1) as u64);
    Duration::from_millis(rand::random_range(ceiling_ms / 2..=ceiling_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        let (base, max) = (Duration::from_secs(1), Duration::from_secs(300));
        for tries in 1..200 {
            let d = retry_delay(tries, base, max).as_millis() as u64;
            let ceiling = (1000u64 << (tries.clamp(1, 31) as u32 - 1).min(30)).min(300_000);
            assert!(d >= ceiling / 2 && d <= ceiling, "try {tries}: {d}");
        }
        let compressed = retry_delay(3, Duration::from_millis(10), Duration::from_millis(25));
        assert!(compressed >= Duration::from_millis(12) && compressed <= Duration::from_millis(25));
    }

    #[test]
    fn override_never_exceeds_what_ses_allows() {
        let account = SendQuota {
            max_send_rate: 14.0,
            max_24_hour_send: 50_000.0,
            sent_last_24_hours: 0.0,
            sending_enabled: true,
        };
        assert_eq!(effective_rate(Some(account), Some(50.0), 5.0), 14.0);
        assert_eq!(effective_rate(Some(account), Some(10.0), 5.0), 10.0);
        assert_eq!(effective_rate(None, Some(50.0), 5.0), 50.0);
        assert_eq!(effective_rate(None, None, 5.0), 5.0);
        assert_eq!(effective_rate(Some(account), None, 5.0), 14.0);
    }
}
