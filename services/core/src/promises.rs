//! Promise dates are commitments (PLAYBOOK): every open backordered line
//! with a promised window has a durable timer at the end of that window
//! plus the policy's grace (`delays.overdue_grace_days`). If it fires while
//! the line still waits under the same promise (no stock, no newer ETA),
//! the customer is told at once that it is late and that no new date is
//! known: stock-consumer fires it and hands the line to segmentation as a
//! significant slip (reason `OVERDUE`). Whoever sets or moves a promise
//! calls [`schedule_overdue`], in the transaction that does it.

use chrono::{DateTime, Duration, NaiveDate, Utc};

use tokio_postgres::GenericClient as _;

use crate::db::{DbError, Statements};

/// The timer kind (stock-consumer fires it).
pub const OVERDUE_TIMER: &str = "promise-overdue";

/// The overdue timer of one order line.
pub fn overdue_key(order_id: &str, line_id: &str) -> String {
    format!("{OVERDUE_TIMER}:{order_id}:{line_id}")
}

/// When a promise ending on `promised_to` is overdue: the start of the day
/// after it, plus `grace_days`.
pub fn overdue_at(promised_to: NaiveDate, grace_days: i64) -> DateTime<Utc> {
    let day_after = promised_to + Duration::days(1 + grace_days);
    day_after.and_hms_opt(0, 0, 0).map_or_else(Utc::now, |t| t.and_utc())
}

/// Moves the overdue timers of `lines` (order id, line id, promised end):
/// a known end (re)schedules it, an unknown one cancels it. One statement
/// per kind of change, whatever the number of lines.
pub async fn schedule_overdue<C: Statements>(
    client: &C,
    lines: &[(&str, &str, Option<NaiveDate>)],
    grace_days: i64,
) -> Result<(), DbError> {
    let (mut keys, mut due, mut payloads) = (Vec::new(), Vec::new(), Vec::new());
    let mut unknown = Vec::new();
    for (order_id, line_id, promised_to) in lines {
        match promised_to {
            Some(to) => {
                keys.push(overdue_key(order_id, line_id));
                due.push(overdue_at(*to, grace_days));
                payloads.push(serde_json::json!({
                    "order_id": order_id, "line_id": line_id, "promised_to": to.to_string()
                }));
            }
            None => unknown.push(overdue_key(order_id, line_id)),
        }
    }
    if !keys.is_empty() {
        client
            .client()
            .execute(
                &client
                    .prepared(
                        "INSERT INTO timers (timer_key, kind, due_at, payload)
                 SELECT k, $4, d, p FROM unnest($1::text[], $2::timestamptz[], $3::jsonb[]) AS u(k, d, p)
                 ON CONFLICT (timer_key) DO UPDATE
                    SET due_at = EXCLUDED.due_at, payload = EXCLUDED.payload, state = 'pending', fired_at = NULL",
                    )
                    .await?,
                &[&keys, &due, &payloads, &OVERDUE_TIMER],
            )
            .await?;
    }
    if !unknown.is_empty() {
        client
            .client()
            .execute(
                &client
                    .prepared("UPDATE timers SET state = 'cancelled' WHERE timer_key = ANY($1) AND state = 'pending'")
                    .await?,
                &[&unknown],
            )
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_promise_is_overdue_the_day_after_its_end_plus_the_grace() {
        let to = NaiveDate::from_ymd_opt(2026, 12, 14).unwrap();
        assert_eq!(overdue_at(to, 1).to_rfc3339(), "2026-12-16T00:00:00+00:00");
        assert_eq!(overdue_at(to, 0).to_rfc3339(), "2026-12-15T00:00:00+00:00");
        assert_eq!(overdue_key("o-1", "l1"), "promise-overdue:o-1:l1");
    }
}
