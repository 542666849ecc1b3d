//! `backorderctl emails`: the sender's ledger (`email_ledger`), newest
//! first. Recipients are always masked, and anything that looks like an
//! address inside a subject or an error text is masked too.

use std::io::Write;

use backorder_core::config::Settings;
use backorder_core::domain::{mask_email, mask_emails_in_text};
use backorder_core::tokio_postgres::Row;
use chrono::{DateTime, Utc};
use clap::{Args, ValueEnum};
use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{ContentArrangement, Table};
use serde::Serialize;

use crate::{CtlError, print_rows, query_rows, truncate};

/// Characters of `last_error` the table shows (`--json` has all of it).
const ERROR_WIDTH: usize = 60;
/// Characters of `subject` the table shows.
const SUBJECT_WIDTH: usize = 48;

pub(crate) const LONG_ABOUT: &str = "\
List emails in the sender's ledger (table email_ledger), newest first.

Recipients are masked (a***@e***.com), and so is anything that looks like an
address inside a subject or an error text: full addresses are never printed.
The table truncates long subjects and errors; --json prints them whole (masked).";

/// Arguments of `emails`.
#[derive(Debug, Args)]
pub struct EmailsArgs {
    /// Show at most N emails.
    #[arg(long, value_name = "N", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub limit: u32,
    /// Only emails about this order.
    #[arg(long = "order", value_name = "ORDER_ID")]
    pub order_id: Option<String>,
    /// Only emails in this state.
    #[arg(long, value_enum, value_name = "STATE")]
    pub state: Option<EmailState>,
    /// Print a JSON array instead of a table (recipients masked too).
    #[arg(long)]
    pub json: bool,
}

/// The ledger's states, as the table's CHECK constraint lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EmailState {
    /// Waiting for a send worker.
    Queued,
    /// Being sent (an expired lease means a sender died mid-call).
    Sending,
    /// Accepted by SES.
    Sent,
    /// Gave up after retries, or rejected.
    Failed,
    /// Not sent: the address is suppressed.
    Suppressed,
}

impl EmailState {
    pub fn as_str(self) -> &'static str {
        match self {
            EmailState::Queued => "queued",
            EmailState::Sending => "sending",
            EmailState::Sent => "sent",
            EmailState::Failed => "failed",
            EmailState::Suppressed => "suppressed",
        }
    }
}

/// One ledger row as printed: the recipient already masked.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EmailRow {
    pub dedup_key: String,
    pub template: String,
    pub locale: String,
    /// Masked, e.g. `a***@e***.com`.
    pub recipient: String,
    pub state: String,
    pub attempts: i32,
    pub subject: Option<String>,
    pub requested_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
}

impl EmailRow {
    /// Builds a row from raw values, masking every address.
    #[allow(clippy::too_many_arguments)]
    pub fn masked(
        dedup_key: String,
        template: String,
        locale: String,
        recipient: &str,
        state: String,
        attempts: i32,
        subject: Option<&str>,
        requested_at: DateTime<Utc>,
        sent_at: Option<DateTime<Utc>>,
        last_error: Option<&str>,
    ) -> Self {
        Self {
            dedup_key,
            template,
            locale,
            recipient: mask_email(recipient),
            state,
            attempts,
            subject: subject.map(mask_emails_in_text),
            requested_at,
            sent_at,
            last_error: last_error.map(mask_emails_in_text),
        }
    }

    fn from_row(row: &Row) -> Result<Self, backorder_core::tokio_postgres::Error> {
        Ok(Self::masked(
            row.try_get("dedup_key")?,
            row.try_get("template")?,
            row.try_get("locale")?,
            row.try_get::<_, &str>("recipient")?,
            row.try_get("state")?,
            row.try_get("attempts")?,
            row.try_get::<_, Option<&str>>("subject")?,
            row.try_get("requested_at")?,
            row.try_get("sent_at")?,
            row.try_get::<_, Option<&str>>("last_error")?,
        ))
    }
}

fn format_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

/// The table `emails` prints.
pub fn render_table(rows: &[EmailRow]) -> String {
    let mut table = Table::new();
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header([
            "dedup key",
            "template",
            "locale",
            "recipient",
            "state",
            "attempts",
            "subject",
            "requested (UTC)",
            "sent (UTC)",
            "last error",
        ]);
    for row in rows {
        table.add_row([
            row.dedup_key.clone(),
            row.template.clone(),
            row.locale.clone(),
            row.recipient.clone(),
            row.state.clone(),
            row.attempts.to_string(),
            row.subject
                .as_deref()
                .map(|s| truncate(s, SUBJECT_WIDTH))
                .unwrap_or_default(),
            format_time(row.requested_at),
            row.sent_at.map(format_time).unwrap_or_default(),
            row.last_error
                .as_deref()
                .map(|s| truncate(s, ERROR_WIDTH))
                .unwrap_or_default(),
        ]);
    }
    table.to_string()
}

const QUERY: &str = "\
SELECT dedup_key, template, locale, recipient, state, attempts, subject,
       requested_at, sent_at, last_error
  FROM email_ledger
 WHERE ($1::text IS NULL OR order_id = $1)
   AND ($2::text IS NULL OR state = $2)
 ORDER BY requested_at DESC, dedup_key DESC
 LIMIT $3";

/// Runs `emails`.
pub async fn run(args: EmailsArgs, settings: &Settings, out: &mut impl Write) -> Result<(), CtlError> {
    let state = args.state.map(EmailState::as_str);
    let limit = i64::from(args.limit);
    let rows = query_rows(settings, QUERY, &[&args.order_id, &state, &limit], EmailRow::from_row).await?;
    if !print_rows(out, &rows, args.json, "no emails match", render_table)? {
        return Ok(());
    }
    let more = if rows.len() == args.limit as usize {
        " (the limit; --limit N shows more)"
    } else {
        ""
    };
    writeln!(out, "{} emails, newest first{more}", rows.len())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn row() -> EmailRow {
        EmailRow::masked(
            "order-confirmation_o-1".into(),
            "order-confirmation".into(),
            "de-DE".into(),
            "bernd.mueller@example.com",
            "failed".into(),
            3,
            Some("Ihre Bestellung o-1"),
            Utc.with_ymd_and_hms(2026, 11, 24, 10, 0, 0).unwrap(),
            None,
            Some(
                "MessageRejected: Email address is not verified: bernd.mueller@example.com. \
                 The following identities failed the check in region US-EAST-1: orders@shop.example",
            ),
        )
    }

    #[test]
    fn table_never_shows_a_full_address() {
        let table = render_table(&[row()]);
        assert!(!table.contains("bernd.mueller@example.com"), "{table}");
        assert!(!table.contains("orders@shop.example"), "{table}");
        assert!(table.contains("b***@e***.com"), "{table}");
        assert!(table.contains("order-confirmation_o-1"), "{table}");
        assert!(table.contains("2026-11-24 10:00:00"), "{table}");
        // The error is cut to its width.
        assert!(table.contains('…'), "{table}");
    }

    #[test]
    fn json_is_masked_too() {
        let json = serde_json::to_string(&[row()]).unwrap();
        assert!(!json.contains("bernd.mueller@example.com"), "{json}");
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value[0]["recipient"], "b***@e***.com");
        assert_eq!(value[0]["requested_at"], "2026-11-24T10:00:00Z");
        assert_eq!(value[0]["sent_at"], serde_json::Value::Null);
        assert_eq!(value[0]["attempts"], 3);
    }

    #[test]
    fn states_match_the_ledger_constraint() {
        let sql = include_str!("../../core/migrations/V1__foundation.sql");
        for state in EmailState::value_variants() {
            assert!(sql.contains(&format!("'{}'", state.as_str())), "{state:?}");
        }
    }
}
