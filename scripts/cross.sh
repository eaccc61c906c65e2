#!/usr/bin/env bash
# clipcap for aarch64 (Jetson-class devices), cross-built here with Debian's toolchain:
#   bash scripts/cross.sh          target/aarch64-unknown-linux-gnu/release/clipcap and its decoder
#                                  plugins, and target/clipcap-aarch64.tar.gz: what systemd/install.sh
#                                  installs (binary, plugins, unit, config, the demo bundle, and the
#                                  aarch64 onnxruntime wheel's CPU library), under its FHS paths;
#   bash scripts/cross.sh --test   the same build in the cross-test profile (Cargo.toml: it compiles
#                                  faster), which tests/aarch64.rs runs under qemu-user; no tarball.
# On a Jetson, point runtime.onnxruntime_library at JetPack's ONNX Runtime instead (docs/jetson.md).
# Installs what it needs on first use: Debian's cross compiler, Rust's aarch64 target, and the
# aarch64 library of the pinned onnxruntime wheel (.cache/onnxruntime-aarch64).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
TARGET=aarch64-unknown-linux-gnu
profile=release
case ${1:-} in
    --test) profile=cross-test ;;
    "") ;;
    *) echo "usage: scripts/cross.sh [--test]" >&2; exit 2 ;;
esac

step "the cross toolchain, Rust's $TARGET target, and ONNX Runtime's aarch64 library"
missing=()
command -v aarch64-linux-gnu-gcc >/dev/null || missing+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
apt_install "${missing[@]}"
rustup target list --installed | grep -qx $TARGET || rustup target add $TARGET
ort=$(ort_library "$ORT_PINNED" aarch64 .cache/onnxruntime-aarch64)

step "build ($profile profile)"
# bindgen (the v4l crate's V4L2 bindings) reads the kernel headers of the target's sysroot.
export BINDGEN_EXTRA_CLANG_ARGS_aarch64_unknown_linux_gnu=--sysroot=/usr/aarch64-linux-gnu
cargo build --profile $profile --locked --workspace --target $TARGET
build=target/$TARGET/$profile
ls -l "$build/clipcap"
[ $profile = release ] || exit 0

step "target/clipcap-aarch64.tar.gz"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
DESTDIR=$stage/root BUILD=$build ONNXRUNTIME=$ort bash systemd/install.sh
tar czf target/clipcap-aarch64.tar.gz -C "$stage/root" .
ls -l target/clipcap-aarch64.tar.gz
tar tzf target/clipcap-aarch64.tar.gz | grep -v '/$'
