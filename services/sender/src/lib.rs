//! sender: where emails are rendered and sent.
//!
//! - [`intake`]: consumes `email-requests.v1` into the ledger (one row per
//!   dedup key, ever) and stores the offset once the row is durable.
//! - [`ledger`]: the ledger as a durable queue, drained with
//!   `FOR UPDATE SKIP LOCKED` so replicas never take the same row.
//! - [`render`] and `templates/`: subject, HTML and text per locale.
//! - [`ses`]: the SES v2 client and how its answers are classified.
//! - [`delivery`]: the send workers: claim, render, rate-limit, send, record.

pub mod delivery;
pub mod intake;
pub mod ledger;
pub mod render;
pub mod ses;

use std::sync::Arc;

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

/// Starts the HTTP endpoints, the intake consumer and the send workers.
pub async fn start(service: &Service) -> Result<(), SenderError> {
    service.serve_http(axum::Router::new()).await?;
    let wake = Arc::new(tokio::sync::Notify::new());
    service.consume(
        topics::EMAIL_REQUESTS,
        intake::IntakeHandler::new(service, wake.clone()),
    );
    let renderer = render::Renderer::new(&service.settings)?;
    let ses = ses::SesClient::from_env(&service.settings).await;
    let workers = delivery::Delivery::new(service, renderer, ses, wake).await;
    service.spawn(
        "delivery",
        async move { workers.run().await.map_err(|e| e.to_string()) },
    );
    Ok(())
}
