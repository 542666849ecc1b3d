//! segmentation: routes customers with significantly delayed lines into
//! time-limited campaigns (PLAYBOOK 6, DESIGN "Routing").
//!
//! - [`handler`]: `backorder-delays.v1` -> a campaign per order (or the
//!   order's open campaign joined), and its first offer.
//! - [`routing`]: which alternatives qualify and rank first; store credit.
//! - [`offers`]: one offer of the series: signed links, the combined
//!   apology-and-offer email, its expiry timer.
//! - [`expiry`]: the next offer only after the previous one expired
//!   unanswered, at most the policy's number, never after the lines closed.

pub mod error;
pub mod expiry;
pub mod handler;
pub mod offers;
pub mod routing;

use backorder_core::kafka::topics;
use backorder_core::service::{Service, ServiceError};

/// Starts the HTTP endpoints, the offer-expiry timers and the consumer loop.
pub async fn start(service: &Service) -> Result<(), ServiceError> {
    register_metrics();
    let signer = service.settings.link_signer()?;
    service.serve_http(axum::Router::new()).await?;
    service.run_timers(expiry::OfferExpiryTimers::new(service, signer.clone()));
    service.consume(topics::BACKORDER_DELAYS, handler::DelaysHandler::new(service, signer));
    Ok(())
}

/// Every campaign series at zero, so dashboards and alerts see them before
/// the first significant delay.
fn register_metrics() {
    for kind in [routing::CampaignKind::Alternative, routing::CampaignKind::StoreCredit] {
        metrics::counter!("backorder_campaigns_routed_total", "kind" => kind.as_str()).increment(0);
        metrics::counter!("backorder_campaign_offers_sent_total", "kind" => kind.as_str()).increment(0);
    }
    metrics::counter!("backorder_campaign_offers_expired_total").increment(0);
    for reason in ["decided", "cancelled", "shipped", "allocated", "expired"] {
        metrics::counter!("backorder_campaign_exits_total", "reason" => reason).increment(0);
    }
}
