//! A private SES endpoint (moto, the same emulator as the stack's) for
//! one measurement. The stack's moto keeps every email it accepts, and every
//! test that reads its record pays for that record's size: a bench run's
//! tens of thousands of emails there would slow the suite run after it.
//! A fresh endpoint per measurement also measures the sender against an
//! empty store each time, as the real SES is.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::process::{Child, Command};

use crate::world::stack_value;

/// A moto server of this bench run, stopped when dropped.
pub struct PrivateSes {
    /// What the services get as `AWS_ENDPOINT_URL_SESV2`.
    pub url: String,
    /// Killed on drop (`kill_on_drop`), so an early return stops it too.
    _server: Child,
}

impl PrivateSes {
    /// Starts moto on a free loopback port and creates the sender's
    /// identity in it, as `make up` does for the stack's.
    pub async fn start(log_dir: &Path) -> Result<Self> {
        // Relative to the checkout, where `make bench` runs, as `.stack/` is.
        let bin = PathBuf::from(".venv/bin/moto_server");
        if !bin.is_file() {
            bail!("{} is missing: start the local stack with `make up`", bin.display());
        }
        std::fs::create_dir_all(log_dir)?;
        let port = crate::world::free_port()?;
        let log = std::fs::File::create(log_dir.join(format!("moto-{port}.log")))?;
        let server = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("could not start {}", bin.display()))?;
        let ses = Self {
            url: format!("http://127.0.0.1:{port}"),
            _server: server,
        };
        let client = reqwest::Client::new();
        let until = Instant::now() + Duration::from_secs(30);
        while !client
            .get(format!("{}/moto-api/data.json", ses.url))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            if Instant::now() > until {
                bail!("the private SES endpoint (moto) did not answer within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // moto routes a request by its SigV4 credential scope and does not
        // check the signature.
        let region = stack_value("AWS_REGION")?;
        let created = client
            .post(format!("{}/v2/email/identities", ses.url))
            .header(
                "Authorization",
                format!(
                    "AWS4-HMAC-SHA256 Credential=testing/20000101/{region}/ses/aws4_request, SignedHeaders=host, Signature=0"
                ),
            )
            .header("content-type", "application/json")
            .body(format!(r#"{{"EmailIdentity":"{}"}}"#, stack_value("BACKORDER_SES_FROM")?))
            .send()
            .await?;
        if !created.status().is_success() {
            bail!(
                "creating the sender's identity in the private SES endpoint: {}",
                created.status()
            );
        }
        Ok(ses)
    }
}
