//! A private PostgreSQL cluster a test may stop and start (the shared one
//! serves the other tests running in parallel). Uses the same script as
//! the local stack.

use std::path::PathBuf;
use std::process::Command;

pub struct PrivatePostgres {
    dir: PathBuf,
    pub port: u16,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../infra/local/pg-cluster.sh")
}

fn run(args: &[&str]) {
    let output = Command::new("bash")
        .arg(script())
        .args(args)
        .output()
        .expect("bash runs");
    assert!(
        output.status.success(),
        "pg-cluster.sh {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

impl PrivatePostgres {
    /// Initialises and starts a cluster under `target/test-pg/<name>`.
    pub fn start(name: &str) -> Self {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../target/test-pg")
            .join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("pg dir");
        let port = crate::process::free_port();
        let dir_s = dir.to_string_lossy().to_string();
        run(&["init", &dir_s, &port.to_string()]);
        run(&["start", &dir_s, &port.to_string()]);
        Self { dir, port }
    }

    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn stop(&self) {
        run(&["stop", &self.dir.to_string_lossy()]);
    }

    pub fn restart(&self) {
        run(&["start", &self.dir.to_string_lossy(), &self.port.to_string()]);
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .args(["stop", &self.dir.to_string_lossy()])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
