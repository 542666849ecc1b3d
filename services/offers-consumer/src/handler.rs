//! Applies `offer-responses.v1`: each response is checked (signature, offer
//! or line exists and is open, option belongs to the offer, not expired at
//! the event's time, first answer wins), recorded, ends the campaign and
//! the pending emails of its lines, and produces what the OMS executes
//! (`backorder-decisions.v1`) and the decision confirmation (PLAYBOOK 7).
//! A refused response changes nothing and goes to the dead-letter topic with
//! the reason.

use backorder_core::clock::Clock;
use backorder_core::codec::Codec;
use backorder_core::deadpool_postgres::Pool;
use backorder_core::events::internal::{BackorderDecision, DecisionKind, EmailRequested};
use backorder_core::events::offers::{CancellationRequested, OfferResponse, OfferResponseEvent};
use backorder_core::kafka::{Handler, HandlerError, Incoming, OutboundRecord, topics};
use backorder_core::links::{LinkSigner, OfferOption};
use backorder_core::service::Service;
use backorder_core::tokio_postgres::Transaction;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use crate::decisions::{self, Rejection};
use crate::emails;
use crate::error::OffersError;

/// What one decision produced, stored with it so a replay re-produces it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Outputs {
    email: EmailRequested,
    decisions: Vec<BackorderDecision>,
}

/// The offer-responses.v1 handler.
pub struct ResponsesHandler {
    pool: Pool,
    codec: Codec,
    clock: Clock,
    signer: LinkSigner,
    email_topic: String,
    decisions_topic: String,
}

impl ResponsesHandler {
    pub fn new(service: &Service, signer: LinkSigner) -> Self {
        Self {
            pool: service.pool.clone(),
            codec: service.codec.clone(),
            clock: service.clock.clone(),
            signer,
            email_topic: service.topics.name(topics::EMAIL_REQUESTS),
            decisions_topic: service.topics.name(topics::BACKORDER_DECISIONS),
        }
    }

    async fn apply(&self, batch: &[Incoming<OfferResponseEvent>]) -> Result<Vec<OutboundRecord>, OffersError> {
        let now = self.clock.now().await?;
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let mut produced = Vec::new();
        for incoming in batch {
            let (event_id, span) = match &incoming.event {
                OfferResponseEvent::Response(r) => (
                    r.event_id.clone(),
                    tracing::info_span!("offer_response", partition = incoming.partition, offset = incoming.offset, offer_id = %r.offer_id),
                ),
                OfferResponseEvent::Cancellation(c) => (
                    c.event_id.clone(),
                    tracing::info_span!("cancellation", partition = incoming.partition, offset = incoming.offset, order_id = %c.order_id),
                ),
            };
            let result = match &incoming.event {
                OfferResponseEvent::Response(r) => self.apply_response(&tx, r, now).instrument(span).await,
                OfferResponseEvent::Cancellation(c) => self.apply_cancellation(&tx, c, now).instrument(span).await,
            };
            match result {
                Ok(Some(outputs)) => produced.push(outputs),
                Ok(None) => {}
                Err(OffersError::Rejected { rejection, .. }) => {
                    // Counted once per event (a retried batch finds the
                    // row), outside the rolled-back transaction.
                    self.count_rejection(&event_id, &rejection, now).await?;
                    return Err(OffersError::Rejected { event_id, rejection });
                }
                Err(other) => return Err(other),
            }
        }
        tx.commit().await?;
        let mut records = Vec::new();
        for outputs in &produced {
            records.push(OutboundRecord::encode(&self.codec, &self.email_topic, &outputs.email).await?);
            for decision in &outputs.decisions {
                records.push(OutboundRecord::encode(&self.codec, &self.decisions_topic, decision).await?);
            }
        }
        Ok(records)
    }

    async fn count_rejection(
        &self,
        event_id: &str,
        rejection: &Rejection,
        now: DateTime<Utc>,
    ) -> Result<(), OffersError> {
        let client = self.pool.get().await?;
        let inserted = client
            .execute(
                "INSERT INTO response_rejections (event_id, reason, rejected_at) VALUES ($1, $2, $3)
                 ON CONFLICT (event_id) DO NOTHING",
                &[&event_id, &rejection.to_string(), &now],
            )
            .await?;
        if inserted == 1 {
            metrics::counter!("backorder_offer_responses_rejected_total", "reason" => rejection.label()).increment(1);
        }
        tracing::warn!(reason = rejection.label(), "offer response rejected");
        Ok(())
    }

    /// A replay of the recorded response re-produces its outputs; the same
    /// choice again (a double click) is a no-op; anything else is a second
    /// answer and refused.
    fn replay_or_refuse(
        &self,
        existing: decisions::Recorded,
        event_id: &str,
        kind: DecisionKind,
        alternative_sku: Option<&str>,
    ) -> Result<Option<Outputs>, OffersError> {
        if existing.response_event_id == event_id {
            let outputs: Outputs = serde_json::from_value(existing.outputs).map_err(|e| OffersError::BadDecision {
                decision_id: event_id.to_string(),
                reason: e.to_string(),
            })?;
            return Ok(Some(outputs));
        }
        if existing.kind == kind_str(kind) && existing.alternative_sku.as_deref() == alternative_sku {
            metrics::counter!("backorder_offer_responses_duplicate_total").increment(1);
            return Ok(None);
        }
        Err(OffersError::Rejected {
            event_id: event_id.to_string(),
            rejection: Rejection::AlreadyAnswered,
        })
    }

    async fn apply_response(
        &self,
        tx: &Transaction<'_>,
        response: &OfferResponse,
        now: DateTime<Utc>,
    ) -> Result<Option<Outputs>, OffersError> {
        let reject = |rejection: Rejection| OffersError::Rejected {
            event_id: response.event_id.clone(),
            rejection,
        };
        let option = OfferOption::from_response(response.choice, response.alternative_sku.as_deref())
            .map_err(|e| reject(Rejection::Malformed(e.to_string())))?;
        let kind = decision_kind(&option);
        let decision_id = format!("offer:{}", response.offer_id);
        if let Some(existing) = decisions::recorded(tx, &decision_id).await? {
            return self.replay_or_refuse(existing, &response.event_id, kind, option.alternative_sku());
        }
        let offer = decisions::load_offer(tx, &response.offer_id, true)
            .await?
            .ok_or_else(|| reject(Rejection::UnknownOffer))?;
        offer
            .check(&self.signer, &option, &response.token, response.occurred_at)
            .map_err(reject)?;

        // A switch replaces the line the alternative was offered for; every
        // other choice concerns all lines still waiting.
        let lines: Vec<&decisions::Line> = match &option {
            OfferOption::Switch(sku) => {
                let replaced = offer
                    .alternatives
                    .iter()
                    .find(|a| &a.sku == sku)
                    .map(|a| a.line_id.as_str());
                offer
                    .open_lines()
                    .into_iter()
                    .filter(|l| Some(l.line_id.as_str()) == replaced)
                    .collect()
            }
            _ => offer.open_lines(),
        };
        if lines.is_empty() {
            return Err(reject(Rejection::Closed));
        }
        let line_ids: Vec<String> = lines.iter().map(|l| l.line_id.clone()).collect();
        let credit = (option == OfferOption::TakeStoreCredit).then_some(offer.credit_minor);
        let decided: Vec<BackorderDecision> = line_ids
            .iter()
            .map(|line_id| BackorderDecision {
                event_id: uuid::Uuid::new_v5(
                    &uuid::Uuid::NAMESPACE_OID,
                    format!("{decision_id}:{line_id}").as_bytes(),
                )
                .to_string(),
                occurred_at: response.occurred_at,
                order_id: offer.order_id.clone(),
                line_id: line_id.clone(),
                offer_id: offer.offer_id.clone(),
                decision: kind,
                alternative_sku: option.alternative_sku().map(str::to_string),
                credit_minor: credit,
                currency: offer.currency.clone(),
            })
            .collect();
        let alternative = option
            .alternative_sku()
            .and_then(|sku| offer.alternatives.iter().find(|a| a.sku == sku));
        let email = emails::decision_confirmation(
            &decision_id,
            &emails::Customer {
                customer_id: &offer.customer_id,
                email: &offer.email,
                name: &offer.customer_name,
                locale: &offer.locale,
            },
            &offer.order_id,
            kind,
            &lines,
            alternative,
            credit,
            &offer.currency,
            response.occurred_at,
        );
        let outputs = Outputs {
            email,
            decisions: decided,
        };
        decisions::close_for_decision(
            tx,
            &offer.order_id,
            Some((&offer.offer_id, &option)),
            &line_ids,
            // A switch replaces the line: like a cancellation, it is no
            // longer served from new stock nor emailed about.
            matches!(kind, DecisionKind::Cancel | DecisionKind::Switch),
            now,
        )
        .await?;
        self.record(
            tx,
            &decision_id,
            &response.event_id,
            &offer.order_id,
            Some(&offer.offer_id),
            &line_ids,
            kind,
            &option,
            credit,
            &offer.currency,
            now,
            &outputs,
        )
        .await?;
        metrics::counter!("backorder_offer_decisions_total", "kind" => kind_str(kind)).increment(1);
        metrics::histogram!("backorder_offer_decision_seconds")
            .record((response.occurred_at - offer.sent_at).num_milliseconds().max(0) as f64 / 1000.0);
        tracing::info!(order_id = %offer.order_id, kind = kind_str(kind), "decision recorded");
        Ok(Some(outputs))
    }

    async fn apply_cancellation(
        &self,
        tx: &Transaction<'_>,
        request: &CancellationRequested,
        now: DateTime<Utc>,
    ) -> Result<Option<Outputs>, OffersError> {
        let reject = |rejection: Rejection| OffersError::Rejected {
            event_id: request.event_id.clone(),
            rejection,
        };
        let decision_id = format!("cancel:{}:{}", request.order_id, request.line_id);
        if let Some(existing) = decisions::recorded(tx, &decision_id).await? {
            return self.replay_or_refuse(existing, &request.event_id, DecisionKind::Cancel, None);
        }
        let target = decisions::load_cancel_target(tx, &request.order_id, &request.line_id, true)
            .await?
            .ok_or_else(|| reject(Rejection::UnknownLine))?;
        target.check(&self.signer, &request.token).map_err(reject)?;
        let line_ids = vec![request.line_id.clone()];
        let email = emails::decision_confirmation(
            &decision_id,
            &emails::Customer {
                customer_id: &target.customer_id,
                email: &target.email,
                name: &target.customer_name,
                locale: &target.locale,
            },
            &target.order_id,
            DecisionKind::Cancel,
            &[&target.line],
            None,
            None,
            &target.currency,
            request.occurred_at,
        );
        let outputs = Outputs {
            email,
            decisions: vec![BackorderDecision {
                event_id: uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, decision_id.as_bytes()).to_string(),
                occurred_at: request.occurred_at,
                order_id: target.order_id.clone(),
                line_id: request.line_id.clone(),
                offer_id: String::new(),
                decision: DecisionKind::Cancel,
                alternative_sku: None,
                credit_minor: None,
                currency: target.currency.clone(),
            }],
        };
        decisions::close_for_decision(tx, &target.order_id, None, &line_ids, true, now).await?;
        self.record(
            tx,
            &decision_id,
            &request.event_id,
            &target.order_id,
            None,
            &line_ids,
            DecisionKind::Cancel,
            &OfferOption::Cancel,
            None,
            &target.currency,
            now,
            &outputs,
        )
        .await?;
        metrics::counter!("backorder_offer_decisions_total", "kind" => "CANCEL").increment(1);
        tracing::info!(order_id = %target.order_id, "line cancellation recorded");
        Ok(Some(outputs))
    }

    #[allow(clippy::too_many_arguments)]
    async fn record(
        &self,
        tx: &Transaction<'_>,
        decision_id: &str,
        event_id: &str,
        order_id: &str,
        offer_id: Option<&str>,
        line_ids: &[String],
        kind: DecisionKind,
        option: &OfferOption,
        credit: Option<i64>,
        currency: &str,
        now: DateTime<Utc>,
        outputs: &Outputs,
    ) -> Result<(), OffersError> {
        let json = serde_json::to_value(outputs).map_err(|e| OffersError::BadDecision {
            decision_id: decision_id.to_string(),
            reason: e.to_string(),
        })?;
        tx.execute(
            "INSERT INTO decisions (decision_id, response_event_id, order_id, offer_id, line_ids, kind, alternative_sku,
                                    credit_minor, currency, decided_at, outputs)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            &[
                &decision_id,
                &event_id,
                &order_id,
                &offer_id,
                &line_ids,
                &kind_str(kind),
                &option.alternative_sku(),
                &credit,
                &currency,
                &now,
                &json,
            ],
        )
        .await?;
        backorder_core::email_decisions::record(tx, &outputs.email, None, now).await?;
        Ok(())
    }
}

impl Handler for ResponsesHandler {
    type Event = OfferResponseEvent;

    async fn handle(&self, batch: &[Incoming<OfferResponseEvent>]) -> Result<Vec<OutboundRecord>, HandlerError> {
        Ok(self.apply(batch).await?)
    }
}

fn decision_kind(option: &OfferOption) -> DecisionKind {
    match option {
        OfferOption::Switch(_) => DecisionKind::Switch,
        OfferOption::TakeStoreCredit => DecisionKind::Credit,
        OfferOption::KeepWaitingExpedited => DecisionKind::Expedite,
        OfferOption::Cancel => DecisionKind::Cancel,
    }
}

pub fn kind_str(kind: DecisionKind) -> &'static str {
    match kind {
        DecisionKind::Switch => "SWITCH",
        DecisionKind::Credit => "CREDIT",
        DecisionKind::Expedite => "EXPEDITE",
        DecisionKind::Cancel => "CANCEL",
    }
}
