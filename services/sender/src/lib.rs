//! sender: where emails are rendered and sent.
//!
//! - [`intake`]: consumes `email-requests.v1` into the ledger (one row per
//!   dedup key, ever) and stores the offset once the row is durable.
//! - [`ledger`]: the ledger as a durable queue, drained with
//!   `FOR UPDATE SKIP LOCKED` so replicas never take the same row.
//! - [`render`] and `templates/`: subject, HTML and text per locale.
//! - [`ses`]: the SES v2 client and how its answers are classified.
//! - [`pace`]: the account's send rate and daily quota, shared by every
//!   replica through PostgreSQL (backing off on throttling).
//! - [`delivery`]: the send workers: claim, check suppression, render,
//!   pace, send, record; the SES account's limits and the queue metrics.
//! - [`suppression`]: who must not get what, and one-click unsubscribe.
//! - [`sns`]: SES bounce and complaint events arriving through Amazon SNS.
//!
//! HTTP routes besides `/healthz`, `/readyz`, `/metrics`:
//! `POST /sns` (SNS notifications), `GET /unsubscribe?token=…` (a page
//! with a button), `POST /unsubscribe?token=…` (RFC 8058 one-click) and
//! `GET /readyz/sending` (503 while SES has sending paused; `/readyz`
//! stays up then, so the public endpoints keep receiving traffic).

pub mod delivery;
pub mod intake;
pub mod ledger;
pub mod pace;
pub mod render;
pub mod ses;
pub mod sns;
pub mod suppression;

use std::net::IpAddr;
use std::sync::Arc;

use axum::routing::{get, post};
use backorder_core::config::Settings;
use backorder_core::kafka::topics;
use backorder_core::service::{Service, ServiceError};

/// The unsubscribe-link key when `BACKORDER_UNSUBSCRIBE_SECRET` is not set
/// and the controlled clock is on (local stack, tests): never in
/// production, where the sender refuses to start without a secret.
pub const LOCAL_UNSUBSCRIBE_SECRET: &str = "local-only-unsubscribe-secret";
/// Shorter keys are refused: an HMAC key must not be guessable.
const MIN_SECRET_BYTES: usize = 16;

/// Sender start-up failures.
#[derive(Debug, thiserror::Error)]
pub enum SenderError {
    #[error(transparent)]
    Service(#[from] ServiceError),
    #[error(transparent)]
    Render(#[from] render::RenderError),
    #[error("unsafe configuration: {0}")]
    Unsafe(String),
}

/// The sender's own HTTP routes.
pub fn routes(
    unsubscribe: suppression::UnsubscribeState,
    sns: sns::SnsState,
    sending: Arc<delivery::SendingState>,
) -> axum::Router {
    let unsubscribe = axum::Router::new()
        .route(
            "/unsubscribe",
            get(suppression::confirm_page).post(suppression::unsubscribe),
        )
        .with_state(unsubscribe);
    let sns = axum::Router::new().route("/sns", post(sns::receive)).with_state(sns);
    let sending = axum::Router::new()
        .route("/readyz/sending", get(delivery::sending_readyz))
        .with_state(sending);
    unsubscribe.merge(sns).merge(sending)
}

/// The unsubscribe-link key: the configured secret, or the local key when
/// the controlled clock says this is not production.
pub fn unsubscribe_secret(settings: &Settings) -> Result<String, SenderError> {
    match settings.unsubscribe_secret.as_deref().map(str::trim) {
        Some(secret) if secret.len() >= MIN_SECRET_BYTES => Ok(secret.to_string()),
        Some(secret) if !secret.is_empty() => Err(SenderError::Unsafe(format!(
            "BACKORDER_UNSUBSCRIBE_SECRET must be at least {MIN_SECRET_BYTES} bytes"
        ))),
        _ if settings.clock_controlled => {
            tracing::warn!(
                "BACKORDER_UNSUBSCRIBE_SECRET is not set: unsubscribe links use the local key (controlled clock on)"
            );
            Ok(LOCAL_UNSUBSCRIBE_SECRET.to_string())
        }
        _ => Err(SenderError::Unsafe(
            "BACKORDER_UNSUBSCRIBE_SECRET is not set: unsubscribe links would be forgeable".into(),
        )),
    }
}

/// Checks that links built on `base` reach customers safely: `https`, or
/// `http` to a loopback host (local stack, tests).
pub fn check_public_base_url(base: &str) -> Result<(), SenderError> {
    let url = url::Url::parse(base)
        .map_err(|e| SenderError::Unsafe(format!("BACKORDER_PUBLIC_BASE_URL {base:?} is not a URL: {e}")))?;
    let loopback = match url.host() {
        Some(url::Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    };
    match url.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        _ => Err(SenderError::Unsafe(format!(
            "public links must use https outside loopback: {base:?} (set BACKORDER_PUBLIC_BASE_URL)"
        ))),
    }
}

/// The SNS topics whose messages are accepted (none: every message is
/// refused).
fn sns_topics(settings: &Settings) -> Vec<String> {
    let topics: Vec<String> = settings
        .sns_topic_arns
        .as_deref()
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect();
    if topics.is_empty() {
        tracing::warn!("BACKORDER_SNS_TOPIC_ARNS is not set: every SNS message is refused");
    }
    topics
}

/// Starts the HTTP endpoints, the intake consumer and the send workers.
pub async fn start(service: &Service) -> Result<(), SenderError> {
    let settings = &service.settings;
    let secret = unsubscribe_secret(settings)?;
    if let Some(base) = &settings.public_base_url {
        check_public_base_url(base)?;
    }
    // The routes only verify tokens (no base URL needed); the links put
    // into emails need the public address, known once the port is bound.
    let links_for = |base: &str| suppression::UnsubscribeLinks::new(&secret, base);
    let unsubscribe = suppression::UnsubscribeState {
        pool: service.pool.clone(),
        links: links_for(""),
    };
    let sns = sns::SnsState::new(
        service.pool.clone(),
        settings.sns_cert_url_prefix.clone(),
        sns_topics(settings),
    );
    let sending = Arc::new(delivery::SendingState::default());
    let bound = service.serve_http(routes(unsubscribe, sns, sending.clone())).await?;
    let base = settings
        .public_base_url
        .clone()
        .unwrap_or_else(|| format!("http://{bound}"));
    check_public_base_url(&base)?;
    tracing::info!(public_base_url = %base, "unsubscribe links point here");

    let wake = Arc::new(tokio::sync::Notify::new());
    service.consume(
        topics::EMAIL_REQUESTS,
        intake::IntakeHandler::new(service, wake.clone()),
    );
    let renderer = render::Renderer::new(settings)?;
    let ses = ses::SesClient::from_env(settings).await;
    let workers = delivery::Delivery::new(service, renderer, ses, links_for(&base), wake, sending).await;
    let refresh = workers.clone();
    service.spawn("ses-account", async move {
        refresh.run_account_refresh().await.map_err(|e| e.to_string())
    });
    let queue = workers.clone();
    service.spawn("queue-metrics", async move {
        queue.run_queue_metrics().await.map_err(|e| e.to_string())
    });
    service.spawn(
        "delivery",
        async move { workers.run().await.map_err(|e| e.to_string()) },
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_must_be_https_outside_loopback() {
        for ok in [
            "https://shop.example",
            "https://shop.example/mail/",
            "http://127.0.0.1:8080",
            "http://127.3.2.1",
            "http://[::1]:9000",
            "http://localhost:3000",
        ] {
            assert!(check_public_base_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://shop.example",
            "http://0.0.0.0:8080",
            "http://10.0.0.5",
            "ftp://127.0.0.1",
            "shop.example",
        ] {
            assert!(check_public_base_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn no_secret_means_no_start_unless_the_clock_is_controlled() {
        let mut settings = Settings::default();
        assert!(unsubscribe_secret(&settings).is_err());
        settings.unsubscribe_secret = Some("   ".into());
        assert!(unsubscribe_secret(&settings).is_err());
        settings.unsubscribe_secret = Some("short".into());
        assert!(unsubscribe_secret(&settings).is_err());
        settings.unsubscribe_secret = Some("a-long-enough-production-secret".into());
        assert_eq!(
            unsubscribe_secret(&settings).unwrap(),
            "a-long-enough-production-secret"
        );
        settings.unsubscribe_secret = None;
        settings.clock_controlled = true;
        assert_eq!(unsubscribe_secret(&settings).unwrap(), LOCAL_UNSUBSCRIBE_SECRET);
    }
}
