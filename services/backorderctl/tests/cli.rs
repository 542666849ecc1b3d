//! Runs the real `backorderctl` binary. Nothing here needs a broker or a
//! database: every address points at an unused loopback port, and the
//! tests prove the commands fail (or succeed) before they would connect.

// The whole file is test code; clippy's test exemptions only cover
// `#[test]` functions, not the helpers they share.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Nothing listens here; connecting would fail (or, for Kafka, hang for
/// the 30 s message timeout), which the deadline below would catch.
const NOWHERE_KAFKA: &str = "127.0.0.1:1";
const NOWHERE_DB: &str = "postgres://postgres@127.0.0.1:1/backorder";
/// Well under the producer's 30 s message timeout: a run that tried to
/// send would not finish in time.
const DEADLINE: Duration = Duration::from_secs(15);

const GOOD_PLACED: &str = r#"{"type":"OrderPlaced","occurred_at":"2026-11-24T10:00:00Z","order_id":"o-1","customer":{"customer_id":"c-1","email":"ada@example.com","name":"Ada","locale":"en-GB"},"lines":[{"line_id":"1","sku":"LAMP-01","product_name":"Lamp","quantity":1,"unit_price_minor":8900,"availability":"BACKORDERED"}],"currency":"EUR","total_minor":8900}"#;
const GOOD_PRODUCT: &str = r#"{"type":"ProductUpserted","occurred_at":"2026-11-24T08:00:00Z","sku":"LAMP-01","name":"Lamp","category":"lighting","need":"desk-lighting","seasons":[],"price_minor":8900,"currency":"EUR","available_quantity":0}"#;

/// A file in the temp dir, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, contents: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "backorderctl-{}-{}-{name}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::write(&path, contents).unwrap();
        Self(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs the binary with no local stack and nothing reachable, and fails
/// the test (instead of hanging) if it does not finish by the deadline.
fn backorderctl(args: &[&str]) -> (Output, Duration) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_backorderctl"));
    command
        .args(args)
        .env("BACKORDER_STACK_ENV", "/dev/null")
        .env("KAFKA_BOOTSTRAP_SERVERS", NOWHERE_KAFKA)
        .env("DATABASE_URL", NOWHERE_DB)
        .env_remove("SCHEMA_REGISTRY_URL")
        .env_remove("BACKORDER_TOPIC_PREFIX")
        .env_remove("BACKORDER_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = command.spawn().unwrap();
    loop {
        if child.try_wait().unwrap().is_some() {
            return (child.wait_with_output().unwrap(), started.elapsed());
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!(
                "backorderctl {args:?} still running after {DEADLINE:?} (did it contact a server?)\nstderr: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn publish_with_a_bad_third_line_fails_before_contacting_kafka() {
    let bad = GOOD_PLACED.replace(r#""quantity":1"#, r#""quantity":-1"#);
    assert_ne!(bad, GOOD_PLACED);
    let file = TempFile::new(
        "bad.jsonl",
        &format!("{GOOD_PRODUCT}\n{GOOD_PLACED}\n{bad}\n{GOOD_PRODUCT}\n"),
    );
    let (output, elapsed) = backorderctl(&["publish", file.0.to_str().unwrap()]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.contains("line 3 (OrderPlaced)"), "stderr: {stderr}");
    assert!(stderr.contains("lines[0].quantity"), "stderr: {stderr}");
    assert!(stderr.contains("must be positive, got -1"), "stderr: {stderr}");
    assert!(stderr.contains("nothing was published"), "stderr: {stderr}");
    // No Rust Debug output, no panic.
    assert!(
        !stderr.contains("panicked") && !stderr.contains("LineError {"),
        "stderr: {stderr}"
    );
    assert!(text(&output.stdout).is_empty(), "stdout: {}", text(&output.stdout));
    // A run that had tried the (unreachable) broker would have waited for
    // the producer's 30 s message timeout.
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
}

#[test]
fn publish_of_an_unknown_type_names_it() {
    let file = TempFile::new(
        "unknown.jsonl",
        &format!("# comment\n\n{{\"type\":\"Foo\",\"occurred_at\":\"2026-11-24T10:00:00Z\"}}\n{GOOD_PRODUCT}\n"),
    );
    let (output, _) = backorderctl(&["publish", file.0.to_str().unwrap()]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    assert!(
        stderr.contains(r#"line 3: unknown type "Foo" (expected one of"#),
        "stderr: {stderr}"
    );
}

#[test]
fn publish_of_a_missing_file_is_bad_input() {
    let (output, _) = backorderctl(&["publish", "/nonexistent/scenario.jsonl"]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    assert!(
        stderr.contains("cannot read /nonexistent/scenario.jsonl"),
        "stderr: {stderr}"
    );
}

#[test]
fn publish_dry_run_of_good_lines_succeeds_without_kafka() {
    let file = TempFile::new("good.jsonl", &format!("{GOOD_PRODUCT}\n{GOOD_PLACED}\n{GOOD_PLACED}\n"));
    let (output, _) = backorderctl(&["publish", "--dry-run", file.0.to_str().unwrap()]);
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "stderr: {}", text(&output.stderr));
    assert!(
        stdout.contains("would publish 3 records (orders.v1: 2, stock.v1: 1)"),
        "stdout: {stdout}"
    );
}

#[test]
fn clock_advance_with_a_bad_duration_fails_before_connecting() {
    let (output, _) = backorderctl(&["clock", "advance", "3x"]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.contains(r#""3x" is not a duration"#), "stderr: {stderr}");
    assert!(stderr.contains("1d12h"), "stderr: {stderr}");
    assert!(
        !stderr.contains("database"),
        "it must not have tried the database: {stderr}"
    );
}

#[test]
fn clock_set_with_a_bad_instant_fails_before_connecting() {
    let (output, _) = backorderctl(&["clock", "set", "next tuesday"]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.contains("not an RFC 3339 instant"), "stderr: {stderr}");
}

#[test]
fn an_unreachable_database_is_an_infrastructure_failure() {
    let (output, _) = backorderctl(&["migrate"]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains("database 127.0.0.1:1/backorder"), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "stderr: {stderr}");
}

#[test]
fn help_documents_the_input_format() {
    let (output, _) = backorderctl(&["publish", "--help"]);
    let stdout = text(&output.stdout);
    assert!(output.status.success());
    assert!(stdout.contains("UUID v5 of the line's text"), "{stdout}");
    assert!(stdout.contains("occurred_at is never defaulted"), "{stdout}");
}

#[test]
fn help_of_every_command_says_what_it_does() {
    let (output, _) = backorderctl(&["--help"]);
    let stdout = text(&output.stdout);
    assert!(stdout.contains("Exit codes: 0 success; 1 infrastructure"), "{stdout}");
    for command in ["migrate", "topics", "publish", "clock", "emails"] {
        assert!(stdout.contains(command), "{command} missing: {stdout}");
    }
    let (output, _) = backorderctl(&["emails", "--help"]);
    let stdout = text(&output.stdout);
    assert!(stdout.contains("full addresses are never printed"), "{stdout}");
    assert!(stdout.contains("--state <STATE>"), "{stdout}");
    let (output, _) = backorderctl(&["clock", "advance", "--help"]);
    let stdout = text(&output.stdout);
    assert!(stdout.contains("backorderctl clock advance 1d12h"), "{stdout}");
}
