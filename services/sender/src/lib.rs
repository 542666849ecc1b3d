//! sender: where emails are rendered and sent.
//!
//! - [`intake`]: consumes `email-requests.v1` into the ledger (one row per
//!   dedup key, ever) and stores the offset once the row is durable.
//! - [`ledger`]: the ledger as a durable queue, drained with
//!   `FOR UPDATE SKIP LOCKED` so replicas never take the same row.
//! - [`render`] and `templates/`: subject, HTML and text per locale.
//! - [`ses`]: the SES v2 client and how its answers are classified.
//! - [`pace`]: the send rate (SES's MaxSendRate, backing off on throttling).
//! - [`delivery`]: the send workers: claim, check suppression, render,
//!   pace, send, record; the SES account's limits and the queue metrics.
//! - [`suppression`]: who must not get what, and one-click unsubscribe.
//! - [`sns`]: SES bounce and complaint events arriving through Amazon SNS.
//!
//! HTTP routes besides `/healthz`, `/readyz`, `/metrics`:
//! `POST /sns` (SNS notifications), `GET /unsubscribe?token=…` (a page
//! with a button) and `POST /unsubscribe?token=…` (RFC 8058 one-click).

pub mod delivery;
pub mod intake;
pub mod ledger;
pub mod pace;
pub mod render;
pub mod ses;
pub mod sns;
pub mod suppression;

use std::sync::Arc;

use axum::routing::{get, post};
use backorder_core::config::DEFAULT_UNSUBSCRIBE_SECRET;
use backorder_core::kafka::topics;
use backorder_core::service::{Service, ServiceError};

/// Sender start-up failures.
#[derive(Debug, thiserror::Error)]
pub enum SenderError {
    #[error(transparent)]
    Service(#[from] ServiceError),
    #[error(transparent)]
    Render(#[from] render::RenderError),
}

/// The sender's own HTTP routes.
pub fn routes(unsubscribe: suppression::UnsubscribeState, sns: sns::SnsState) -> axum::Router {
    let unsubscribe = axum::Router::new()
        .route(
            "/unsubscribe",
            get(suppression::confirm_page).post(suppression::unsubscribe),
        )
        .with_state(unsubscribe);
    let sns = axum::Router::new().route("/sns", post(sns::receive)).with_state(sns);
    unsubscribe.merge(sns)
}

/// Starts the HTTP endpoints, the intake consumer and the send workers.
pub async fn start(service: &Service) -> Result<(), SenderError> {
    let settings = &service.settings;
    if settings.unsubscribe_secret == DEFAULT_UNSUBSCRIBE_SECRET {
        tracing::warn!("BACKORDER_UNSUBSCRIBE_SECRET is not set: unsubscribe links use the local default key");
    }
    // The routes only verify tokens (no base URL needed); the links put
    // into emails need the public address, known once the port is bound.
    let links_for = |base: &str| suppression::UnsubscribeLinks::new(&settings.unsubscribe_secret, base);
    let unsubscribe = suppression::UnsubscribeState {
        pool: service.pool.clone(),
        links: links_for(""),
    };
    let topics: Option<Vec<String>> = settings.sns_topic_arns.as_deref().map(|list| {
        list.split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .collect()
    });
    if topics.is_none() {
        tracing::warn!("BACKORDER_SNS_TOPIC_ARNS is not set: SNS messages from any topic are accepted");
    }
    let sns = sns::SnsState::new(service.pool.clone(), settings.sns_cert_url_prefix.clone(), topics);
    let bound = service.serve_http(routes(unsubscribe, sns)).await?;
    let base = settings
        .public_base_url
        .clone()
        .unwrap_or_else(|| format!("http://{bound}"));
    tracing::info!(public_base_url = %base, "unsubscribe links point here");

    let wake = Arc::new(tokio::sync::Notify::new());
    service.consume(
        topics::EMAIL_REQUESTS,
        intake::IntakeHandler::new(service, wake.clone()),
    );
    let renderer = render::Renderer::new(settings)?;
    let ses = ses::SesClient::from_env(settings).await;
    let workers = delivery::Delivery::new(service, renderer, ses, links_for(&base), wake).await;
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
