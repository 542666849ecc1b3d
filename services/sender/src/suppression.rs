//! The suppression list and one-click unsubscribe (RFC 8058).
//!
//! Who gets what: a hard-bounced or complaining address gets nothing; an
//! unsubscribed one gets no marketing email (transactional email, such as
//! "your order shipped", still goes out). The list lives in PostgreSQL
//! (`email_suppression`), shared by every replica; it is fed by SES events
//! (see [`crate::sns`]) and by the unsubscribe link in marketing emails.
//!
//! An unsubscribe link names the email it came with, not the address:
//! `<base>/unsubscribe?token=<dedup key>.<HMAC-SHA256 of it, base64url>`.
//! `POST` (what mail clients send for `List-Unsubscribe-Post:
//! List-Unsubscribe=One-Click`, and the button of the page) unsubscribes;
//! `GET` only shows that page, so a link scanner that follows links
//! unsubscribes nobody.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use backorder_core::deadpool_postgres::Pool;
use backorder_core::domain::mask_email;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use crate::ledger;

/// Suppression list reasons, as stored.
pub const HARD_BOUNCE: &str = "hard_bounce";
pub const COMPLAINT: &str = "complaint";
pub const UNSUBSCRIBE: &str = "unsubscribe";

/// Unsubscribe failures.
#[derive(Debug, thiserror::Error)]
pub enum SuppressionError {
    #[error("the unsubscribe token is malformed or its signature does not match")]
    BadToken,
    #[error("the unsubscribe key is unusable: {0}")]
    Key(String),
    #[error(transparent)]
    Db(#[from] backorder_core::db::DbError),
}

/// Which suppression, if any, stops an email: `reasons` are the address's
/// entries on the list.
pub fn blocking_reason(reasons: &[String], marketing: bool) -> Option<&str> {
    let find = |wanted: &str| reasons.iter().map(String::as_str).find(|r| *r == wanted);
    find(HARD_BOUNCE)
        .or_else(|| find(COMPLAINT))
        .or_else(|| if marketing { find(UNSUBSCRIBE) } else { None })
}

/// Signs and checks unsubscribe tokens, and builds the link.
#[derive(Clone)]
pub struct UnsubscribeLinks {
    secret: Vec<u8>,
    base_url: String,
}

impl std::fmt::Debug for UnsubscribeLinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnsubscribeLinks")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl UnsubscribeLinks {
    pub fn new(secret: &str, base_url: &str) -> Self {
        Self {
            secret: secret.as_bytes().to_vec(),
            base_url: base_url.trim_end_matches('/').to_string(),
        }
    }

    fn mac(&self) -> Result<Hmac<Sha256>, SuppressionError> {
        Hmac::<Sha256>::new_from_slice(&self.secret).map_err(|e| SuppressionError::Key(e.to_string()))
    }

    /// The token for the email with `dedup_key`.
    pub fn token(&self, dedup_key: &str) -> Result<String, SuppressionError> {
        let mut mac = self.mac()?;
        mac.update(b"unsubscribe:");
        mac.update(dedup_key.as_bytes());
        Ok(format!(
            "{dedup_key}.{}",
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        ))
    }

    /// The link for the email with `dedup_key` (dedup keys are
    /// `[A-Za-z0-9_-]`, base64url is too: nothing needs escaping).
    pub fn url(&self, dedup_key: &str) -> Result<String, SuppressionError> {
        Ok(format!(
            "{}/unsubscribe?token={}",
            self.base_url,
            self.token(dedup_key)?
        ))
    }

    /// The dedup key a genuine token names.
    pub fn verify(&self, token: &str) -> Result<String, SuppressionError> {
        let (key, signature) = token.split_once('.').ok_or(SuppressionError::BadToken)?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| SuppressionError::BadToken)?;
        let mut mac = self.mac()?;
        mac.update(b"unsubscribe:");
        mac.update(key.as_bytes());
        mac.verify_slice(&signature).map_err(|_| SuppressionError::BadToken)?;
        Ok(key.to_string())
    }
}

/// What the unsubscribe routes share.
#[derive(Clone, Debug)]
pub struct UnsubscribeState {
    pub pool: Pool,
    pub links: UnsubscribeLinks,
}

#[derive(Debug, Deserialize)]
pub struct TokenQuery {
    #[serde(default)]
    token: String,
}

fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta name=\"robots\" content=\"noindex\">\
         <title>{title}</title></head><body style=\"font-family:sans-serif;max-width:32em;margin:3em auto\">\
         <h1>{title}</h1>{body}</body></html>"
    );
    (status, Html(html)).into_response()
}

/// `GET /unsubscribe?token=…`: a page with a button; changes nothing.
pub async fn confirm_page(State(state): State<UnsubscribeState>, Query(query): Query<TokenQuery>) -> Response {
    if state.links.verify(&query.token).is_err() {
        return page(
            StatusCode::BAD_REQUEST,
            "Link not valid",
            "<p>This unsubscribe link is not valid. Please use the link from the email.</p>",
        );
    }
    page(StatusCode::OK, "Unsubscribe", &confirm_form(&query.token))
}

/// The page's form. The token comes from the request: it is encoded for
/// the query string, and the action then escaped for the attribute, so
/// whatever a token holds it stays one attribute value.
fn confirm_form(token: &str) -> String {
    let query: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("token", token)
        .finish();
    let action = format!("unsubscribe?{query}");
    format!(
        "<p>Stop receiving marketing emails from us? Emails about your orders will still arrive.</p>\
         <form method=\"post\" action=\"{}\">\
         <input type=\"hidden\" name=\"List-Unsubscribe\" value=\"One-Click\">\
         <button type=\"submit\">Unsubscribe</button></form>",
        minijinja::HtmlEscape(&action)
    )
}

/// `POST /unsubscribe?token=…`: RFC 8058 one-click unsubscribe. The body
/// (`List-Unsubscribe=One-Click`) is not needed: the signed token says
/// everything, and a POST is never sent by link scanners.
pub async fn unsubscribe(State(state): State<UnsubscribeState>, Query(query): Query<TokenQuery>) -> Response {
    match apply_unsubscribe(&state, &query.token).await {
        Ok(()) => page(
            StatusCode::OK,
            "You are unsubscribed",
            "<p>You will not receive marketing emails from us any more. Emails about your orders will still arrive.</p>",
        ),
        Err(SuppressionError::BadToken) => {
            metrics::counter!("backorder_sender_unsubscribes_total", "outcome" => "bad_token").increment(1);
            page(
                StatusCode::BAD_REQUEST,
                "Link not valid",
                "<p>This unsubscribe link is not valid.</p>",
            )
        }
        Err(error) => {
            metrics::counter!("backorder_sender_unsubscribes_total", "outcome" => "error").increment(1);
            tracing::error!(%error, "could not record an unsubscribe");
            page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Please try again",
                "<p>Something went wrong on our side. Please try again in a minute.</p>",
            )
        }
    }
}

async fn apply_unsubscribe(state: &UnsubscribeState, token: &str) -> Result<(), SuppressionError> {
    let dedup_key = state.links.verify(token)?;
    // A genuine token for an email we never recorded cannot happen unless
    // the ledger was reset; nothing to unsubscribe then.
    let Some(recipient) = ledger::recipient_of(&state.pool, &dedup_key).await? else {
        return Err(SuppressionError::BadToken);
    };
    let detail = serde_json::json!({ "dedup_key": dedup_key });
    let new = ledger::suppress(&state.pool, &recipient, UNSUBSCRIBE, "one_click", &detail).await?;
    metrics::counter!("backorder_sender_unsubscribes_total", "outcome" => if new { "unsubscribed" } else { "already" })
        .increment(1);
    if new {
        metrics::counter!("backorder_sender_suppressions_total", "reason" => UNSUBSCRIBE).increment(1);
    }
    tracing::info!(recipient = %mask_email(&recipient), dedup_key = %dedup_key, "one-click unsubscribe");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_reject_tampering() {
        let links = UnsubscribeLinks::new("secret", "http://x/");
        let token = links.token("cart-1_a").unwrap();
        assert_eq!(links.verify(&token).unwrap(), "cart-1_a");
        assert!(links.url("k").unwrap().starts_with("http://x/unsubscribe?token=k."));
        let forged = token.replacen("cart-1_a", "cart-2_a", 1);
        assert!(matches!(links.verify(&forged), Err(SuppressionError::BadToken)));
        let other_key = UnsubscribeLinks::new("other", "http://x");
        assert!(matches!(other_key.verify(&token), Err(SuppressionError::BadToken)));
        assert!(matches!(links.verify("no-dot"), Err(SuppressionError::BadToken)));
    }

    #[test]
    fn a_hostile_token_stays_inside_the_form_action() {
        let hostile = "t_x\"><script>alert(1)</script><a href=\"&.sig";
        let form = confirm_form(hostile);
        assert!(!form.contains("<script"), "{form}");
        assert!(!form.contains("<a "), "{form}");
        let action = form
            .split("action=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap();
        let unescaped = action.replace("&amp;", "&");
        let query = unescaped.strip_prefix("unsubscribe?").unwrap();
        let token: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes()).into_owned().collect();
        assert_eq!(token, vec![("token".to_string(), hostile.to_string())]);
    }

    #[test]
    fn unsubscribe_stops_marketing_only_and_bounces_stop_everything() {
        let unsub = vec![UNSUBSCRIBE.to_string()];
        assert_eq!(blocking_reason(&unsub, true), Some(UNSUBSCRIBE));
        assert_eq!(blocking_reason(&unsub, false), None);
        let bounce = vec![HARD_BOUNCE.to_string(), UNSUBSCRIBE.to_string()];
        assert_eq!(blocking_reason(&bounce, false), Some(HARD_BOUNCE));
        assert_eq!(blocking_reason(&[COMPLAINT.to_string()], false), Some(COMPLAINT));
        assert_eq!(blocking_reason(&[], true), None);
    }
}

/// Hostile input: the unsubscribe token comes from whoever sends the
/// request. Whatever it is, checking it ends in the dedup key it was
/// signed for or [`SuppressionError::BadToken`], never a panic, and the
/// confirmation page carries it only escaped.
#[cfg(test)]
mod hostile_input {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

        #[test]
        fn any_token_is_rejected_unless_signed(token in "\\PC{0,120}|[A-Za-z0-9_-]{0,30}\\.[A-Za-z0-9_=+/-]{0,60}") {
            let links = UnsubscribeLinks::new("secret", "https://shop.example");
            prop_assert!(matches!(links.verify(&token), Err(SuppressionError::BadToken)), "{token:?}");
            let form = confirm_form(&token);
            prop_assert!(!form.contains("<script"), "{form}");
        }

        #[test]
        fn a_signed_token_names_its_key_and_any_change_breaks_it(
            dedup_key in "[A-Za-z0-9_-]{1,40}",
            at in any::<prop::sample::Index>(),
            replacement in any::<char>(),
        ) {
            let links = UnsubscribeLinks::new("secret", "https://shop.example");
            let token = links.token(&dedup_key).unwrap();
            prop_assert_eq!(links.verify(&token).unwrap(), dedup_key);
            let mut chars: Vec<char> = token.chars().collect();
            let at = at.index(chars.len());
            prop_assume!(chars[at] != replacement);
            chars[at] = replacement;
            let forged: String = chars.into_iter().collect();
            prop_assert!(matches!(links.verify(&forged), Err(SuppressionError::BadToken)), "{forged:?}");
        }
    }
}
