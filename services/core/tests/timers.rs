//! Durable timers against the local stack's PostgreSQL (`make up`): one
//! timer that fails for good is set aside with its reason, and the other
//! timers of its kind still fire.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use backorder_core::clock::Clock;
use backorder_core::config::{Settings, stack_env_value};
use backorder_core::deadpool_postgres::Pool;
use backorder_core::kafka::{HandlerError, OutboundRecord, Producer};
use backorder_core::lifecycle::Lifecycle;
use backorder_core::timers::{self, Timer, TimerHandler};
use backorder_core::tokio_postgres::{self, Transaction};
use chrono::{DateTime, Utc};

/// A fresh database with the migrations applied.
async fn database() -> Pool {
    let admin_url = stack_env_value("BACKORDER_PG_ADMIN_URL").expect("start the local stack with `make up`");
    let name = format!("core_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let (admin, connection) = tokio_postgres::connect(&admin_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    admin
        .execute(&format!("CREATE DATABASE \"{name}\""), &[])
        .await
        .unwrap();
    let base = admin_url.rsplit_once('/').unwrap().0;
    let pool = backorder_core::db::pool(&format!("{base}/{name}"), 4).unwrap();
    backorder_core::db::migrate(&pool).await.unwrap();
    pool
}

/// Fires every timer of kind `test` except `test:bad`, which it rejects.
struct OneBad;

impl TimerHandler for OneBad {
    fn kinds(&self) -> &[&'static str] {
        &["test"]
    }

    async fn fire(
        &self,
        tx: &Transaction<'_>,
        timer: &Timer,
        _now: DateTime<Utc>,
    ) -> Result<Vec<OutboundRecord>, HandlerError> {
        // A write the rejected timer must not leave behind.
        tx.execute(
            "INSERT INTO email_decisions (dedup_key, template, decided_at) VALUES ($1, 'test', now())",
            &[&timer.key],
        )
        .await?;
        if timer.key == "test:bad" {
            return Err(HandlerError::Permanent("the data of this timer breaks a rule".into()));
        }
        Ok(Vec::new())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timer_that_fails_for_good_is_set_aside_and_the_others_of_its_kind_still_fire() {
    let pool = database().await;
    let client = pool.get().await.unwrap();
    let past = Utc::now() - chrono::Duration::hours(1);
    // The bad one is the most overdue, so it comes first in every round.
    for (i, key) in ["test:bad", "test:a", "test:b", "test:c"].iter().enumerate() {
        timers::schedule(
            &**client,
            &Timer {
                key: (*key).to_string(),
                kind: "test".into(),
                due_at: past + chrono::Duration::seconds(i as i64),
                payload: serde_json::json!({}),
            },
        )
        .await
        .unwrap();
    }

    let settings = Settings::load().unwrap();
    let lifecycle = Lifecycle::new();
    let producer = Producer::new(&settings).unwrap();
    let task = tokio::spawn(timers::run_timer_loop(
        pool.clone(),
        Clock::System,
        OneBad,
        producer,
        lifecycle.clone(),
        Duration::from_millis(50),
    ));

    let deadline = Instant::now() + Duration::from_secs(30);
    let states = loop {
        let rows = client
            .query(
                "SELECT timer_key, state, last_error FROM timers ORDER BY timer_key",
                &[],
            )
            .await
            .unwrap();
        let states: Vec<(String, String, Option<String>)> =
            rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
        if states.iter().all(|(_, state, _)| state != "pending") {
            break states;
        }
        assert!(Instant::now() < deadline, "timers still pending: {states:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    lifecycle.begin_shutdown();
    task.await.unwrap().unwrap();

    let by_key = |key: &str| states.iter().find(|(k, ..)| k == key).unwrap().clone();
    for key in ["test:a", "test:b", "test:c"] {
        assert_eq!(by_key(key).1, "fired", "{key}");
    }
    let (_, state, error) = by_key("test:bad");
    assert_eq!(state, "failed");
    assert!(error.unwrap().contains("breaks a rule"));
    let decided: Vec<String> = client
        .query("SELECT dedup_key FROM email_decisions ORDER BY dedup_key", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        decided,
        vec!["test:a", "test:b", "test:c"],
        "the failed timer's writes rolled back"
    );
}
