#!/usr/bin/env bash
# Set-up for the main job, captioning and the daemon, on Debian/Ubuntu; safe to re-run:
#   - the Debian packages the build needs that are missing (C compiler, libclang for the v4l crate's
#     bindgen, pip and unzip to take ONNX Runtime's library from its wheel),
#   - ONNX Runtime's library from the pinned onnxruntime wheel, as a file (.cache/onnxruntime/, which
#     `cargo test` and `cargo run` use; no virtualenv),
#   - a release build of clipcap, with libonnxruntime.so and the decoder plugins next to
#     target/release/clipcap.
# About 6 minutes on a fresh 2-core machine, most of it the Rust build. The test lab (setup-lab.sh,
# which scripts/test.sh runs), the export tool's virtualenv (setup-export.sh) and the benchmark's
# rivals (setup-rivals.sh) have set-ups of their own.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

step "system packages"
missing=()
command -v cc >/dev/null || missing+=(build-essential)
compgen -G '/usr/lib/*/libclang-1[0-9].so*' >/dev/null || missing+=(libclang1-14)  # the v4l crate's bindgen
"$PYTHON" -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
command -v unzip >/dev/null || missing+=(unzip)
command -v cargo >/dev/null || { echo "cargo not found: install Rust with rustup (https://rustup.rs)" >&2; exit 1; }
apt_install "${missing[@]}"

step "ONNX Runtime $ORT_PINNED's library (.cache/onnxruntime)"
lib=$(ort_library "$ORT_PINNED" "$(uname -m)" .cache/onnxruntime)

step "release build (target/release/clipcap and its decoder plugins)"
cargo build --release --locked --workspace
cp "$lib" "$(dirname "$lib")/libonnxruntime_providers_shared.so" target/release/
# The default config looks for plugins in plugins/ next to the executable; the test-only
# misbehave plugin stays out.
mkdir -p target/release/plugins
for p in search sampling contrastive; do
    install -m 0644 "target/release/libclipcap_$p.so" target/release/plugins/
done
ls target/release/plugins
echo "ready: target/release/clipcap caption --bundle demo/bundle demo/images/*.png"
