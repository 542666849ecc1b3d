//! Amazon SES v2 through the real `aws-sdk-sesv2` client.
//!
//! The endpoint, region and credentials come from the AWS SDK's own chain
//! (`AWS_ENDPOINT_URL_SESV2` points it at a local emulator). The SDK's own
//! retries are off: the ledger schedules retries durably, and counts them.

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_sesv2::Client;
use aws_sdk_sesv2::error::SdkError;
use aws_sdk_sesv2::operation::send_email::SendEmailError;
use aws_sdk_sesv2::types::{Body, Content, Destination, EmailContent, Message, MessageHeader, MessageTag};
use backorder_core::config::Settings;
use backorder_core::domain::mask_emails_in_text;

use crate::render::Rendered;

/// How a send failed, which decides what the ledger does next.
#[derive(Debug, Clone, PartialEq)]
pub enum SendFailure {
    /// Throttling, 5xx: SES answered and did not accept it; try again later.
    Retryable(String),
    /// A timeout or a broken connection after the request may have left:
    /// SES may have accepted it. Retried, and the retry is counted as an
    /// ambiguous resend.
    Unknown(String),
    /// SES will never accept this message: record it as failed.
    Permanent { kind: &'static str, reason: String },
    /// The account may not send at all now (SES paused or suspended it,
    /// or refused the request for a reason that is not about this email:
    /// access denied, expired credentials, any 4xx not known to be about
    /// the message): stop every worker until a probe send succeeds.
    /// `kind` is a metric label.
    Paused { kind: &'static str, reason: String },
}

/// A request the SDK refuses to build (a required field missing) would
/// never be accepted: a permanent failure, not a retry.
impl From<aws_sdk_sesv2::error::BuildError> for SendFailure {
    fn from(error: aws_sdk_sesv2::error::BuildError) -> Self {
        SendFailure::Permanent {
            kind: "build",
            reason: error.to_string(),
        }
    }
}

/// SES's sending limits, from `GetAccount`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SendQuota {
    pub max_send_rate: f64,
    pub max_24_hour_send: f64,
    pub sent_last_24_hours: f64,
    /// `false` when SES paused sending for the whole account.
    pub sending_enabled: bool,
}

/// One email ready to go.
#[derive(Debug)]
pub struct Outgoing<'a> {
    pub recipient: &'a str,
    pub rendered: &'a Rendered,
    pub dedup_key: &'a str,
    pub template: &'a str,
    pub campaign: Option<&'a str>,
    /// Marketing only: RFC 8058 one-click unsubscribe.
    pub unsubscribe_url: Option<&'a str>,
}

#[derive(Clone, Debug)]
pub struct SesClient {
    client: Client,
    from: String,
    reply_to: String,
    configuration_set: Option<String>,
}

impl SesClient {
    /// Builds the client from the AWS SDK's environment chain.
    pub async fn from_env(settings: &Settings) -> Self {
        let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .operation_timeout(Duration::from_millis(settings.ses_timeout_ms))
                    .build(),
            )
            .load()
            .await;
        Self {
            client: Client::new(&config),
            from: settings.ses_from.clone(),
            reply_to: settings.support_email.clone(),
            configuration_set: settings.ses_configuration_set.clone(),
        }
    }

    /// Reads the account's sending limits. `None` when SES does not answer
    /// `GetAccount` (the local emulator does not implement it).
    pub async fn quota(&self) -> Option<SendQuota> {
        match self.client.get_account().send().await {
            Ok(account) => account.send_quota().map(|q| SendQuota {
                max_send_rate: q.max_send_rate(),
                max_24_hour_send: q.max24_hour_send(),
                sent_last_24_hours: q.sent_last24_hours(),
                sending_enabled: account.sending_enabled(),
            }),
            Err(error) => {
                tracing::info!(error = %aws_sdk_sesv2::error::DisplayErrorContext(&error), "GetAccount unavailable; using the configured send rate and quota");
                None
            }
        }
    }

    /// Sends one email; returns SES's message id.
    pub async fn send(&self, email: &Outgoing<'_>) -> Result<String, SendFailure> {
        let utf8 = |text: &str| Content::builder().data(text).charset("UTF-8").build();
        let mut message = Message::builder().subject(utf8(&email.rendered.subject)?).body(
            Body::builder()
                .html(utf8(&email.rendered.html)?)
                .text(utf8(&email.rendered.text)?)
                .build(),
        );
        if let Some(url) = email.unsubscribe_url {
            for (name, value) in [
                ("List-Unsubscribe", format!("<{url}>")),
                ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click".to_string()),
            ] {
                let header = MessageHeader::builder().name(name).value(value).build()?;
                message = message.headers(header);
            }
        }
        let mut tags = vec![("dedup_key", email.dedup_key), ("template", email.template)];
        if let Some(campaign) = email.campaign {
            tags.push(("campaign", campaign));
        }
        let mut request = self
            .client
            .send_email()
            .from_email_address(&self.from)
            .reply_to_addresses(&self.reply_to)
            .destination(Destination::builder().to_addresses(email.recipient).build())
            .content(EmailContent::builder().simple(message.build()).build())
            .set_configuration_set_name(self.configuration_set.clone());
        for (name, value) in tags {
            let tag = MessageTag::builder().name(name).value(value).build()?;
            request = request.email_tags(tag);
        }
        match request.send().await {
            Ok(output) => Ok(output.message_id().unwrap_or_default().to_string()),
            Err(error) => Err(classify(error)),
        }
    }
}

/// Sorts an SES error into retry, give up, or stop everything.
fn classify(error: SdkError<SendEmailError, aws_sdk_sesv2::config::http::HttpResponse>) -> SendFailure {
    let text = mask_emails_in_text(&aws_sdk_sesv2::error::DisplayErrorContext(&error).to_string());
    match &error {
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            match service.err() {
                SendEmailError::TooManyRequestsException(_) | SendEmailError::LimitExceededException(_) => {
                    SendFailure::Retryable(text)
                }
                SendEmailError::SendingPausedException(_) | SendEmailError::AccountSuspendedException(_) => {
                    SendFailure::Paused {
                        kind: "account_paused",
                        reason: text,
                    }
                }
                SendEmailError::MessageRejected(_) => SendFailure::Permanent {
                    kind: "message_rejected",
                    reason: text,
                },
                SendEmailError::MailFromDomainNotVerifiedException(_) => SendFailure::Permanent {
                    kind: "mail_from_not_verified",
                    reason: text,
                },
                SendEmailError::BadRequestException(_) => SendFailure::Permanent {
                    kind: "bad_request",
                    reason: text,
                },
                SendEmailError::NotFoundException(_) => SendFailure::Permanent {
                    kind: "not_found",
                    reason: text,
                },
                _ if status == 429 || status >= 500 => SendFailure::Retryable(text),
                _ if is_throttling_code(service.err().meta().code()) => SendFailure::Retryable(text),
                // AccessDenied, expired or unknown credentials, anything
                // SES may add: failing every queued email for it would
                // lose them all to one misconfiguration. Pause instead.
                _ => SendFailure::Paused {
                    kind: "unknown_client_error",
                    reason: text,
                },
            }
        }
        // Failed before anything was sent: safe to retry.
        SdkError::ConstructionFailure(_) => SendFailure::Retryable(text),
        SdkError::DispatchFailure(failure) if failure.is_user() => SendFailure::Retryable(text),
        // Timeouts, dropped connections, unreadable responses: SES may have
        // accepted the email; whether it did cannot be known.
        _ => SendFailure::Unknown(text),
    }
}

fn is_throttling_code(code: Option<&str>) -> bool {
    matches!(
        code,
        Some("Throttling" | "ThrottlingException" | "TooManyRequestsException")
    )
}
