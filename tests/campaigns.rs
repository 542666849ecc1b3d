//! Campaigns (issue 8) on the real stack: orders-consumer, stock-consumer,
//! segmentation and the sender as processes, against Tansu, PostgreSQL and
//! moto. Time is the controlled clock, moved, never slept through.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::disallowed_methods)]

use backorder_core::events::orders::OrderCancelled;
use backorder_core::events::stock::Season;
use backorder_core::kafka::topics::{ORDERS, SHIPMENTS, STOCK};
use backorder_tests::campaigns::{campaign, catalog, eta_window, offers, order, set_clock, unescape};
use backorder_tests::process::ServiceProcess;
use backorder_tests::scenario::{
    PATIENCE, clock_now, day, dispatched, metric_sum, subjects, timer_loop_caught_up, wait_for_emails,
};
use backorder_tests::stock::{count, ledger, wait_for_count, wait_for_sender_idle};
use backorder_tests::{TestApp, wait_until};
use chrono::{TimeZone, Utc};

const FAST: (&str, &str) = ("BACKORDER_TIMER_POLL_MS", "100");

/// The services of a campaign: orders, stock (short debounce), segmentation,
/// shipments, sender.
async fn start_pipeline(app: &TestApp) -> Vec<ServiceProcess> {
    let policy = app.write_policy("campaigns", "[delays]\ndebounce_seconds = 0.3\n");
    let with_policy = [FAST, ("BACKORDER_POLICY_FILE", policy.as_str())];
    vec![
        app.start_service("orders-consumer").await,
        app.start_service_with("stock-consumer", &with_policy).await,
        app.start_service_with("segmentation", &with_policy).await,
        app.start_service("shipments-consumer").await,
        app.start_service("sender").await,
    ]
}

/// Puts the clock on 10 December, noon UTC: winter in the north.
async fn december(app: &TestApp) {
    set_clock(app, Utc.with_ymd_and_hms(2026, 12, 10, 12, 0, 0).unwrap()).await;
}

/// Publishes the first ETA of `sku` (days 10 to 14) and waits until stored.
async fn first_eta(app: &TestApp, sku: &str) {
    let now = clock_now(app).await;
    app.publish(STOCK, &eta_window(sku, day(app, 10).await, day(app, 14).await, now))
        .await;
    wait_for_count(
        app,
        "the first ETA",
        &format!("SELECT count(*) FROM sku_eta WHERE sku = '{sku}'"),
        1,
    )
    .await;
}

/// Moves `sku`'s ETA to days `from..to` from the clock's today.
async fn slip(app: &TestApp, sku: &str, from: i64, to: i64) {
    let now = clock_now(app).await;
    app.publish(STOCK, &eta_window(sku, day(app, from).await, day(app, to).await, now))
        .await;
}

async fn wait_for_promises(app: &TestApp, n: i64) {
    wait_for_count(
        app,
        "orders promised",
        "SELECT count(*) FROM order_lines WHERE availability = 'BACKORDERED' AND promise_told",
        n,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_december_a_significant_slip_offers_in_season_alternatives_ranked_by_co_purchases_in_one_email() {
    let app = TestApp::spawn().await;
    let _services = start_pipeline(&app).await;
    december(&app).await;
    let now = clock_now(&app).await;

    // Sunglasses slip; four other items fill the same need.
    for product in [
        catalog("SUN-1", "eye-protection", &[], 10_000, 0, "EUR"),
        catalog("SUN-SUMMER", "eye-protection", &[Season::Summer], 10_000, 5, "EUR"),
        catalog("SUN-ALL", "eye-protection", &[], 10_000, 5, "EUR"),
        catalog("GOGGLES", "eye-protection", &[Season::Winter], 12_000, 5, "EUR"),
        catalog("SUN-PRICEY", "eye-protection", &[], 20_000, 5, "EUR"),
        catalog("MUG", "drink", &[], 1_000, 0, "EUR"),
    ] {
        app.publish(STOCK, &product).await;
    }
    wait_for_count(
        &app,
        "catalog",
        "SELECT count(*) FROM products WHERE cataloged_at IS NOT NULL",
        6,
    )
    .await;
    first_eta(&app, "SUN-1").await;
    first_eta(&app, "MUG").await;

    // An earlier customer bought the sunglasses with the goggles.
    let earlier = app.recipient("earlier");
    app.publish(
        ORDERS,
        &order(
            "o-old",
            "c-old",
            &earlier,
            "en-GB",
            "GB",
            "EUR",
            &[("SUN-1", 10_000, 1, false), ("GOGGLES", 12_000, 1, false)],
            now,
        ),
    )
    .await;
    let (de, au, small) = (app.recipient("de"), app.recipient("au"), app.recipient("small"));
    app.publish(
        ORDERS,
        &order(
            "o-de",
            "c-de",
            &de,
            "de-DE",
            "DE",
            "EUR",
            &[("SUN-1", 10_000, 1, true)],
            now,
        ),
    )
    .await;
    app.publish(
        ORDERS,
        &order(
            "o-au",
            "c-au",
            &au,
            "en-AU",
            "AU",
            "EUR",
            &[("SUN-1", 10_000, 1, true)],
            now,
        ),
    )
    .await;
    app.publish(
        ORDERS,
        &order(
            "o-small",
            "c-small",
            &small,
            "en-GB",
            "GB",
            "EUR",
            &[("MUG", 1_000, 1, true)],
            now,
        ),
    )
    .await;
    wait_for_promises(&app, 3).await;
    for to in [&de, &au, &small] {
        wait_for_emails(&app, to, 1).await;
    }

    // A 30-day slip of the sunglasses (significant), 3 days of the mug (small).
    slip(&app, "SUN-1", 40, 44).await;
    slip(&app, "MUG", 13, 17).await;

    let german = wait_for_emails(&app, &de, 2).await;
    let australian = wait_for_emails(&app, &au, 2).await;
    let small_notice = wait_for_emails(&app, &small, 2).await;
    assert!(
        small_notice[1].subject.contains("is delayed"),
        "{:?}",
        subjects(&small_notice)
    );

    // Germany in December: no summer-only item; the co-purchased winter
    // goggles rank above the all-season pair nobody co-purchased; the pair
    // outside the price band never qualifies.
    let de_offer = offers(&app, "o-de").await;
    assert_eq!(de_offer.len(), 1);
    assert_eq!(
        de_offer[0].3,
        ["GOGGLES", "SUN-ALL"],
        "ranked by co-purchases, in season, in the band"
    );
    let body = &unescape(&german[1].body);
    let (goggles, all) = (body.find("Item GOGGLES").unwrap(), body.find("Item SUN-ALL").unwrap());
    assert!(goggles < all, "best first in the email");
    assert!(
        !body.contains("Item SUN-SUMMER") && !body.contains("Item SUN-PRICEY"),
        "{body}"
    );
    // One email that is both the apology (in German, reason stated by code,
    // the English free text withheld) and the offer with its deadline.
    assert!(body.contains("/offers/"), "one-click links: {body}");
    assert!(
        body.contains("Europe/Berlin"),
        "deadline in the customer's zone: {body}"
    );
    assert!(
        !body.contains("power cut"),
        "no English free text for a German reader: {body}"
    );
    assert!(german[1].subject.contains("o-de"), "{}", german[1].subject);

    // Australia in December is summer: the summer item qualifies.
    let au_offer = offers(&app, "o-au").await;
    assert!(au_offer[0].3.contains(&"SUN-SUMMER".to_string()), "{:?}", au_offer[0].3);
    assert!(
        australian[1].body.contains("power cut"),
        "an English reader sees the supplier's words"
    );
    assert_eq!(campaign(&app, "o-de").await.unwrap().0, "alternative");

    // Exactly one email per slip: no delay notice beside the offer, and the
    // small slip only got its notice.
    wait_for_sender_idle(&app).await;
    let notices: Vec<_> = ledger(&app, "delay_notice")
        .await
        .into_iter()
        .filter_map(|r| r.0)
        .collect();
    assert_eq!(notices, ["o-small"]);
    let offers_sent: Vec<_> = ledger(&app, "delay_offer")
        .await
        .into_iter()
        .filter_map(|r| r.0)
        .collect();
    assert_eq!(offers_sent, ["o-au", "o-de"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_credit_offers_repeat_every_72_hours_at_most_three_times_and_stop_when_the_lines_ship_or_are_cancelled() {
    let app = TestApp::spawn().await;
    let services = start_pipeline(&app).await;
    december(&app).await;
    let now = clock_now(&app).await;
    // Nothing else fills the chair's need: store credit.
    for product in [
        catalog("CHAIR", "sitting", &[], 12_000, 0, "EUR"),
        catalog("STOOL", "perching", &[], 3_000, 0, "EUR"),
        catalog("KOTATSU", "warming", &[], 12_345, 0, "JPY"),
    ] {
        app.publish(STOCK, &product).await;
    }
    for sku in ["CHAIR", "STOOL", "KOTATSU"] {
        first_eta(&app, sku).await;
    }
    let people: Vec<String> = ["a", "b", "c", "d", "e"].iter().map(|w| app.recipient(w)).collect();
    let orders = [
        ("o-wait", "CHAIR", 12_000, "EUR"),
        ("o-small", "STOOL", 3_000, "EUR"),
        ("o-yen", "KOTATSU", 12_345, "JPY"),
        ("o-ship", "CHAIR", 12_000, "EUR"),
        ("o-cancel", "CHAIR", 12_000, "EUR"),
    ];
    for (i, (id, sku, price, currency)) in orders.iter().enumerate() {
        app.publish(
            ORDERS,
            &order(
                id,
                &format!("c-{id}"),
                &people[i],
                "en-GB",
                "GB",
                currency,
                &[(sku, *price, 1, true)],
                now,
            ),
        )
        .await;
    }
    wait_for_promises(&app, 5).await;
    for sku in ["CHAIR", "STOOL", "KOTATSU"] {
        slip(&app, sku, 60, 64).await;
    }
    for to in &people {
        wait_for_emails(&app, to, 2).await;
    }
    // 10% of the delayed value, at least 5.00, in whole minor units.
    assert_eq!(offers(&app, "o-wait").await[0].2, 1_200);
    assert_eq!(offers(&app, "o-small").await[0].2, 500, "the minimum");
    assert_eq!(offers(&app, "o-yen").await[0].2, 1_235, "whole yen");
    assert_eq!(campaign(&app, "o-wait").await.unwrap().0, "store_credit");
    let first = app.emails_to(&people[0]).await;
    assert!(first[1].body.contains("€12.00"), "{}", first[1].body);
    assert!(app.emails_to(&people[2]).await[1].body.contains("¥1,235"));

    // During the first offer: one order's line ships, another is cancelled.
    app.publish(SHIPMENTS, &dispatched(&app, "o-ship", "s-1", &["l1"]).await)
        .await;
    app.publish(
        ORDERS,
        &OrderCancelled {
            event_id: uuid::Uuid::new_v4().to_string(),
            occurred_at: clock_now(&app).await,
            order_id: "o-cancel".into(),
            line_ids: vec![],
            reason: "changed my mind".into(),
        },
    )
    .await;
    wait_until("the shipped and cancelled campaigns to end", PATIENCE, || async {
        let ship = campaign(&app, "o-ship").await?;
        let cancel = campaign(&app, "o-cancel").await?;
        (ship.2.as_deref() == Some("shipped") && cancel.2.as_deref() == Some("cancelled")).then_some(())
    })
    .await;

    // 71 hours: nothing new. 72 hours: the second offer, to the three still waiting.
    backorder_core::clock::advance(&app.pool, chrono::Duration::hours(71))
        .await
        .unwrap();
    timer_loop_caught_up(&app, "offer-expiry").await;
    assert_eq!(
        app.emails_to(&people[0]).await.len(),
        2,
        "no reminder before the offer expired"
    );
    backorder_core::clock::advance(&app.pool, chrono::Duration::hours(1))
        .await
        .unwrap();
    let second = wait_for_emails(&app, &people[0], 3).await;
    assert!(second[2].subject.starts_with("Reminder"), "{:?}", subjects(&second));
    backorder_core::clock::advance(&app.pool, chrono::Duration::hours(72))
        .await
        .unwrap();
    wait_for_emails(&app, &people[0], 4).await;
    // The series is exhausted after the third: never a fourth.
    backorder_core::clock::advance(&app.pool, chrono::Duration::hours(72))
        .await
        .unwrap();
    wait_until("the series to end unanswered", PATIENCE, || async {
        let c = campaign(&app, "o-wait").await?;
        (c.2.as_deref() == Some("expired")).then_some(())
    })
    .await;
    backorder_core::clock::advance(&app.pool, chrono::Duration::hours(72))
        .await
        .unwrap();
    timer_loop_caught_up(&app, "offer-expiry").await;
    wait_for_sender_idle(&app).await;
    // By now (day 12) the nurture cadence may have resumed for the line
    // still waiting: count the offer emails (first and reminders) only.
    let offer_emails = app
        .emails_to(&people[0])
        .await
        .into_iter()
        .filter(|e| e.subject.contains("delayed") || e.subject.starts_with("Reminder"))
        .count();
    assert_eq!(offer_emails, 3, "three offers, never a fourth");
    let states: Vec<String> = offers(&app, "o-wait").await.into_iter().map(|o| o.1).collect();
    assert_eq!(states, ["expired", "expired", "expired"]);
    // The shipped and the cancelled order got nothing after their first offer
    // (the shipment's own email aside).
    assert_eq!(offers(&app, "o-ship").await.len(), 1);
    assert_eq!(offers(&app, "o-cancel").await.len(), 1);
    assert!(
        app.emails_to(&people[4])
            .await
            .iter()
            .all(|e| !e.subject.starts_with("Reminder")),
        "no reminder after cancelling"
    );

    // Replaying backorder-delays.v1 from the beginning (a new consumer
    // group) sends nothing new.
    // Once the series ended, the nurture cadence of the three lines still
    // waiting resumes (day 12): let those emails land before counting.
    wait_for_count(
        &app,
        "the day-12 nurture of the three waiting orders",
        "SELECT count(*) FROM email_ledger WHERE template = 'nurture_update'",
        3,
    )
    .await;
    wait_for_sender_idle(&app).await;
    let before = count(&app, "SELECT count(*) FROM email_ledger").await;
    let policy = app.write_policy("replay", "[delays]\ndebounce_seconds = 0.3\n");
    let replayer = app
        .start_service_with(
            "segmentation",
            &[
                FAST,
                ("BACKORDER_POLICY_FILE", &policy),
                ("BACKORDER_GROUP_ID", &format!("{}replay", app.settings.topic_prefix)),
            ],
        )
        .await;
    let original = app.committed_total("segmentation", "backorder-delays.v1").await;
    assert!(original >= 5, "the first group consumed every delay ({original})");
    wait_until("the replaying group to commit every delay again", PATIENCE, || async {
        (app.committed_total("replay", "backorder-delays.v1").await >= original).then_some(())
    })
    .await;
    let replayed = metric_sum(
        &replayer.metrics().await,
        "backorder_consumer_events_total",
        "backorder-delays.v1",
    );
    assert!(replayed >= 5.0, "the replay handled the delays again ({replayed})");
    wait_for_sender_idle(&app).await;
    assert_eq!(
        count(&app, "SELECT count(*) FROM email_ledger").await,
        before,
        "a replay sends nothing new"
    );
    drop(services);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_segmentation_replicas_handle_every_offer_and_timer_once() {
    let app = TestApp::spawn().await;
    let policy = app.write_policy("replicas", "[delays]\ndebounce_seconds = 0.3\n");
    let with_policy = [FAST, ("BACKORDER_POLICY_FILE", policy.as_str())];
    let _orders = app.start_service("orders-consumer").await;
    let _stock = app.start_service_with("stock-consumer", &with_policy).await;
    let a = app.start_service_with("segmentation", &with_policy).await;
    let b = app.start_service_with("segmentation", &with_policy).await;
    let _sender = app.start_service("sender").await;
    december(&app).await;
    let now = clock_now(&app).await;
    app.publish(STOCK, &catalog("DESK", "working", &[], 20_000, 0, "EUR"))
        .await;
    first_eta(&app, "DESK").await;
    let people: Vec<String> = (0..8).map(|i| app.recipient(&format!("r{i}"))).collect();
    for (i, to) in people.iter().enumerate() {
        let id = format!("o-{i}");
        app.publish(
            ORDERS,
            &order(
                &id,
                &format!("c-{i}"),
                to,
                "en-GB",
                "GB",
                "EUR",
                &[("DESK", 20_000, 1, true)],
                now,
            ),
        )
        .await;
    }
    wait_for_promises(&app, 8).await;
    slip(&app, "DESK", 50, 54).await;
    wait_for_count(&app, "eight first offers", "SELECT count(*) FROM offers", 8).await;
    backorder_core::clock::advance(&app.pool, chrono::Duration::hours(73))
        .await
        .unwrap();
    wait_for_count(
        &app,
        "eight second offers",
        "SELECT count(*) FROM offers WHERE seq = 2",
        8,
    )
    .await;
    for to in &people {
        wait_for_emails(&app, to, 3).await;
    }
    wait_for_sender_idle(&app).await;
    // Each offer decided by exactly one replica: the two replicas' counters
    // add up to the offers stored, and the ledger never saw a second request.
    let sent = metric_sum(&a.metrics().await, "backorder_campaign_offers_sent_total", "")
        + metric_sum(&b.metrics().await, "backorder_campaign_offers_sent_total", "");
    assert_eq!(sent, 16.0, "16 offers decided across both replicas");
    assert_eq!(
        count(&app, "SELECT count(*) FROM email_ledger WHERE template = 'delay_offer'").await,
        16
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_policy_file_refuses_to_start_naming_the_key() {
    let app = TestApp::spawn().await;
    for (name, toml, key) in [
        (
            "negative-share",
            "[campaigns]\ncredit_share_percent = -10.0\n",
            "campaigns.credit_share_percent",
        ),
        ("unknown-key", "[campaigns]\nmax_offer = 2\n", "max_offer"),
        ("nurture-20", "[nurture]\ninterval_days = 20\n", "nurture.interval_days"),
    ] {
        let policy = app.write_policy(name, toml);
        let (succeeded, log) = app
            .run_to_exit("segmentation", &[("BACKORDER_POLICY_FILE", policy)])
            .await;
        assert!(!succeeded, "{name} refused");
        assert!(log.contains(key), "{name}: the message names {key}: {log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promise_that_passes_in_silence_is_told_once_after_the_grace_and_a_new_eta_prevents_it() {
    let app = TestApp::spawn().await;
    let _services = start_pipeline(&app).await;
    december(&app).await;
    let now = clock_now(&app).await;
    for product in [
        catalog("TENT", "camping", &[], 20_000, 0, "EUR"),
        catalog("STOVE", "cooking-outdoors", &[], 8_000, 0, "EUR"),
    ] {
        app.publish(STOCK, &product).await;
    }
    for sku in ["TENT", "STOVE"] {
        app.publish(STOCK, &eta_window(sku, day(&app, 5).await, day(&app, 8).await, now))
            .await;
    }
    wait_for_count(&app, "the ETAs", "SELECT count(*) FROM sku_eta", 2).await;
    let (late, news) = (app.recipient("late"), app.recipient("news"));
    app.publish(
        ORDERS,
        &order(
            "o-late",
            "c-late",
            &late,
            "en-GB",
            "GB",
            "EUR",
            &[("TENT", 20_000, 1, true)],
            now,
        ),
    )
    .await;
    app.publish(
        ORDERS,
        &order(
            "o-news",
            "c-news",
            &news,
            "en-GB",
            "GB",
            "EUR",
            &[("STOVE", 8_000, 1, true)],
            now,
        ),
    )
    .await;
    wait_for_promises(&app, 2).await;
    wait_for_emails(&app, &late, 1).await;
    wait_for_emails(&app, &news, 1).await;

    // Before its window ends, the stove's supplier gives news: two days
    // later (a small slip: a delay notice), and the overdue timer moves.
    slip(&app, "STOVE", 5, 10).await;
    wait_for_emails(&app, &news, 2).await;

    // Day 9: the tent's window (ending day 8) is within its grace: nothing.
    backorder_core::clock::advance(&app.pool, chrono::Duration::days(9))
        .await
        .unwrap();
    timer_loop_caught_up(&app, "promise-overdue").await;
    assert_eq!(app.emails_to(&late).await.len(), 1, "nothing within the grace");

    // Day 10: one honest "it is late and we have no new date", with the options.
    backorder_core::clock::advance(&app.pool, chrono::Duration::days(1))
        .await
        .unwrap();
    let sent = wait_for_emails(&app, &late, 2).await;
    let body = &sent[1].body;
    assert!(body.contains("has passed"), "the overdue reason: {body}");
    assert!(body.contains("we don't know yet"), "an honest unknown: {body}");
    assert!(unescape(body).contains("/offers/"), "the options, one click each");

    // Day 11: none twice; the stove, whose window moved, is not late yet.
    backorder_core::clock::advance(&app.pool, chrono::Duration::days(1))
        .await
        .unwrap();
    timer_loop_caught_up(&app, "promise-overdue").await;
    wait_for_sender_idle(&app).await;
    assert_eq!(app.emails_to(&late).await.len(), 2, "told once");
    assert_eq!(
        app.emails_to(&news).await.len(),
        2,
        "the new ETA prevented an overdue notice"
    );
    assert_eq!(
        count(&app, "SELECT count(*) FROM email_ledger WHERE template = 'delay_offer'").await,
        1
    );
}
