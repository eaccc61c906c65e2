#!/usr/bin/env bash
# The daemon's CPU time on a real V4L2 camera: the vivid driver in the test VM (tests/vivid/run.sh),
# YUYV 640x480 at 15 fps, captions every 1 s (the defaults) and every 60 s (capture alone), each
# measured over SECONDS from /proc/PID/stat. Prints one line per interval: CPU seconds, frames
# captured and captions in the window. Run it on two builds to compare them.
# usage: scripts/capture_cpu.sh [CLIPCAP_BINARY] [SECONDS]   (default target/release/clipcap, 60)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
clipcap=${1:-$root/target/release/clipcap} seconds=${2:-60}
ort=$root/.cache/onnxruntime/libonnxruntime.so  # as .cargo/config.toml sets ORT_DYLIB_PATH
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
timeout $((seconds * 2 + 600)) "$root/tests/vivid/run.sh" "$work" "$clipcap" "$root/target/release" \
    "$root/demo/bundle" "$ort" "$seconds" | tee "$work/console.log" | sed -n 's/^CLIPCAP-VM //p'
