#!/usr/bin/env bash
# The whole test suite: formatting and lints, the Rust workspace's tests, the export tool's tests.
# Needs scripts/setup.sh to have run once.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo build --workspace --locked   # export/tests drive target/debug/clipcap
cargo test --workspace --locked
export/.venv/bin/python -m pytest -q export/tests
