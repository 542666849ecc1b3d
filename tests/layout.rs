//! The architecture the folders promise: every service depends on the
//! shared `services/core` crate and on no other service crate (one
//! service's internals are never another's contract).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::disallowed_methods)]

use std::path::PathBuf;

/// (package name, dependency names of every section) of each service crate.
fn service_crates() -> Vec<(String, Vec<String>)> {
    let services = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../services");
    let mut crates = Vec::new();
    for entry in std::fs::read_dir(&services).unwrap() {
        let manifest = entry.unwrap().path().join("Cargo.toml");
        let Ok(text) = std::fs::read_to_string(&manifest) else {
            continue;
        };
        let mut section = String::new();
        let mut name = String::new();
        let mut deps = Vec::new();
        for line in text.lines().map(str::trim) {
            if line.starts_with('[') {
                section = line.trim_matches(['[', ']']).to_string();
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let key = key.trim();
            if section == "package" && key == "name" {
                name = value.trim().trim_matches('"').to_string();
            } else if section.ends_with("dependencies") {
                deps.push(key.split('.').next().unwrap().trim().to_string());
            }
        }
        crates.push((name, deps));
    }
    crates
}

#[test]
fn no_service_crate_depends_on_another_service_crate() {
    let crates = service_crates();
    assert!(crates.len() >= 8, "every crate under services/ was read: {crates:?}");
    let services: Vec<&str> = crates
        .iter()
        .map(|(n, _)| n.as_str())
        .filter(|n| *n != "backorder-core")
        .collect();
    for (name, deps) in &crates {
        for dep in deps {
            assert!(
                !services.contains(&dep.as_str()),
                "{name} depends on the service crate {dep}: move what they share into services/core"
            );
        }
    }
}
