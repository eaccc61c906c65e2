#!/usr/bin/env bash
# clipcap for aarch64 (Jetson-class devices), cross-built here with Debian's toolchain:
#   target/aarch64-unknown-linux-gnu/release/clipcap and its decoder plugins (tests/aarch64.rs runs
#   them under qemu-user), and target/clipcap-aarch64.tar.gz: what systemd/install.sh installs (binary, plugins, unit, config,
#   the demo bundle, and the aarch64 onnxruntime wheel's CPU library), under its FHS paths.
# On a Jetson, point runtime.onnxruntime_library at JetPack's ONNX Runtime instead (docs/jetson.md).
# Needs scripts/setup.sh to have run once (cross compiler, the Rust target, the aarch64 library).
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=aarch64-unknown-linux-gnu
# bindgen (the v4l crate's V4L2 bindings) reads the kernel headers of the target's sysroot.
export BINDGEN_EXTRA_CLANG_ARGS_aarch64_unknown_linux_gnu=--sysroot=/usr/aarch64-linux-gnu
cargo build --release --locked --workspace --target $TARGET
build=target/$TARGET/release

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
DESTDIR=$stage/root BUILD=$build ONNXRUNTIME=.cache/onnxruntime-aarch64/libonnxruntime.so bash systemd/install.sh
tar czf target/clipcap-aarch64.tar.gz -C "$stage/root" .
ls -l "$build/clipcap" target/clipcap-aarch64.tar.gz
tar tzf target/clipcap-aarch64.tar.gz | grep -v '/$'
