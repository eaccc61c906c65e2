//! The layering ARCHITECTURE.md draws, held by the build: `clipcap-core` (the model path) depends on
//! nothing of the configuration file, the command line or the daemon, directly or through another
//! crate, and the plugin SDK depends on nothing at all. Read from `cargo metadata`'s resolved graph.

use std::collections::{BTreeSet, HashMap};
use std::process::Command;

use serde_json::Value;

/// Crates of the binary's edge: configuration, CLI, async runtime, HTTP, metrics, camera, errors.
const EDGE: &[&str] = &[
    "anyhow",
    "axum",
    "clap",
    "config",
    "hyper",
    "prometheus",
    "sd-notify",
    "tokio",
    "v4l",
    "clipcap",
];

/// Every package `root` depends on, directly or not (normal dependencies only), by name.
fn closure(metadata: &Value, root: &str) -> BTreeSet<String> {
    let name_of: HashMap<&str, &str> = metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p["name"].as_str().unwrap()))
        .collect();
    let nodes: HashMap<&str, &Value> = metadata["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["id"].as_str().unwrap(), n))
        .collect();
    let start = name_of.iter().find(|(_, n)| **n == root).map(|(id, _)| *id);
    let mut todo: Vec<&str> = vec![start.unwrap_or_else(|| panic!("no package {root}"))];
    let mut seen = BTreeSet::new();
    while let Some(id) = todo.pop() {
        for dep in nodes[id]["deps"].as_array().unwrap() {
            let normal = dep["dep_kinds"].as_array().unwrap().iter().any(|k| k["kind"].is_null());
            let dep_id = dep["pkg"].as_str().unwrap();
            if normal && seen.insert(name_of[dep_id].to_string()) {
                todo.push(dep_id);
            }
        }
    }
    seen
}

fn metadata() -> Value {
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--locked", "--manifest-path"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn the_model_path_knows_nothing_of_config_cli_or_daemon() {
    let deps = closure(&metadata(), "clipcap-core");
    let found: Vec<&&str> = EDGE.iter().filter(|e| deps.contains(**e)).collect();
    assert!(found.is_empty(), "clipcap-core depends on {found:?}; all: {deps:?}");
    // The check sees real edges: core does depend on ONNX Runtime's binding and the SDK.
    assert!(deps.contains("ort") && deps.contains("clipcap-plugin-sdk"), "{deps:?}");
}

#[test]
fn the_plugin_sdk_depends_on_nothing() {
    let deps = closure(&metadata(), "clipcap-plugin-sdk");
    assert!(deps.is_empty(), "{deps:?}");
}
