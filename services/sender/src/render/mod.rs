//! Rendering: a template name, a locale and the request's data become a
//! subject, an HTML part and a text part.
//!
//! Templates are files under `templates/<language>/` (embedded at build
//! time): `<name>.subject.txt`, `<name>.html`, `<name>.txt`. A language
//! without the template falls back to English. HTML templates auto-escape
//! every value, so a product named `<script>` arrives as text.

/// Money and dates per language: the project's one implementation, in core,
/// shared with the offer pages.
pub use backorder_core::domain::format;

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/templates.rs"));
}

use backorder_core::config::Settings;
use backorder_core::domain::Locale;
use minijinja::value::Value;
use minijinja::{Environment, State};
use serde::Serialize;

/// The language every template exists in.
pub const FALLBACK_LANGUAGE: &str = "en";

/// Rendering failures, with the template at fault.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("no template {template} in {language} or {FALLBACK_LANGUAGE}")]
    Missing { template: String, language: String },
    #[error("template {name} failed: {source}")]
    Template {
        name: String,
        #[source]
        source: minijinja::Error,
    },
}

/// A rendered email.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    pub subject: String,
    pub html: String,
    pub text: String,
}

/// What every template can use besides the request's own data.
#[derive(Debug, Serialize)]
struct Common<'a> {
    locale: &'a str,
    language: &'a str,
    customer_name: &'a str,
    support_email: &'a str,
    shop_name: &'a str,
    /// Set on marketing emails only.
    unsubscribe_url: Option<&'a str>,
}

pub struct Renderer {
    env: Environment<'static>,
    support_email: String,
    shop_name: String,
}

impl std::fmt::Debug for Renderer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Renderer").finish_non_exhaustive()
    }
}

impl Renderer {
    pub fn new(settings: &Settings) -> Result<Self, RenderError> {
        let mut env = Environment::new();
        for (name, source) in embedded::TEMPLATES {
            env.add_template(name, source).map_err(|source| RenderError::Template {
                name: (*name).to_string(),
                source,
            })?;
        }
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        env.add_filter("money", money_filter);
        env.add_filter("date", date_filter);
        env.add_filter("datetime", datetime_filter);
        Ok(Self {
            env,
            support_email: settings.support_email.clone(),
            shop_name: settings.shop_name.clone(),
        })
    }

    /// The languages a template exists in (for tests and docs).
    pub fn has_template(&self, language: &str, template: &str) -> bool {
        self.env.get_template(&format!("{language}/{template}.html")).is_ok()
    }

    /// Renders `template` for `locale` with `data` (a JSON object).
    pub fn render(
        &self,
        template: &str,
        locale: &str,
        customer_name: &str,
        data: &serde_json::Value,
        unsubscribe_url: Option<&str>,
    ) -> Result<Rendered, RenderError> {
        let parsed = Locale::parse("locale", locale).ok();
        let requested = parsed.as_ref().map_or(FALLBACK_LANGUAGE, Locale::language);
        let language = if self.has_template(requested, template) {
            requested
        } else if self.has_template(FALLBACK_LANGUAGE, template) {
            FALLBACK_LANGUAGE
        } else {
            return Err(RenderError::Missing {
                template: template.to_string(),
                language: requested.to_string(),
            });
        };
        let common = Common {
            locale: parsed.as_ref().map_or(FALLBACK_LANGUAGE, Locale::as_str),
            language,
            customer_name,
            support_email: &self.support_email,
            shop_name: &self.shop_name,
            unsubscribe_url,
        };
        let data = upgrade_data(template, data);
        let context = minijinja::context! { ..Value::from_serialize(&*data), ..Value::from_serialize(&common) };
        let render = |suffix: &str| {
            let name = format!("{language}/{template}.{suffix}");
            self.env
                .get_template(&name)
                .and_then(|t| t.render(&context))
                .map_err(|source| RenderError::Template { name, source })
        };
        Ok(Rendered {
            subject: render("subject.txt")?.trim().to_string(),
            html: render("html")?,
            text: render("txt")?,
        })
    }
}

/// Requests decided by the previous release and still queued in the ledger
/// at an upgrade carry the template data of that release: a delay notice's
/// `reason` and `remedy` were plain strings (now one object with a code).
/// They are brought to today's shape here, in one place, so they render
/// instead of failing.
fn upgrade_data<'a>(template: &str, data: &'a serde_json::Value) -> std::borrow::Cow<'a, serde_json::Value> {
    let old_reason = template == "delay_notice" && data.get("reason").is_some_and(serde_json::Value::is_string);
    if !old_reason {
        return std::borrow::Cow::Borrowed(data);
    }
    let mut upgraded = data.clone();
    if let Some(object) = upgraded.as_object_mut() {
        let text = object.remove("reason").unwrap_or_default();
        let remedy = object.remove("remedy").unwrap_or_default();
        object.insert(
            "reason".into(),
            serde_json::json!({ "code": null, "text": text, "remedy": remedy, "foreign": false }),
        );
    }
    std::borrow::Cow::Owned(upgraded)
}

fn current_language(state: &State) -> String {
    state
        .lookup("language")
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| FALLBACK_LANGUAGE.to_string())
}

/// `{{ amount_minor | money(currency) }}`: locale-formatted money.
fn money_filter(state: &State, minor: i64, currency: String) -> String {
    format::money(&current_language(state), minor, &currency)
}

/// `{{ "2026-12-24" | date }}`: a locale-formatted long date.
fn date_filter(state: &State, value: String) -> Result<String, minijinja::Error> {
    let date = chrono::NaiveDate::parse_from_str(&value, "%Y-%m-%d").map_err(|_| {
        minijinja::Error::new(
            minijinja::ErrorKind::InvalidOperation,
            format!("{value:?} is not a YYYY-MM-DD date"),
        )
    })?;
    Ok(format::long_date(&current_language(state), date))
}

/// `{{ "2026-12-04T09:00:00Z" | datetime("Europe/Berlin") }}`: an instant
/// in the recipient's time zone, formatted for the language.
fn datetime_filter(state: &State, value: String, zone: String) -> Result<String, minijinja::Error> {
    let at = chrono::DateTime::parse_from_rfc3339(&value).map_err(|_| {
        minijinja::Error::new(
            minijinja::ErrorKind::InvalidOperation,
            format!("{value:?} is not an RFC 3339 instant"),
        )
    })?;
    let tz: chrono_tz::Tz = zone.parse().unwrap_or(chrono_tz::Tz::UTC);
    Ok(format::long_datetime(&current_language(state), at.with_timezone(&tz)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn renderer() -> Renderer {
        Renderer::new(&Settings::default()).unwrap()
    }

    fn confirmation_data(product: &str) -> serde_json::Value {
        json!({
            "order_id": "o-1", "customer_name": "Ada", "currency": "EUR", "total_minor": 4599,
            "has_backorder": true,
            "lines": [
                {"product_name": product, "quantity": 1, "unit_price_minor": 2599, "backordered": true,
                 "window_from": "2026-12-15", "window_to": "2026-12-22",
                 "cancel_url": "https://shop.example/cancel?order=o-1&line=1&token=T"},
                {"product_name": "Mug", "quantity": 2, "unit_price_minor": 1000, "backordered": false,
                 "window_from": null, "window_to": null, "cancel_url": null},
                {"product_name": "Chair", "quantity": 1, "unit_price_minor": 0, "backordered": true,
                 "window_from": null, "window_to": null,
                 "cancel_url": "https://shop.example/cancel?order=o-1&line=3&token=T"}
            ]
        })
    }

    #[test]
    fn confirmation_names_the_window_and_says_when_unknown() {
        let r = renderer()
            .render("order_confirmation", "en-GB", "Ada", &confirmation_data("Lamp"), None)
            .unwrap();
        assert!(r.subject.contains("o-1"), "{}", r.subject);
        for part in [&r.html, &r.text] {
            assert!(part.contains("15 Dec 2026"), "{part}");
            assert!(part.contains("22 Dec 2026"), "{part}");
            assert!(part.contains("not known yet"), "{part}");
            assert!(part.contains("support@shop.example"), "{part}");
            assert!(part.contains("€45.99"), "{part}");
            assert!(
                part.contains("line=3"),
                "a one-click cancel link per backordered line: {part}"
            );
        }
    }

    #[test]
    fn html_escapes_values_from_events() {
        let r = renderer()
            .render(
                "order_confirmation",
                "en",
                "Ada",
                &confirmation_data("<script>alert(1)</script>"),
                None,
            )
            .unwrap();
        assert!(!r.html.contains("<script>"), "{}", r.html);
        assert!(r.html.contains("&lt;script&gt;"), "{}", r.html);
    }

    #[test]
    fn unknown_language_falls_back_to_english() {
        let r = renderer()
            .render("order_confirmation", "fr-FR", "Ada", &confirmation_data("Lamp"), None)
            .unwrap();
        assert!(r.text.contains("Thank you"), "{}", r.text);
    }

    #[test]
    fn a_delay_notice_queued_by_the_previous_release_still_renders() {
        let old = json!({
            "order_id": "o-1", "items": [{"product_name": "Lamp", "quantity": 1,
                                          "previous_from": null, "previous_to": null}],
            "window_from": null, "window_to": null,
            "reason": "A storm closed the port", "remedy": "We rebooked", "significant": false
        });
        let r = renderer().render("delay_notice", "en", "Ada", &old, None).unwrap();
        assert!(
            r.text.contains("A storm closed the port") && r.text.contains("We rebooked"),
            "{}",
            r.text
        );
    }

    #[test]
    fn missing_template_is_an_error_not_an_empty_email() {
        let err = renderer().render("no_such_email", "en", "Ada", &json!({}), None);
        assert!(matches!(err, Err(RenderError::Missing { .. })));
    }
}
