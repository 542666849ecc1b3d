//! The send workers: claim due rows from the ledger, render, wait for the
//! rate limiter, call SES, record the outcome.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backorder_core::db::DbError;
use backorder_core::deadpool_postgres::Pool;
use backorder_core::lifecycle::Lifecycle;
use backorder_core::service::Service;
use futures::StreamExt;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::Notify;

use crate::ledger::{self, ClaimedEmail};
use crate::render::Renderer;
use crate::ses::{Outgoing, SendFailure, SesClient};

/// How long sending stays paused after SES said the account may not send.
const PAUSE_PROBE_INTERVAL: Duration = Duration::from_secs(60);

/// Delivery failures that stop the workers (the service then exits and is
/// restarted): only the database being unusable for good.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("ledger unavailable: {0}")]
    Ledger(#[from] DbError),
}

pub struct Delivery {
    pool: Pool,
    renderer: Renderer,
    ses: SesClient,
    /// Intake wakes idle workers when it queued rows.
    wake: Arc<Notify>,
    /// Sends per second, in recipients (one per email here).
    limiter: DefaultDirectRateLimiter,
    lifecycle: Lifecycle,
    workers: usize,
    lease: Duration,
    max_attempts: i32,
    poll: Duration,
}

impl Delivery {
    pub async fn new(service: &Service, renderer: Renderer, ses: SesClient, wake: Arc<Notify>) -> Self {
        let settings = &service.settings;
        let rate = match ses.quota().await {
            Some(quota) if quota.max_send_rate >= 1.0 => quota.max_send_rate,
            _ => settings.ses_fallback_send_rate,
        };
        let per_second =
            NonZeroU32::new(rate.floor().clamp(1.0, f64::from(u32::MAX)) as u32).unwrap_or(NonZeroU32::MIN);
        // A burst of one: never more than the rate in any second.
        let limiter = RateLimiter::direct(Quota::per_second(per_second).allow_burst(NonZeroU32::MIN));
        metrics::gauge!("backorder_sender_send_rate_limit").set(f64::from(per_second.get()));
        tracing::info!(rate = per_second.get(), "send rate limit (recipients per second)");
        Self {
            pool: service.pool.clone(),
            renderer,
            ses,
            wake,
            limiter,
            lifecycle: service.lifecycle.clone(),
            workers: settings.sender_workers.max(1),
            lease: Duration::from_millis(settings.sender_lease_ms),
            max_attempts: settings.sender_max_attempts.max(1),
            poll: Duration::from_millis(settings.sender_poll_ms),
        }
    }

    /// Runs until shutdown. In-flight sends finish and are recorded before
    /// it returns; claimed rows not yet sent are released.
    pub async fn run(self) -> Result<(), DeliveryError> {
        let shutdown = self.lifecycle.shutdown.clone();
        let mut db_errors = 0u32;
        while !shutdown.is_cancelled() {
            if self.lifecycle.readiness.is_paused() {
                self.sleep(PAUSE_PROBE_INTERVAL).await;
                self.set_paused(false);
                continue;
            }
            self.report_queue().await;
            let claimed = match ledger::claim_due(&self.pool, (self.workers * 2) as i64, self.lease).await {
                Ok(claimed) => {
                    db_errors = 0;
                    claimed
                }
                Err(error) => {
                    db_errors += 1;
                    tracing::warn!(%error, "could not claim from the ledger; retrying");
                    self.sleep(Duration::from_millis(200 * u64::from(db_errors.min(25))))
                        .await;
                    continue;
                }
            };
            if claimed.is_empty() {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = self.wake.notified() => {}
                    () = tokio::time::sleep(self.poll) => {}
                }
                continue;
            }
            futures::stream::iter(claimed)
                .for_each_concurrent(self.workers, |email| self.deliver(email))
                .await;
        }
        tracing::info!("send workers stopped");
        Ok(())
    }

    async fn sleep(&self, duration: Duration) {
        tokio::select! {
            () = self.lifecycle.shutdown.cancelled() => {}
            () = tokio::time::sleep(duration) => {}
        }
    }

    fn set_paused(&self, paused: bool) {
        self.lifecycle.readiness.set_paused(paused);
        metrics::gauge!("backorder_sender_paused").set(if paused { 1.0 } else { 0.0 });
    }

    async fn report_queue(&self) {
        if let Ok((depth, oldest)) = ledger::queue_stats(&self.pool).await {
            metrics::gauge!("backorder_sender_queue_depth").set(depth as f64);
            metrics::gauge!("backorder_sender_oldest_queued_age_seconds").set(oldest);
        }
    }

    /// Delivers one claimed row and records what happened. Database errors
    /// while recording are logged; the row's lease then expires and it is
    /// retried (as an ambiguous resend if SES had accepted it).
    async fn deliver(&self, email: ClaimedEmail) {
        let key = email.dedup_key.as_str();
        if let Err(error) = self.try_deliver(&email).await {
            tracing::error!(dedup_key = key, %error, "could not record a delivery outcome");
        }
    }

    async fn try_deliver(&self, email: &ClaimedEmail) -> Result<(), DbError> {
        let key = email.dedup_key.as_str();
        let template = email.template.clone();
        if email.ambiguous {
            // The previous claimant died between claiming and recording:
            // SES may or may not have accepted it. See ledger.rs.
            metrics::counter!("backorder_sender_ambiguous_resends_total").increment(1);
            tracing::warn!(dedup_key = key, "resending after a sender died mid-send (ambiguous)");
        }
        let rendered =
            match self
                .renderer
                .render(&email.template, &email.locale, &email.recipient_name, &email.data, None)
            {
                Ok(rendered) => rendered,
                Err(error) => {
                    self.count_outcome(&template, "failed");
                    metrics::counter!("backorder_sender_permanent_failures_total", "reason" => "render").increment(1);
                    tracing::error!(dedup_key = key, %error, "email could not be rendered; recorded as failed");
                    return ledger::mark_failed(&self.pool, key, &format!("render: {error}")).await;
                }
            };
        tokio::select! {
            () = self.lifecycle.shutdown.cancelled() => {
                return ledger::release(&self.pool, key, Duration::ZERO).await;
            }
            () = self.limiter.until_ready() => {}
        }
        let outgoing = Outgoing {
            recipient: &email.recipient,
            rendered: &rendered,
            dedup_key: key,
            template: &email.template,
            campaign: email.campaign.as_deref(),
            unsubscribe_url: None,
        };
        let started = Instant::now();
        let result = self.ses.send(&outgoing).await;
        metrics::histogram!("backorder_sender_send_duration_seconds").record(started.elapsed().as_secs_f64());
        match result {
            Ok(message_id) => {
                ledger::mark_sent(&self.pool, key, &message_id, &rendered.subject).await?;
                self.count_outcome(&template, "sent");
                let since_event = chrono::Utc::now() - email.event_occurred_at;
                if let Ok(latency) = since_event.to_std() {
                    metrics::histogram!("backorder_sender_event_to_ses_seconds").record(latency.as_secs_f64());
                }
                tracing::info!(dedup_key = key, template = %template, "sent");
                Ok(())
            }
            Err(SendFailure::Retryable(reason)) if email.attempts < self.max_attempts => {
                let delay = retry_delay(email.attempts);
                metrics::counter!("backorder_sender_retries_total").increment(1);
                tracing::warn!(dedup_key = key, attempts = email.attempts, retry_in_ms = delay.as_millis() as u64, %reason, "send failed; will retry");
                ledger::schedule_retry(&self.pool, key, delay, &reason).await
            }
            Err(SendFailure::Retryable(reason)) => {
                self.count_outcome(&template, "failed");
                metrics::counter!("backorder_sender_permanent_failures_total", "reason" => "retries_exhausted")
                    .increment(1);
                tracing::error!(dedup_key = key, attempts = email.attempts, %reason, "giving up after the last attempt");
                ledger::mark_failed(
                    &self.pool,
                    key,
                    &format!("gave up after {} attempts: {reason}", email.attempts),
                )
                .await
            }
            Err(SendFailure::Permanent { kind, reason }) => {
                self.count_outcome(&template, "failed");
                metrics::counter!("backorder_sender_permanent_failures_total", "reason" => kind).increment(1);
                tracing::error!(dedup_key = key, kind, %reason, "SES rejected the email; recorded as failed");
                ledger::mark_failed(&self.pool, key, &format!("{kind}: {reason}")).await
            }
            Err(SendFailure::Paused(reason)) => {
                tracing::error!(%reason, "SES paused sending for the account; pausing all workers");
                self.set_paused(true);
                ledger::release(&self.pool, key, PAUSE_PROBE_INTERVAL).await
            }
        }
    }

    fn count_outcome(&self, template: &str, outcome: &'static str) {
        metrics::counter!("backorder_sender_emails_total", "template" => template.to_string(), "outcome" => outcome)
            .increment(1);
    }
}

/// Jittered exponential backoff for attempt `n` (1-based): about 1 s, 2 s,
/// 4 s, ... capped at 5 minutes.
fn retry_delay(attempt: i32) -> Duration {
    let exp = attempt.clamp(1, 20) as u32 - 1;
    let ceiling_ms = 1000u64.saturating_mul(1 << exp.min(9)).min(300_000);
    Duration::from_millis(rand::random_range(ceiling_ms / 2..=ceiling_ms))
}
