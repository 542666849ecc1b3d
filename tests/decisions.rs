//! One-click decisions (issue 9) on the real stack: the offer and cancel
//! pages of offers-consumer, opened in Debian's headless Chromium or called
//! over HTTP, and `offer-responses.v1` applied into decisions for the OMS.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::disallowed_methods)]

use backorder_core::config::LOCAL_LINK_SECRET;
use backorder_core::events::internal::{BackorderDecisionEvent, DecisionKind};
use backorder_core::events::offers::{OfferChoice, OfferResponse};
use backorder_core::events::stock::Season;
use backorder_core::kafka::topics::{self, OFFER_RESPONSES, ORDERS, STOCK};
use backorder_core::links::{LinkSigner, OfferOption};
use backorder_tests::browser::{Browser, link_containing, link_param};
use backorder_tests::campaigns::{campaign, catalog, eta_window, order, set_clock};
use backorder_tests::process::ServiceProcess;
use backorder_tests::scenario::{
    PATIENCE, clock_now, day, metric_sum, subjects, timer_loop_caught_up, wait_for_emails,
};
use backorder_tests::stock::{count, records_on_topic, wait_for_count, wait_for_sender_idle};
use backorder_tests::{TestApp, wait_until};
use chrono::{TimeZone, Utc};
use fantoccini::Locator;
use std::time::Duration;

const FAST: (&str, &str) = ("BACKORDER_TIMER_POLL_MS", "100");

/// The pipeline with the pages: links in emails lead to `offers`.
struct Pipeline {
    offers: ServiceProcess,
    _others: Vec<ServiceProcess>,
}

async fn start_pipeline(app: &TestApp) -> Pipeline {
    let policy = app.write_policy("decisions", "[delays]\ndebounce_seconds = 0.3\n");
    let offers = app.start_service("offers-consumer").await;
    let base = format!("http://127.0.0.1:{}", offers.http_port);
    let env = [
        FAST,
        ("BACKORDER_POLICY_FILE", policy.as_str()),
        ("BACKORDER_OFFERS_BASE_URL", base.as_str()),
    ];
    let others = vec![
        app.start_service_with("orders-consumer", &env).await,
        app.start_service_with("stock-consumer", &env).await,
        app.start_service_with("segmentation", &env).await,
        app.start_service("sender").await,
    ];
    Pipeline {
        offers,
        _others: others,
    }
}

/// December; sunglasses on backorder for each `(order, customer)`, goggles
/// in stock; the sunglasses slip 30 days: each customer gets an offer.
async fn offers_for(app: &TestApp, customers: &[(&str, &str)]) -> Vec<String> {
    set_clock(app, Utc.with_ymd_and_hms(2026, 12, 10, 12, 0, 0).unwrap()).await;
    let now = clock_now(app).await;
    app.publish(STOCK, &catalog("SUN-1", "eye-protection", &[], 10_000, 0, "EUR"))
        .await;
    app.publish(
        STOCK,
        &catalog("GOGGLES", "eye-protection", &[Season::Winter], 11_000, 9, "EUR"),
    )
    .await;
    app.publish(STOCK, &eta_window("SUN-1", day(app, 10).await, day(app, 14).await, now))
        .await;
    wait_for_count(app, "the ETA", "SELECT count(*) FROM sku_eta", 1).await;
    let mut recipients = Vec::new();
    for (order_id, who) in customers {
        let to = app.recipient(who);
        app.publish(
            ORDERS,
            &order(
                order_id,
                &format!("c-{who}"),
                &to,
                "de-DE",
                "DE",
                "EUR",
                &[("SUN-1", 10_000, 1, true)],
                now,
            ),
        )
        .await;
        recipients.push(to);
    }
    wait_for_count(
        app,
        "promises",
        "SELECT count(*) FROM order_lines WHERE promise_told",
        customers.len() as i64,
    )
    .await;
    app.publish(STOCK, &eta_window("SUN-1", day(app, 40).await, day(app, 44).await, now))
        .await;
    for to in &recipients {
        wait_for_emails(app, to, 2).await;
    }
    recipients
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_switches_to_the_alternative_in_a_real_browser_and_hears_nothing_more() {
    let app = TestApp::spawn().await;
    let pipeline = start_pipeline(&app).await;
    let to = offers_for(&app, &[("o-1", "ada")]).await.remove(0);
    let offer_email = app.emails_to(&to).await.remove(1);
    let link = link_containing(&offer_email.body, &["/offers/", "switch%3AGOGGLES"]).expect("a switch link");
    assert!(link.starts_with(&format!("http://127.0.0.1:{}/", pipeline.offers.http_port)));

    let browser = Browser::start().await;
    browser.client.goto(&link).await.expect("open the offer page");
    let heading = browser
        .client
        .find(Locator::Css("h1"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(heading.contains("o-1"), "{heading}");
    let lang = browser
        .client
        .find(Locator::Css("html"))
        .await
        .unwrap()
        .attr("lang")
        .await
        .unwrap();
    assert_eq!(lang.as_deref(), Some("de"), "the customer's language");
    let checked = browser
        .client
        .find(Locator::Css("input[name=option]:checked"))
        .await
        .expect("an option pre-selected");
    assert_eq!(checked.attr("value").await.unwrap().as_deref(), Some("switch:GOGGLES"));
    browser.screenshot("offer-page").await;
    browser
        .client
        .find(Locator::Css("button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .expect("confirm");
    // The form's POST navigates: wait (with a deadline) for the next page.
    let status = browser
        .client
        .wait()
        .at_most(PATIENCE)
        .for_element(Locator::Css("[role=status]"))
        .await
        .expect("the confirmation page");
    assert!(status.text().await.unwrap().contains("o-1"));
    browser.screenshot("offer-confirmed").await;

    // The OMS gets the switch; the customer gets the confirmation.
    let decisions =
        records_on_topic::<BackorderDecisionEvent>(&app, topics::BACKORDER_DECISIONS, 1, Duration::from_secs(1)).await;
    let BackorderDecisionEvent::Decision(decision) = &decisions[0];
    assert_eq!(decision.decision, DecisionKind::Switch);
    assert_eq!(decision.alternative_sku.as_deref(), Some("GOGGLES"));
    assert_eq!((decision.order_id.as_str(), decision.line_id.as_str()), ("o-1", "l1"));
    let sent = wait_for_emails(&app, &to, 3).await;
    assert!(
        sent[2].body.contains("Item GOGGLES"),
        "decision confirmation: {:?}",
        subjects(&sent)
    );
    assert_eq!(campaign(&app, "o-1").await.unwrap().1, "decided");

    // Past every expiry and a nurture interval: nothing more about it.
    backorder_core::clock::advance(&app.pool, chrono::Duration::days(30))
        .await
        .unwrap();
    timer_loop_caught_up(&app, "offer-expiry").await;
    timer_loop_caught_up(&app, "nurture").await;
    wait_for_sender_idle(&app).await;
    assert_eq!(
        app.emails_to(&to).await.len(),
        3,
        "{:?}",
        subjects(&app.emails_to(&to).await)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_links_and_second_answers_are_refused_and_a_double_click_decides_once() {
    let app = TestApp::spawn().await;
    let pipeline = start_pipeline(&app).await;
    let people = offers_for(&app, &[("o-1", "ada"), ("o-2", "bob")]).await;
    let ada_email = app.emails_to(&people[0]).await.remove(1);
    let bob_email = app.emails_to(&people[1]).await.remove(1);
    let switch = link_containing(&ada_email.body, &["/offers/", "switch%3AGOGGLES"]).unwrap();
    let bob_link = link_containing(&bob_email.body, &["/offers/", "option=expedite"]).unwrap();
    let http = reqwest::Client::new();
    let get = |url: String| {
        let http = http.clone();
        async move { http.get(url).send().await.unwrap().status().as_u16() }
    };

    // GET alone, repeated: a page each time, no decision.
    for _ in 0..3 {
        assert_eq!(get(switch.clone()).await, 200);
    }
    assert_eq!(count(&app, "SELECT count(*) FROM decisions").await, 0);

    // Forged, another customer's token, an option not in the offer,
    // malformed, unknown: refused with the fitting status.
    let offer_id = switch
        .split("/offers/")
        .nth(1)
        .unwrap()
        .split('?')
        .next()
        .unwrap()
        .to_string();
    let forged = switch.replace(&link_param(&switch, "token"), "AAAA");
    assert_eq!(get(forged).await, 403, "forged signature");
    let bobs_token = link_param(&bob_link, "token");
    let base = switch.split("/offers/").next().unwrap().to_string();
    assert_eq!(
        get(format!("{base}/offers/{offer_id}?option=expedite&token={bobs_token}")).await,
        403,
        "another customer's token"
    );
    let expires: chrono::DateTime<Utc> = app
        .pool
        .get()
        .await
        .unwrap()
        .query_one("SELECT expires_at FROM offers WHERE offer_id = $1", &[&offer_id])
        .await
        .unwrap()
        .get(0);
    let signer = LinkSigner::new(LOCAL_LINK_SECRET, &base).unwrap();
    let not_offered = signer.offer_url(&offer_id, "c-ada", &OfferOption::Switch("SUN-1".into()), expires);
    assert_eq!(get(not_offered).await, 400, "an option not in the offer");
    assert_eq!(
        get(format!("{base}/offers/{offer_id}?option=expedite")).await,
        400,
        "no token"
    );
    assert_eq!(get(format!("{base}/offers/nope?option=expedite&token=x")).await, 404);
    let hostile = format!("{base}/offers/{offer_id}?option=%3Cscript%3Ealert(1)%3C/script%3E&token=x");
    let page = http.get(hostile).send().await.unwrap().text().await.unwrap();
    assert!(!page.contains("<script>"), "nothing reflected unescaped");

    // A double click, the two POSTs on two replicas of the service.
    let second = app.start_service("offers-consumer").await;
    let token = link_param(&switch, "token");
    let form = [
        ("linked", "switch:GOGGLES"),
        ("token", token.as_str()),
        ("option", "switch:GOGGLES"),
    ];
    let post = |port: u16| {
        let http = http.clone();
        let url = format!("http://127.0.0.1:{port}/offers/{offer_id}");
        let form = form.map(|(k, v)| (k, v.to_string()));
        async move { http.post(url).form(&form).send().await.unwrap().status().as_u16() }
    };
    let (a, b) = tokio::join!(post(pipeline.offers.http_port), post(second.http_port));
    assert_eq!((a, b), (200, 200), "both clicks see 'we got it'");
    wait_for_count(&app, "one decision", "SELECT count(*) FROM decisions", 1).await;
    wait_for_emails(&app, &people[0], 3).await;

    // A second answer: on the page 409; published by another producer, it
    // is dead-lettered with the reason, counted, and changes nothing.
    let other = [
        ("linked", "switch:GOGGLES"),
        ("token", token.as_str()),
        ("option", "expedite"),
    ];
    let status = http
        .post(format!("{base}/offers/{offer_id}"))
        .form(&other)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16();
    assert_eq!(status, 409, "already answered");
    let response = |offer: &str, token: String, choice: OfferChoice, at| OfferResponse {
        event_id: uuid::Uuid::new_v4().to_string(),
        occurred_at: at,
        offer_id: offer.to_string(),
        token,
        choice,
        alternative_sku: None,
    };
    let now = clock_now(&app).await;
    let expedite = signer.offer_token(&offer_id, "c-ada", &OfferOption::KeepWaitingExpedited, expires);
    app.publish(
        OFFER_RESPONSES,
        &response(&offer_id, expedite, OfferChoice::KeepWaitingExpedited, now),
    )
    .await;
    let bob_offer = bob_link
        .split("/offers/")
        .nth(1)
        .unwrap()
        .split('?')
        .next()
        .unwrap()
        .to_string();
    app.publish(
        OFFER_RESPONSES,
        &response(&bob_offer, "forged".into(), OfferChoice::Cancel, now),
    )
    .await;
    let late = now + chrono::Duration::hours(80);
    app.publish(
        OFFER_RESPONSES,
        &response(&bob_offer, bobs_token.clone(), OfferChoice::KeepWaitingExpedited, late),
    )
    .await;
    let letters = app.dead_letters(OFFER_RESPONSES, 3).await;
    let reasons: Vec<String> = letters.iter().map(|(_, h)| h["dlq.reason"].clone()).collect();
    for needle in ["already answered", "signature", "expired"] {
        assert!(reasons.iter().any(|r| r.contains(needle)), "{needle} in {reasons:?}");
    }
    wait_until("the rejections to be counted", PATIENCE, || async {
        let total = metric_sum(
            &pipeline.offers.metrics().await,
            "backorder_offer_responses_rejected_total",
            "",
        ) + metric_sum(&second.metrics().await, "backorder_offer_responses_rejected_total", "");
        (total >= 3.0).then_some(())
    })
    .await;
    assert_eq!(
        count(&app, "SELECT count(*) FROM decisions").await,
        1,
        "no state change"
    );
    wait_for_sender_idle(&app).await;
    assert_eq!(app.emails_to(&people[0]).await.len(), 3, "one decision confirmation");
    assert_eq!(
        app.emails_to(&people[1]).await.len(),
        2,
        "nothing for refused responses"
    );

    // Bob's offer expires: his link answers 410.
    backorder_core::clock::advance(&app.pool, chrono::Duration::hours(73))
        .await
        .unwrap();
    wait_until("bob's offer to expire", PATIENCE, || async {
        (get(bob_link.clone()).await == 410).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cancel_link_in_a_confirmation_cancels_one_line_and_only_its_emails_stop() {
    let app = TestApp::spawn().await;
    let _pipeline = start_pipeline(&app).await;
    set_clock(&app, Utc.with_ymd_and_hms(2026, 12, 10, 12, 0, 0).unwrap()).await;
    let now = clock_now(&app).await;
    for sku in ["KILN", "WHEEL"] {
        app.publish(STOCK, &catalog(sku, "pottery", &[], 50_000, 0, "EUR"))
            .await;
        app.publish(STOCK, &eta_window(sku, day(&app, 60).await, day(&app, 67).await, now))
            .await;
    }
    wait_for_count(&app, "the ETAs", "SELECT count(*) FROM sku_eta", 2).await;
    let to = app.recipient("cora");
    app.publish(
        ORDERS,
        &order(
            "o-c",
            "c-cora",
            &to,
            "en-GB",
            "GB",
            "EUR",
            &[("KILN", 50_000, 1, true), ("WHEEL", 30_000, 1, true)],
            now,
        ),
    )
    .await;
    let confirmation = wait_for_emails(&app, &to, 1).await.remove(0);
    let link = link_containing(&confirmation.body, &["/cancel?", "line=l1"]).expect("a cancel link for the kiln");
    assert!(
        link_containing(&confirmation.body, &["/cancel?", "line=l2"]).is_some(),
        "one per backordered line"
    );

    // One click opens the page (nothing decided yet); the button confirms.
    let http = reqwest::Client::new();
    let page = http.get(&link).send().await.unwrap();
    assert_eq!(page.status().as_u16(), 200);
    let html = page.text().await.unwrap();
    assert!(
        html.contains("Item KILN") && html.contains("€500.00"),
        "names the item and the refund: {html}"
    );
    assert_eq!(
        count(&app, "SELECT count(*) FROM decisions").await,
        0,
        "GET decides nothing"
    );
    let form = [
        ("order", "o-c".to_string()),
        ("line", "l1".to_string()),
        ("token", link_param(&link, "token")),
    ];
    let base = link.split("/cancel?").next().unwrap();
    let confirmed = http.post(format!("{base}/cancel")).form(&form).send().await.unwrap();
    assert_eq!(confirmed.status().as_u16(), 200);

    // The OMS gets the cancellation of that line; the customer its confirmation.
    let decisions =
        records_on_topic::<BackorderDecisionEvent>(&app, topics::BACKORDER_DECISIONS, 1, Duration::from_secs(1)).await;
    let BackorderDecisionEvent::Decision(decision) = &decisions[0];
    assert_eq!(
        (decision.decision, decision.line_id.as_str()),
        (DecisionKind::Cancel, "l1")
    );
    let sent = wait_for_emails(&app, &to, 2).await;
    assert!(sent[1].subject.starts_with("Cancelled"), "{}", sent[1].subject);
    assert!(sent[1].body.contains("€500.00"), "the refund: {}", sent[1].body);

    // Twelve days on: the nurture update is about the wheel only.
    backorder_core::clock::advance(&app.pool, chrono::Duration::days(12))
        .await
        .unwrap();
    let sent = wait_for_emails(&app, &to, 3).await;
    assert!(
        sent[2].body.contains("Item WHEEL"),
        "the other line still hears from us: {}",
        sent[2].body
    );
    assert!(
        !sent[2].body.contains("Item KILN"),
        "nothing more about the cancelled line"
    );
}
