//! The layering ARCHITECTURE.md draws, held by the build: `clipcap-core` (the model path) depends on
//! nothing of the configuration file, the command line or the daemon, directly or through another
//! crate, and the plugin SDK depends on nothing at all (read from `cargo metadata`'s resolved graph);
//! and within each crate no modules depend on each other in a cycle (read from the sources: see
//! tests/modules).

mod modules;

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
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

/// Every package `root` depends on, directly or not (normal dependencies only), by name. A procedural
/// macro is in it, but not what the macro itself depends on: that is built for the compiler and runs
/// in it, and none of it is linked into `root` (prost's derive, for one, uses anyhow).
fn closure(metadata: &Value, root: &str) -> BTreeSet<String> {
    let packages = metadata["packages"].as_array().unwrap();
    let name_of: HashMap<&str, &str> = packages
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p["name"].as_str().unwrap()))
        .collect();
    let macros: BTreeSet<&str> = packages
        .iter()
        .filter(|p| {
            p["targets"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t["kind"].as_array().unwrap().iter().any(|k| k == "proc-macro"))
        })
        .map(|p| p["id"].as_str().unwrap())
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
            if normal && seen.insert(name_of[dep_id].to_string()) && !macros.contains(dep_id) {
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
    // The check sees real edges: core does depend on ONNX Runtime's binding and the SDK, and on
    // procedural macros (prost's derive), though not on what they are built with.
    assert!(deps.contains("ort") && deps.contains("clipcap-plugin-sdk"), "{deps:?}");
    assert!(deps.contains("prost-derive"), "{deps:?}");
}

#[test]
fn the_plugin_sdk_depends_on_nothing() {
    let deps = closure(&metadata(), "clipcap-plugin-sdk");
    assert!(deps.is_empty(), "{deps:?}");
}

/// The cycles of the crate rooted at `root`, one line per edge.
fn cycles(root: &Path) -> Vec<String> {
    modules::Crate::read(root)
        .cycles()
        .into_iter()
        .flat_map(|(parent, edges)| {
            edges
                .into_iter()
                .map(move |e| format!("in {parent}: {} -> {} ({})", e.from, e.to, e.at))
        })
        .collect()
}

#[test]
fn no_modules_depend_on_each_other_in_a_cycle() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    for root in ["src/lib.rs", "src/main.rs", "core/src/lib.rs"] {
        let found = cycles(&repo.join(root));
        assert!(found.is_empty(), "module cycles in {root}:\n{}", found.join("\n"));
    }
}

#[test]
fn the_cycle_check_sees_a_planted_cycle_and_lets_modules_use_their_own_parts() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    write("lib.rs", "mod a;\nmod b;\nmod c;\n");
    // a and b use each other, b through a braced group over two lines and a path in a body.
    write("a.rs", "use crate::b::Thing;\npub struct Other;\n");
    write(
        "b.rs",
        "use crate::{\n    c,\n};\npub struct Thing;\nfn f() -> crate::a::Other { crate::a::Other }\n",
    );
    // c and its submodule use each other (a parent re-exporting a child's item): no cycle; nor is a
    // path in a comment or a string.
    write(
        "c/mod.rs",
        "mod d;\npub use d::Part;\npub struct Whole;\n// crate::a::Other\nconst S: &str = \"crate::a\";\n",
    );
    write("c/d.rs", "use super::Whole;\npub struct Part;\n");
    let found = cycles(&dir.path().join("lib.rs"));
    let lib = dir.path().display().to_string();
    assert_eq!(
        found,
        [
            format!("in crate: a -> b ({lib}/a.rs:1)"),
            format!("in crate: b -> a ({lib}/b.rs:5)"),
        ],
        "{found:#?}"
    );
}
