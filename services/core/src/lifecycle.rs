//! Process lifecycle: signals, readiness and graceful shutdown.
//!
//! Kubernetes sends SIGTERM and waits for the grace period; a developer
//! presses Ctrl-C. Both cancel one token that every loop watches, readiness
//! turns 503 at once so no new traffic is routed here, and `main` waits for
//! in-flight work (tracked tasks) before exiting 0.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What `/readyz` reports. Not ready while starting, while draining for
/// shutdown, and while something the service depends on says "stop"
/// (for example SES pausing the account).
#[derive(Debug, Default)]
pub struct Readiness {
    /// Set once start-up (migrations, connections, subscriptions) finished.
    started: AtomicBool,
    /// Set when shutdown began; never cleared.
    draining: AtomicBool,
    /// Set while an external party asked us to stop work (SES paused).
    paused: AtomicBool,
    /// Set while the database schema is behind this build (migrations not
    /// applied): the service holds its work instead of dead-lettering.
    schema_behind: AtomicBool,
    /// Set while an output topic is missing or not writable by this
    /// service: its work is held (nothing lost, nothing dead-lettered)
    /// until an operator creates the topic or grants the ACL.
    output_blocked: AtomicBool,
}

impl Readiness {
    pub fn mark_started(&self) {
        self.started.store(true, Ordering::SeqCst);
        self.publish();
    }
    pub fn mark_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.publish();
    }
    pub fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::SeqCst);
        self.publish();
    }
    /// Mirrors `/readyz` as the `backorder_ready` gauge, so an alert can
    /// tell a pod that is up but not ready from one that is down.
    fn publish(&self) {
        metrics::gauge!("backorder_ready").set(if self.is_ready() { 1.0 } else { 0.0 });
    }
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }
    pub fn set_schema_behind(&self, behind: bool) {
        self.schema_behind.store(behind, Ordering::SeqCst);
        self.publish();
    }
    pub fn set_output_blocked(&self, blocked: bool) {
        self.output_blocked.store(blocked, Ordering::SeqCst);
        self.publish();
    }
    pub fn is_output_blocked(&self) -> bool {
        self.output_blocked.load(Ordering::SeqCst)
    }
    pub fn is_schema_behind(&self) -> bool {
        self.schema_behind.load(Ordering::SeqCst)
    }
    pub fn is_ready(&self) -> bool {
        self.started.load(Ordering::SeqCst)
            && !self.draining.load(Ordering::SeqCst)
            && !self.paused.load(Ordering::SeqCst)
            && !self.schema_behind.load(Ordering::SeqCst)
            && !self.output_blocked.load(Ordering::SeqCst)
    }
    /// A short word for logs and the `/readyz` body.
    pub fn state(&self) -> &'static str {
        if self.draining.load(Ordering::SeqCst) {
            "draining"
        } else if !self.started.load(Ordering::SeqCst) {
            "starting"
        } else if self.schema_behind.load(Ordering::SeqCst) {
            "schema behind"
        } else if self.output_blocked.load(Ordering::SeqCst) {
            "output topic blocked"
        } else if self.paused.load(Ordering::SeqCst) {
            "paused"
        } else {
            "ready"
        }
    }
}

/// The handles every long-running task of a service shares.
#[derive(Clone, Debug)]
pub struct Lifecycle {
    /// Cancelled once, on SIGTERM/SIGINT or when a task fails for good.
    pub shutdown: CancellationToken,
    /// Tasks `main` waits for before exiting.
    pub tasks: TaskTracker,
    pub readiness: Arc<Readiness>,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self::new()
    }
}

impl Lifecycle {
    pub fn new() -> Self {
        Self {
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            readiness: Arc::new(Readiness::default()),
        }
    }

    /// Spawns the task that turns SIGTERM or SIGINT into a shutdown.
    pub fn listen_for_signals(&self) -> std::io::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let this = self.clone();
        tokio::spawn(async move {
            let which = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
                () = this.shutdown.cancelled() => return,
            };
            tracing::info!(signal = which, "shutdown requested; draining");
            this.begin_shutdown();
        });
        Ok(())
    }

    /// Flips readiness and cancels every loop.
    pub fn begin_shutdown(&self) {
        self.readiness.mark_draining();
        self.shutdown.cancel();
    }

    /// Waits for every tracked task, at most `grace`. Returns false when
    /// the grace period ran out first.
    pub async fn wait_for_tasks(&self, grace: std::time::Duration) -> bool {
        self.tasks.close();
        tokio::time::timeout(grace, self.tasks.wait()).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_is_false_while_starting_paused_or_draining() {
        let r = Readiness::default();
        assert!(!r.is_ready());
        assert_eq!(r.state(), "starting");
        r.mark_started();
        assert!(r.is_ready());
        r.set_paused(true);
        assert!(!r.is_ready());
        assert_eq!(r.state(), "paused");
        r.set_paused(false);
        r.mark_draining();
        assert!(!r.is_ready());
        assert_eq!(r.state(), "draining");
    }

    #[tokio::test]
    async fn shutdown_cancels_the_token_and_flips_readiness() {
        let lifecycle = Lifecycle::new();
        lifecycle.readiness.mark_started();
        let task_lifecycle = lifecycle.clone();
        lifecycle
            .tasks
            .spawn(async move { task_lifecycle.shutdown.cancelled().await });
        lifecycle.begin_shutdown();
        assert!(!lifecycle.readiness.is_ready());
        assert!(lifecycle.wait_for_tasks(std::time::Duration::from_secs(5)).await);
    }
}
