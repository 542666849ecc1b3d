//! A real browser for the customer's pages: Debian's headless Chromium
//! driven through Debian's chromedriver over WebDriver (fantoccini). `make
//! up` installs both when missing. Screenshots of each page are kept under
//! `target/test-artifacts/` as evidence of what the customer saw.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder};

use crate::process::free_port;
use crate::wait_until;

/// A chromedriver process and a headless Chromium session on it.
pub struct Browser {
    driver: Child,
    pub client: Client,
}

impl Browser {
    /// Starts chromedriver on a free loopback port and opens a session.
    pub async fn start() -> Self {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian's chromium-driver; `make up` installs it)");
        let url = format!("http://127.0.0.1:{port}");
        wait_until("chromedriver to answer", Duration::from_secs(20), || async {
            reqwest::get(format!("{url}/status")).await.ok().map(|_| ())
        })
        .await;
        let profile = std::env::temp_dir().join(format!("chromium-{}", uuid::Uuid::new_v4().simple()));
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=420,900",
                    format!("--user-data-dir={}", profile.display())
                ]
            }),
        );
        // reqwest and fantoccini enable both of rustls' crypto providers,
        // so the process picks one (a second install is a harmless error).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = ClientBuilder::rustls()
            .expect("TLS roots")
            .capabilities(caps)
            .connect(&url)
            .await
            .expect("a Chromium session");
        Self { driver, client }
    }

    /// Saves a PNG of the current page as `target/test-artifacts/<name>.png`.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
        std::fs::create_dir_all(&dir).expect("artifact dir");
        let path = dir.join(format!("{name}.png"));
        let png = self.client.screenshot().await.expect("screenshot");
        std::fs::write(&path, png).expect("write screenshot");
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// The first link in `html` (entities decoded) that contains every one of
/// `needles`.
pub fn link_containing(html: &str, needles: &[&str]) -> Option<String> {
    let html = crate::campaigns::unescape(html);
    html.split("href=\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .find(|href| needles.iter().all(|n| href.contains(n)))
        .map(str::to_string)
}

/// The value of `key` in `link`'s query (the part after `key=`, up to the
/// next `&`), with the one escape option values use (`%3A`) decoded.
pub fn link_param(link: &str, key: &str) -> String {
    link.split(&format!("{key}="))
        .nth(1)
        .unwrap_or_default()
        .split('&')
        .next()
        .unwrap_or_default()
        .replace("%3A", ":")
}
