//! The operational HTTP endpoint every service exposes: `/healthz`
//! (the process is alive), `/readyz` (503 while starting, draining or
//! paused) and `/metrics` (Prometheus text format). Services add their own
//! routes (the sender's SNS and unsubscribe endpoints) through `extra`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::lifecycle::{Lifecycle, Readiness};

#[derive(Clone)]
struct OpsState {
    readiness: Arc<Readiness>,
    metrics: PrometheusHandle,
}

/// Binds `addr`, serves the operational routes plus `extra` until shutdown,
/// and returns the bound address (useful with port 0).
pub async fn serve(
    addr: SocketAddr,
    lifecycle: &Lifecycle,
    metrics: PrometheusHandle,
    extra: Router,
) -> std::io::Result<SocketAddr> {
    let state = OpsState {
        readiness: lifecycle.readiness.clone(),
        metrics,
    };
    let ops = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(state);
    let app = ops.merge(extra);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    // The HTTP server is not tracked and not tied to the shutdown token: it
    // must keep answering /readyz with 503 while the consumers drain, and
    // ends with the process.
    tokio::spawn(async move {
        let served = axum::serve(listener, app).await;
        if let Err(error) = served {
            tracing::error!(%error, "HTTP server failed");
        }
    });
    Ok(bound)
}

async fn readyz(State(state): State<OpsState>) -> (StatusCode, &'static str) {
    let code = if state.readiness.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, state.readiness.state())
}

async fn render_metrics(State(state): State<OpsState>) -> String {
    state.metrics.render()
}
