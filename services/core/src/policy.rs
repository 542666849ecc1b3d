//! The business policy (DESIGN.md "Default policy"): every threshold,
//! delay and amount that decides *when* and *what* the pipeline tells a
//! customer, in one TOML file named by `BACKORDER_POLICY_FILE`.
//!
//! The defaults are compiled in (a missing variable means "the default
//! policy"); `infra/policy/policy.example.toml` lists every key with its
//! default and allowed range. The file is loaded and validated once, at
//! start: an unknown key, a wrong type or a value outside its range refuses
//! to start with a message that names the key, so a typo never silently
//! falls back to a default.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;
use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::domain::geo;
use crate::domain::quiet_hours::QuietWindow;

/// The environment variable that names the policy file.
pub const POLICY_FILE_ENV: &str = "BACKORDER_POLICY_FILE";

/// Why the policy cannot be used. Each names the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policy file {path} ({POLICY_FILE_ENV}) does not exist or is not a file")]
    Missing { path: PathBuf },
    #[error("policy file {path}: {message}")]
    Invalid { path: String, message: String },
    #[error("policy file {path}: {key} = {value} is out of range; allowed: {allowed}")]
    OutOfRange {
        path: String,
        key: &'static str,
        value: String,
        allowed: String,
    },
}

/// Supplier ETA changes and what counts as a significant slip.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DelayPolicy {
    /// How long stock-consumer waits after an ETA change of a SKU for further
    /// changes before it tells customers (a burst makes one email).
    pub debounce_seconds: f64,
    /// A slip is significant (apology and offer in one email, from
    /// segmentation) when the new window ends more than this many days after
    /// what the customer was last told, or becomes unknown.
    pub significant_slip_days: i64,
    /// A promise whose window ended this many days ago with no stock and no
    /// newer ETA is overdue: the customer hears at once that it is late.
    pub overdue_grace_days: i64,
}

impl Default for DelayPolicy {
    fn default() -> Self {
        Self {
            debounce_seconds: 300.0,
            significant_slip_days: 7,
            overdue_grace_days: 1,
        }
    }
}

impl DelayPolicy {
    pub fn debounce(&self) -> Duration {
        Duration::milliseconds((self.debounce_seconds * 1000.0).round() as i64)
    }
}

/// Nurture updates for long backorders (PLAYBOOK 8).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NurturePolicy {
    /// Days between two nurture emails (PLAYBOOK: every 10-14 days).
    pub interval_days: i64,
    /// A line is enrolled when its ETA is more than this many days away.
    pub enrol_beyond_days: i64,
    /// Nurture stops while the ETA is at most this many days away.
    pub stop_within_days: i64,
    /// A round is skipped when any email about the order went out this recently.
    pub quiet_days: i64,
}

impl Default for NurturePolicy {
    fn default() -> Self {
        Self {
            interval_days: 12,
            enrol_beyond_days: 21,
            stop_within_days: 7,
            quiet_days: 3,
        }
    }
}

/// Emails after delivery (PLAYBOOK 4 and 10).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AfterDeliveryPolicy {
    /// The "how do you like it?" follow-up, days after a delivery.
    pub followup_after_days: i64,
    /// The win-back, days after the delivery that completes an order's
    /// backordered lines.
    pub win_back_after_days: i64,
    /// At most one win-back per customer in this many days.
    pub win_back_per_customer_days: i64,
}

impl Default for AfterDeliveryPolicy {
    fn default() -> Self {
        Self {
            followup_after_days: 3,
            win_back_after_days: 30,
            win_back_per_customer_days: 90,
        }
    }
}

/// Time-limited campaigns for significant delays (PLAYBOOK 6).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CampaignPolicy {
    /// An alternative's price may differ from the delayed item's by at most
    /// this share (percent) either way.
    pub price_band_percent: f64,
    /// Store credit offered: this share (percent) of the delayed lines' value.
    pub credit_share_percent: f64,
    /// ... but at least this much, in major units of the order's currency
    /// (5.0 = 5.00 EUR, 5 JPY).
    pub credit_minimum: f64,
    /// An offer's time limit, from when it was sent.
    pub offer_expiry_hours: i64,
    /// Offer emails per campaign; the next only after the previous expired
    /// unanswered.
    pub max_offers: i32,
    /// Alternatives shown in one offer.
    pub max_alternatives: i32,
}

impl Default for CampaignPolicy {
    fn default() -> Self {
        Self {
            price_band_percent: 30.0,
            credit_share_percent: 10.0,
            credit_minimum: 5.0,
            offer_expiry_hours: 72,
            max_offers: 3,
            max_alternatives: 3,
        }
    }
}

impl CampaignPolicy {
    pub fn offer_expiry(&self) -> Duration {
        Duration::hours(self.offer_expiry_hours)
    }
}

/// Stock arrivals (PLAYBOOK 2 and 9).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StockPolicy {
    /// Seconds a supplier arrival's units that no waiting line took stay
    /// reserved before they become available stock and carts hear of them:
    /// an order for the SKU may still be on its way (0: at once).
    pub arrival_settle_seconds: f64,
}

impl Default for StockPolicy {
    fn default() -> Self {
        Self {
            arrival_settle_seconds: 300.0,
        }
    }
}

impl StockPolicy {
    pub fn arrival_settle(&self) -> Duration {
        Duration::milliseconds((self.arrival_settle_seconds * 1000.0).round() as i64)
    }
}

/// Quiet hours: marketing and nurture emails wait for the recipient's
/// morning (never dropped); transactional status emails go at once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuietHoursPolicy {
    /// The local hour (0-23) from which held emails wait.
    pub start_hour: u32,
    /// The local hour (0-23) at which they go out; equal to `start_hour`:
    /// no quiet hours.
    pub end_hour: u32,
    /// Templates held besides every MARKETING email: nurture updates are
    /// transactional (no unsubscribe) but never urgent.
    pub templates: Vec<String>,
    /// The zone for a customer whose country is unknown or in neither
    /// table (IANA name).
    pub default_timezone: String,
    /// Country (ISO 3166 alpha-2) to IANA zone, before the built-in table
    /// of one zone per country (a shop whose customers live in one part of
    /// a large country names it here).
    pub timezones: BTreeMap<String, String>,
}

impl Default for QuietHoursPolicy {
    fn default() -> Self {
        Self {
            start_hour: 21,
            end_hour: 8,
            templates: vec!["nurture_update".to_string()],
            default_timezone: "UTC".to_string(),
            timezones: BTreeMap::new(),
        }
    }
}

impl QuietHoursPolicy {
    /// The nightly window.
    pub fn window(&self) -> QuietWindow {
        QuietWindow {
            start_hour: self.start_hour,
            end_hour: self.end_hour,
        }
    }

    /// Whether quiet hours apply to an email of `template`.
    pub fn holds(&self, marketing: bool, template: &str) -> bool {
        marketing || self.templates.iter().any(|t| t == template)
    }

    /// The recipient's zone: the policy's table, the built-in one, then
    /// the default. Names were checked at load; one that still does not
    /// parse counts as UTC.
    pub fn timezone_for(&self, country: Option<&str>) -> Tz {
        let code = country.map(|c| c.trim().to_ascii_uppercase());
        if let Some(name) = code.as_deref().and_then(|c| self.timezones.get(c)) {
            return name.parse().unwrap_or(Tz::UTC);
        }
        geo::known_timezone_of(country).unwrap_or_else(|| self.default_timezone.parse().unwrap_or(Tz::UTC))
    }

    /// `None` when an email held by quiet hours may go out at `now` to a
    /// customer in `country`; otherwise when it may.
    pub fn deferred_until(&self, now: DateTime<Utc>, country: Option<&str>) -> Option<DateTime<Utc>> {
        self.window().next_allowed(now, self.timezone_for(country))
    }
}

/// The whole policy. Every section and key is optional in the file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    pub delays: DelayPolicy,
    pub nurture: NurturePolicy,
    pub after_delivery: AfterDeliveryPolicy,
    pub campaigns: CampaignPolicy,
    pub stock: StockPolicy,
    pub quiet_hours: QuietHoursPolicy,
}

impl Policy {
    /// The policy of `BACKORDER_POLICY_FILE`, or the defaults when it is unset.
    pub fn load() -> Result<Self, PolicyError> {
        match std::env::var_os(POLICY_FILE_ENV) {
            Some(path) if !path.is_empty() => Self::from_file(Path::new(&path)),
            _ => Ok(Self::default()),
        }
    }

    /// Reads and validates one policy file.
    pub fn from_file(path: &Path) -> Result<Self, PolicyError> {
        // figment skips a missing file silently; a named file must exist.
        if !path.is_file() {
            return Err(PolicyError::Missing {
                path: path.to_path_buf(),
            });
        }
        let shown = path.display().to_string();
        let policy: Policy = Figment::from(Serialized::defaults(Policy::default()))
            .merge(Toml::file_exact(path))
            .extract()
            .map_err(|e| PolicyError::Invalid {
                path: shown.clone(),
                message: e.to_string(),
            })?;
        policy.validate(&shown)?;
        Ok(policy)
    }

    /// Checks every value against its allowed range.
    pub fn validate(&self, path: &str) -> Result<(), PolicyError> {
        let d = &self.delays;
        let n = &self.nurture;
        let a = &self.after_delivery;
        let c = &self.campaigns;
        check_f(path, "delays.debounce_seconds", d.debounce_seconds, 0.0..=86_400.0)?;
        check_i(path, "delays.significant_slip_days", d.significant_slip_days, 1..=365)?;
        check_i(path, "delays.overdue_grace_days", d.overdue_grace_days, 0..=60)?;
        check_i(path, "nurture.interval_days", n.interval_days, 10..=14)?;
        check_i(path, "nurture.enrol_beyond_days", n.enrol_beyond_days, 1..=365)?;
        check_i(path, "nurture.stop_within_days", n.stop_within_days, 0..=60)?;
        check_i(path, "nurture.quiet_days", n.quiet_days, 0..=30)?;
        check_i(
            path,
            "after_delivery.followup_after_days",
            a.followup_after_days,
            0..=60,
        )?;
        check_i(
            path,
            "after_delivery.win_back_after_days",
            a.win_back_after_days,
            1..=365,
        )?;
        check_i(
            path,
            "after_delivery.win_back_per_customer_days",
            a.win_back_per_customer_days,
            0..=3650,
        )?;
        check_f(path, "campaigns.price_band_percent", c.price_band_percent, 0.0..=100.0)?;
        check_f(
            path,
            "campaigns.credit_share_percent",
            c.credit_share_percent,
            0.0..=100.0,
        )?;
        check_f(path, "campaigns.credit_minimum", c.credit_minimum, 0.0..=100_000.0)?;
        check_i(path, "campaigns.offer_expiry_hours", c.offer_expiry_hours, 1..=720)?;
        check_i(path, "campaigns.max_offers", i64::from(c.max_offers), 1..=10)?;
        check_i(
            path,
            "campaigns.max_alternatives",
            i64::from(c.max_alternatives),
            1..=10,
        )?;
        check_f(
            path,
            "stock.arrival_settle_seconds",
            self.stock.arrival_settle_seconds,
            0.0..=86_400.0,
        )?;
        let q = &self.quiet_hours;
        check_i(path, "quiet_hours.start_hour", i64::from(q.start_hour), 0..=23)?;
        check_i(path, "quiet_hours.end_hour", i64::from(q.end_hour), 0..=23)?;
        check_zone(path, "quiet_hours.default_timezone", &q.default_timezone)?;
        for (country, zone) in &q.timezones {
            if country.len() != 2 || !country.chars().all(|c| c.is_ascii_uppercase()) {
                return Err(PolicyError::Invalid {
                    path: path.to_string(),
                    message: format!(
                        "quiet_hours.timezones: {country:?} is not an ISO 3166 alpha-2 code in capitals (e.g. KR)"
                    ),
                });
            }
            check_zone(path, "quiet_hours.timezones", zone)?;
        }
        Ok(())
    }
}

fn check_zone(path: &str, key: &'static str, zone: &str) -> Result<(), PolicyError> {
    if zone.parse::<Tz>().is_ok() {
        return Ok(());
    }
    Err(PolicyError::OutOfRange {
        path: path.to_string(),
        key,
        value: format!("{zone:?}"),
        allowed: "an IANA time zone name such as \"Asia/Seoul\"".to_string(),
    })
}

fn check_i(path: &str, key: &'static str, value: i64, allowed: RangeInclusive<i64>) -> Result<(), PolicyError> {
    if allowed.contains(&value) {
        return Ok(());
    }
    Err(PolicyError::OutOfRange {
        path: path.to_string(),
        key,
        value: value.to_string(),
        allowed: format!("{} to {}", allowed.start(), allowed.end()),
    })
}

fn check_f(path: &str, key: &'static str, value: f64, allowed: RangeInclusive<f64>) -> Result<(), PolicyError> {
    if value.is_finite() && allowed.contains(&value) {
        return Ok(());
    }
    Err(PolicyError::OutOfRange {
        path: path.to_string(),
        key,
        value: value.to_string(),
        allowed: format!("{} to {}", allowed.start(), allowed.end()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Policy, PolicyError> {
        let dir = std::env::temp_dir().join(format!("policy-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).map_err(|_| PolicyError::Missing { path: dir.clone() })?;
        let path = dir.join("policy.toml");
        std::fs::write(&path, text).map_err(|_| PolicyError::Missing { path: path.clone() })?;
        Policy::from_file(&path)
    }

    #[test]
    fn the_example_file_is_the_default_policy() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../infra/policy/policy.example.toml");
        assert_eq!(Policy::from_file(&example).unwrap(), Policy::default());
    }

    #[test]
    fn a_partial_file_keeps_the_other_defaults() {
        let policy = load("[campaigns]\nmax_offers = 2\n").unwrap();
        assert_eq!(policy.campaigns.max_offers, 2);
        assert_eq!(policy.campaigns.offer_expiry_hours, 72);
        assert_eq!(policy.nurture, NurturePolicy::default());
    }

    #[test]
    fn out_of_range_values_name_the_key_and_the_range() {
        let err = load("[nurture]\ninterval_days = 20\n").unwrap_err().to_string();
        assert!(err.contains("nurture.interval_days = 20"), "{err}");
        assert!(err.contains("10 to 14"), "{err}");
        let err = load("[campaigns]\ncredit_share_percent = -5.0\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("campaigns.credit_share_percent"), "{err}");
    }

    #[test]
    fn unknown_keys_and_wrong_types_are_refused_by_name() {
        let err = load("[campaigns]\nmax_offer = 2\n").unwrap_err().to_string();
        assert!(err.contains("max_offer"), "{err}");
        let err = load("[campaigns]\nmax_offers = \"three\"\n").unwrap_err().to_string();
        assert!(err.contains("max_offers"), "{err}");
        let err = load("[campain]\n").unwrap_err().to_string();
        assert!(err.contains("campain"), "{err}");
    }

    #[test]
    fn quiet_hours_zones_come_from_the_policy_then_the_country_then_the_default() {
        let policy = load(
            "[quiet_hours]\ndefault_timezone = \"Europe/Berlin\"\n[quiet_hours.timezones]\nUS = \"America/Los_Angeles\"\n",
        )
        .unwrap();
        let q = &policy.quiet_hours;
        assert_eq!(q.timezone_for(Some("us")), Tz::America__Los_Angeles);
        assert_eq!(q.timezone_for(Some("KR")), Tz::Asia__Seoul);
        assert_eq!(q.timezone_for(Some("ZZ")), Tz::Europe__Berlin);
        assert_eq!(q.timezone_for(None), Tz::Europe__Berlin);
        assert!(q.holds(true, "back_in_stock") && q.holds(false, "nurture_update"));
        assert!(!q.holds(false, "shipped"));
    }

    #[test]
    fn quiet_hours_refuse_unknown_zones_and_hours_past_23() {
        let err = load("[quiet_hours]\ndefault_timezone = \"Mars/Olympus\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("quiet_hours.default_timezone"), "{err}");
        let err = load("[quiet_hours.timezones]\nKR = \"Asia/Soul\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("Asia/Soul"), "{err}");
        let err = load("[quiet_hours]\nend_hour = 24\n").unwrap_err().to_string();
        assert!(err.contains("quiet_hours.end_hour = 24"), "{err}");
    }

    #[test]
    fn a_named_file_that_does_not_exist_is_an_error() {
        assert!(matches!(
            Policy::from_file(Path::new("/nonexistent/policy.toml")),
            Err(PolicyError::Missing { .. })
        ));
    }
}
