//! The customer's pages (PLAYBOOK: one click per option, easy
//! cancellation): the offer page an option link opens, the cancel page of
//! a "cancel this item" link, and their confirmations. Plain server-rendered
//! HTML in the customer's language, no JavaScript, readable on a phone.
//!
//! `GET` never changes anything (mail scanners prefetch links): it checks
//! the link and shows the choice with one confirm button. Only the page's
//! `POST` decides, by publishing the response to `offer-responses.v1` and
//! waiting for the broker; offers-consumer then applies it with the same
//! rules. A link that cannot be used gets a clear page with a fitting
//! status (400 malformed, 403 forged, 404 unknown, 409 answered or closed,
//! 410 expired) and changes nothing.

use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use backorder_core::clock::Clock;
use backorder_core::codec::Codec;
use backorder_core::deadpool_postgres::Pool;
use backorder_core::domain::{Locale, format, geo};
use backorder_core::events::offers::{CancellationRequested, OfferResponse};
use backorder_core::kafka::{OutboundRecord, Producer};
use backorder_core::links::{LinkSigner, OfferOption};
use chrono::{DateTime, Utc};
use minijinja::Environment;
use serde::{Deserialize, Serialize};

use crate::decisions::{self, Offer, Rejection};

const PAGE: &str = include_str!("../pages/page.html");

/// The page texts of each language; English is the fallback.
const STRINGS: [(&str, &str); 5] = [
    ("en", include_str!("../pages/strings/en.json")),
    ("de", include_str!("../pages/strings/de.json")),
    ("ko", include_str!("../pages/strings/ko.json")),
    ("tr", include_str!("../pages/strings/tr.json")),
    ("id", include_str!("../pages/strings/id.json")),
];

/// Everything the pages share.
#[derive(Clone)]
pub struct PageState {
    pub pool: Pool,
    pub clock: Clock,
    pub signer: LinkSigner,
    pub codec: Codec,
    pub producer: Producer,
    /// Full name of `offer-responses.v1`.
    pub responses_topic: String,
    pub support_email: String,
    pub shop_name: String,
}

/// The routes, to be served with the operational endpoints.
pub fn routes(state: PageState) -> Router {
    Router::new()
        .route("/offers/{offer_id}", get(offer_page).post(offer_confirm))
        .route("/cancel", get(cancel_page).post(cancel_confirm))
        .with_state(state)
}

#[derive(Debug, Deserialize)]
pub struct OfferQuery {
    option: Option<String>,
    token: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct OfferForm {
    /// The option the link named (its token proves who opened it).
    linked: Option<String>,
    token: Option<String>,
    /// The option picked on the page.
    option: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct CancelParams {
    order: Option<String>,
    line: Option<String>,
    token: Option<String>,
}

#[derive(Debug, Serialize)]
struct OptionView {
    value: String,
    label: String,
    checked: bool,
}

/// What the template shows.
#[derive(Debug, Serialize, Default)]
struct View {
    lang: String,
    t: serde_json::Value,
    title: String,
    kind: &'static str,
    message: String,
    next_steps: String,
    deadline: String,
    action: String,
    linked: String,
    token: String,
    options: Vec<OptionView>,
    order_id: String,
    line_id: String,
    product: String,
    refund: String,
    support_email: String,
    shop_name: String,
}

fn strings(language: &str) -> (String, serde_json::Value) {
    let (lang, raw) = STRINGS
        .iter()
        .find(|(l, _)| *l == language)
        .copied()
        .unwrap_or(STRINGS[0]);
    (lang.to_string(), serde_json::from_str(raw).unwrap_or_default())
}

fn text(t: &serde_json::Value, key: &str) -> String {
    t.get(key).and_then(|v| v.as_str()).unwrap_or_default().to_string()
}

fn language_of(locale: &str) -> String {
    Locale::parse("locale", locale)
        .map(|l| l.language().to_string())
        .unwrap_or_else(|_| "en".into())
}

/// The first supported language of `Accept-Language`, for pages about a
/// link we could not tie to a customer.
fn accepted_language(headers: &HeaderMap) -> String {
    headers
        .get(header::ACCEPT_LANGUAGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.split(',')
                .map(|part| language_of(part.split(';').next().unwrap_or("").trim()))
                .find(|l| STRINGS.iter().any(|(s, _)| s == l))
        })
        .unwrap_or_else(|| "en".into())
}

impl PageState {
    fn view(&self, language: &str) -> View {
        let (lang, t) = strings(language);
        View {
            lang,
            t,
            support_email: self.support_email.clone(),
            shop_name: self.shop_name.clone(),
            ..View::default()
        }
    }

    fn render(&self, status: StatusCode, view: &View) -> Response {
        let mut env = Environment::new();
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::Html);
        let html = env
            .template_from_str(PAGE)
            .and_then(|t| t.render(view))
            .unwrap_or_else(|error| {
                tracing::error!(%error, "offer page template failed");
                String::from("<!DOCTYPE html><title>Error</title><p>Something went wrong.</p>")
            });
        let mut response = (status, Html(html)).into_response();
        // Personal pages: never cached by a proxy, never indexed.
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
        response
    }

    fn refuse(&self, language: &str, rejection: &Rejection, page: &'static str) -> Response {
        metrics::counter!("backorder_offer_page_rejections_total", "page" => page, "reason" => rejection.label())
            .increment(1);
        let mut view = self.view(language);
        view.kind = "error";
        view.title = text(&view.t, "error_title");
        let key = match rejection {
            Rejection::Malformed(_) | Rejection::NotInOffer => "error_malformed",
            Rejection::Forged => "error_forged",
            Rejection::UnknownOffer | Rejection::UnknownLine => "error_not_found",
            Rejection::Expired(_) => "error_expired",
            Rejection::AlreadyAnswered => "error_answered",
            Rejection::Closed => "error_closed",
        };
        view.message = text(&view.t, key);
        let status = StatusCode::from_u16(rejection.status()).unwrap_or(StatusCode::BAD_REQUEST);
        self.render(status, &view)
    }

    fn unavailable(&self, language: &str, error: &dyn std::fmt::Display) -> Response {
        tracing::error!(%error, "offer page could not reach its dependencies");
        let mut view = self.view(language);
        view.kind = "error";
        view.title = text(&view.t, "error_title");
        view.message = text(&view.t, "error_unavailable");
        self.render(StatusCode::SERVICE_UNAVAILABLE, &view)
    }

    /// The label of `option` in the customer's language.
    fn option_label(&self, view: &View, offer: &Offer, option: &OfferOption) -> String {
        let language = view.lang.as_str();
        match option {
            OfferOption::Switch(sku) => {
                let Some(alt) = offer.alternatives.iter().find(|a| &a.sku == sku) else {
                    return sku.clone();
                };
                let replaces = offer
                    .lines
                    .iter()
                    .find(|l| l.line_id == alt.line_id)
                    .map(|l| l.product_name.clone())
                    .unwrap_or_default();
                text(&view.t, "option_switch")
                    .replace("{replaces}", &replaces)
                    .replace("{product}", &alt.product_name)
                    .replace("{price}", &format::money(language, alt.price_minor, &offer.currency))
            }
            OfferOption::TakeStoreCredit => text(&view.t, "option_credit").replace(
                "{amount}",
                &format::money(language, offer.credit_minor, &offer.currency),
            ),
            OfferOption::KeepWaitingExpedited => text(&view.t, "option_expedite"),
            OfferOption::Cancel => text(&view.t, "option_cancel"),
        }
    }
}

/// Which kind of option, for metric labels (never a SKU).
fn option_kind(option: &OfferOption) -> &'static str {
    match option {
        OfferOption::Switch(_) => "switch",
        OfferOption::TakeStoreCredit => "credit",
        OfferOption::KeepWaitingExpedited => "expedite",
        OfferOption::Cancel => "cancel",
    }
}

fn required(value: Option<String>, name: &str) -> Result<String, Rejection> {
    value
        .filter(|v| !v.trim().is_empty() && v.len() <= 512)
        .ok_or_else(|| Rejection::Malformed(format!("{name} is missing")))
}

/// Loads the offer and checks the link, as both GET and POST start.
async fn checked_offer(
    state: &PageState,
    offer_id: &str,
    linked: Option<String>,
    token: Option<String>,
) -> Result<Result<(Offer, OfferOption, String), (String, Rejection)>, crate::error::OffersError> {
    let parsed = required(linked, "option")
        .and_then(|o| OfferOption::parse(&o).map_err(|e| Rejection::Malformed(e.to_string())))
        .and_then(|o| required(token, "token").map(|t| (o, t)));
    let (option, token) = match parsed {
        Ok(p) => p,
        Err(r) => return Ok(Err(("en".into(), r))),
    };
    let client = state.pool.get().await?;
    let Some(offer) = decisions::load_offer(&**client, offer_id, false).await? else {
        return Ok(Err(("en".into(), Rejection::UnknownOffer)));
    };
    let language = language_of(&offer.locale);
    if let Err(r) = offer.verify(&state.signer, &option, &token) {
        return Ok(Err((language, r)));
    }
    Ok(Ok((offer, option, token)))
}

/// The start of every offer request: the clock, the offer and the link's
/// signature. `Err` is already the page to answer with (a refusal in the
/// customer's language when the link names a known offer, else in the
/// browser's; 503 when a dependency is down).
async fn open_offer(
    state: &PageState,
    headers: &HeaderMap,
    offer_id: &str,
    linked: Option<String>,
    token: Option<String>,
) -> Result<(Offer, OfferOption, String, DateTime<Utc>), Response> {
    let fallback = accepted_language(headers);
    let now = state.clock.now().await.map_err(|e| state.unavailable(&fallback, &e))?;
    match checked_offer(state, offer_id, linked, token).await {
        Ok(Ok((offer, option, token))) => Ok((offer, option, token, now)),
        Ok(Err((language, rejection))) => {
            let language = if language == "en" { fallback } else { language };
            Err(state.refuse(&language, &rejection, "offer"))
        }
        Err(e) => Err(state.unavailable(&fallback, &e)),
    }
}

/// The start of every cancel request, like [`open_offer`].
async fn open_cancel(
    state: &PageState,
    headers: &HeaderMap,
    params: CancelParams,
) -> Result<(decisions::CancelTarget, String, DateTime<Utc>), Response> {
    let fallback = accepted_language(headers);
    let now = state.clock.now().await.map_err(|e| state.unavailable(&fallback, &e))?;
    let token = params.token.clone().unwrap_or_default();
    match checked_cancel(state, params).await {
        Ok(Ok(target)) => Ok((target, token, now)),
        Ok(Err((language, rejection))) => {
            let language = if language == "en" { fallback } else { language };
            Err(state.refuse(&language, &rejection, "cancel"))
        }
        Err(e) => Err(state.unavailable(&fallback, &e)),
    }
}

pub async fn offer_page(
    State(state): State<PageState>,
    Path(offer_id): Path<String>,
    headers: HeaderMap,
    Query(query): Query<OfferQuery>,
) -> Response {
    let (offer, option, token, now) = match open_offer(&state, &headers, &offer_id, query.option, query.token).await {
        Ok(found) => found,
        Err(page) => return page,
    };
    let language = language_of(&offer.locale);
    if let Err(rejection) = offer.check_open(&option, now) {
        return state.refuse(&language, &rejection, "offer");
    }
    metrics::counter!("backorder_offer_page_views_total", "option" => option_kind(&option)).increment(1);
    let mut view = state.view(&language);
    view.kind = "offer";
    view.title = text(&view.t, "offer_title").replace("{order}", &offer.order_id);
    let zone = geo::timezone_of(offer.country.as_deref());
    view.deadline = format::long_datetime(&view.lang, offer.expires_at.with_timezone(&zone));
    view.action = format!("/offers/{}", offer.offer_id);
    view.linked = option.as_param();
    view.token = token;
    view.options = offer
        .options()
        .iter()
        .map(|o| OptionView {
            value: o.as_param(),
            label: state.option_label(&view, &offer, o),
            checked: *o == option,
        })
        .collect();
    state.render(StatusCode::OK, &view)
}

pub async fn offer_confirm(
    State(state): State<PageState>,
    Path(offer_id): Path<String>,
    headers: HeaderMap,
    Form(form): Form<OfferForm>,
) -> Response {
    let chosen = form.option.clone();
    let (offer, _linked, _token, now) = match open_offer(&state, &headers, &offer_id, form.linked, form.token).await {
        Ok(found) => found,
        Err(page) => return page,
    };
    let language = language_of(&offer.locale);
    let chosen = match required(chosen, "option")
        .and_then(|o| OfferOption::parse(&o).map_err(|e| Rejection::Malformed(e.to_string())))
    {
        Ok(o) => o,
        Err(r) => return state.refuse(&language, &r, "offer"),
    };
    if let Err(rejection) = offer.check_open(&chosen, now) {
        return state.refuse(&language, &rejection, "offer");
    }
    // The response is signed for the option picked (the page proved the
    // customer by the link's token); its id is the same for a double click,
    // so offers-consumer records one decision.
    let response = OfferResponse {
        event_id: uuid::Uuid::new_v5(
            &uuid::Uuid::NAMESPACE_OID,
            format!("page:{}:{}", offer.offer_id, chosen.as_param()).as_bytes(),
        )
        .to_string(),
        occurred_at: now,
        offer_id: offer.offer_id.clone(),
        token: state
            .signer
            .offer_token(&offer.offer_id, &offer.customer_id, &chosen, offer.expires_at),
        choice: chosen.choice(),
        alternative_sku: chosen.alternative_sku().map(str::to_string),
    };
    if let Err(e) = publish(&state, &response).await {
        return state.unavailable(&language, &e);
    }
    metrics::counter!("backorder_offer_page_confirms_total", "option" => option_kind(&chosen)).increment(1);
    let mut view = state.view(&language);
    view.kind = "received";
    view.title = text(&view.t, "received_title");
    view.message = text(&view.t, "received_message").replace("{order}", &offer.order_id);
    let kind = match chosen {
        OfferOption::Switch(_) => "SWITCH",
        OfferOption::TakeStoreCredit => "CREDIT",
        OfferOption::KeepWaitingExpedited => "EXPEDITE",
        OfferOption::Cancel => "CANCEL",
    };
    view.next_steps = text(&view.t, &format!("next_{kind}"));
    state.render(StatusCode::OK, &view)
}

async fn publish<T: backorder_core::events::AvroRecord>(state: &PageState, record: &T) -> Result<(), String> {
    let outbound = OutboundRecord::encode(&state.codec, &state.responses_topic, record)
        .await
        .map_err(|e| e.to_string())?;
    state
        .producer
        .send_all(std::slice::from_ref(&outbound))
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Loads and checks the line a cancel link names.
async fn checked_cancel(
    state: &PageState,
    params: CancelParams,
) -> Result<Result<decisions::CancelTarget, (String, Rejection)>, crate::error::OffersError> {
    let parsed = required(params.order, "order")
        .and_then(|o| required(params.line, "line").and_then(|l| required(params.token, "token").map(|t| (o, l, t))));
    let (order_id, line_id, token) = match parsed {
        Ok(p) => p,
        Err(r) => return Ok(Err(("en".into(), r))),
    };
    let client = state.pool.get().await?;
    let Some(target) = decisions::load_cancel_target(&**client, &order_id, &line_id, false).await? else {
        return Ok(Err(("en".into(), Rejection::UnknownLine)));
    };
    let language = language_of(&target.locale);
    match target.check(&state.signer, &token) {
        Ok(()) => Ok(Ok(target)),
        Err(r) => Ok(Err((language, r))),
    }
}

pub async fn cancel_page(
    State(state): State<PageState>,
    headers: HeaderMap,
    Query(params): Query<CancelParams>,
) -> Response {
    let (target, token, _now) = match open_cancel(&state, &headers, params).await {
        Ok(found) => found,
        Err(page) => return page,
    };
    metrics::counter!("backorder_offer_page_views_total", "option" => "cancel_line").increment(1);
    let mut view = state.view(&language_of(&target.locale));
    view.kind = "cancel";
    view.title = text(&view.t, "cancel_title");
    view.action = "/cancel".into();
    view.order_id = target.order_id.clone();
    view.line_id = target.line.line_id.clone();
    view.token = token;
    view.product = target.line.product_name.clone();
    view.refund = format::money(&view.lang, target.refund_minor(), &target.currency);
    state.render(StatusCode::OK, &view)
}

pub async fn cancel_confirm(
    State(state): State<PageState>,
    headers: HeaderMap,
    Form(params): Form<CancelParams>,
) -> Response {
    let (target, token, now) = match open_cancel(&state, &headers, params).await {
        Ok(found) => found,
        Err(page) => return page,
    };
    let language = language_of(&target.locale);
    let request = CancellationRequested {
        event_id: uuid::Uuid::new_v5(
            &uuid::Uuid::NAMESPACE_OID,
            format!("page-cancel:{}:{}", target.order_id, target.line.line_id).as_bytes(),
        )
        .to_string(),
        occurred_at: now,
        order_id: target.order_id.clone(),
        line_id: target.line.line_id.clone(),
        token,
    };
    if let Err(e) = publish(&state, &request).await {
        return state.unavailable(&language, &e);
    }
    metrics::counter!("backorder_offer_page_confirms_total", "option" => "cancel_line").increment(1);
    let mut view = state.view(&language);
    view.kind = "received";
    view.title = text(&view.t, "cancelled_title");
    let refund = format::money(&view.lang, target.refund_minor(), &target.currency);
    view.message = text(&view.t, "cancelled_message")
        .replace("{product}", &target.line.product_name)
        .replace("{refund}", &refund);
    view.next_steps = text(&view.t, "next_CANCEL");
    state.render(StatusCode::OK, &view)
}
