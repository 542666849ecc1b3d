//! offers-consumer: the customer's one-click decisions (PLAYBOOK 6 and 7).
//!
//! - [`pages`]: the offer and cancel pages the signed links open; their
//!   confirm buttons publish to `offer-responses.v1`.
//! - [`handler`]: applies `offer-responses.v1` (from the pages or any other
//!   producer): checks, records, ends the campaign, hands the decision to
//!   the OMS on `backorder-decisions.v1` and confirms it by email.
//! - [`decisions`]: the rules both share; [`emails`]: the confirmation.

pub mod decisions;
pub mod emails;
pub mod error;
pub mod handler;
pub mod pages;

use backorder_core::kafka::topics;
use backorder_core::service::{Service, ServiceError};

/// Starts the pages with the operational endpoints, and the consumer loop.
pub async fn start(service: &Service) -> Result<(), ServiceError> {
    // Every decision series at zero, so dashboards see them from the start.
    for kind in ["SWITCH", "CREDIT", "EXPEDITE", "CANCEL"] {
        metrics::counter!("backorder_offer_decisions_total", "kind" => kind).increment(0);
    }
    let signer = service.settings.link_signer()?;
    let pages = pages::routes(pages::PageState {
        pool: service.pool.clone(),
        clock: service.clock.clone(),
        signer: signer.clone(),
        codec: service.codec.clone(),
        producer: service.producer.clone(),
        responses_topic: service.topics.name(topics::OFFER_RESPONSES),
        support_email: service.settings.support_email.clone(),
        shop_name: service.settings.shop_name.clone(),
    });
    service.serve_http(pages).await?;
    service.consume(topics::OFFER_RESPONSES, handler::ResponsesHandler::new(service, signer));
    Ok(())
}
