//! SES bounce and complaint events, delivered by Amazon SNS as HTTP(S)
//! notifications to `POST /sns`.
//!
//! Every message is verified before anything is done with it, as AWS
//! documents for HTTP/S subscribers: the signing certificate is fetched
//! only from SNS (`https://sns.<region>.amazonaws.com/….pem`; for tests,
//! `BACKORDER_SNS_CERT_URL_PREFIX` allows another prefix), and the
//! signature (`SignatureVersion` 1: SHA1withRSA, 2: SHA256withRSA) must
//! match the canonical string of the message's fields, and the topic must
//! be one of `BACKORDER_SNS_TOPIC_ARNS` (SNS signs every account's topics,
//! so a valid signature alone only proves the message came from *some*
//! topic; with no topic configured every message is refused). A message
//! that fails is answered 403 and changes nothing: a subscription
//! confirmation from another topic is never visited.
//!
//! `SubscriptionConfirmation`: the `SubscribeURL` is visited (confirming
//! the subscription). `Notification`: its `Message` is the SES event; a
//! permanent bounce suppresses the address as `hard_bounce`, a complaint
//! as `complaint`; transient bounces and other events change nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use backorder_core::deadpool_postgres::Pool;
use backorder_core::domain::mask_email;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rsa::RsaPublicKey;
use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::pkcs8::DecodePublicKey;
use rsa::signature::Verifier;
use serde::Deserialize;
use x509_cert::Certificate;
use x509_cert::der::{DecodePem, Encode};

use crate::ledger;
use crate::suppression::{COMPLAINT, HARD_BOUNCE};

/// Why an SNS message was refused or could not be handled.
#[derive(Debug, thiserror::Error)]
pub enum SnsError {
    #[error("not an SNS message: {0}")]
    Malformed(String),
    #[error("signing certificate URL not allowed: {0}")]
    CertUrl(String),
    #[error("could not fetch the signing certificate: {0}")]
    CertFetch(String),
    #[error("unusable signing certificate: {0}")]
    Cert(String),
    #[error("signature does not verify")]
    BadSignature,
    #[error("unsupported SignatureVersion {0}")]
    SignatureVersion(String),
    #[error("messages from topic {0} are not accepted (BACKORDER_SNS_TOPIC_ARNS)")]
    Topic(String),
    #[error("no SNS topic is accepted: BACKORDER_SNS_TOPIC_ARNS is not set")]
    NoTopics,
    #[error("could not confirm the subscription: {0}")]
    Confirm(String),
    #[error(transparent)]
    Db(#[from] backorder_core::db::DbError),
}

impl SnsError {
    fn status(&self) -> StatusCode {
        match self {
            SnsError::Malformed(_) | SnsError::SignatureVersion(_) => StatusCode::BAD_REQUEST,
            SnsError::CertUrl(_)
            | SnsError::Cert(_)
            | SnsError::BadSignature
            | SnsError::Topic(_)
            | SnsError::NoTopics => StatusCode::FORBIDDEN,
            // Ours or the network's: SNS retries on 5xx.
            SnsError::CertFetch(_) | SnsError::Confirm(_) | SnsError::Db(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn label(&self) -> &'static str {
        match self {
            SnsError::Malformed(_) => "malformed",
            SnsError::CertUrl(_) => "cert_url",
            SnsError::CertFetch(_) => "cert_fetch",
            SnsError::Cert(_) => "cert",
            SnsError::BadSignature => "bad_signature",
            SnsError::Topic(_) => "topic",
            SnsError::NoTopics => "no_topics",
            SnsError::SignatureVersion(_) => "signature_version",
            SnsError::Confirm(_) => "confirm",
            SnsError::Db(_) => "db",
        }
    }
}

/// An SNS HTTP(S) message (all types share one shape).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SnsMessage {
    #[serde(rename = "Type")]
    pub kind: String,
    pub message_id: String,
    #[serde(default)]
    pub token: Option<String>,
    pub topic_arn: String,
    #[serde(default)]
    pub subject: Option<String>,
    pub message: String,
    pub timestamp: String,
    pub signature_version: String,
    pub signature: String,
    #[serde(rename = "SigningCertURL")]
    pub signing_cert_url: String,
    #[serde(rename = "SubscribeURL", default)]
    pub subscribe_url: Option<String>,
}

impl SnsMessage {
    /// The string SNS signs: `name\nvalue\n` for each field the type
    /// includes, in this order.
    pub fn string_to_sign(&self) -> Result<String, SnsError> {
        let mut out = String::new();
        let mut add = |name: &str, value: &str| {
            out.push_str(name);
            out.push('\n');
            out.push_str(value);
            out.push('\n');
        };
        match self.kind.as_str() {
            "Notification" => {
                add("Message", &self.message);
                add("MessageId", &self.message_id);
                if let Some(subject) = &self.subject {
                    add("Subject", subject);
                }
                add("Timestamp", &self.timestamp);
                add("TopicArn", &self.topic_arn);
                add("Type", &self.kind);
            }
            "SubscriptionConfirmation" | "UnsubscribeConfirmation" => {
                let missing = |f: &str| SnsError::Malformed(format!("{} without {f}", self.kind));
                add("Message", &self.message);
                add("MessageId", &self.message_id);
                add(
                    "SubscribeURL",
                    self.subscribe_url.as_deref().ok_or_else(|| missing("SubscribeURL"))?,
                );
                add("Timestamp", &self.timestamp);
                add("Token", self.token.as_deref().ok_or_else(|| missing("Token"))?);
                add("TopicArn", &self.topic_arn);
                add("Type", &self.kind);
            }
            other => return Err(SnsError::Malformed(format!("unknown Type {other:?}"))),
        }
        Ok(out)
    }
}

/// Is `url` a place SNS signing certificates may come from?
pub fn cert_url_allowed(url: &str, allowed_prefix: Option<&str>) -> bool {
    if let Some(prefix) = allowed_prefix {
        return url.starts_with(prefix);
    }
    let Ok(parsed) = url::Url::parse(url) else {
        return false;
    };
    let host_ok = parsed.host_str().is_some_and(|host| {
        host.strip_prefix("sns.")
            .and_then(|rest| {
                rest.strip_suffix(".amazonaws.com")
                    .or_else(|| rest.strip_suffix(".amazonaws.com.cn"))
            })
            .is_some_and(|region| {
                !region.is_empty()
                    && region
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            })
    });
    parsed.scheme() == "https" && host_ok && parsed.port().is_none() && parsed.path().ends_with(".pem")
}

/// Verifies `signature` over `text` with the certificate's RSA key.
pub fn verify_signature(cert_pem: &str, version: &str, text: &str, signature_b64: &str) -> Result<(), SnsError> {
    let cert = Certificate::from_pem(cert_pem.as_bytes()).map_err(|e| SnsError::Cert(e.to_string()))?;
    let validity = &cert.tbs_certificate.validity;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    if now < validity.not_before.to_unix_duration() || now > validity.not_after.to_unix_duration() {
        return Err(SnsError::Cert("outside its validity period".into()));
    }
    let spki = cert
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|e| SnsError::Cert(e.to_string()))?;
    let key = RsaPublicKey::from_public_key_der(&spki).map_err(|e| SnsError::Cert(e.to_string()))?;
    let signature = STANDARD
        .decode(signature_b64.trim())
        .map_err(|_| SnsError::BadSignature)?;
    let signature = Signature::try_from(signature.as_slice()).map_err(|_| SnsError::BadSignature)?;
    let verified = match version {
        "1" => VerifyingKey::<sha1::Sha1>::new(key).verify(text.as_bytes(), &signature),
        "2" => VerifyingKey::<sha2::Sha256>::new(key).verify(text.as_bytes(), &signature),
        other => return Err(SnsError::SignatureVersion(other.to_string())),
    };
    verified.map_err(|_| SnsError::BadSignature)
}

/// A suppression an SES event asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct SesFeedback {
    pub reason: &'static str,
    pub addresses: Vec<String>,
    pub detail: serde_json::Value,
}

/// Reads an SES event (event publishing: `eventType`; identity feedback
/// notifications: `notificationType`). `None`: nothing to suppress.
pub fn ses_feedback(message: &str) -> Result<Option<SesFeedback>, SnsError> {
    let event: serde_json::Value =
        serde_json::from_str(message).map_err(|e| SnsError::Malformed(format!("Message is not SES JSON: {e}")))?;
    let kind = event
        .get("eventType")
        .or_else(|| event.get("notificationType"))
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default();
    let addresses = |list: &str, field: &str| -> Vec<String> {
        event
            .get(field)
            .and_then(|b| b.get(list))
            .and_then(serde_json::Value::as_array)
            .map(|recipients| {
                recipients
                    .iter()
                    .filter_map(|r| r.get("emailAddress").and_then(serde_json::Value::as_str))
                    .map(|a| a.trim().to_lowercase())
                    .filter(|a| !a.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    };
    let pick = |section: &str, field: &str| {
        event
            .get(section)
            .and_then(|s| s.get(field))
            .cloned()
            .unwrap_or(serde_json::Value::Null)
    };
    Ok(match kind {
        "Bounce" if event.pointer("/bounce/bounceType").and_then(serde_json::Value::as_str) == Some("Permanent") => {
            Some(SesFeedback {
                reason: HARD_BOUNCE,
                addresses: addresses("bouncedRecipients", "bounce"),
                detail: serde_json::json!({
                    "bounce_sub_type": pick("bounce", "bounceSubType"),
                    "feedback_id": pick("bounce", "feedbackId"),
                    "ses_message_id": event.pointer("/mail/messageId").cloned(),
                }),
            })
        }
        "Complaint" => Some(SesFeedback {
            reason: COMPLAINT,
            addresses: addresses("complainedRecipients", "complaint"),
            detail: serde_json::json!({
                "complaint_feedback_type": pick("complaint", "complaintFeedbackType"),
                "feedback_id": pick("complaint", "feedbackId"),
                "ses_message_id": event.pointer("/mail/messageId").cloned(),
            }),
        }),
        _ => None,
    })
}

/// What `POST /sns` needs.
#[derive(Clone)]
pub struct SnsState {
    pub pool: Pool,
    http: reqwest::Client,
    cert_url_prefix: Option<String>,
    /// Accepted topics; empty: none.
    topics: Vec<String>,
    /// Signing certificates by URL (SNS uses few; they rotate rarely).
    certs: Arc<Mutex<HashMap<String, String>>>,
}

impl SnsState {
    pub fn new(pool: Pool, cert_url_prefix: Option<String>, topics: Vec<String>) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Self {
            pool,
            http,
            cert_url_prefix,
            topics,
            certs: Arc::default(),
        }
    }

    async fn certificate(&self, url: &str) -> Result<String, SnsError> {
        if !cert_url_allowed(url, self.cert_url_prefix.as_deref()) {
            return Err(SnsError::CertUrl(url.to_string()));
        }
        if let Some(pem) = self.certs.lock().ok().and_then(|c| c.get(url).cloned()) {
            return Ok(pem);
        }
        let response = self
            .http
            .get(url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| SnsError::CertFetch(e.to_string()))?;
        let pem = response.text().await.map_err(|e| SnsError::CertFetch(e.to_string()))?;
        if let Ok(mut certs) = self.certs.lock() {
            if certs.len() > 64 {
                certs.clear();
            }
            certs.insert(url.to_string(), pem.clone());
        }
        Ok(pem)
    }

    async fn handle(&self, body: &str) -> Result<&'static str, SnsError> {
        let message: SnsMessage =
            serde_json::from_str(body).map_err(|e| SnsError::Malformed(format!("not an SNS JSON message: {e}")))?;
        if self.topics.is_empty() {
            return Err(SnsError::NoTopics);
        }
        if !self.topics.contains(&message.topic_arn) {
            return Err(SnsError::Topic(message.topic_arn));
        }
        let text = message.string_to_sign()?;
        let pem = self.certificate(&message.signing_cert_url).await?;
        // Any failure to verify, for whatever reason, drops the certificate
        // from the cache so a rotated one is fetched anew next time.
        if let Err(error) = verify_signature(&pem, &message.signature_version, &text, &message.signature) {
            if let Ok(mut certs) = self.certs.lock() {
                certs.remove(&message.signing_cert_url);
            }
            return Err(error);
        }
        match message.kind.as_str() {
            "SubscriptionConfirmation" => {
                let url = message.subscribe_url.as_deref().unwrap_or_default();
                self.http
                    .get(url)
                    .send()
                    .await
                    .and_then(reqwest::Response::error_for_status)
                    .map_err(|e| SnsError::Confirm(e.to_string()))?;
                tracing::info!(topic_arn = %message.topic_arn, "SNS subscription confirmed");
                Ok("subscription_confirmed")
            }
            "UnsubscribeConfirmation" => {
                tracing::warn!(topic_arn = %message.topic_arn, "SNS says this endpoint was unsubscribed");
                Ok("unsubscribe_confirmation")
            }
            _ => {
                let Some(feedback) = ses_feedback(&message.message)? else {
                    return Ok("ignored");
                };
                for address in &feedback.addresses {
                    let new = ledger::suppress(&self.pool, address, feedback.reason, "ses", &feedback.detail).await?;
                    if new {
                        metrics::counter!("backorder_sender_suppressions_total", "reason" => feedback.reason)
                            .increment(1);
                    }
                    tracing::info!(recipient = %mask_email(address), reason = feedback.reason, new, "address suppressed");
                }
                Ok("suppressed")
            }
        }
    }
}

/// `POST /sns`: 200 when handled, 4xx when refused (bad signature,
/// malformed), 503 when it should be retried.
pub async fn receive(State(state): State<SnsState>, body: String) -> (StatusCode, &'static str) {
    match state.handle(&body).await {
        Ok(outcome) => {
            metrics::counter!("backorder_sender_sns_messages_total", "outcome" => outcome).increment(1);
            (StatusCode::OK, "ok")
        }
        Err(error) => {
            metrics::counter!("backorder_sender_sns_messages_total", "outcome" => error.label()).increment(1);
            tracing::warn!(%error, "SNS message refused");
            (error.status(), error.label())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sns_hosts_serve_certificates_unless_configured() {
        let ok = "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-abc.pem";
        assert!(cert_url_allowed(ok, None));
        for bad in [
            "http://sns.eu-west-1.amazonaws.com/x.pem",
            "https://sns.eu-west-1.amazonaws.com.evil.example/x.pem",
            "https://evil.example/sns.eu-west-1.amazonaws.com/x.pem",
            "https://sns..amazonaws.com/x.pem",
            "https://sns.eu-west-1.amazonaws.com/x.txt",
            "https://sns.eu-west-1.amazonaws.com:444/x.pem",
        ] {
            assert!(!cert_url_allowed(bad, None), "{bad}");
        }
        assert!(cert_url_allowed(
            "http://127.0.0.1:9/c.pem",
            Some("http://127.0.0.1:9/")
        ));
        assert!(!cert_url_allowed(ok, Some("http://127.0.0.1:9/")));
    }

    #[test]
    fn notification_string_to_sign_follows_the_documented_order() {
        let message: SnsMessage = serde_json::from_value(serde_json::json!({
            "Type": "Notification", "MessageId": "m", "TopicArn": "arn", "Message": "hello",
            "Timestamp": "t", "SignatureVersion": "1", "Signature": "s", "SigningCertURL": "u"
        }))
        .unwrap();
        assert_eq!(
            message.string_to_sign().unwrap(),
            "Message\nhello\nMessageId\nm\nTimestamp\nt\nTopicArn\narn\nType\nNotification\n"
        );
    }

    #[test]
    fn permanent_bounces_and_complaints_suppress_transient_bounces_do_not() {
        let hard = r#"{"eventType":"Bounce","bounce":{"bounceType":"Permanent","bounceSubType":"General",
            "bouncedRecipients":[{"emailAddress":"A@Example.com"}]},"mail":{"messageId":"x"}}"#;
        let feedback = ses_feedback(hard).unwrap().unwrap();
        assert_eq!(feedback.reason, HARD_BOUNCE);
        assert_eq!(feedback.addresses, vec!["a@example.com"]);
        let soft = r#"{"notificationType":"Bounce","bounce":{"bounceType":"Transient",
            "bouncedRecipients":[{"emailAddress":"a@example.com"}]}}"#;
        assert_eq!(ses_feedback(soft).unwrap(), None);
        let complaint = r#"{"notificationType":"Complaint","complaint":{
            "complainedRecipients":[{"emailAddress":"b@example.com"}]}}"#;
        assert_eq!(ses_feedback(complaint).unwrap().unwrap().reason, COMPLAINT);
        assert_eq!(ses_feedback(r#"{"eventType":"Delivery"}"#).unwrap(), None);
    }
}
