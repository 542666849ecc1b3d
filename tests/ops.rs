//! Operations files against the code they describe: the metrics catalogue
//! against the metrics the services register, the Kubernetes manifests
//! against the binaries' configuration and endpoints (rendered by kustomize
//! and validated offline), the alert rules through promtool, and a real
//! Prometheus scraping the running services for every metric the dashboard
//! and the alerts use.
//!
//! Tools come from the project's own set-up (`make up`): the venv's
//! kubectl, kubernetes-validate and cloudcoil models
//! (`infra/local/requirements.txt`), and Debian's `prometheus` package.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::disallowed_methods)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use backorder_core::config::Settings;
use backorder_core::events::orders::Availability::{Backordered, InStock};
use backorder_core::kafka::Topics;
use backorder_core::kafka::topics::{CONSUMED, ORDERS, SHIPMENTS, STOCK, TOPICS};
use backorder_tests::process::{ServiceProcess, free_port};
use backorder_tests::{TestApp, order_placed, scenario, stock, wait_until};
use serde_json::Value;

const PATIENCE: Duration = Duration::from_secs(60);

/// The six service binaries, each a Deployment.
const SERVICES: [&str; 6] = [
    "orders-consumer",
    "stock-consumer",
    "shipments-consumer",
    "offers-consumer",
    "segmentation",
    "sender",
];

/// Environment variables read by libraries rather than by
/// `Settings::load`: tracing's filter and the AWS SDK's region.
const LIBRARY_ENV: [&str; 2] = ["RUST_LOG", "AWS_REGION"];

/// Label names that would carry customer data or unbounded ids.
const FORBIDDEN_LABELS: [&str; 12] = [
    "email",
    "recipient",
    "address",
    "customer",
    "customer_id",
    "order_id",
    "line_id",
    "cart_id",
    "offer_id",
    "sku",
    "dedup_key",
    "token",
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(repo().join(relative)).unwrap_or_else(|e| panic!("read {relative}: {e}"))
}

/// Every `.rs` file under `dir`, skipping integration-test folders.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n == "tests" || n == "target") {
                continue;
            }
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn service_sources() -> Vec<(PathBuf, String)> {
    let mut files = Vec::new();
    rust_files(&repo().join("services"), &mut files);
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            (path, text)
        })
        .collect()
}

/// A metric as the code registers it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Metric {
    kind: String,
    labels: BTreeSet<String>,
}

/// The text between `open` (just after a `(`) and its matching `)`.
fn balanced(text: &str, open: usize) -> &str {
    let mut depth = 1;
    for (i, c) in text[open..].char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return &text[open..open + i];
                }
            }
            _ => {}
        }
    }
    &text[open..]
}

/// String literals directly followed by `=>`: the label names of a macro call.
fn label_names(args: &str) -> BTreeSet<String> {
    let mut labels = BTreeSet::new();
    let mut rest = args;
    while let Some(arrow) = rest.find("=>") {
        let before = rest[..arrow].trim_end();
        if let Some(stripped) = before.strip_suffix('"')
            && let Some(start) = stripped.rfind('"')
        {
            labels.insert(stripped[start + 1..].to_string());
        }
        rest = &rest[arrow + 2..];
    }
    labels
}

/// Every metric the services register: `metrics::counter!`, `gauge!` and
/// `histogram!` calls with a literal name, with the union of their labels.
fn metrics_in_code() -> BTreeMap<String, Metric> {
    let mut found: BTreeMap<String, Metric> = BTreeMap::new();
    for (path, text) in service_sources() {
        for kind in ["counter", "gauge", "histogram"] {
            let needle = format!("{kind}!(");
            let mut from = 0;
            while let Some(at) = text[from..].find(&needle) {
                let open = from + at + needle.len();
                from = open;
                let args = balanced(&text, open);
                let name = args
                    .trim_start()
                    .strip_prefix('"')
                    .and_then(|s| s.split('"').next())
                    .unwrap_or_else(|| {
                        panic!(
                            "{}: a {kind}! without a literal name; the catalogue test needs one",
                            path.display()
                        )
                    });
                let metric = found.entry(name.to_string()).or_insert_with(|| Metric {
                    kind: kind.to_string(),
                    labels: BTreeSet::new(),
                });
                assert_eq!(metric.kind, kind, "{name} is registered as two types");
                metric.labels.extend(label_names(args));
            }
        }
    }
    found
}

/// The rows of docs/metrics.md's tables: name -> (type, labels).
fn metrics_in_catalogue() -> BTreeMap<String, Metric> {
    let mut rows = BTreeMap::new();
    for line in read("docs/metrics.md").lines() {
        let Some(row) = line.strip_prefix("| `backorder_") else {
            continue;
        };
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let name = format!("backorder_{}", cells[0].trim_end_matches('`'));
        let labels = cells[2]
            .split(',')
            .map(|l| l.trim().trim_matches('`').to_string())
            .filter(|l| !l.is_empty() && l != "—")
            .collect();
        let previous = rows.insert(
            name.clone(),
            Metric {
                kind: cells[1].to_string(),
                labels,
            },
        );
        assert!(previous.is_none(), "{name} is listed twice in docs/metrics.md");
    }
    rows
}

#[test]
fn metrics_catalogue_matches_the_code() {
    let code = metrics_in_code();
    let catalogue = metrics_in_catalogue();
    assert!(code.len() >= 40, "the scan found only {} metrics: {code:?}", code.len());

    let missing: Vec<&String> = code.keys().filter(|n| !catalogue.contains_key(*n)).collect();
    assert!(missing.is_empty(), "metrics missing from docs/metrics.md: {missing:?}");
    let stale: Vec<&String> = catalogue.keys().filter(|n| !code.contains_key(*n)).collect();
    assert!(
        stale.is_empty(),
        "docs/metrics.md lists metrics the code no longer has: {stale:?}"
    );
    for (name, metric) in &code {
        assert_eq!(
            &catalogue[name], metric,
            "{name}: docs/metrics.md (left) vs the code (right)"
        );
    }

    for (name, metric) in &code {
        assert!(
            name.starts_with(backorder_core::telemetry::METRIC_PREFIX),
            "{name}: prefix"
        );
        assert_eq!(
            metric.kind == "counter",
            name.ends_with("_total"),
            "{name}: counters, and only counters, end in _total"
        );
        for unit in ["_days", "_hours", "_minutes", "_ms", "_milliseconds", "_bytes_kb"] {
            assert!(!name.contains(unit), "{name}: use base units (seconds)");
        }
        for label in &metric.labels {
            assert!(
                !FORBIDDEN_LABELS.contains(&label.as_str()),
                "{name}: label {label} could carry customer data"
            );
        }
    }
}

/// `.venv/bin/python`, from `make up`.
fn venv_python() -> PathBuf {
    let python = repo().join(".venv/bin/python");
    assert!(python.is_file(), "{} is missing: run `make up`", python.display());
    python
}

/// Renders and validates the base and every overlay (infra/tools/ops_check.py)
/// and returns each rendering's objects by overlay name.
fn rendered_manifests() -> BTreeMap<String, Vec<Value>> {
    let out = repo()
        .join("target/ops-render")
        .join(uuid::Uuid::new_v4().simple().to_string());
    let done = Command::new(venv_python())
        .arg(repo().join("infra/tools/ops_check.py"))
        .arg("check")
        .arg(&out)
        .output()
        .expect("run ops_check.py");
    assert!(
        done.status.success(),
        "manifests do not render or validate:\n{}{}",
        String::from_utf8_lossy(&done.stdout),
        String::from_utf8_lossy(&done.stderr)
    );
    let mut renderings = BTreeMap::new();
    for entry in std::fs::read_dir(&out).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let objects: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        renderings.insert(name, objects);
    }
    std::fs::remove_dir_all(&out).ok();
    assert!(renderings.contains_key("base") && renderings.contains_key("example"));
    renderings
}

fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

fn named<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn str_of(value: &Value) -> &str {
    value.as_str().unwrap_or_else(|| panic!("not a string: {value}"))
}

/// The environment a Deployment's container gets: its `env` and the data
/// of the ConfigMaps it loads with `envFrom`.
fn container_env(objects: &[Value], container: &Value) -> BTreeMap<String, Option<String>> {
    let mut env = BTreeMap::new();
    for source in container["envFrom"].as_array().into_iter().flatten() {
        let map = named(objects, "ConfigMap", str_of(&source["configMapRef"]["name"]));
        for (key, value) in map["data"].as_object().unwrap() {
            env.insert(key.clone(), value.as_str().map(String::from));
        }
    }
    for var in container["env"].as_array().into_iter().flatten() {
        env.insert(
            str_of(&var["name"]).to_string(),
            var["value"].as_str().map(String::from),
        );
    }
    env
}

/// The names the binaries read: every setting of `Settings::load`, the
/// names the service crates read directly with `std::env::var`, and the
/// libraries' own.
fn env_names_the_binaries_read() -> BTreeSet<String> {
    let mut names: BTreeSet<String> = Settings::env_names().into_iter().collect();
    names.extend(LIBRARY_ENV.map(String::from));
    for (_, text) in service_sources() {
        for needle in ["env::var(\"", "env::var_os(\""] {
            for (at, _) in text.match_indices(needle) {
                let rest = &text[at + needle.len()..];
                if let Some(end) = rest.find('"') {
                    names.insert(rest[..end].to_string());
                }
            }
        }
    }
    names
}

/// The port a probe targets, resolving a named port.
fn probe_port(container: &Value, probe: &Value) -> u64 {
    let port = &probe["httpGet"]["port"];
    if let Some(number) = port.as_u64() {
        return number;
    }
    let name = str_of(port);
    container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("probe port {name} is not a container port"))["containerPort"]
        .as_u64()
        .unwrap()
}

#[test]
fn kubernetes_manifests_render_validate_and_match_the_binaries() {
    let renderings = rendered_manifests();
    let known_env = env_names_the_binaries_read();
    let drain = backorder_core::config::Settings::default()
        .drain_grace_ms
        .div_ceil(1000);
    for (overlay, objects) in &renderings {
        let deployments = of_kind(objects, "Deployment");
        let names: BTreeSet<&str> = deployments.iter().map(|d| str_of(&d["metadata"]["name"])).collect();
        assert_eq!(
            names,
            SERVICES.into_iter().collect(),
            "{overlay}: one Deployment per service"
        );
        for deployment in &deployments {
            let name = str_of(&deployment["metadata"]["name"]);
            let pod = &deployment["spec"]["template"]["spec"];
            let container = &pod["containers"][0];
            assert_eq!(
                container["command"][0],
                format!("/usr/local/bin/{name}"),
                "{overlay}/{name}"
            );

            // Every variable it sets is read by the binary.
            let env = container_env(objects, container);
            for key in env.keys() {
                assert!(
                    known_env.contains(key) || key.starts_with("BACKORDER_KAFKA__"),
                    "{overlay}/{name} sets {key}, which no binary reads"
                );
            }
            // Probes target the port the binary binds, on its operational paths.
            let addr = env["BACKORDER_HTTP_ADDR"]
                .clone()
                .expect("BACKORDER_HTTP_ADDR is a plain value");
            let bound: std::net::SocketAddr = addr.parse().expect("BACKORDER_HTTP_ADDR parses");
            assert!(
                bound.ip().is_unspecified(),
                "{overlay}/{name} must listen on all interfaces"
            );
            for (probe, path) in [
                ("startupProbe", "/healthz"),
                ("livenessProbe", "/healthz"),
                ("readinessProbe", "/readyz"),
            ] {
                let probe_spec = &container[probe];
                assert_eq!(probe_spec["httpGet"]["path"], path, "{overlay}/{name} {probe}");
                assert_eq!(
                    probe_port(container, probe_spec),
                    u64::from(bound.port()),
                    "{overlay}/{name} {probe} port"
                );
            }
            // Drains within the grace period; runs locked down.
            let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
            assert!(grace > drain, "{overlay}/{name}: grace {grace}s <= drain {drain}s");
            assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{overlay}/{name}");
            let security = &container["securityContext"];
            assert_eq!(security["readOnlyRootFilesystem"], true, "{overlay}/{name}");
            assert_eq!(security["allowPrivilegeEscalation"], false, "{overlay}/{name}");
            assert_eq!(
                security["capabilities"]["drop"],
                serde_json::json!(["ALL"]),
                "{overlay}/{name}"
            );
            assert!(
                container["resources"]["requests"]["memory"].is_string(),
                "{overlay}/{name}"
            );
            assert!(
                container["resources"]["limits"]["memory"].is_string(),
                "{overlay}/{name}"
            );
            assert!(
                pod["topologySpreadConstraints"]
                    .as_array()
                    .is_some_and(|c| !c.is_empty())
            );

            let pdb = named(objects, "PodDisruptionBudget", name);
            assert_eq!(
                pdb["spec"]["selector"]["matchLabels"], deployment["spec"]["selector"]["matchLabels"],
                "{overlay}/{name}: the PDB selects the Deployment's pods"
            );
        }

        // KEDA: one ScaledObject per consumer, on its own group and topic,
        // never more replicas than partitions.
        let partitions: BTreeMap<&str, i64> = TOPICS.iter().map(|(t, p)| (*t, i64::from(*p))).collect();
        let mut scaled_topics = BTreeSet::new();
        for scaled in of_kind(objects, "ScaledObject") {
            let name = str_of(&scaled["spec"]["scaleTargetRef"]["name"]);
            assert!(names.contains(name), "{overlay}: ScaledObject for unknown {name}");
            let trigger = &scaled["spec"]["triggers"][0];
            assert_eq!(trigger["type"], "kafka");
            // The group is the service name: BACKORDER_GROUP_ID is not set.
            assert_eq!(trigger["metadata"]["consumerGroup"], name, "{overlay}/{name}");
            assert!(trigger["metadata"]["lagThreshold"].is_string(), "{overlay}/{name}");
            let topic = str_of(&trigger["metadata"]["topic"]);
            let max = scaled["spec"]["maxReplicaCount"].as_i64().unwrap();
            assert!(
                max <= partitions[topic],
                "{overlay}/{name}: {max} replicas for {} partitions",
                partitions[topic]
            );
            scaled_topics.insert(topic.to_string());
        }
        assert_eq!(
            scaled_topics,
            CONSUMED.iter().map(|t| (*t).to_string()).collect(),
            "{overlay}: every consumed topic has a scaler"
        );

        // Strimzi: every topic and dead-letter topic the code creates.
        let declared: BTreeMap<String, i64> = of_kind(objects, "KafkaTopic")
            .iter()
            .map(|t| {
                (
                    str_of(&t["spec"]["topicName"]).to_string(),
                    t["spec"]["partitions"].as_i64().unwrap(),
                )
            })
            .collect();
        let expected: BTreeMap<String, i64> = Topics::new("")
            .all()
            .into_iter()
            .map(|(t, p)| (t, i64::from(p)))
            .collect();
        assert_eq!(
            declared, expected,
            "{overlay}: KafkaTopics vs services/core/src/kafka/topics.rs"
        );

        // Only the sender's SNS and unsubscribe endpoints and the offers
        // service's pages are public, over TLS.
        for ingress in of_kind(objects, "Ingress") {
            assert!(ingress["spec"]["tls"].as_array().is_some_and(|t| !t.is_empty()));
            for rule in ingress["spec"]["rules"].as_array().unwrap() {
                for path in rule["http"]["paths"].as_array().unwrap() {
                    let route = (
                        path["path"].as_str().unwrap_or_default(),
                        path["backend"]["service"]["name"].as_str().unwrap_or_default(),
                    );
                    assert!(
                        [
                            ("/sns", "sender"),
                            ("/unsubscribe", "sender"),
                            ("/offers/", "offers-consumer"),
                            ("/cancel", "offers-consumer"),
                        ]
                        .contains(&route),
                        "{overlay}: {path}"
                    );
                }
            }
        }
        let deny = named(objects, "NetworkPolicy", "backorder-default-deny-ingress");
        assert!(
            deny["spec"].get("ingress").is_none(),
            "default deny has no ingress rule"
        );
        assert_eq!(of_kind(objects, "ServiceMonitor").len(), 1);
        assert_eq!(of_kind(objects, "PrometheusRule").len(), 1);
        assert_eq!(of_kind(objects, "Job").len(), 1, "{overlay}: the migration Job");
    }

    // IRSA: SendEmail as the overlay's identity and configuration set, and
    // GetAccount (which has no resource-level permissions), nothing else.
    let example = &renderings["example"];
    let sender_config = &named(example, "ConfigMap", "backorder-sender-config")["data"];
    let domain = str_of(&sender_config["BACKORDER_SES_FROM"])
        .rsplit('@')
        .next()
        .unwrap()
        .to_string();
    let set = str_of(&sender_config["BACKORDER_SES_CONFIGURATION_SET"]).to_string();
    let policy: Value = serde_json::from_str(&read("infra/k8s/overlays/example/ses-send-policy.json")).unwrap();
    let mut actions = BTreeSet::new();
    for statement in policy["Statement"].as_array().unwrap() {
        assert_eq!(statement["Effect"], "Allow");
        let action = str_of(&statement["Action"]);
        actions.insert(action.to_string());
        let resources: Vec<&str> = match &statement["Resource"] {
            Value::String(one) => vec![one.as_str()],
            many => many.as_array().unwrap().iter().map(str_of).collect(),
        };
        match action {
            "ses:SendEmail" => {
                assert_eq!(resources.len(), 2, "{resources:?}");
                assert!(resources.iter().any(|r| r.ends_with(&format!(":identity/{domain}"))));
                assert!(
                    resources
                        .iter()
                        .any(|r| r.ends_with(&format!(":configuration-set/{set}")))
                );
            }
            "ses:GetAccount" => assert_eq!(resources, ["*"]),
            other => panic!("the sender's policy allows {other}"),
        }
    }
    assert_eq!(actions.len(), 2);
}

/// Runs `promtool` with `args` in infra/prometheus.
fn promtool(args: &[&str]) -> String {
    let done = Command::new("promtool")
        .args(args)
        .current_dir(repo().join("infra/prometheus"))
        .output()
        .expect("promtool (Debian's prometheus, installed by `make up`)");
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&done.stdout),
        String::from_utf8_lossy(&done.stderr)
    );
    assert!(done.status.success(), "promtool {args:?} failed:\n{output}");
    output
}

#[test]
fn alert_rules_pass_promtool_checks_and_unit_tests() {
    let checked = promtool(&["check", "rules", "backorder-rules.yml"]);
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tested = promtool(&["test", "rules", "backorder-rules.test.yml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
    // Every alert has its runbook section, and its link names it.
    let rules = read("infra/prometheus/backorder-rules.yml");
    let runbook = read("docs/runbook.md");
    let anchors: BTreeSet<String> = runbook
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(|h| h.to_ascii_lowercase().replace(' ', "-"))
        .collect();
    let mut alerts = 0;
    for line in rules.lines().map(str::trim) {
        if let Some(alert) = line.strip_prefix("- alert: ") {
            alerts += 1;
            let own = alert.to_ascii_lowercase();
            assert!(
                anchors.contains(&own) || alert == "BackorderSesQuotaExhausted",
                "{alert} has no section in docs/runbook.md"
            );
        }
        if let Some(url) = line.strip_prefix("runbook_url: docs/runbook.md#") {
            assert!(anchors.contains(url), "runbook_url #{url} names no section");
        }
    }
    assert!(alerts >= 10, "{alerts} alerts");
    let tests = read("infra/prometheus/backorder-rules.test.yml");
    for alert in [
        "BackorderConsumerLagGrowing",
        "BackorderDeadLetters",
        "BackorderSesPaused",
    ] {
        assert!(
            tests.contains(&format!("alertname: {alert}")),
            "{alert} has no promtool unit test"
        );
    }
}

/// Metric names (`backorder_...` and `up`) used by the expressions of the
/// dashboard and the alert rules.
fn metric_names_used() -> BTreeSet<String> {
    let mut expressions = Vec::new();
    let dashboard: Value = serde_json::from_str(&read("infra/grafana/backorder.json")).unwrap();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            expressions.push(str_of(&target["expr"]).to_string());
        }
    }
    let rules = read("infra/prometheus/backorder-rules.yml");
    let rules: String = rules
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    expressions.push(rules);
    let mut names = BTreeSet::new();
    for expression in &expressions {
        let bytes = expression.as_bytes();
        for (at, _) in expression.match_indices("backorder_") {
            if at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_' || bytes[at - 1] == b'-') {
                continue;
            }
            let end = expression[at..]
                .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
                .map_or(expression.len(), |e| at + e);
            names.insert(expression[at..end].to_string());
        }
        if expression.contains("up{") {
            names.insert("up".to_string());
        }
    }
    names
}

#[test]
fn the_dashboard_uses_its_datasource_variable_and_declares_units() {
    let dashboard: Value = serde_json::from_str(&read("infra/grafana/backorder.json")).unwrap();
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    assert!(
        variables
            .iter()
            .any(|v| v["name"] == "datasource" && v["type"] == "datasource" && v["query"] == "prometheus"),
        "a Prometheus datasource variable"
    );
    let mut rows = BTreeSet::new();
    let mut ids = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        assert!(ids.insert(panel["id"].as_i64().unwrap()), "panel ids are unique");
        let title = str_of(&panel["title"]);
        if panel["type"] == "row" {
            rows.insert(title.to_string());
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        assert!(panel["fieldConfig"]["defaults"]["unit"].is_string(), "{title}: no unit");
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no query");
        for target in targets {
            assert_eq!(target["datasource"]["uid"], "${datasource}", "{title}");
        }
    }
    for row in ["Pipeline", "Emails", "Fulfilment"] {
        assert!(rows.contains(row), "no {row} row");
    }
}

/// A Prometheus server (Debian's) in a temporary directory, killed on drop.
struct PrometheusServer {
    child: Child,
    url: String,
    dir: PathBuf,
}

impl PrometheusServer {
    fn start(targets: &[(&str, u16)], dir: PathBuf) -> Self {
        std::fs::create_dir_all(&dir).unwrap();
        let rules = repo()
            .join("infra/prometheus/backorder-rules.yml")
            .canonicalize()
            .unwrap();
        let mut config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n",
            rules.display()
        );
        for (job, port) in targets {
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
            ));
        }
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("prometheus (Debian's prometheus, installed by `make up`)");
        Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            dir,
        }
    }

    async fn get(&self, path: &str) -> Option<Value> {
        let response = reqwest::get(format!("{}{path}", self.url)).await.ok()?;
        let body: Value = response.json().await.ok()?;
        (body["status"] == "success").then(|| body["data"].clone())
    }

    async fn metric_names(&self) -> BTreeSet<String> {
        self.get("/api/v1/label/__name__/values")
            .await
            .and_then(|names| {
                names
                    .as_array()
                    .map(|a| a.iter().filter_map(|n| n.as_str().map(String::from)).collect())
            })
            .unwrap_or_default()
    }
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(self.dir.join("data"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_every_metric_the_dashboard_and_alerts_use() {
    let app = TestApp::spawn().await;
    let quota = [("BACKORDER_SES_DAILY_QUOTA", "1000")];
    let mut services: Vec<ServiceProcess> = Vec::new();
    for name in SERVICES {
        let extra: &[(&str, &str)] = if name == "sender" { &quota } else { &[] };
        services.push(app.start_service_with(name, extra).await);
    }

    // The Deployments' probes answer on the running binaries.
    let renderings = rendered_manifests();
    for deployment in of_kind(&renderings["base"], "Deployment") {
        let name = str_of(&deployment["metadata"]["name"]);
        let process = services.iter().find(|s| s.name == name).unwrap();
        let container = &deployment["spec"]["template"]["spec"]["containers"][0];
        for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
            let path = str_of(&container[probe]["httpGet"]["path"]);
            let status = reqwest::get(format!("http://127.0.0.1:{}{path}", process.http_port))
                .await
                .unwrap()
                .status();
            assert!(status.is_success(), "{name} {probe} {path}: {status}");
        }
    }

    // A little of everything: an order with a backordered line, a message
    // that cannot be decoded, stock for the line, a shipment delivered.
    let ada = app.recipient("ada");
    app.publish(STOCK, &stock::product("LAMP-OPS", "Desk lamp", 4900, 0))
        .await;
    app.publish(
        ORDERS,
        &order_placed(
            "o-ops",
            &ada,
            "en-GB",
            &[("LAMP-OPS", Backordered), ("MUG-OPS", InStock)],
        ),
    )
    .await;
    app.publish_raw(ORDERS, "garbage", b"not avro").await;
    scenario::wait_for_emails(&app, &ada, 1).await;
    app.publish(STOCK, &stock::arrival("arr-ops", "LAMP-OPS", 1)).await;
    scenario::wait_for_emails(&app, &ada, 2).await;
    app.publish(
        SHIPMENTS,
        &scenario::dispatched(&app, "o-ops", "s-ops", &["l1", "l2"]).await,
    )
    .await;
    app.publish(SHIPMENTS, &scenario::delivered(&app, "o-ops", "s-ops").await)
        .await;

    let targets: Vec<(&str, u16)> = services.iter().map(|s| (s.name.as_str(), s.http_port)).collect();
    let prometheus = PrometheusServer::start(&targets, app.log_dir.join("prometheus"));
    let needed = metric_names_used();
    assert!(needed.len() >= 20, "{needed:?}");
    // Polled until a deadline (not wait_until) so a failure names what is missing.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let missing = loop {
        let scraped = prometheus.metric_names().await;
        let missing: Vec<String> = needed.difference(&scraped).cloned().collect();
        if missing.is_empty() || tokio::time::Instant::now() >= deadline {
            break missing;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        missing.is_empty(),
        "used by the dashboard or the alerts but not served by any service: {missing:?}"
    );

    // Lag is reported per partition of each consumed topic.
    let orders_topic = app.topics.name(ORDERS);
    let query = format!("count(backorder_consumer_lag_messages{{topic=\"{orders_topic}\"}})");
    let orders_partitions = TOPICS.iter().find(|(t, _)| *t == ORDERS).unwrap().1;
    wait_until("a lag series per partition of orders.v1", PATIENCE, || async {
        let data = prometheus
            .get(&format!("/api/v1/query?query={}", urlencode(&query)))
            .await?;
        let count = data["result"][0]["value"][1].as_str()?.parse::<i32>().ok()?;
        (count == orders_partitions).then_some(())
    })
    .await;

    // The real server loaded the rules and evaluates every one cleanly.
    wait_until("every alert rule evaluated without error", PATIENCE, || async {
        let data = prometheus.get("/api/v1/rules").await?;
        let rules: Vec<&Value> = data["groups"]
            .as_array()?
            .iter()
            .flat_map(|g| g["rules"].as_array().into_iter().flatten())
            .collect();
        (rules.len() >= 10 && rules.iter().all(|r| r["health"] == "ok")).then_some(())
    })
    .await;
}

/// Percent-encodes a PromQL query for a URL.
fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_gauges_count_due_timers_and_overdue_promises() {
    let app = TestApp::spawn().await;
    let client = app.pool.get().await.unwrap();
    let now = chrono::Utc::now();
    let minutes = chrono::Duration::minutes;
    for (key, kind, due, state) in [
        ("n:1", "nurture", now - minutes(10), "pending"),
        ("n:2", "nurture", now - minutes(1), "pending"),
        ("n:3", "nurture", now + minutes(60), "pending"),
        ("n:4", "nurture", now - minutes(90), "fired"),
        ("w:1", "win-back", now - minutes(30), "cancelled"),
        ("x:1", "other-service", now - minutes(30), "pending"),
    ] {
        client
            .execute(
                "INSERT INTO timers (timer_key, kind, due_at, state) VALUES ($1, $2, $3, $4)",
                &[&key, &kind, &due, &state],
            )
            .await
            .unwrap();
    }
    let kinds = ["nurture".to_string(), "win-back".to_string()];
    let backlog = backorder_core::backlog::timer_backlog(&client, &kinds, now)
        .await
        .unwrap();
    assert_eq!(backlog.len(), 2);
    assert_eq!((backlog[0].kind.as_str(), backlog[0].due), ("nurture", 2));
    assert!(
        (backlog[0].oldest_overdue_seconds - 600.0).abs() < 1.0,
        "{:?}",
        backlog[0]
    );
    assert_eq!((backlog[1].kind.as_str(), backlog[1].due), ("win-back", 0));
    assert_eq!(backlog[1].oldest_overdue_seconds, 0.0);

    // Lines: one past its window by more than the day of grace, one within
    // it, one without a window, one past it but already shipped.
    client
        .batch_execute(
            "INSERT INTO customers (customer_id, email, name, locale, first_seen_at)
                  VALUES ('c', 'c@example.com', 'C', 'en-GB', now());
             INSERT INTO orders (order_id, customer_id, placed_at, currency, total_minor, event_id)
                  VALUES ('o', 'c', now(), 'EUR', 400, 'e');",
        )
        .await
        .unwrap();
    let today = now.date_naive();
    let days = chrono::Duration::days;
    for (line, promised_to, status) in [
        ("l1", Some(today - days(3)), "open"),
        ("l2", Some(today - days(1)), "open"),
        ("l3", None, "open"),
        ("l4", Some(today - days(10)), "shipped"),
    ] {
        client
            .execute(
                "INSERT INTO order_lines (order_id, line_id, sku, product_name, quantity, unit_price_minor,
                                          availability, status, promised_to, promise_told)
                 VALUES ('o', $1, 'LAMP', 'Lamp', 1, 100, 'BACKORDERED', $2, $3, true)",
                &[&line, &status, &promised_to],
            )
            .await
            .unwrap();
    }
    assert_eq!(
        backorder_core::backlog::overdue_promises(&client, now).await.unwrap(),
        1
    );
}
