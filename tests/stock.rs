//! Stock arrivals and supplier delays on the real stack: fair allocation,
//! arrival notices, back in stock for carts, honest delay notices (one per
//! order however many changes a debounce window holds) and significant
//! delays on `backorder-delays.v1`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use backorder_core::events::orders::Availability::Backordered;
use backorder_core::events::orders::{OrderCancelled, OrderPlaced};
use backorder_core::kafka::topics::{ORDERS, STOCK};
use backorder_tests::stock::{
    PATIENCE, allocated_orders, arrival, cart, count, day, delays_on_topic, en_date, eta, ledger, peak_rss_kib,
    product, wait_for_count, wait_for_sender_idle,
};
use backorder_tests::{TestApp, order_placed, wait_until};
use chrono::Utc;

/// Fast timers and a short debounce window (policy file) for the stock-consumer.
fn stock_env(app: &TestApp, debounce_ms: &str) -> [(&'static str, String); 2] {
    let seconds = debounce_ms.parse::<f64>().expect("milliseconds") / 1000.0;
    let policy = app.write_policy("stock", &format!("[delays]\ndebounce_seconds = {seconds}\n"));
    [
        ("BACKORDER_TIMER_POLL_MS", "100".to_string()),
        ("BACKORDER_POLICY_FILE", policy),
    ]
}

async fn start_stock(app: &TestApp, debounce_ms: &str) -> backorder_tests::process::ServiceProcess {
    let env = stock_env(app, debounce_ms);
    let extra: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    app.start_service_with("stock-consumer", &extra).await
}

/// A one-line backorder of `sku` placed `hours_ago`.
fn backorder(order_id: &str, recipient: &str, locale: &str, sku: &str, hours_ago: i64, quantity: i32) -> OrderPlaced {
    let mut order = order_placed(order_id, recipient, locale, &[(sku, Backordered)]);
    order.occurred_at = Utc::now() - chrono::Duration::hours(hours_ago);
    order.lines[0].quantity = quantity;
    order.total_minor = order.lines[0].unit_price_minor * i64::from(quantity);
    order
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_arrival_of_three_units_goes_to_the_three_oldest_of_five_backorders_once() {
    let app = TestApp::spawn().await;
    let _orders = app.start_service("orders-consumer").await;
    let _stock = start_stock(&app, "1000").await;
    let _sender = app.start_service("sender").await;

    // Placed oldest first: o-1 (5 h ago) ... o-5 (1 h ago); published newest
    // first, so publication order cannot explain the result.
    let locales = ["en-GB", "de-DE", "ko-KR", "tr-TR", "id-ID"];
    let people: Vec<String> = (1..=5).map(|i| app.recipient(&format!("c{i}"))).collect();
    for i in (1..=5).rev() {
        let order = backorder(
            &format!("o-{i}"),
            &people[i - 1],
            locales[i - 1],
            "LAMP",
            6 - i as i64,
            1,
        );
        app.publish(ORDERS, &order).await;
    }
    wait_for_count(&app, "five orders stored", "SELECT count(*) FROM orders", 5).await;

    let delivery = arrival("arr-1", "LAMP", 3);
    app.publish(STOCK, &delivery).await;
    wait_until("three arrival notices at SES", PATIENCE, || async {
        let sent = ledger(&app, "arrival_notice").await;
        (sent.iter().filter(|r| r.3 == "sent").count() == 3).then_some(())
    })
    .await;

    // The same arrival again: nothing more is allocated or requested.
    app.publish(STOCK, &delivery).await;
    wait_until("the replay consumed and committed", PATIENCE, || async {
        (app.committed_total("stock-consumer", STOCK).await == 2).then_some(())
    })
    .await;
    // Every confirmation too, so the counts below are final.
    wait_for_count(
        &app,
        "five confirmations sent",
        "SELECT count(*) FROM email_ledger WHERE template = 'order_confirmation' AND state = 'sent'",
        5,
    )
    .await;
    wait_for_sender_idle(&app).await;

    assert_eq!(allocated_orders(&app, "LAMP").await, ["o-1", "o-2", "o-3"]);
    let notices = ledger(&app, "arrival_notice").await;
    let orders: Vec<&str> = notices.iter().filter_map(|r| r.0.as_deref()).collect();
    assert_eq!(
        orders,
        ["o-1", "o-2", "o-3"],
        "the three oldest orders, one notice each"
    );
    assert!(
        notices
            .iter()
            .all(|r| r.2.starts_with("arrival_") && r.2.ends_with("_arr-1"))
    );
    assert!(notices.iter().all(|r| r.4 == "TRANSACTIONAL"));
    assert_eq!(
        count(
            &app,
            "SELECT lines_allocated::bigint FROM stock_arrivals WHERE arrival_id = 'arr-1'"
        )
        .await,
        3
    );
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM email_decisions WHERE template = 'arrival_notice'"
        )
        .await,
        3,
        "every request recorded as a decision, once"
    );

    // At the SES endpoint: confirmation + arrival for the three oldest, the
    // confirmation only for the two newest; each in the customer's language.
    for (i, person) in people.iter().enumerate() {
        let sent = app.emails_to(person).await;
        let expected = if i < 3 { 2 } else { 1 };
        assert_eq!(sent.len(), expected, "emails to customer {}", i + 1);
    }
    let arrived = |i: usize, needle: &'static str| {
        let app = &app;
        let person = people[i].clone();
        async move {
            let sent = app.emails_to(&person).await;
            assert!(
                sent.iter()
                    .any(|e| e.body.contains("Product LAMP") && e.body.contains(needle)),
                "customer {} has an arrival notice containing {needle:?}: {:?}",
                i + 1,
                sent.iter().map(|e| &e.subject).collect::<Vec<_>>()
            );
        }
    };
    arrived(0, "we are preparing your order").await;
    arrived(1, "Die Ware, auf die Sie gewartet haben").await;
    arrived(2, "물류센터에 입고되었습니다").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_needing_more_units_than_are_left_keeps_its_place_and_the_units_wait_for_it() {
    let app = TestApp::spawn().await;
    let _orders = app.start_service("orders-consumer").await;
    let _stock = start_stock(&app, "1000").await;

    // Queue by order time: a (1 unit), b (3 units), c (1 unit).
    app.publish(ORDERS, &backorder("a", &app.recipient("a"), "en", "DESK", 3, 1))
        .await;
    app.publish(ORDERS, &backorder("b", &app.recipient("b"), "en", "DESK", 2, 3))
        .await;
    app.publish(ORDERS, &backorder("c", &app.recipient("c"), "en", "DESK", 1, 1))
        .await;
    wait_for_count(&app, "three orders stored", "SELECT count(*) FROM orders", 3).await;
    let arrival_done = |id: &'static str| {
        let app = &app;
        async move {
            wait_for_count(
                app,
                id,
                &format!(
                    "SELECT count(*) FROM stock_arrivals WHERE arrival_id = '{id}' AND outputs_acked_at IS NOT NULL"
                ),
                1,
            )
            .await;
        }
    };

    // 3 units: a gets 1; b needs 3 but only 2 are left, so it is not split
    // and c (1 unit, later) does not jump the queue: 2 units are held for b.
    app.publish(STOCK, &arrival("d-1", "DESK", 3)).await;
    arrival_done("d-1").await;
    assert_eq!(allocated_orders(&app, "DESK").await, ["a"]);
    assert_eq!(
        count(
            &app,
            "SELECT reserved_quantity::bigint FROM products WHERE sku = 'DESK'"
        )
        .await,
        2
    );
    assert_eq!(
        count(
            &app,
            "SELECT available_quantity::bigint FROM products WHERE sku = 'DESK'"
        )
        .await,
        0,
        "nothing is released for sale while a backorder waits"
    );

    // 1 more unit: with the 2 held, b is complete (3 of 3); c still waits.
    app.publish(STOCK, &arrival("d-2", "DESK", 1)).await;
    arrival_done("d-2").await;
    assert_eq!(allocated_orders(&app, "DESK").await, ["a", "b"]);
    assert_eq!(
        count(
            &app,
            "SELECT quantity::bigint FROM stock_allocations WHERE order_id = 'b'"
        )
        .await,
        3,
        "whole lines only"
    );
    assert_eq!(
        count(
            &app,
            "SELECT reserved_quantity::bigint FROM products WHERE sku = 'DESK'"
        )
        .await,
        0
    );

    // 1 more: c.
    app.publish(STOCK, &arrival("d-3", "DESK", 1)).await;
    arrival_done("d-3").await;
    assert_eq!(allocated_orders(&app, "DESK").await, ["a", "b", "c"]);
    let decided: Vec<String> = {
        let client = app.pool.get().await.unwrap();
        client
            .query(
                "SELECT dedup_key FROM email_decisions WHERE template = 'arrival_notice' ORDER BY dedup_key",
                &[],
            )
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.get(0))
            .collect()
    };
    assert_eq!(decided, ["arrival_a_d-1", "arrival_b_d-2", "arrival_c_d-3"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn surplus_becomes_available_stock_and_reaches_carts_not_backorder_customers() {
    let app = TestApp::spawn().await;
    let _orders = app.start_service("orders-consumer").await;
    let stock = start_stock(&app, "1000").await;
    let _sender = app.start_service("sender").await;

    app.publish(STOCK, &product("KETTLE", "Copper Kettle", 4999, 0)).await;
    let (bo1, bo2) = (app.recipient("bo1"), app.recipient("bo2"));
    app.publish(ORDERS, &backorder("o-bo1", &bo1, "en-GB", "KETTLE", 2, 1))
        .await;
    // o-bo2 waits for two kettles on two lines: one arrival notice for both.
    let mut two_lines = order_placed(
        "o-bo2",
        &bo2,
        "en-GB",
        &[("KETTLE", Backordered), ("KETTLE", Backordered)],
    );
    two_lines.occurred_at = Utc::now() - chrono::Duration::hours(1);
    app.publish(ORDERS, &two_lines).await;
    let (carter1, carter2, mug_only) = (app.recipient("carter1"), app.recipient("carter2"), app.recipient("mug"));
    app.publish(ORDERS, &cart("cart-1", "cust-carter1", &carter1, &["KETTLE", "MUG"]))
        .await;
    app.publish(ORDERS, &cart("cart-2", "cust-carter2", &carter2, &["KETTLE"]))
        .await;
    app.publish(ORDERS, &cart("cart-3", "cust-mug", &mug_only, &["MUG"]))
        .await;
    // A backorder customer who also left the kettle in a cart: served by
    // the queue, not marketed to.
    app.publish(ORDERS, &cart("cart-4", "cust-o-bo1", &bo1, &["KETTLE"]))
        .await;
    wait_for_count(
        &app,
        "orders and carts stored",
        "SELECT (SELECT count(*) FROM orders) + (SELECT count(*) FROM carts)",
        6,
    )
    .await;
    wait_for_count(
        &app,
        "the product stored",
        "SELECT count(*) FROM products WHERE sku = 'KETTLE'",
        1,
    )
    .await;

    app.publish(STOCK, &arrival("k-1", "KETTLE", 5)).await;
    wait_until("two back-in-stock emails at SES", PATIENCE, || async {
        let sent = ledger(&app, "back_in_stock").await;
        (sent.iter().filter(|r| r.3 == "sent").count() == 2).then_some(())
    })
    .await;
    assert_eq!(allocated_orders(&app, "KETTLE").await, ["o-bo1", "o-bo2", "o-bo2"]);
    assert_eq!(
        count(
            &app,
            "SELECT available_quantity::bigint FROM products WHERE sku = 'KETTLE'"
        )
        .await,
        2,
        "5 units, 3 to backordered lines, 2 for sale"
    );
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM products WHERE sku = 'KETTLE' AND name = 'Copper Kettle' AND category = 'kitchen'
                AND need = 'boil-water' AND seasons = '{AUTUMN,WINTER}' AND price_minor = 4999 AND currency = 'EUR'"
        )
        .await,
        1,
        "the catalog keeps what segmentation reads"
    );

    // A second arrival, with no backorder waiting: more stock for sale, but
    // each cart hears about the SKU once.
    app.publish(STOCK, &arrival("k-2", "KETTLE", 2)).await;
    wait_until("both arrivals and the product consumed", PATIENCE, || async {
        (app.committed_total("stock-consumer", STOCK).await == 3).then_some(())
    })
    .await;
    wait_for_count(
        &app,
        "arrival notices sent",
        "SELECT count(*) FROM email_ledger WHERE template = 'arrival_notice' AND state = 'sent'",
        2,
    )
    .await;
    wait_for_sender_idle(&app).await;
    assert_eq!(
        count(
            &app,
            "SELECT available_quantity::bigint FROM products WHERE sku = 'KETTLE'"
        )
        .await,
        4
    );
    let notices = ledger(&app, "arrival_notice").await;
    let orders: Vec<&str> = notices.iter().filter_map(|r| r.0.as_deref()).collect();
    assert_eq!(
        orders,
        ["o-bo1", "o-bo2"],
        "two lines of one order in one arrival: one email"
    );
    let metrics = stock.metrics().await;
    for line in [
        "backorder_stock_units_allocated_total 3",
        "backorder_stock_lines_allocated_total 3",
        "backorder_stock_surplus_units_total 4",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in:\n{metrics}");
    }
    let carts = ledger(&app, "back_in_stock").await;
    let mut recipients: Vec<&str> = carts.iter().map(|r| r.1.as_str()).collect();
    recipients.sort();
    let mut expected = vec![carter1.as_str(), carter2.as_str()];
    expected.sort();
    assert_eq!(recipients, expected, "carts holding the kettle, once each");
    assert!(carts.iter().all(|r| r.4 == "MARKETING"), "back in stock is marketing");
    assert!(carts.iter().all(|r| r.0.is_none()));

    for person in [&carter1, &carter2] {
        let sent = app.emails_to(person).await;
        assert_eq!(sent.len(), 1);
        assert!(
            sent[0].subject.contains("Copper Kettle is back in stock"),
            "{}",
            sent[0].subject
        );
        assert!(sent[0].body.contains("€49.99"), "price in the email");
    }
    assert!(app.emails_to(&mug_only).await.is_empty(), "a cart without the SKU");
    for person in [&bo1, &bo2] {
        let sent = app.emails_to(person).await;
        assert!(sent.iter().any(|e| e.subject.contains("arrived")), "an arrival notice");
        assert!(
            sent.iter().all(|e| !e.subject.contains("back in stock")),
            "backorder customers get the arrival notice, not marketing"
        );
    }
}

/// Waits until arrival `id` (a supplier's, a release or a settle) has
/// allocated and its emails are acknowledged.
async fn wait_arrival_done(app: &TestApp, id: &str) {
    wait_for_count(
        app,
        id,
        &format!("SELECT count(*) FROM stock_arrivals WHERE arrival_id = '{id}' AND outputs_acked_at IS NOT NULL"),
        1,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_served_line_gives_its_units_to_the_next_waiting_line_and_its_arrival_notice_follows() {
    let app = TestApp::spawn().await;
    let _orders = app.start_service("orders-consumer").await;
    let _stock = start_stock(&app, "1000").await;
    let _sender = app.start_service("sender").await;

    // Two customers wait for two vases each; "first" ordered earlier.
    let (first, second) = (app.recipient("first"), app.recipient("second"));
    app.publish(ORDERS, &backorder("first", &first, "en", "VASE", 2, 2))
        .await;
    app.publish(ORDERS, &backorder("second", &second, "en", "VASE", 1, 2))
        .await;
    wait_for_count(&app, "two orders stored", "SELECT count(*) FROM orders", 2).await;
    app.publish(STOCK, &arrival("v-1", "VASE", 2)).await;
    wait_arrival_done(&app, "v-1").await;
    assert_eq!(allocated_orders(&app, "VASE").await, ["first"]);

    // The first customer cancels the served line: its two units go to the
    // second, in order, with the arrival notice.
    let cancelled = OrderCancelled {
        event_id: uuid::Uuid::new_v4().to_string(),
        occurred_at: Utc::now(),
        order_id: "first".to_string(),
        line_ids: vec!["l1".to_string()],
        reason: "customer request".to_string(),
    };
    app.publish(ORDERS, &cancelled).await;
    wait_until("the second customer's arrival notice at SES", PATIENCE, || async {
        let sent = ledger(&app, "arrival_notice").await;
        sent.iter()
            .any(|r| r.0.as_deref() == Some("second") && r.3 == "sent")
            .then_some(())
    })
    .await;
    assert_eq!(allocated_orders(&app, "VASE").await, ["second"]);
    assert_eq!(
        count(
            &app,
            "SELECT quantity::bigint FROM stock_allocations WHERE arrival_id = 'release:first:l1' AND order_id = 'second'"
        )
        .await,
        2,
        "the cancelled line's units, through a release of their own"
    );
    assert_eq!(
        count(
            &app,
            "SELECT (reserved_quantity + available_quantity)::bigint FROM products WHERE sku = 'VASE'"
        )
        .await,
        0,
        "every unit is with the second order: none reserved, none for sale"
    );
    let to_second = app.emails_to(&second).await;
    assert!(
        to_second.iter().any(|e| e.subject.contains("arrived")),
        "an arrival notice for the second order"
    );
    wait_for_sender_idle(&app).await;
    let notices = ledger(&app, "arrival_notice").await;
    let orders: Vec<&str> = notices.iter().filter_map(|r| r.0.as_deref()).collect();
    assert_eq!(orders, ["first", "second"], "one notice each, none twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_arrival_nobody_waits_for_tells_carts_only_after_the_settle_time_and_serves_an_order_placed_meanwhile() {
    let app = TestApp::spawn().await;
    let policy = app.write_policy(
        "settle",
        "[delays]\ndebounce_seconds = 1.0\n[stock]\narrival_settle_seconds = 600.0\n",
    );
    let _orders = app.start_service("orders-consumer").await;
    let _stock = app
        .start_service_with(
            "stock-consumer",
            &[("BACKORDER_TIMER_POLL_MS", "100"), ("BACKORDER_POLICY_FILE", &policy)],
        )
        .await;
    let _sender = app.start_service("sender").await;

    app.publish(STOCK, &product("TEAPOT", "Teapot", 2999, 0)).await;
    let carter = app.recipient("carter");
    app.publish(ORDERS, &cart("cart-t", "cust-carter", &carter, &["TEAPOT"]))
        .await;
    wait_for_count(&app, "the cart stored", "SELECT count(*) FROM carts", 1).await;

    // Three teapots and nobody waiting: they settle, carts hear nothing yet.
    app.publish(STOCK, &arrival("t-1", "TEAPOT", 3)).await;
    wait_arrival_done(&app, "t-1").await;
    assert_eq!(
        count(
            &app,
            "SELECT reserved_quantity::bigint * 10 + available_quantity FROM products WHERE sku = 'TEAPOT'"
        )
        .await,
        30,
        "three units held, none for sale during the settle time"
    );

    // An order that was on its way arrives during the settle time.
    let late = app.recipient("late");
    app.publish(ORDERS, &backorder("late", &late, "en", "TEAPOT", 0, 1))
        .await;
    wait_for_count(&app, "the late order stored", "SELECT count(*) FROM orders", 1).await;
    assert_eq!(
        count(&app, "SELECT count(*) FROM back_in_stock_notices").await,
        0,
        "no cart is told before the settle time ends"
    );

    // Ten minutes later: the late order gets its teapot, carts the rest.
    backorder_core::clock::advance(&app.pool, chrono::Duration::seconds(601))
        .await
        .unwrap();
    wait_until("back in stock for the cart at SES", PATIENCE, || async {
        let sent = ledger(&app, "back_in_stock").await;
        (sent.iter().filter(|r| r.3 == "sent").count() == 1).then_some(())
    })
    .await;
    wait_arrival_done(&app, "settle:t-1").await;
    assert_eq!(allocated_orders(&app, "TEAPOT").await, ["late"]);
    assert_eq!(
        count(
            &app,
            "SELECT reserved_quantity::bigint * 10 + available_quantity FROM products WHERE sku = 'TEAPOT'"
        )
        .await,
        2,
        "one teapot to the late order, two for sale"
    );
    wait_until("the late order's arrival notice at SES", PATIENCE, || async {
        let sent = ledger(&app, "arrival_notice").await;
        sent.iter()
            .any(|r| r.0.as_deref() == Some("late") && r.3 == "sent")
            .then_some(())
    })
    .await;
    assert!(
        app.emails_to(&late)
            .await
            .iter()
            .all(|e| !e.subject.contains("back in stock")),
        "the customer who ordered is served, not marketed to"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_slip_gets_a_notice_while_a_big_slip_or_an_unknown_eta_go_to_segmentation_instead() {
    let app = TestApp::spawn().await;
    let _orders = app.start_service("orders-consumer").await;
    let _stock = start_stock(&app, "300").await;
    let _sender = app.start_service("sender").await;

    // Every SKU starts at day +10..+14; the customers are told that.
    let skus = ["SLIP3", "SLIP20", "UNKNOWN", "EARLIER"];
    for sku in skus {
        app.publish(STOCK, &eta(sku, Some((day(10), day(14))), "first estimate"))
            .await;
    }
    wait_for_count(&app, "four ETAs stored", "SELECT count(*) FROM sku_eta", 4).await;
    let people: Vec<String> = skus.iter().map(|s| app.recipient(&s.to_lowercase())).collect();
    for (i, sku) in skus.iter().enumerate() {
        app.publish(ORDERS, &backorder(&format!("o-{sku}"), &people[i], "en-GB", sku, 1, 2))
            .await;
    }
    wait_for_count(
        &app,
        "four lines promised day +14",
        &format!(
            "SELECT count(*) FROM order_lines WHERE promise_told AND promised_to = '{}'",
            day(14)
        ),
        4,
    )
    .await;

    let reason = "A storm closed the port our supplier ships from";
    app.publish(STOCK, &eta("SLIP3", Some((day(13), day(17))), reason))
        .await;
    app.publish(STOCK, &eta("SLIP20", Some((day(30), day(34))), reason))
        .await;
    app.publish(STOCK, &eta("UNKNOWN", None, reason)).await;
    app.publish(
        STOCK,
        &eta("EARLIER", Some((day(6), day(9))), "the supplier found spare units"),
    )
    .await;

    wait_until("one delay notice at SES", PATIENCE, || async {
        let sent = ledger(&app, "delay_notice").await;
        (sent.iter().filter(|r| r.3 == "sent").count() == 1).then_some(())
    })
    .await;
    // Notices and events leave in the same acknowledged round, so once the
    // notices exist every event does; a short quiet period catches extras.
    let delays = delays_on_topic(&app, 2, Duration::from_secs(2)).await;
    let mut delayed: Vec<&str> = delays.iter().map(|d| d.sku.as_str()).collect();
    delayed.sort();
    assert_eq!(delayed, ["SLIP20", "UNKNOWN"], "only significant slips become events");
    for d in &delays {
        assert_eq!(d.order_id, format!("o-{}", d.sku));
        assert_eq!(d.customer_id, format!("cust-o-{}", d.sku));
        assert_eq!(d.lines.len(), 1, "the order's one slipped line");
        assert_eq!(d.lines[0].line_id, "l1");
        assert_eq!(d.lines[0].old_promise_to, Some(day(14)));
        assert_eq!(d.reason, reason);
        assert_eq!(d.delayed_value_minor, 5000, "2 x 25.00");
        assert_eq!(d.currency, "EUR");
        assert_eq!(d.eta_version, 2);
    }
    let slip20 = delays.iter().find(|d| d.sku == "SLIP20").unwrap();
    assert_eq!(
        (slip20.new_promise_from, slip20.new_promise_to),
        (Some(day(30)), Some(day(34)))
    );
    let unknown = delays.iter().find(|d| d.sku == "UNKNOWN").unwrap();
    assert_eq!((unknown.new_promise_from, unknown.new_promise_to), (None, None));

    wait_for_sender_idle(&app).await;
    let notices = ledger(&app, "delay_notice").await;
    let orders: Vec<&str> = notices.iter().filter_map(|r| r.0.as_deref()).collect();
    assert_eq!(
        orders,
        ["o-SLIP3"],
        "no notice for an earlier ETA, and none beside segmentation's one email for a significant slip"
    );
    assert!(notices.iter().any(|r| r.2 == "delay-notice_o-SLIP3_SLIP3_2"));

    let body = |i: usize| {
        let app = &app;
        let person = people[i].clone();
        async move {
            let sent = app.emails_to(&person).await;
            sent.into_iter()
                .find(|e| e.subject.contains("is delayed"))
                .unwrap_or_else(|| panic!("a delay notice for {}", skus[i]))
                .body
        }
    };
    let small = body(0).await;
    for needle in [
        reason,
        "container space",
        &en_date(day(13)),
        &en_date(day(17)),
        &en_date(day(14)),
    ] {
        assert!(small.contains(needle), "small slip notice lacks {needle:?}: {small}");
    }
    assert!(small.contains("Cancel this item"), "what the customer can do now");
    for (i, why) in [
        (1, "a significant slip is segmentation's one email"),
        (2, "an unknown ETA is segmentation's one email"),
        (3, "the earlier ETA sends nothing"),
    ] {
        assert_eq!(app.emails_to(&people[i]).await.len(), 1, "only the confirmation: {why}");
    }

    // The promise is now what each customer was told (or quietly improved).
    let client = app.pool.get().await.unwrap();
    for (sku, from, to) in [
        ("SLIP3", Some(day(13)), Some(day(17))),
        ("SLIP20", Some(day(30)), Some(day(34))),
        ("UNKNOWN", None, None),
        ("EARLIER", Some(day(6)), Some(day(9))),
    ] {
        let row = client
            .query_one(
                "SELECT promised_from, promised_to FROM order_lines WHERE sku = $1",
                &[&sku],
            )
            .await
            .unwrap();
        let got: (Option<chrono::NaiveDate>, Option<chrono::NaiveDate>) = (row.get(0), row.get(1));
        assert_eq!(got, (from, to), "promise of {sku}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_eta_changes_within_the_debounce_window_make_one_notice_per_order_with_the_latest_window() {
    let app = TestApp::spawn().await;
    let _orders = app.start_service("orders-consumer").await;
    let _stock = start_stock(&app, "3000").await;
    let _sender = app.start_service("sender").await;

    app.publish(STOCK, &eta("SOFA", Some((day(10), day(14))), "first estimate"))
        .await;
    wait_for_count(&app, "the ETA stored", "SELECT count(*) FROM sku_eta", 1).await;
    let (ann, bob) = (app.recipient("ann"), app.recipient("bob"));
    app.publish(ORDERS, &backorder("o-ann", &ann, "en-GB", "SOFA", 2, 1))
        .await;
    app.publish(ORDERS, &backorder("o-bob", &bob, "en-GB", "SOFA", 1, 1))
        .await;
    wait_for_count(
        &app,
        "two promised lines",
        "SELECT count(*) FROM order_lines WHERE promise_told",
        2,
    )
    .await;

    // Each a small slip (at most 7 days past the promise of day 14):
    // delay notices, not segmentation's campaign.
    let changes: Vec<_> = [(15, 16), (16, 18), (17, 20)]
        .into_iter()
        .map(|(from, to)| eta("SOFA", Some((day(from), day(to))), "the factory is behind"))
        .collect();
    for change in &changes {
        app.publish(STOCK, change).await;
    }
    wait_for_count(
        &app,
        "three more ETA versions",
        "SELECT version FROM sku_eta WHERE sku = 'SOFA'",
        4,
    )
    .await;
    wait_until("two delay notices at SES", PATIENCE, || async {
        let sent = ledger(&app, "delay_notice").await;
        (sent.iter().filter(|r| r.3 == "sent").count() == 2).then_some(())
    })
    .await;
    wait_for_count(
        &app,
        "the debounce timer fired",
        "SELECT count(*) FROM timers WHERE timer_key = 'delay-notice:SOFA' AND state = 'fired'",
        1,
    )
    .await;
    // A replayed change is no new version and no new notice.
    app.publish(STOCK, &changes[2]).await;
    wait_until("the replay consumed and committed", PATIENCE, || async {
        (app.committed_total("stock-consumer", STOCK).await == 5).then_some(())
    })
    .await;
    assert_eq!(count(&app, "SELECT version FROM sku_eta WHERE sku = 'SOFA'").await, 4);
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM timers WHERE timer_key = 'delay-notice:SOFA' AND state = 'fired'"
        )
        .await,
        1,
        "the replay does not open a new debounce window"
    );
    wait_for_sender_idle(&app).await;

    let notices = ledger(&app, "delay_notice").await;
    let keys: Vec<&str> = notices.iter().map(|r| r.2.as_str()).collect();
    assert_eq!(
        keys,
        ["delay-notice_o-ann_SOFA_4", "delay-notice_o-bob_SOFA_4"],
        "one notice per order, for the latest ETA version"
    );
    for person in [&ann, &bob] {
        let sent: Vec<_> = app
            .emails_to(person)
            .await
            .into_iter()
            .filter(|e| e.subject.contains("is delayed"))
            .collect();
        assert_eq!(sent.len(), 1, "one notice, not one per change");
        let body = &sent[0].body;
        assert!(
            body.contains(&en_date(day(17))) && body.contains(&en_date(day(20))),
            "latest window: {body}"
        );
        for stale in [day(16), day(18)] {
            assert!(!body.contains(&en_date(stale)), "no stale window {stale}: {body}");
        }
    }
    assert_eq!(
        count(
            &app,
            &format!("SELECT count(*) FROM order_lines WHERE promised_to = '{}'", day(20))
        )
        .await,
        2,
        "the promise is the window the notice gave"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocating_100000_waiting_lines_runs_in_short_batches_with_bounded_memory() {
    const LINES: i64 = 100_000;
    let app = TestApp::spawn().await;
    insert_waiting_lines(&app, "BULK", LINES).await;
    let stock = start_stock(&app, "1000").await;

    let started = Instant::now();
    app.publish(STOCK, &arrival("bulk-1", "BULK", LINES as i32)).await;
    // While it runs, watch the longest open transaction in this database.
    let mut longest_tx = Duration::ZERO;
    loop {
        let client = app.pool.get().await.unwrap();
        let row = client
            .query_one(
                "SELECT COALESCE(max(EXTRACT(EPOCH FROM clock_timestamp() - xact_start)), 0)::float8,
                        (SELECT count(*) FROM stock_arrivals WHERE outputs_acked_at IS NOT NULL)
                   FROM pg_stat_activity
                  WHERE datname = current_database() AND pid <> pg_backend_pid() AND xact_start IS NOT NULL",
                &[],
            )
            .await
            .unwrap();
        let (open_secs, done): (f64, i64) = (row.get(0), row.get(1));
        longest_tx = longest_tx.max(Duration::from_secs_f64(open_secs));
        if done == 1 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(110),
            "allocation of {LINES} lines not done within 110 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = started.elapsed();
    let (chunks, allocated): (i32, i32) = {
        let client = app.pool.get().await.unwrap();
        let row = client
            .query_one(
                "SELECT chunks, lines_allocated FROM stock_arrivals WHERE arrival_id = 'bulk-1'",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    let peak_kib = peak_rss_kib(stock.pid()).unwrap_or(0);
    println!(
        "allocated {allocated} lines in {elapsed:?} ({chunks} transactions; longest open transaction {longest_tx:?}; \
         stock-consumer peak RSS {} MiB)",
        peak_kib / 1024
    );

    assert_eq!(i64::from(allocated), LINES);
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM order_lines WHERE sku = 'BULK' AND status = 'allocated'"
        )
        .await,
        LINES
    );
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM email_decisions WHERE template = 'arrival_notice'"
        )
        .await,
        LINES,
        "one arrival notice per order"
    );
    assert!(chunks >= 20, "allocated in batches, not one transaction: {chunks}");
    assert!(
        longest_tx < Duration::from_secs(10),
        "no transaction held for long: {longest_tx:?}"
    );
    assert!(
        peak_kib > 0 && peak_kib < 256 * 1024,
        "lines and emails are paged, not all in memory: peak {peak_kib} KiB"
    );
    wait_until("the arrival's offset committed", PATIENCE, || async {
        (app.committed_total("stock-consumer", STOCK).await == 1).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_significant_slip_of_a_sku_thousands_wait_for_is_handed_to_segmentation_in_pages_one_event_per_order() {
    const ORDERS: i64 = 2_500;
    let app = TestApp::spawn().await;
    {
        let client = app.pool.get().await.unwrap();
        client
            .batch_execute(&format!(
                "INSERT INTO sku_eta (sku, eta_from, eta_to, reason, remedy, version, changed_at)
                 VALUES ('PAGED', '{from}', '{to}', 'first estimate', '', 1, now());
                 INSERT INTO customers (customer_id, email, name, locale, first_seen_at)
                 SELECT 'pc' || i, 'paged' || i || '+{id}@example.com', 'Customer ' || i, 'en', now()
                   FROM generate_series(1, {ORDERS}) i;
                 INSERT INTO orders (order_id, customer_id, placed_at, currency, total_minor, event_id)
                 SELECT 'po' || lpad(i::text, 5, '0'), 'pc' || i, now(), 'EUR', 2500, 'ev-' || i
                   FROM generate_series(1, {ORDERS}) i;
                 INSERT INTO order_lines (order_id, line_id, sku, product_name, quantity, unit_price_minor,
                                          availability, promised_from, promised_to, promise_told)
                 SELECT 'po' || lpad(i::text, 5, '0'), 'l1', 'PAGED', 'Garden Bench', 1, 2500, 'BACKORDERED',
                        '{from}', '{to}', true
                   FROM generate_series(1, {ORDERS}) i;",
                from = day(10),
                to = day(14),
                id = app.id
            ))
            .await
            .unwrap();
    }
    let _stock = start_stock(&app, "300").await;
    app.publish(STOCK, &eta("PAGED", Some((day(30), day(34))), "the factory is behind"))
        .await;

    let delays = delays_on_topic(&app, ORDERS as usize, Duration::from_secs(1)).await;
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM email_decisions WHERE template = 'delay_notice'"
        )
        .await,
        0,
        "a 20-day slip is segmentation's one email, not a delay notice"
    );
    let mut orders: Vec<&str> = delays.iter().map(|d| d.order_id.as_str()).collect();
    orders.sort();
    orders.dedup();
    assert_eq!(orders.len() as i64, ORDERS, "one event per delayed line, none twice");
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM timers WHERE timer_key LIKE 'delay-notice:PAGED:v2:%' AND state = 'fired'"
        )
        .await,
        1,
        "told in two pages (2,000 orders, then the rest)"
    );
    assert_eq!(
        count(
            &app,
            &format!("SELECT count(*) FROM order_lines WHERE promised_to = '{}'", day(34))
        )
        .await,
        ORDERS
    );
}

/// `lines` one-line backorders of `sku`, one customer each, placed a second
/// apart, written straight into the database.
async fn insert_waiting_lines(app: &TestApp, sku: &str, lines: i64) {
    let client = app.pool.get().await.unwrap();
    let started = Instant::now();
    client
        .batch_execute(&format!(
            "INSERT INTO customers (customer_id, email, name, locale, first_seen_at)
             SELECT 'bulk-c' || i, 'bulk' || i || '+{id}@example.com', 'Customer ' || i, 'en', now()
               FROM generate_series(1, {lines}) i;
             INSERT INTO orders (order_id, customer_id, placed_at, currency, total_minor, tags, event_id)
             SELECT 'bulk-o' || lpad(i::text, 6, '0'), 'bulk-c' || i,
                    now() - interval '2 days' + i * interval '1 second', 'EUR', 2500, '{{backorder}}', 'ev-' || i
               FROM generate_series(1, {lines}) i;
             INSERT INTO order_lines (order_id, line_id, sku, product_name, quantity, unit_price_minor,
                                      availability, promise_told)
             SELECT 'bulk-o' || lpad(i::text, 6, '0'), 'l1', '{sku}', 'Reading Lamp', 1, 2500, 'BACKORDERED', true
               FROM generate_series(1, {lines}) i;
             ANALYZE customers; ANALYZE orders; ANALYZE order_lines;",
            id = app.id
        ))
        .await
        .unwrap();
    println!("inserted {lines} waiting lines in {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_in_the_middle_of_a_large_restock_exits_zero_and_the_next_replica_finishes_it_once() {
    const LINES: i64 = 100_000;
    let app = TestApp::spawn().await;
    insert_waiting_lines(&app, "BULK", LINES).await;
    let mut first = start_stock(&app, "1000").await;
    app.publish(STOCK, &arrival("bulk-1", "BULK", LINES as i32)).await;
    wait_for_count(
        &app,
        "the first chunks committed",
        "SELECT count(*) FROM stock_arrivals WHERE chunks >= 2",
        1,
    )
    .await;
    let status = first
        .terminate(Duration::from_secs(10))
        .await
        .expect("exits within 10 s of SIGTERM");
    assert!(status.success(), "exit status {status}: {}", first.log_tail());
    let (chunks_before, state_before): (i32, String) = {
        let client = app.pool.get().await.unwrap();
        let row = client
            .query_one(
                "SELECT chunks, state FROM stock_arrivals WHERE arrival_id = 'bulk-1'",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    println!("stopped after {chunks_before} of about 20 chunks ({state_before})");
    assert_eq!(
        app.committed_total("stock-consumer", STOCK).await,
        0,
        "the arrival's offset is not committed before it is finished"
    );

    let _second = start_stock(&app, "1000").await;
    wait_until(
        "the arrival finished by the next replica",
        Duration::from_secs(100),
        || async {
            (count(
                &app,
                "SELECT count(*) FROM stock_arrivals WHERE outputs_acked_at IS NOT NULL",
            )
            .await
                == 1)
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        count(&app, "SELECT count(*) FROM stock_allocations").await,
        LINES,
        "every line allocated exactly once"
    );
    assert_eq!(
        count(&app, "SELECT lines_allocated::bigint FROM stock_arrivals").await,
        LINES
    );
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM email_decisions WHERE template = 'arrival_notice'"
        )
        .await,
        LINES
    );
    wait_until("the arrival's offset committed", PATIENCE, || async {
        (app.committed_total("stock-consumer", STOCK).await == 1).then_some(())
    })
    .await;
}

/// The order and the SKU's first ETA published together (topics are not
/// ordered with each other): the customer learns the window, in the
/// confirmation or in a short update right after it, never neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_and_its_skus_first_eta_published_together_always_tell_the_window() {
    let app = TestApp::spawn().await;
    let _orders = app.start_service("orders-consumer").await;
    let _stock = start_stock(&app, "300").await;
    let _sender = app.start_service("sender").await;
    let people: Vec<String> = (0..4).map(|i| app.recipient(&format!("race{i}"))).collect();
    for (i, to) in people.iter().enumerate() {
        let sku = format!("RACE-{i}");
        // Half with the order first, half with the ETA first.
        let order = backorder(&format!("o-race-{i}"), to, "en-GB", &sku, 1, 1);
        let first_eta = eta(&sku, Some((day(20), day(26))), "first estimate");
        if i % 2 == 0 {
            app.publish(ORDERS, &order).await;
            app.publish(STOCK, &first_eta).await;
        } else {
            app.publish(STOCK, &first_eta).await;
            app.publish(ORDERS, &order).await;
        }
    }
    let window_end = en_date(day(26));
    for to in &people {
        wait_until(&format!("{to} learns the window"), PATIENCE, || async {
            let sent = app.emails_to(to).await;
            sent.iter().any(|e| e.body.contains(&window_end)).then_some(())
        })
        .await;
    }
    wait_for_sender_idle(&app).await;
    for to in &people {
        let sent = app.emails_to(to).await;
        assert!(sent.len() <= 2, "a confirmation and at most one update: {}", sent.len());
        if sent.len() == 2 {
            assert!(
                sent[0].body.contains("not known yet"),
                "an update only after an honest unknown"
            );
            assert!(sent[1].subject.contains("ship date"), "{}", sent[1].subject);
        }
    }
}
