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

    /// Stops every process of this cluster with SIGSTOP: connections and
    /// queries hang instead of failing, as with a server that stopped
    /// answering. [`thaw`](Self::thaw) resumes them.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    /// Sends `signal` to this cluster's postmaster and its children.
    fn signal(&self, signal: &str) {
        let Ok(text) = std::fs::read_to_string(self.dir.join("data/postmaster.pid")) else {
            return;
        };
        let Some(postmaster) = text.lines().next().and_then(|l| l.trim().parse::<u32>().ok()) else {
            return;
        };
        let mut pids = vec![postmaster];
        for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // pid (comm) state ppid ...: comm may hold spaces, so split
            // after its closing parenthesis.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if ppid == Some(postmaster)
                && let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse::<u32>().ok())
            {
                pids.push(pid);
            }
        }
        for pid in pids {
            let _ = Command::new("kill").arg(signal).arg(pid.to_string()).status();
        }
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.thaw();
        let _ = Command::new("bash")
            .arg(script())
            .args(["stop", &self.dir.to_string_lossy()])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
