//! The requests this service composes render in every supported language,
//! with the sender's real renderer and the embedded templates: no fallback
//! to English, the layout and footer included, values escaped in HTML, dates
//! in the customer's format, and an honest "not known yet".
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::disallowed_methods)]

use backorder_core::config::Settings;
use backorder_core::domain::ReasonForCustomer;
use backorder_core::events::internal::EmailRequested;
use chrono::{NaiveDate, Utc};
use sender::render::{Renderer, format};
use stock_consumer::emails::{self, ArrivedItem, Customer, DelayData, DelayedItem};

/// (locale, phrase of the delay notice's "not known yet", phrase only the
/// English templates contain)
const LANGUAGES: [(&str, &str); 5] = [
    ("en-GB", "we don't know yet"),
    ("de-DE", "wissen wir es noch nicht"),
    ("ko-KR", "아직 정확한 일정을 알 수 없습니다"),
    ("tr-TR", "henüz bilmiyoruz"),
    ("id-ID", "kami belum tahu"),
];

const PRODUCT: &str = "<Lamp & Co>";

fn customer(locale: &str) -> Customer {
    Customer {
        customer_id: "c-1".into(),
        email: "ada@example.com".into(),
        name: "Ada".into(),
        locale: locale.into(),
    }
}

fn date(day: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 12, day).unwrap()
}

fn delay(locale: &str, window: Option<(NaiveDate, NaiveDate)>, code: Option<&str>) -> EmailRequested {
    let items = [DelayedItem {
        product_name: PRODUCT.into(),
        quantity: 2,
        previous_from: emails::iso(Some(date(1))),
        previous_to: emails::iso(Some(date(5))),
        cancel_url: Some("https://shop.example/cancel?order=o-1&line=l1&token=T".into()),
    }];
    let data = DelayData {
        order_id: "o-1",
        items: &items,
        window_from: emails::iso(window.map(|w| w.0)),
        window_to: emails::iso(window.map(|w| w.1)),
        reason: ReasonForCustomer::new(
            code,
            "A storm closed the port",
            "We booked the first ship out",
            "en",
            locale,
        ),
    };
    emails::delay_notice("LAMP", 3, &customer(locale), &data, Utc::now())
}

fn render(renderer: &Renderer, request: &EmailRequested, unsubscribe: Option<&str>) -> sender::render::Rendered {
    let language = &request.locale[..2];
    assert!(
        renderer.has_template(language, &request.template),
        "{} exists in {language}",
        request.template
    );
    let data: serde_json::Value = serde_json::from_str(&request.data_json).unwrap();
    let rendered = renderer
        .render(
            &request.template,
            &request.locale,
            &request.recipient_name,
            &data,
            unsubscribe,
        )
        .unwrap_or_else(|e| panic!("{} in {language}: {e}", request.template));
    assert!(!rendered.subject.is_empty() && !rendered.subject.contains('\n'));
    assert!(rendered.html.starts_with("<!DOCTYPE html>"), "layout extended");
    assert!(
        rendered.html.contains("&lt;Lamp &amp; Co&gt;"),
        "escaped: {}",
        rendered.html
    );
    assert!(!rendered.html.contains(PRODUCT), "never raw in HTML");
    assert!(rendered.text.contains(PRODUCT), "plain text: {}", rendered.text);
    assert!(rendered.text.contains("support@shop.example"), "footer included");
    if language != "en" {
        for english in ["We're sorry", "It's here", "is back", "What you can do now"] {
            assert!(
                !rendered.text.contains(english),
                "no English in {language}: {}",
                rendered.text
            );
        }
    }
    rendered
}

#[test]
fn arrival_delay_and_back_in_stock_render_in_every_language() {
    let renderer = Renderer::new(&Settings::default()).unwrap();
    for (locale, not_known) in LANGUAGES {
        let language = &locale[..2];
        let items = [ArrivedItem {
            product_name: PRODUCT.into(),
            quantity: 1,
        }];
        let arrival = emails::arrival_notice("arr-1", "o-1", &customer(locale), &items, Utc::now());
        let r = render(&renderer, &arrival, None);
        assert!(r.subject.contains("o-1"), "{}", r.subject);

        let known = delay(locale, Some((date(20), date(28))), None);
        let r = render(&renderer, &known, None);
        for part in [&r.html, &r.text] {
            assert!(
                part.contains(&format::long_date(language, date(28))),
                "new window in {language}"
            );
            assert!(
                part.contains(&format::long_date(language, date(5))),
                "previous promise in {language}"
            );
            assert!(part.contains("A storm closed the port") && part.contains("We booked the first ship out"));
            assert!(!part.contains(not_known));
        }
        let unknown = delay(locale, None, None);
        let r = render(&renderer, &unknown, None);
        for part in [&r.html, &r.text] {
            assert!(part.contains(not_known), "honest unknown in {language}: {part}");
        }

        // A coded reason is stated in the customer's language; the
        // supplier's English free text reaches English readers only.
        let coded = delay(locale, Some((date(20), date(28))), Some("CUSTOMS_HOLD"));
        let r = render(&renderer, &coded, None);
        for part in [&r.html, &r.text] {
            assert_eq!(
                part.contains("A storm closed the port"),
                language == "en",
                "free text only for its language ({language}): {part}"
            );
        }
        if language == "en" {
            assert!(r.text.contains("held at customs"), "{}", r.text);
        }

        let known_now = emails::eta_known(
            "LAMP",
            4,
            "o-1",
            &customer(locale),
            &[DelayedItem {
                product_name: PRODUCT.into(),
                quantity: 1,
                previous_from: None,
                previous_to: None,
                cancel_url: Some("https://shop.example/cancel?order=o-1&line=l1&token=T".into()),
            }],
            stock_consumer::policy::Window {
                from: Some(date(20)),
                to: Some(date(28)),
            },
            Utc::now(),
        );
        let r = render(&renderer, &known_now, None);
        for part in [&r.html, &r.text] {
            assert!(
                part.contains(&format::long_date(language, date(28))),
                "the window in {language}"
            );
            assert!(part.contains("line=l1"), "the cancel link in {language}");
        }

        let cart = emails::back_in_stock(
            "cart-1",
            "LAMP",
            &customer(locale),
            PRODUCT,
            Some(4999),
            Some("EUR"),
            Utc::now(),
        );
        let r = render(&renderer, &cart, Some("https://shop.example/u/UNSUB-TOKEN-42"));
        assert!(
            r.text.contains("https://shop.example/u/UNSUB-TOKEN-42"),
            "unsubscribe link in {language}"
        );
        assert!(
            r.html.contains("UNSUB-TOKEN-42"),
            "unsubscribe link in the HTML of {language}"
        );
        assert!(
            r.text.contains(&format::money(language, 4999, "EUR")),
            "price in {language}"
        );
    }
}
