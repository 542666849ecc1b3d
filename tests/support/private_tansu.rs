//! A private Tansu broker a test may restart (the stack's serves the other
//! tests running in parallel). It keeps its data in an S3 bucket of a
//! private moto server, as `BACKORDER_TANSU_STORAGE=s3` does for the local
//! stack: with the default memory storage a restarted broker is empty, so
//! a restart could not be survived by anyone.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use backorder_core::config::stack_env_value;

use crate::private_moto::PrivateMoto;

pub struct PrivateTansu {
    /// The broker process, replaced on each restart.
    child: Child,
    pub port: u16,
    log_dir: PathBuf,
    /// The S3 endpoint holding the broker's data; it outlives restarts.
    store: PrivateMoto,
}

impl PrivateTansu {
    /// Starts moto, creates the `tansu` bucket in it, then the broker.
    pub async fn start(log_dir: &Path) -> Self {
        let store = PrivateMoto::start(log_dir).await;
        let region = stack_env_value("AWS_REGION").unwrap_or_else(|| "us-east-1".into());
        // moto routes by the SigV4 credential scope; it does not check it.
        let created = reqwest::Client::new()
            .put(format!("{}/tansu", store.url))
            .header(
                "Authorization",
                format!(
                    "AWS4-HMAC-SHA256 Credential=testing/20000101/{region}/s3/aws4_request, SignedHeaders=host, Signature=0"
                ),
            )
            .send()
            .await
            .expect("create bucket");
        assert!(created.status().is_success(), "CreateBucket: {}", created.status());
        let port = crate::process::free_port();
        let child = spawn(port, &store.url, log_dir);
        let tansu = Self {
            child,
            port,
            log_dir: log_dir.to_path_buf(),
            store,
        };
        tansu.wait_listening().await;
        tansu
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Stops the broker with SIGTERM (SIGKILL if it is still running after
    /// 10 s) and starts it again on the same port and storage. Not SIGKILL:
    /// Tansu's S3 storage acknowledges a produce before its write reaches
    /// the store, so a SIGKILLed broker loses records it acknowledged (seen
    /// in the chaos run), which a replicated Kafka with `acks=all` does not.
    pub async fn restart(&mut self) {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            assert!(Instant::now() < deadline, "port {} still taken", self.port);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.child = spawn(self.port, &self.store.url, &self.log_dir);
        self.wait_listening().await;
    }

    async fn wait_listening(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "private tansu not listening within 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn spawn(port: u16, store_url: &str, log_dir: &Path) -> Child {
    let bin = stack_env_value("BACKORDER_TANSU_BIN").expect("BACKORDER_TANSU_BIN: run `make up`");
    std::fs::create_dir_all(log_dir).expect("log dir");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_dir.join(format!("tansu-{port}.log")))
        .expect("tansu log");
    let url = format!("tcp://127.0.0.1:{port}");
    Command::new(bin)
        .env_clear()
        .env("AWS_ENDPOINT", store_url)
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .args(["broker", "--cluster-id", "backorder-restarts"])
        .args(["--listener-url", &url, "--advertised-listener-url", &url])
        .args(["--storage-engine", "s3://tansu/"])
        .stdout(Stdio::from(log.try_clone().expect("log")))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("tansu starts")
}

impl Drop for PrivateTansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
