#!/usr/bin/env bash
# The test lab: what scripts/test.sh needs beyond scripts/setup.sh, on Debian/Ubuntu; safe to re-run
# (test.sh runs it first, and it installs only what is missing):
#   - Debian packages: Java for the metrics' reference (pycocoevalcap's PTB tokenizer), qemu and a
#     busybox for the vivid camera VM, Chromium and chromedriver for the kiosk page, mosquitto for
#     the MQTT tests, minisign for signed bundles and plugins, systemd-analyze, iproute2 for the
#     ROS 2 test's network namespace, qemu-user and the aarch64 C++ library to run the aarch64 build
#     (scripts/cross.sh installs the cross compiler),
#   - the export tool's virtualenv and GPT-2's tokenizer files (scripts/setup-export.sh),
#   - Eclipse Cyclone DDS's Python binding in export/.venv, the independent ROS 2 peer of tests/ros2.rs,
#   - ONNX Runtime's library of the oldest supported version, for x86-64 (tests/cli.rs) and aarch64
#     (tests/aarch64.rs), from its wheels, in .cache/,
#   - Debian's kernel and media modules in .cache/vm (tests/vivid.rs boots them in qemu).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

CYCLONEDDS=11.0.1
# The oldest onnxruntime wheel on PyPI that ships libonnxruntime.so: tests prove the binary runs on it.
ORT_OLDEST=1.19.2

step "system packages for the tests"
missing=()
command -v java >/dev/null || missing+=(default-jre-headless)  # pycocoevalcap: PTB tokenizer, METEOR
command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
command -v v4l2-ctl >/dev/null || missing+=(v4l-utils)
dpkg -s busybox-static >/dev/null 2>&1 || missing+=(busybox-static)
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
command -v mosquitto >/dev/null || missing+=(mosquitto)
command -v minisign >/dev/null || missing+=(minisign)  # signed bundles and plugins (tests/trust.rs)
command -v mosquitto_sub >/dev/null || missing+=(mosquitto-clients)
command -v systemd-analyze >/dev/null || missing+=(systemd)
PATH=$PATH:/usr/sbin command -v ip >/dev/null || missing+=(iproute2)
dpkg -s libstdc++6-arm64-cross >/dev/null 2>&1 || missing+=(libstdc++6-arm64-cross)  # ONNX Runtime's
command -v qemu-aarch64 >/dev/null || missing+=(qemu-user)
apt_install "${missing[@]}"

bash scripts/setup-export.sh

step "Cyclone DDS for tests/ros2.rs (export/.venv)"
# --no-deps: its one dependency, rich-click, serves only its command-line tools.
export/.venv/bin/python -c 'import cyclonedds' 2>/dev/null ||
    export/.venv/bin/pip install -q --disable-pip-version-check --no-deps "cyclonedds==$CYCLONEDDS"

step "ONNX Runtime $ORT_OLDEST's libraries, x86-64 and aarch64 (.cache/onnxruntime-*$ORT_OLDEST)"
ort_library "$ORT_OLDEST" x86_64 ".cache/onnxruntime-$ORT_OLDEST"
ort_library "$ORT_OLDEST" aarch64 ".cache/onnxruntime-aarch64-$ORT_OLDEST"

step "Linux kernel with the vivid virtual camera, for tests/vivid.rs (.cache/vm)"
if [ ! -f .cache/vm/vmlinuz ]; then
    kernel() { apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}'; }
    pkg=$(kernel)
    sudo=$([ "$(id -u)" = 0 ] || echo sudo)
    [ -n "$pkg" ] || { $sudo apt-get update -q; pkg=$(kernel); }
    tmp=$(mktemp -d)
    (cd "$tmp" && apt-get download -q "$pkg" && dpkg-deb -x ./*.deb x)
    mkdir -p .cache/vm
    cp "$tmp"/x/boot/vmlinuz-* .cache/vm/vmlinuz
    cp -r "$tmp"/x/lib/modules/*/kernel/drivers/media .cache/vm/  # vivid and its dependencies
    rm -rf "$tmp"
fi
ls .cache/vm/vmlinuz
