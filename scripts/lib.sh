# Shared by the set-up scripts (setup.sh, setup-export.sh, setup-lab.sh, setup-rivals.sh); sourced,
# never run. Each set-up script is idempotent: it installs only what is missing.

PYTHON=${PYTHON:-python3}
# The onnxruntime version the project pins, in one place: the export tool's requirements.
ORT_PINNED=$(sed -n 's/.*"onnxruntime==\([0-9.]*\)".*/\1/p' "$(dirname "${BASH_SOURCE[0]}")/../export/pyproject.toml")

step() { printf '\n== %s\n' "$*"; }

# Installs those of the Debian packages PKG... that the caller found missing (none: says so).
apt_install() {
    if (($#)); then
        local sudo
        sudo=$([ "$(id -u)" = 0 ] || echo sudo)
        $sudo apt-get update -q
        $sudo apt-get install -y -q "$@"
    else
        echo "all present"
    fi
}

# ort_library VERSION PLATFORM FOLDER: ONNX Runtime's C library from the onnxruntime wheel of that
# version and platform (a manylinux tag: x86_64 or aarch64), taken from the wheel as a file (no
# virtualenv; the wheel's Python tag does not matter) to FOLDER/libonnxruntime.so, with the shared
# providers library beside it. Skipped when FOLDER already has it.
ort_library() {
    local version=$1 platform=$2 folder=$3 tmp
    if [ ! -f "$folder/libonnxruntime.so" ]; then
        tmp=$(mktemp -d)
        "$PYTHON" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
            --platform "manylinux_2_28_$platform" --python-version 3.11 "onnxruntime==$version" -d "$tmp"
        unzip -q -o -j "$tmp"/*.whl "onnxruntime/capi/libonnxruntime.so.$version" \
            onnxruntime/capi/libonnxruntime_providers_shared.so -d "$tmp/lib"
        mkdir -p "$folder"
        mv "$tmp/lib/libonnxruntime_providers_shared.so" "$folder/"
        mv "$tmp/lib/libonnxruntime.so.$version" "$folder/libonnxruntime.so" && rm -rf "$tmp"
    fi
    echo "$folder/libonnxruntime.so"
}
