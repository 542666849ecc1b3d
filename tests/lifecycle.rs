//! Order lifecycle emails (issue 3): honest confirmations, shipped emails
//! for partial shipments, the delivered follow-up, the nurture cadence,
//! cancellations, win-back, templates in five languages, replays and two
//! timer replicas. Real services, broker, PostgreSQL and SES endpoint; time
//! moves with the controlled clock, never by sleeping.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::disallowed_methods)]

use backorder_core::events::orders::Availability::{Backordered, InStock};
use backorder_core::events::orders::{OrderCancelled, OrderPlaced};
use backorder_core::events::stock::SupplierEtaChanged;
use backorder_core::kafka::topics::{ORDERS, SHIPMENTS, STOCK};
use backorder_tests::scenario::*;
use backorder_tests::{TestApp, order_placed, wait_until};
use orders_keys::*;

/// Timer keys as the services build them (kept here as literals: the
/// test checks the contract, not the code).
mod orders_keys {
    pub fn nurture_key(order: &str, step: u32) -> String {
        format!("nurture:{order}:{step}")
    }
    pub fn followup_key(order: &str, shipment: &str) -> String {
        format!("delivered-followup:{order}:{shipment}")
    }
}

/// An order stamped with the controlled clock, with named products.
async fn order(app: &TestApp, id: &str, to: &str, locale: &str, lines: &[(&str, &str, &str, bool)]) -> OrderPlaced {
    let spec: Vec<_> = lines
        .iter()
        .map(|(sku, _, _, backordered)| (*sku, if *backordered { Backordered } else { InStock }))
        .collect();
    let mut order = order_placed(id, to, locale, &spec);
    order.occurred_at = clock_now(app).await;
    for (line, (_, name, category, _)) in order.lines.iter_mut().zip(lines) {
        line.product_name = (*name).to_string();
        line.category = Some((*category).to_string());
    }
    order
}

async fn cancel(app: &TestApp, order_id: &str, lines: &[&str]) -> OrderCancelled {
    OrderCancelled {
        event_id: uuid::Uuid::new_v4().to_string(),
        occurred_at: clock_now(app).await,
        order_id: order_id.to_string(),
        line_ids: lines.iter().map(|l| (*l).to_string()).collect(),
        reason: "customer request".to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_german_order_is_confirmed_shipped_in_part_followed_up_after_three_days_won_back_and_replays_send_nothing_more()
 {
    let app = TestApp::spawn().await;
    let _orders = app.start_service_with("orders-consumer", FAST_TIMERS).await;
    let shipments = app.start_service_with("shipments-consumer", FAST_TIMERS).await;
    let _sender = app.start_service("sender").await;
    let to = app.recipient("greta");
    set_eta(&app, "SOFA-9", 20, 27).await;
    let (window_from, window_to) = (day(&app, 20).await, day(&app, 27).await);
    let placed = order(
        &app,
        "o-de",
        &to,
        "de-DE",
        &[
            ("MUG-1", "Kaffeebecher", "kitchen", false),
            ("SOFA-9", "Ecksofa Lund", "furniture", true),
        ],
    )
    .await;
    app.publish(ORDERS, &placed).await;

    let sent = wait_for_emails(&app, &to, 1).await;
    let confirmation = &sent[0];
    assert!(confirmation.subject.contains("o-de"), "{}", confirmation.subject);
    assert!(
        confirmation.subject.contains("Bestellung"),
        "German subject: {}",
        confirmation.subject
    );
    for date in [window_from, window_to] {
        let german = format!("{}. {}", date.format("%-d"), german_month(date));
        assert!(
            confirmation.body.contains(&german),
            "window date {german} in {}",
            confirmation.body
        );
    }
    assert!(confirmation.body.contains("Ecksofa Lund") && confirmation.body.contains("Kaffeebecher"));
    assert!(confirmation.body.contains("Sie"), "formal address");

    // The in-stock mug ships: the email says the sofa is still pending, with its window.
    let dispatch = dispatched(&app, "o-de", "s-1", &["l1"]).await;
    app.publish(SHIPMENTS, &dispatch).await;
    let sent = wait_for_emails(&app, &to, 2).await;
    let shipped = &sent[1];
    assert!(shipped.subject.contains("o-de"), "{}", shipped.subject);
    assert!(
        shipped.body.contains("TRKs-1") && shipped.body.contains("DHL"),
        "{}",
        shipped.body
    );
    assert!(
        shipped.body.contains("track.example") && shipped.body.contains("&amp;b=2"),
        "tracking link, escaped: {}",
        shipped.body
    );
    let (_, pending) = shipped.body.split_once("Kaffeebecher").expect("the shipped item");
    assert!(
        pending.contains("Ecksofa Lund"),
        "the pending item is named: {}",
        shipped.body
    );
    assert!(pending.contains(&format!("{}. {}", window_to.format("%-d"), german_month(window_to))));

    // Delivered: one follow-up three days later, not before.
    let delivery = delivered(&app, "o-de", "s-1").await;
    app.publish(SHIPMENTS, &delivery).await;
    wait_timer_state(&app, &followup_key("o-de", "s-1"), "pending").await;
    advance_days(&app, 2).await;
    timer_loop_caught_up(&app, "delivered-followup").await;
    assert_eq!(
        timer_state(&app, &followup_key("o-de", "s-1")).await.as_deref(),
        Some("pending")
    );
    assert_eq!(app.emails_to(&to).await.len(), 2, "no follow-up after two days");
    advance_days(&app, 1).await;
    let sent = wait_for_emails(&app, &to, 3).await;
    assert!(sent[2].subject.contains("o-de"), "{}", sent[2].subject);
    assert!(
        sent[2].body.contains("Kaffeebecher") && !sent[2].body.contains("Ecksofa"),
        "{}",
        sent[2].body
    );
    timer_loop_caught_up(&app, "delivered-followup").await;
    assert_eq!(app.emails_to(&to).await.len(), 3, "exactly one follow-up");

    // Delivery metrics: the order-to-delivery histogram and the on-time counter.
    let metrics = shipments.metrics().await;
    assert!(
        metric_sum(&metrics, "backorder_order_to_delivery_seconds_count", "") >= 1.0,
        "{metrics}"
    );
    assert!(
        metrics.contains("backorder_order_to_delivery_seconds_bucket"),
        "a histogram in seconds"
    );
    assert_eq!(
        metric_sum(&metrics, "backorder_deliveries_total", "promise=\"none\""),
        1.0,
        "{metrics}"
    );

    // The in-stock mug's delivery earns no win-back: the sofa the customer
    // waited for has not arrived (32 days later, still nothing).
    advance_days(&app, 29).await;
    timer_loop_caught_up(&app, "win-back").await;
    assert_eq!(
        app.emails_to(&to).await.len(),
        3,
        "no win-back while the backorder is missing"
    );

    // The sofa ships and is delivered: its follow-up, and 30 days after the
    // delivery that completed the backorder, one win-back (marketing).
    let sofa = dispatched(&app, "o-de", "s-2", &["l2"]).await;
    app.publish(SHIPMENTS, &sofa).await;
    wait_for_emails(&app, &to, 4).await;
    let sofa_delivery = delivered(&app, "o-de", "s-2").await;
    app.publish(SHIPMENTS, &sofa_delivery).await;
    wait_timer_state(&app, &followup_key("o-de", "s-2"), "pending").await;
    advance_days(&app, 3).await;
    wait_for_emails(&app, &to, 5).await;
    advance_days(&app, 26).await;
    timer_loop_caught_up(&app, "win-back").await;
    assert_eq!(app.emails_to(&to).await.len(), 5, "not before 30 days");
    advance_days(&app, 1).await;
    let sent = wait_for_emails(&app, &to, 6).await;
    let win_back = &sent[5];
    assert!(
        win_back.body.contains("Ecksofa Lund"),
        "tailored to what was bought: {}",
        win_back.body
    );
    let client = app.pool.get().await.unwrap();
    let category: String = client
        .query_one("SELECT category FROM email_ledger WHERE template = 'win_back'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(category, "MARKETING");
    assert!(
        win_back.body.contains("unsubscribe"),
        "marketing carries an unsubscribe link: {}",
        win_back.body
    );
    for transactional in &sent[..5] {
        assert!(
            !transactional.body.contains("abmelden"),
            "no unsubscribe on {}",
            transactional.subject
        );
    }

    // Replaying every event of the scenario changes nothing at SES.
    sender_settled(&app, 6).await;
    app.publish(ORDERS, &placed).await;
    app.publish(SHIPMENTS, &dispatch).await;
    app.publish(SHIPMENTS, &delivery).await;
    wait_until("the replay to be consumed", PATIENCE, || async {
        let orders = app.committed_total("orders-consumer", ORDERS).await;
        let shipments = app.committed_total("shipments-consumer", SHIPMENTS).await;
        (orders == 2 && shipments == 6).then_some(())
    })
    .await;
    // The replayed order and dispatch request their emails again (same
    // dedup keys); the replayed delivery schedules nothing new.
    sender_settled(&app, 8).await;
    timer_loop_caught_up(&app, "delivered-followup").await;
    timer_loop_caught_up(&app, "win-back").await;
    assert_eq!(
        app.emails_to(&to).await.len(),
        6,
        "no additional email after the replay"
    );
    let metrics = shipments.metrics().await;
    assert_eq!(
        metric_sum(&metrics, "backorder_deliveries_total", ""),
        2.0,
        "a replayed delivery is not counted twice"
    );
}

fn german_month(date: chrono::NaiveDate) -> &'static str {
    use chrono::Datelike;
    [
        "Januar",
        "Februar",
        "März",
        "April",
        "Mai",
        "Juni",
        "Juli",
        "August",
        "September",
        "Oktober",
        "November",
        "Dezember",
    ][date.month0() as usize]
}

/// Nurture emails so far, and the steps' timers fired so far.
async fn nurtures(app: &TestApp, to: &str) -> usize {
    app.emails_to(to)
        .await
        .iter()
        .filter(|e| e.subject.starts_with("An update on your order"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_60_day_eta_gets_nurture_emails_at_days_12_24_36_48_and_none_once_within_7_days() {
    let app = TestApp::spawn().await;
    let _orders = app.start_service_with("orders-consumer", FAST_TIMERS).await;
    let _sender = app.start_service("sender").await;
    let to = app.recipient("nina");
    set_eta(&app, "ESPRESSO-1", 60, 67).await;
    let placed = order(
        &app,
        "o-n",
        &to,
        "en-US",
        &[("ESPRESSO-1", "Lever espresso machine", "Kitchen appliances", true)],
    )
    .await;
    app.publish(ORDERS, &placed).await;
    wait_for_emails(&app, &to, 1).await;
    wait_timer_state(&app, &nurture_key("o-n", 1), "pending").await;

    // Nothing before day 12.
    advance_days(&app, 11).await;
    timer_loop_caught_up(&app, "nurture").await;
    assert_eq!(nurtures(&app, &to).await, 0, "no nurture before day 12");
    advance_days(&app, 1).await;

    for (n, at_day) in [(1, 12), (2, 24), (3, 36), (4, 48)] {
        if n > 1 {
            advance_days(&app, 12).await;
        }
        let sent = wait_for_emails(&app, &to, 1 + n).await;
        let update = &sent[n];
        assert!(update.subject.contains("o-n"), "day {at_day}: {}", update.subject);
        assert!(update.body.contains("Lever espresso machine"), "day {at_day}");
        assert!(
            update.body.contains("power socket"),
            "product-specific guidance on day {at_day}"
        );
        assert!(!update.body.to_lowercase().contains("coming soon"));
        wait_timer_state(&app, &nurture_key("o-n", n as u32), "fired").await;
    }

    // Day 60: the ETA is within 7 days, the check fires and sends nothing.
    advance_days(&app, 12).await;
    wait_timer_state(&app, &nurture_key("o-n", 5), "fired").await;
    wait_timer_state(&app, &nurture_key("o-n", 6), "pending").await;
    sender_settled(&app, 5).await;
    assert_eq!(nurtures(&app, &to).await, 4);
    assert_eq!(decisions(&app, "nurture_update").await, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shipped_email_on_day_23_suppresses_the_day_24_nurture_and_the_cadence_resumes_at_day_36() {
    let app = TestApp::spawn().await;
    let _orders = app.start_service_with("orders-consumer", FAST_TIMERS).await;
    let _shipments = app.start_service_with("shipments-consumer", FAST_TIMERS).await;
    let _sender = app.start_service("sender").await;
    let to = app.recipient("sam");
    set_eta(&app, "TENT-4", 60, 70).await;
    let placed = order(
        &app,
        "o-q",
        &to,
        "en",
        &[
            ("CUP-1", "Enamel cup", "outdoor", false),
            ("TENT-4", "Four-season tent", "Outdoor/Camping", true),
        ],
    )
    .await;
    app.publish(ORDERS, &placed).await;
    wait_for_emails(&app, &to, 1).await;
    wait_timer_state(&app, &nurture_key("o-q", 1), "pending").await;

    advance_days(&app, 12).await;
    wait_for_emails(&app, &to, 2).await;
    assert_eq!(nurtures(&app, &to).await, 1);

    // Day 23: the cup ships.
    advance_days(&app, 11).await;
    app.publish(SHIPMENTS, &dispatched(&app, "o-q", "s-cup", &["l1"]).await)
        .await;
    let sent = wait_for_emails(&app, &to, 3).await;
    assert!(sent[2].body.contains("TRKs-cup"));

    // Day 24: the nurture check fires and is skipped.
    advance_days(&app, 1).await;
    wait_timer_state(&app, &nurture_key("o-q", 2), "fired").await;
    sender_settled(&app, 3).await;
    assert_eq!(nurtures(&app, &to).await, 1, "the day-24 nurture is suppressed");
    assert_eq!(decisions(&app, "nurture_update").await, 1);

    // Day 36: the cadence goes on.
    advance_days(&app, 12).await;
    let sent = wait_for_emails(&app, &to, 4).await;
    assert!(sent[3].body.contains("Four-season tent"));
    assert_eq!(nurtures(&app, &to).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_lines_stops_their_pending_nurture_and_follow_up() {
    let app = TestApp::spawn().await;
    let _orders = app.start_service_with("orders-consumer", FAST_TIMERS).await;
    let _shipments = app.start_service_with("shipments-consumer", FAST_TIMERS).await;
    let _sender = app.start_service("sender").await;
    let to = app.recipient("carl");
    set_eta(&app, "DESK-2", 60, 67).await;
    let placed = order(
        &app,
        "o-c",
        &to,
        "en",
        &[
            ("LAMP-1", "Desk lamp", "home", false),
            ("DESK-2", "Standing desk", "furniture", true),
        ],
    )
    .await;
    app.publish(ORDERS, &placed).await;
    wait_for_emails(&app, &to, 1).await;
    app.publish(SHIPMENTS, &dispatched(&app, "o-c", "s-lamp", &["l1"]).await)
        .await;
    wait_for_emails(&app, &to, 2).await;
    app.publish(SHIPMENTS, &delivered(&app, "o-c", "s-lamp").await).await;
    wait_timer_state(&app, &followup_key("o-c", "s-lamp"), "pending").await;
    assert_eq!(
        timer_state(&app, &nurture_key("o-c", 1)).await.as_deref(),
        Some("pending")
    );

    // The desk is cancelled: its nurture stops. The lamp goes back (a
    // cancellation after delivery): its follow-up stops.
    app.publish(ORDERS, &cancel(&app, "o-c", &["l2"]).await).await;
    wait_timer_state(&app, &nurture_key("o-c", 1), "cancelled").await;
    assert_eq!(
        timer_state(&app, &followup_key("o-c", "s-lamp")).await.as_deref(),
        Some("pending"),
        "cancelling the desk leaves the lamp's follow-up"
    );
    app.publish(ORDERS, &cancel(&app, "o-c", &["l1"]).await).await;
    wait_timer_state(&app, &followup_key("o-c", "s-lamp"), "cancelled").await;

    advance_days(&app, 13).await;
    timer_loop_caught_up(&app, "nurture").await;
    timer_loop_caught_up(&app, "delivered-followup").await;
    sender_settled(&app, 2).await;
    assert_eq!(
        app.emails_to(&to).await.len(),
        2,
        "only the confirmation and the shipped email"
    );
    assert_eq!(decisions(&app, "nurture_update").await, 0);
    assert_eq!(decisions(&app, "delivered_followup").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shipment_that_arrives_before_its_order_is_parked_and_applied_once_the_order_is_stored() {
    let app = TestApp::spawn().await;
    let shipments = app.start_service_with("shipments-consumer", FAST_TIMERS).await;
    let _sender = app.start_service("sender").await;
    let to = app.recipient("early");
    app.publish(SHIPMENTS, &dispatched(&app, "o-early", "s-e", &["l1"]).await)
        .await;
    // Parked (DESIGN invariant 4), not skipped: the partition moves on.
    wait_until("the shipment to be parked", PATIENCE, || async {
        let m = shipments.metrics().await;
        (metric_sum(&m, "backorder_consumer_events_total", "outcome=\"parked\"") >= 1.0).then_some(())
    })
    .await;

    let _orders = app.start_service_with("orders-consumer", FAST_TIMERS).await;
    app.publish(
        ORDERS,
        &order(&app, "o-early", &to, "en", &[("BOOK-1", "Field guide", "books", false)]).await,
    )
    .await;
    let sent = wait_for_emails(&app, &to, 2).await;
    assert!(sent.iter().any(|e| e.body.contains("TRKs-e")), "{:?}", subjects(&sent));
    wait_until("the shipment's offset to be committed", PATIENCE, || async {
        (app.committed_total("shipments-consumer", SHIPMENTS).await == 1).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_never_fire_the_same_timer_twice() {
    const N: usize = 24;
    let app = TestApp::spawn().await;
    let _orders = app.start_service_with("orders-consumer", FAST_TIMERS).await;
    let fast = [("BACKORDER_TIMER_POLL_MS", "20")];
    let a = app.start_service_with("shipments-consumer", &fast).await;
    let b = app.start_service_with("shipments-consumer", &fast).await;
    let mut records = Vec::new();
    for i in 0..N {
        let to = app.recipient(&format!("r{i}"));
        let id = format!("o-r{i}");
        let o = order(&app, &id, &to, "en", &[("MUG-1", "Mug", "kitchen", false)]).await;
        records.push(
            backorder_core::kafka::OutboundRecord::encode(&app.codec, &app.topics.name(ORDERS), &o)
                .await
                .unwrap(),
        );
    }
    app.producer.send_all(&records).await.unwrap();
    wait_until("every order stored", PATIENCE, || async {
        (app.committed_total("orders-consumer", ORDERS).await == N as i64).then_some(())
    })
    .await;
    let mut records = Vec::new();
    for i in 0..N {
        let id = format!("o-r{i}");
        let s = format!("s-r{i}");
        let d = dispatched(&app, &id, &s, &["l1"]).await;
        let v = delivered(&app, &id, &s).await;
        for out in [
            backorder_core::kafka::OutboundRecord::encode(&app.codec, &app.topics.name(SHIPMENTS), &d)
                .await
                .unwrap(),
            backorder_core::kafka::OutboundRecord::encode(&app.codec, &app.topics.name(SHIPMENTS), &v)
                .await
                .unwrap(),
        ] {
            records.push(out);
        }
    }
    app.producer.send_all(&records).await.unwrap();
    wait_until("every delivery stored", PATIENCE, || async {
        (app.committed_total("shipments-consumer", SHIPMENTS).await == 2 * N as i64).then_some(())
    })
    .await;

    // Besides the N real follow-ups, 600 timers for orders that do not
    // exist (they fire and send nothing): more than one claim batch, so
    // both replicas are busy claiming at the same time.
    const GHOSTS: usize = 600;
    {
        let now = clock_now(&app).await + chrono::Duration::days(3);
        let client = app.pool.get().await.unwrap();
        client
            .execute(
                "INSERT INTO timers (timer_key, kind, due_at, payload)
                 SELECT 'delivered-followup:ghost-' || i || ':s', 'delivered-followup', $1,
                        jsonb_build_object('order_id', 'ghost-' || i, 'shipment_id', 's')
                   FROM generate_series(1, $2::int) AS i",
                &[&now, &(GHOSTS as i32)],
            )
            .await
            .unwrap();
    }
    // Everything comes due at once; both replicas race for it.
    advance_days(&app, 3).await;
    let fired_by = |text: &str| metric_sum(text, "backorder_lifecycle_timers_total", "kind=\"delivered-followup\"");
    wait_until("every timer fired", PATIENCE, || async {
        let total = fired_by(&a.metrics().await) + fired_by(&b.metrics().await);
        (total >= (N + GHOSTS) as f64).then_some(())
    })
    .await;
    timer_loop_caught_up(&app, "delivered-followup").await;
    let (ma, mb) = (a.metrics().await, b.metrics().await);
    let (by_a, by_b) = (fired_by(&ma), fired_by(&mb));
    // The sentinel of `timer_loop_caught_up` fired too (as unreadable).
    let sentinels = metric_sum(&ma, "backorder_lifecycle_timers_total", "outcome=\"unreadable\"")
        + metric_sum(&mb, "backorder_lifecycle_timers_total", "outcome=\"unreadable\"");
    assert_eq!(sentinels, 1.0);
    assert_eq!(
        by_a + by_b - sentinels,
        (N + GHOSTS) as f64,
        "each timer fired by exactly one replica"
    );
    assert!(by_a > 0.0 && by_b > 0.0, "both replicas fired timers: {by_a} + {by_b}");
    let sent = metric_sum(&ma, "backorder_lifecycle_timers_total", "outcome=\"sent\"")
        + metric_sum(&mb, "backorder_lifecycle_timers_total", "outcome=\"sent\"");
    assert_eq!(sent, N as f64);
    // Outputs: N confirmations + N shipped + N follow-ups, not one more.
    let client = app.pool.get().await.unwrap();
    let followups: i64 = client
        .query_one(
            "SELECT count(*) FROM email_decisions WHERE template = 'delivered_followup'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(followups, N as i64);
}

mod templates {
    use sender::render::Renderer;
    use serde_json::{Value, json};

    const EVIL: &str = "<script>alert(1)</script> Lamp";
    const LANGUAGES: [&str; 5] = ["en", "de", "ko", "tr", "id"];
    const TEMPLATES: [&str; 5] = [
        "order_confirmation",
        "shipped",
        "delivered_followup",
        "nurture_update",
        "win_back",
    ];

    /// A signed one-click cancel link as the deciders build it.
    const CANCEL_URL: &str = "https://shop.example/cancel?order=o-1&line=l1&token=T0K3N";

    fn data(template: &str) -> Value {
        match template {
            "order_confirmation" => json!({
                "order_id": "o-1", "currency": "EUR", "total_minor": 123450, "has_backorder": true,
                "lines": [
                    {"product_name": EVIL, "quantity": 1, "unit_price_minor": 100000, "backordered": true,
                     "window_from": "2026-12-15", "window_to": "2026-12-22", "cancel_url": CANCEL_URL},
                    {"product_name": "Mug", "quantity": 2, "unit_price_minor": 11725, "backordered": false,
                     "window_from": null, "window_to": null, "cancel_url": null},
                    {"product_name": "Chair", "quantity": 1, "unit_price_minor": 0, "backordered": true,
                     "window_from": null, "window_to": null, "cancel_url": CANCEL_URL}
                ]
            }),
            "shipped" => json!({
                "order_id": "o-1", "carrier": "DHL", "tracking_number": "TRK1",
                "tracking_url": "https://track.example/1?a=1&b=\"2\"",
                "items": [{"product_name": "Mug", "quantity": 2}],
                "pending": [
                    {"product_name": EVIL, "quantity": 1, "backordered": true,
                     "window_from": "2026-12-15", "window_to": "2026-12-22"},
                    {"product_name": "Chair", "quantity": 1, "backordered": true, "window_from": null, "window_to": null},
                    {"product_name": "Spoon", "quantity": 1, "backordered": false, "window_from": null, "window_to": null}
                ]
            }),
            "delivered_followup" => json!({
                "order_id": "o-1", "items": [{"product_name": EVIL, "quantity": 1}]
            }),
            "nurture_update" => json!({
                "order_id": "o-1",
                "lines": [
                    {"line_id": "l1", "product_name": EVIL, "quantity": 1, "kind": "home",
                     "window_from": "2026-12-15", "window_to": "2026-12-22", "cancel_url": CANCEL_URL},
                    {"line_id": "l2", "product_name": "Grinder", "quantity": 1, "kind": "kitchen",
                     "window_from": null, "window_to": null, "cancel_url": CANCEL_URL}
                ]
            }),
            "win_back" => json!({
                "order_id": "o-1", "products": [{"product_name": EVIL, "kind": "outdoor"}]
            }),
            other => panic!("no data for {other}"),
        }
    }

    /// Something only a correct rendering in `language` contains.
    fn locale_marker(template: &str, language: &str) -> Option<&'static str> {
        let dated = matches!(template, "order_confirmation" | "shipped" | "nurture_update");
        if !dated {
            return None;
        }
        Some(match language {
            "en" => "22 Dec 2026",
            "de" => "22. Dezember 2026",
            "ko" => "2026년 12월 22일",
            "tr" => "22 Aralık 2026",
            _ => "22 Desember 2026",
        })
    }

    #[test]
    fn every_lifecycle_template_renders_in_all_five_languages_and_escapes_event_values() {
        let renderer = Renderer::new(&backorder_core::config::Settings::default()).unwrap();
        for template in TEMPLATES {
            let english = renderer
                .render(template, "en", "Ada <b>", &data(template), None)
                .unwrap();
            for language in LANGUAGES {
                assert!(renderer.has_template(language, template), "{template} in {language}");
                let locale = format!("{language}-XX");
                let r = renderer
                    .render(
                        template,
                        &locale,
                        "Ada <b>",
                        &data(template),
                        Some("https://shop.example/u?t=1"),
                    )
                    .unwrap_or_else(|e| panic!("{template}/{language}: {e}"));
                let what = format!("{template}/{language}");
                assert!(
                    !r.subject.is_empty() && !r.subject.contains('\n'),
                    "{what}: {}",
                    r.subject
                );
                assert!(!r.html.contains("<script>"), "{what}: unescaped product name");
                assert!(r.html.contains("&lt;script&gt;"), "{what}: escaped product name");
                assert!(!r.html.contains("Ada <b>"), "{what}: unescaped customer name");
                assert!(r.text.contains(EVIL), "{what}: plain text keeps the name as written");
                assert!(
                    r.html.contains("support@shop.example") && r.text.contains("support@shop.example"),
                    "{what}: support"
                );
                if let Some(marker) = locale_marker(template, language) {
                    assert!(r.html.contains(marker) && r.text.contains(marker), "{what}: {marker}");
                }
                if language != "en" {
                    assert_ne!(r.subject, english.subject, "{what}: translated subject");
                    assert_ne!(r.text, english.text, "{what}: translated text");
                }
                if template == "shipped" {
                    assert!(
                        r.html.contains("&amp;b=") && !r.html.contains("b=\"2\""),
                        "{what}: link escaped: {}",
                        r.html
                    );
                    assert!(r.text.contains("TRK1") && r.text.contains("DHL"), "{what}: tracking");
                }
            }
        }
    }

    #[test]
    fn money_is_formatted_per_locale_in_the_confirmation() {
        let renderer = Renderer::new(&backorder_core::config::Settings::default()).unwrap();
        for (language, total) in [
            ("en", "€1,234.50"),
            ("de", "1.234,50\u{a0}€"),
            ("tr", "€1.234,50"),
            ("id", "€1.234,50"),
        ] {
            let r = renderer
                .render("order_confirmation", language, "Ada", &data("order_confirmation"), None)
                .unwrap();
            assert!(r.text.contains(total), "{language}: {total} in {}", r.text);
        }
    }

    #[test]
    fn an_unknown_language_falls_back_to_english() {
        let renderer = Renderer::new(&backorder_core::config::Settings::default()).unwrap();
        let r = renderer
            .render("shipped", "fr-FR", "Ada", &data("shipped"), None)
            .unwrap();
        let en = renderer.render("shipped", "en", "Ada", &data("shipped"), None).unwrap();
        assert_eq!(r.subject, en.subject);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cohort_report_compares_backorder_buyers_with_other_customers() {
    let app = TestApp::spawn().await;
    let _orders = app.start_service("orders-consumer").await;
    let mut events = Vec::new();
    // Ada bought a backordered item, then came back for an in-stock one.
    let mut first = order(
        &app,
        "o-a1",
        &app.recipient("ada"),
        "en",
        &[("SOFA-1", "Sofa", "home", true)],
    )
    .await;
    first.total_minor = 80_000;
    let mut second = order(
        &app,
        "o-a2",
        &app.recipient("ada"),
        "en",
        &[("MUG-1", "Mug", "kitchen", false)],
    )
    .await;
    second.customer = first.customer.clone();
    second.total_minor = 2_000;
    second.occurred_at = first.occurred_at + chrono::Duration::days(10);
    // Bob only bought in-stock goods.
    let mut bob = order(
        &app,
        "o-b1",
        &app.recipient("bob"),
        "en",
        &[("MUG-1", "Mug", "kitchen", false)],
    )
    .await;
    bob.total_minor = 3_000;
    // Cy's only order (backordered) was cancelled: not a customer here.
    let cy = order(
        &app,
        "o-c1",
        &app.recipient("cy"),
        "en",
        &[("SOFA-1", "Sofa", "home", true)],
    )
    .await;
    // Dee ordered a sofa (backordered) and a mug, then cancelled the sofa:
    // she kept only the mug, so she is no backorder buyer and the sofa's
    // 25.00 is no revenue.
    let dee = order(
        &app,
        "o-d1",
        &app.recipient("dee"),
        "en",
        &[("SOFA-1", "Sofa", "home", true), ("MUG-1", "Mug", "kitchen", false)],
    )
    .await;
    // Eve's order lost both its lines one by one: not a customer here.
    let eve = order(
        &app,
        "o-e1",
        &app.recipient("eve"),
        "en",
        &[("SOFA-1", "Sofa", "home", true), ("MUG-1", "Mug", "kitchen", false)],
    )
    .await;
    events.extend([first, second, bob, cy, dee, eve]);
    for e in &events {
        app.publish(ORDERS, e).await;
    }
    app.publish(ORDERS, &cancel(&app, "o-c1", &[]).await).await;
    app.publish(ORDERS, &cancel(&app, "o-d1", &["l1"]).await).await;
    app.publish(ORDERS, &cancel(&app, "o-e1", &["l1"]).await).await;
    app.publish(ORDERS, &cancel(&app, "o-e1", &["l2"]).await).await;
    wait_until("every order event consumed", PATIENCE, || async {
        (app.committed_total("orders-consumer", ORDERS).await == 10).then_some(())
    })
    .await;

    let run = |json: bool| {
        let mut command = std::process::Command::new(backorder_tests::process::binary("backorderctl"));
        command
            .env("DATABASE_URL", &app.settings.database_url)
            .env("BACKORDER_STACK_ENV", "/nonexistent")
            .args(["report", "cohorts"]);
        if json {
            command.arg("--json");
        }
        let output = command.output().expect("backorderctl runs");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap()
    };
    let report: serde_json::Value = serde_json::from_str(&run(true)).unwrap();
    let cohort = |name: &str| {
        report
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["cohort"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} in {report}"))
    };
    let buyers = cohort("backorder-buyers");
    assert_eq!(buyers["customers"], 1, "{report}");
    assert_eq!(buyers["orders"], 2);
    assert_eq!(buyers["revenue_minor"], 82_000);
    assert_eq!(buyers["orders_per_customer"], 2.0);
    assert_eq!(buyers["average_order_value_minor"], 41_000);
    assert_eq!(buyers["lifetime_value_minor"], 82_000);
    assert!(
        (buyers["days_between_orders"].as_f64().unwrap() - 10.0).abs() < 0.01,
        "{report}"
    );
    let others = cohort("other-customers");
    assert_eq!(others["customers"], 2, "{report}");
    assert_eq!(others["orders"], 2);
    assert_eq!(others["revenue_minor"], 3_000 + 2_500, "{report}");
    assert_eq!(others["lifetime_value_minor"], 2_750);
    assert!(others["days_between_orders"].is_null());

    let table = run(false);
    assert!(
        table.contains("backorder-buyers") && table.contains("820.00 EUR"),
        "{table}"
    );
}

async fn eta_changed(app: &TestApp, sku: &str, from_days: i64, to_days: i64) -> SupplierEtaChanged {
    SupplierEtaChanged {
        event_id: uuid::Uuid::new_v4().to_string(),
        occurred_at: clock_now(app).await,
        sku: sku.to_string(),
        eta_from: Some(day(app, from_days).await),
        eta_to: Some(day(app, to_days).await),
        reason: "The factory is behind on orders".to_string(),
        remedy: "We booked the next container".to_string(),
        reason_code: None,
        reason_locale: None,
    }
}

/// The same rule with the real stock-consumer: its delay notice on day 23
/// (recorded in `email_decisions`) suppresses the day-24 nurture.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delay_notice_from_the_stock_consumer_on_day_23_suppresses_the_day_24_nurture() {
    let app = TestApp::spawn().await;
    let _orders = app.start_service_with("orders-consumer", FAST_TIMERS).await;
    let policy = app.write_policy("stock", "[delays]\ndebounce_seconds = 0.3\n");
    let _stock = app
        .start_service_with(
            "stock-consumer",
            &[("BACKORDER_TIMER_POLL_MS", "100"), ("BACKORDER_POLICY_FILE", &policy)],
        )
        .await;
    let _sender = app.start_service("sender").await;
    let to = app.recipient("dora");
    app.publish(STOCK, &eta_changed(&app, "KILN-7", 60, 67).await).await;
    wait_until("the ETA stored by the stock-consumer", PATIENCE, || async {
        let client = app.pool.get().await.unwrap();
        let n: i64 = client
            .query_one("SELECT count(*) FROM sku_eta WHERE sku = 'KILN-7'", &[])
            .await
            .unwrap()
            .get(0);
        (n == 1).then_some(())
    })
    .await;
    app.publish(
        ORDERS,
        &order(&app, "o-k", &to, "en", &[("KILN-7", "Pottery kiln", "home", true)]).await,
    )
    .await;
    wait_for_emails(&app, &to, 1).await;
    advance_days(&app, 12).await;
    wait_for_emails(&app, &to, 2).await;
    assert_eq!(nurtures(&app, &to).await, 1);

    // Day 23: the supplier slips by six days (a small slip); the customer
    // gets a delay notice.
    advance_days(&app, 11).await;
    app.publish(STOCK, &eta_changed(&app, "KILN-7", 45, 50).await).await;
    let sent = wait_for_emails(&app, &to, 3).await;
    assert_eq!(decisions(&app, "delay_notice").await, 1, "{:?}", subjects(&sent));

    // Day 24: the nurture check fires and is skipped.
    advance_days(&app, 1).await;
    wait_timer_state(&app, &nurture_key("o-k", 2), "fired").await;
    sender_settled(&app, 3).await;
    assert_eq!(nurtures(&app, &to).await, 1, "the day-24 nurture is suppressed");

    // Day 36: the cadence goes on, with the new window.
    advance_days(&app, 12).await;
    let sent = wait_for_emails(&app, &to, 4).await;
    let new_to = day(&app, 50 - 13).await;
    assert!(
        sent[3].body.contains(&new_to.format("%-d %b %Y").to_string()),
        "the nurture shows the current window: {}",
        sent[3].body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nurture_interval_is_configurable_within_10_to_14_days() {
    let app = TestApp::spawn().await;
    let policy = app.write_policy("nurture", "[nurture]\ninterval_days = 10\n");
    let _orders = app
        .start_service_with(
            "orders-consumer",
            &[("BACKORDER_TIMER_POLL_MS", "100"), ("BACKORDER_POLICY_FILE", &policy)],
        )
        .await;
    let _sender = app.start_service("sender").await;
    let to = app.recipient("ivy");
    set_eta(&app, "BIKE-3", 60, 67).await;
    app.publish(
        ORDERS,
        &order(
            &app,
            "o-i",
            &to,
            "tr-TR",
            &[("BIKE-3", "Gravel bike", "bicycles", true)],
        )
        .await,
    )
    .await;
    wait_for_emails(&app, &to, 1).await;
    wait_timer_state(&app, &nurture_key("o-i", 1), "pending").await;
    advance_days(&app, 9).await;
    timer_loop_caught_up(&app, "nurture").await;
    assert_eq!(app.emails_to(&to).await.len(), 1, "nothing on day 9");
    advance_days(&app, 1).await;
    let sent = wait_for_emails(&app, &to, 2).await;
    assert!(
        sent[1].subject.contains("güncel bilgi"),
        "Turkish nurture on day 10: {}",
        sent[1].subject
    );
    assert!(sent[1].body.contains("Gravel bike"));

    // Out of range: the service refuses to start, naming the setting.
    let bad = app.write_policy("bad-nurture", "[nurture]\ninterval_days = 20\n");
    let (succeeded, log) = app
        .run_to_exit("orders-consumer", &[("BACKORDER_POLICY_FILE", bad)])
        .await;
    assert!(!succeeded);
    assert!(log.contains("nurture.interval_days = 20"), "{log}");
    assert!(log.contains("10 to 14"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_one_shipments_follow_up_leaves_a_shipment_with_a_longer_id_alone() {
    let app = TestApp::spawn().await;
    let mut client = app.pool.get().await.unwrap();
    let tx = client.transaction().await.unwrap();
    for shipment in ["s-1", "s-10"] {
        backorder_core::timers::schedule(
            &*tx,
            &backorder_core::timers::Timer {
                key: backorder_core::timer_keys::followup("o-1", shipment),
                kind: backorder_core::timer_keys::DELIVERED_FOLLOWUP.to_string(),
                due_at: chrono::Utc::now() + chrono::Duration::days(3),
                payload: serde_json::json!({ "order_id": "o-1", "shipment_id": shipment }),
            },
        )
        .await
        .unwrap();
    }
    // A whole key given where a scope is expected is cancelled exactly.
    let cancelled = backorder_core::timers::cancel_prefix(&*tx, &backorder_core::timer_keys::followup("o-1", "s-1"))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(cancelled, 1);
    assert_eq!(
        timer_state(&app, &backorder_core::timer_keys::followup("o-1", "s-1"))
            .await
            .as_deref(),
        Some("cancelled")
    );
    assert_eq!(
        timer_state(&app, &backorder_core::timer_keys::followup("o-1", "s-10"))
            .await
            .as_deref(),
        Some("pending"),
        "s-10's follow-up is not s-1's"
    );
}
