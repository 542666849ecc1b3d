//! Reading back what the SES endpoint (moto) received. moto keeps every
//! `SendEmail` under `ses.Message` in `/moto-api/data.json` (see
//! infra/local/README.md); tests tell their emails apart by recipient.

use serde_json::Value;

#[derive(Debug, Clone)]
pub struct SentEmail {
    pub id: String,
    pub to: Vec<String>,
    pub subject: String,
    /// The HTML part (moto keeps only that when both are sent).
    pub body: String,
}

/// Every email moto accepted.
pub async fn sent_emails(moto_url: &str) -> Vec<SentEmail> {
    let data: Value = reqwest::get(format!("{moto_url}/moto-api/data.json"))
        .await
        .expect("moto reachable")
        .json()
        .await
        .expect("moto data.json is JSON");
    data.pointer("/ses/Message")
        .and_then(Value::as_array)
        .map(|messages| {
            messages
                .iter()
                .map(|m| SentEmail {
                    id: m["id"].as_str().unwrap_or_default().to_string(),
                    to: m
                        .pointer("/destinations/ToAddresses")
                        .and_then(Value::as_array)
                        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
                        .unwrap_or_default(),
                    subject: m["subject"].as_str().unwrap_or_default().to_string(),
                    body: m["body"].as_str().unwrap_or_default().to_string(),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The emails moto accepted for `recipient`.
pub async fn sent_to(moto_url: &str, recipient: &str) -> Vec<SentEmail> {
    sent_emails(moto_url)
        .await
        .into_iter()
        .filter(|e| e.to.iter().any(|t| t == recipient))
        .collect()
}
