//! Signed one-click links: one option of a time-limited offer, or "cancel
//! this backordered item". Segmentation and the other deciders build them
//! into emails; the offers service verifies them when the page is opened and
//! confirmed, and offers-consumer verifies the token carried by each
//! `OfferResponse`. One module, so the format cannot drift between them.
//!
//! A token is HMAC-SHA256 (key: `BACKORDER_LINK_SECRET`) over a
//! domain-separated message naming everything the link grants: the offer,
//! the customer it was sent to, the option and the offer's expiry (or the
//! order line and customer for a cancel link). It is URL-safe base64
//! without padding and compared in constant time ([`hmac::Mac::verify_slice`]).
//! Changing any of those values, or using another customer's token, makes
//! it invalid. Expiry and "already answered" are checked against the
//! stored offer, not trusted from the URL.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::events::offers::OfferChoice;

type HmacSha256 = Hmac<Sha256>;

/// Why a link or an option string is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("unknown option {0:?}")]
    UnknownOption(String),
    #[error("the link's signature is not valid")]
    BadSignature,
    #[error("the link signing secret is empty")]
    EmptySecret,
}

/// One option of an offer, as carried in a link's `option` parameter.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum OfferOption {
    /// Switch the delayed line to this in-stock SKU.
    Switch(String),
    TakeStoreCredit,
    KeepWaitingExpedited,
    Cancel,
}

impl OfferOption {
    /// The parameter form: `switch:<sku>`, `credit`, `expedite`, `cancel`.
    pub fn as_param(&self) -> String {
        match self {
            OfferOption::Switch(sku) => format!("switch:{sku}"),
            OfferOption::TakeStoreCredit => "credit".into(),
            OfferOption::KeepWaitingExpedited => "expedite".into(),
            OfferOption::Cancel => "cancel".into(),
        }
    }

    pub fn parse(raw: &str) -> Result<Self, LinkError> {
        match raw {
            "credit" => Ok(OfferOption::TakeStoreCredit),
            "expedite" => Ok(OfferOption::KeepWaitingExpedited),
            "cancel" => Ok(OfferOption::Cancel),
            other => match other.strip_prefix("switch:") {
                Some(sku) if !sku.is_empty() => Ok(OfferOption::Switch(sku.to_string())),
                _ => Err(LinkError::UnknownOption(raw.to_string())),
            },
        }
    }

    /// The option as an `OfferResponse` carries it.
    pub fn from_response(choice: OfferChoice, alternative_sku: Option<&str>) -> Result<Self, LinkError> {
        Ok(match choice {
            OfferChoice::SwitchToAlternative => match alternative_sku {
                Some(sku) if !sku.is_empty() => OfferOption::Switch(sku.to_string()),
                _ => return Err(LinkError::UnknownOption("switch without a sku".into())),
            },
            OfferChoice::TakeStoreCredit => OfferOption::TakeStoreCredit,
            OfferChoice::KeepWaitingExpedited => OfferOption::KeepWaitingExpedited,
            OfferChoice::Cancel => OfferOption::Cancel,
        })
    }

    pub fn choice(&self) -> OfferChoice {
        match self {
            OfferOption::Switch(_) => OfferChoice::SwitchToAlternative,
            OfferOption::TakeStoreCredit => OfferChoice::TakeStoreCredit,
            OfferOption::KeepWaitingExpedited => OfferChoice::KeepWaitingExpedited,
            OfferOption::Cancel => OfferChoice::Cancel,
        }
    }

    pub fn alternative_sku(&self) -> Option<&str> {
        match self {
            OfferOption::Switch(sku) => Some(sku),
            _ => None,
        }
    }
}

/// Signs and verifies links with the deployment's secret.
#[derive(Clone)]
pub struct LinkSigner {
    /// The MAC already keyed with the secret; cloned for each message.
    keyed: HmacSha256,
    /// Where customers reach the pages (`BACKORDER_PUBLIC_BASE_URL`), without
    /// a trailing slash.
    base_url: String,
}

impl std::fmt::Debug for LinkSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkSigner")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl LinkSigner {
    pub fn new(secret: &str, base_url: &str) -> Result<Self, LinkError> {
        if secret.is_empty() {
            return Err(LinkError::EmptySecret);
        }
        let keyed = <HmacSha256 as Mac>::new_from_slice(secret.as_bytes()).map_err(|_| LinkError::EmptySecret)?;
        Ok(Self {
            keyed,
            base_url: base_url.trim_end_matches('/').to_string(),
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    fn mac(&self, message: &str) -> HmacSha256 {
        let mut mac = self.keyed.clone();
        mac.update(message.as_bytes());
        mac
    }

    fn offer_message(offer_id: &str, customer_id: &str, option: &OfferOption, expires_at: DateTime<Utc>) -> String {
        format!(
            "offer\n{offer_id}\n{customer_id}\n{}\n{}",
            option.as_param(),
            expires_at.timestamp_millis()
        )
    }

    fn cancel_message(order_id: &str, line_id: &str, customer_id: &str) -> String {
        format!("cancel\n{order_id}\n{line_id}\n{customer_id}")
    }

    fn verify(&self, message: &str, token: &str) -> Result<(), LinkError> {
        let raw = URL_SAFE_NO_PAD
            .decode(token.as_bytes())
            .map_err(|_| LinkError::BadSignature)?;
        self.mac(message)
            .verify_slice(&raw)
            .map_err(|_| LinkError::BadSignature)
    }

    /// The token of one offer option for the customer it was sent to.
    pub fn offer_token(
        &self,
        offer_id: &str,
        customer_id: &str,
        option: &OfferOption,
        expires_at: DateTime<Utc>,
    ) -> String {
        let message = Self::offer_message(offer_id, customer_id, option, expires_at);
        URL_SAFE_NO_PAD.encode(self.mac(&message).finalize().into_bytes())
    }

    pub fn verify_offer_token(
        &self,
        token: &str,
        offer_id: &str,
        customer_id: &str,
        option: &OfferOption,
        expires_at: DateTime<Utc>,
    ) -> Result<(), LinkError> {
        self.verify(&Self::offer_message(offer_id, customer_id, option, expires_at), token)
    }

    /// The link that opens the offer page with `option` pre-selected.
    pub fn offer_url(
        &self,
        offer_id: &str,
        customer_id: &str,
        option: &OfferOption,
        expires_at: DateTime<Utc>,
    ) -> String {
        let token = self.offer_token(offer_id, customer_id, option, expires_at);
        format!(
            "{}/offers/{}?option={}&token={token}",
            self.base_url,
            encode(offer_id),
            encode(&option.as_param())
        )
    }

    /// The token of a "cancel this item" link.
    pub fn cancel_token(&self, order_id: &str, line_id: &str, customer_id: &str) -> String {
        let message = Self::cancel_message(order_id, line_id, customer_id);
        URL_SAFE_NO_PAD.encode(self.mac(&message).finalize().into_bytes())
    }

    pub fn verify_cancel_token(
        &self,
        token: &str,
        order_id: &str,
        line_id: &str,
        customer_id: &str,
    ) -> Result<(), LinkError> {
        self.verify(&Self::cancel_message(order_id, line_id, customer_id), token)
    }

    /// The link that opens the "cancel this item" page of one order line.
    pub fn cancel_url(&self, order_id: &str, line_id: &str, customer_id: &str) -> String {
        let token = self.cancel_token(order_id, line_id, customer_id);
        format!(
            "{}/cancel?order={}&line={}&token={token}",
            self.base_url,
            encode(order_id),
            encode(line_id)
        )
    }
}

fn encode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> LinkSigner {
        LinkSigner::new("test-secret", "https://shop.example/").unwrap()
    }

    fn expiry() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-12-04T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn an_offer_token_verifies_only_for_what_it_was_signed_for() {
        let s = signer();
        let option = OfferOption::Switch("SG-2".into());
        let token = s.offer_token("of-1", "c-1", &option, expiry());
        assert!(s.verify_offer_token(&token, "of-1", "c-1", &option, expiry()).is_ok());
        let bad = [
            s.verify_offer_token(&token, "of-2", "c-1", &option, expiry()),
            s.verify_offer_token(&token, "of-1", "c-2", &option, expiry()),
            s.verify_offer_token(&token, "of-1", "c-1", &OfferOption::Cancel, expiry()),
            s.verify_offer_token(&token, "of-1", "c-1", &option, expiry() + chrono::Duration::hours(1)),
            LinkSigner::new("other", "https://x")
                .unwrap()
                .verify_offer_token(&token, "of-1", "c-1", &option, expiry()),
            s.verify_offer_token("not base64 !", "of-1", "c-1", &option, expiry()),
            s.verify_offer_token("", "of-1", "c-1", &option, expiry()),
        ];
        for result in bad {
            assert_eq!(result, Err(LinkError::BadSignature));
        }
    }

    #[test]
    fn urls_are_escaped_and_under_the_base() {
        let s = signer();
        let url = s.offer_url("of 1", "c-1", &OfferOption::Switch("a&b".into()), expiry());
        assert!(
            url.starts_with("https://shop.example/offers/of+1?option=switch%3Aa%26b&token="),
            "{url}"
        );
        let cancel = s.cancel_url("o-1", "l/1", "c-1");
        assert!(
            cancel.starts_with("https://shop.example/cancel?order=o-1&line=l%2F1&token="),
            "{cancel}"
        );
        let token = cancel.rsplit("token=").next().unwrap();
        assert!(s.verify_cancel_token(token, "o-1", "l/1", "c-1").is_ok());
        assert!(s.verify_cancel_token(token, "o-1", "l/2", "c-1").is_err());
    }

    #[test]
    fn options_round_trip_through_their_parameter_form() {
        for option in [
            OfferOption::Switch("SKU-1".into()),
            OfferOption::TakeStoreCredit,
            OfferOption::KeepWaitingExpedited,
            OfferOption::Cancel,
        ] {
            assert_eq!(OfferOption::parse(&option.as_param()), Ok(option.clone()));
            assert_eq!(
                OfferOption::from_response(option.choice(), option.alternative_sku()),
                Ok(option)
            );
        }
        assert!(OfferOption::parse("switch:").is_err());
        assert!(OfferOption::parse("refund").is_err());
    }
}

/// Hostile input: a link's parameters come from whoever types the URL.
/// Whatever they are, parsing and verifying end in a [`LinkError`], never a
/// panic, and only a token this deployment signed verifies.
#[cfg(test)]
mod hostile_input {
    use super::*;
    use proptest::prelude::*;

    fn signer() -> LinkSigner {
        LinkSigner::new("test-secret", "https://shop.example").unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

        #[test]
        fn any_option_string_parses_or_is_an_unknown_option(raw in "\\PC{0,60}|switch:\\PC{0,20}|credit|expedite|cancel") {
            match OfferOption::parse(&raw) {
                Ok(option) => prop_assert_eq!(OfferOption::parse(&option.as_param()), Ok(option)),
                Err(error) => prop_assert_eq!(error, LinkError::UnknownOption(raw)),
            }
        }

        #[test]
        fn any_token_for_any_offer_is_rejected_unless_signed(
            token in "[A-Za-z0-9_=+/ -]{0,80}|\\PC{0,80}",
            offer_id in "\\PC{0,30}",
            customer_id in "\\PC{0,30}",
            option in "\\PC{0,30}",
            expiry_ms in any::<i64>(),
        ) {
            let s = signer();
            let expires_at = DateTime::<Utc>::from_timestamp_millis(expiry_ms).unwrap_or_default();
            let option = OfferOption::parse(&option).unwrap_or(OfferOption::Cancel);
            prop_assert_eq!(
                s.verify_offer_token(&token, &offer_id, &customer_id, &option, expires_at),
                Err(LinkError::BadSignature)
            );
            prop_assert_eq!(
                s.verify_cancel_token(&token, &offer_id, "l-1", &customer_id),
                Err(LinkError::BadSignature)
            );
            // The genuine token verifies, and any one-character change breaks it.
            let genuine = s.offer_token(&offer_id, &customer_id, &option, expires_at);
            prop_assert!(s.verify_offer_token(&genuine, &offer_id, &customer_id, &option, expires_at).is_ok());
        }

        #[test]
        fn a_signed_token_with_any_character_changed_is_rejected(
            at in any::<prop::sample::Index>(),
            replacement in any::<char>(),
        ) {
            let s = signer();
            let genuine = s.cancel_token("o-1", "l-1", "c-1");
            let mut chars: Vec<char> = genuine.chars().collect();
            let at = at.index(chars.len());
            prop_assume!(chars[at] != replacement);
            chars[at] = replacement;
            let forged: String = chars.into_iter().collect();
            prop_assert_eq!(s.verify_cancel_token(&forged, "o-1", "l-1", "c-1"), Err(LinkError::BadSignature));
        }

        #[test]
        fn any_secret_makes_a_signer_or_is_refused_as_empty(secret in "\\PC{0,40}") {
            match LinkSigner::new(&secret, "https://shop.example") {
                Ok(_) => prop_assert!(!secret.is_empty()),
                Err(error) => prop_assert_eq!((error, secret.is_empty()), (LinkError::EmptySecret, true)),
            }
        }
    }
}
