//! A private moto server (the same real SES v2 emulator as the stack's)
//! for one test. Tests that send thousands of emails or measure timing
//! use one: they neither bloat the shared moto's record (every reader of
//! `/moto-api/data.json` pays for its size, and moto answers nothing else
//! while it serializes it) nor get stalled by other tests reading it.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use backorder_core::config::stack_env_value;

pub struct PrivateMoto {
    pub url: String,
    child: Child,
}

impl PrivateMoto {
    /// Starts moto on a free loopback port and creates the sender's
    /// identity (`BACKORDER_SES_FROM`) in it, as `make up` does.
    pub async fn start(log_dir: &std::path::Path) -> Self {
        let bin = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/moto_server");
        assert!(bin.is_file(), "{} is missing: run `make up`", bin.display());
        std::fs::create_dir_all(log_dir).expect("log dir");
        let port = crate::process::free_port();
        let log = std::fs::File::create(log_dir.join(format!("moto-{port}.log"))).expect("moto log");
        let child = Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("moto_server starts");
        let url = format!("http://127.0.0.1:{port}");
        let moto = Self { url, child };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = reqwest::get(format!("{}/moto-api/data.json", moto.url)).await
                && r.status().is_success()
            {
                break;
            }
            assert!(Instant::now() < deadline, "private moto not up within 30 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let from = stack_env_value("BACKORDER_SES_FROM").unwrap_or_else(|| "orders@shop.example".into());
        let region = stack_env_value("AWS_REGION").unwrap_or_else(|| "us-east-1".into());
        // moto routes by the SigV4 credential scope; it does not check it.
        let created = reqwest::Client::new()
            .post(format!("{}/v2/email/identities", moto.url))
            .header(
                "Authorization",
                format!(
                    "AWS4-HMAC-SHA256 Credential=testing/20000101/{region}/ses/aws4_request, SignedHeaders=host, Signature=0"
                ),
            )
            .header("content-type", "application/json")
            .body(serde_json::json!({ "EmailIdentity": from }).to_string())
            .send()
            .await
            .expect("create identity");
        assert!(
            created.status().is_success(),
            "CreateEmailIdentity: {}",
            created.status()
        );
        moto
    }
}

impl Drop for PrivateMoto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
