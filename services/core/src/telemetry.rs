//! Logs and metrics set-up shared by every binary.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::LogFormat;

/// Every metric this project exports starts with this prefix.
pub const METRIC_PREFIX: &str = "backorder_";

/// Errors while installing the global subscribers.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("could not install the Prometheus recorder: {0}")]
    Metrics(#[from] metrics_exporter_prometheus::BuildError),
}

/// Installs the tracing subscriber: JSON lines in production, a compact
/// human format locally. `RUST_LOG` filters; the default is `info`.
/// Calling it twice (tests) keeps the first subscriber.
pub fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,rdkafka=warn,aws_config=warn,aws_smithy=warn"));
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Json => registry
            .with(tracing_subscriber::fmt::layer().json().flatten_event(true))
            .try_init(),
        LogFormat::Pretty => registry.with(tracing_subscriber::fmt::layer().compact()).try_init(),
    };
    // A second initialisation in the same process (tests) is not an error.
    drop(result);
}

/// Seconds in a day, for the order-to-delivery buckets.
const DAY: f64 = 86_400.0;

/// Installs the global metrics recorder and returns the handle that renders
/// `/metrics`. Latency histograms get buckets suited to email delivery
/// (milliseconds to a minute); order-to-delivery, also in seconds (base
/// units), gets buckets of days to months. A full-name matcher wins over a
/// suffix matcher, whatever the order they are set in.
pub fn init_metrics() -> Result<PrometheusHandle, TelemetryError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("backorder_order_to_delivery_seconds".into()),
            &[1.0, 2.0, 3.0, 5.0, 7.0, 14.0, 21.0, 30.0, 45.0, 60.0, 90.0, 180.0].map(|days| days * DAY),
        )?
        .set_buckets_for_metric(
            Matcher::Suffix("_seconds".into()),
            &[
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.3, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ],
        )?
        .install_recorder()?;
    Ok(handle)
}
