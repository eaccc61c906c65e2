#!/usr/bin/env bash
# llama.cpp for scripts/bench_rivals.py, which runs this on first use; safe to re-run:
#   - llama-cpp-python in export/.venv (pip builds llama.cpp from source: 4 to 11 minutes on 2 cores),
#   - llama.cpp's GGUF converter from the same source release, in .cache/llama.cpp.
# Needs the export tool's virtualenv (scripts/setup-export.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

LLAMA_CPP_PYTHON=0.3.36

[ -x export/.venv/bin/python ] || { echo "export/.venv missing: run scripts/setup-export.sh" >&2; exit 1; }

step "llama.cpp for scripts/bench_rivals.py (export/.venv, .cache/llama.cpp)"
# Built for this CPU (-march=native) but without ggml's AMX kernels: on AMX machines (Sapphire Rapids)
# llama_decode segfaults in ggml_backend_amx_mul_mat on the tests' tiny GGUF files, and segfaults at
# Q8_0 and Q4_0 on the full-size model too (BENCHMARKS.md, "What we tried"). -U of the compiler's own
# __AMX_INT8__ is what compiles them out, since -march=native is added after CXXFLAGS.
# --no-cache-dir: pip's wheel cache does not key on these flags. A build with AMX is replaced.
# LLAVA_BUILD=OFF leaves out the multimodal library (mtmd), which bench_rivals does not load.
if ! export/.venv/bin/python -c 'import llama_cpp, sys
sys.exit("AMX_INT8 = 1" in llama_cpp.llama_print_system_info().decode())' 2>/dev/null; then
    echo "building llama-cpp-python $LLAMA_CPP_PYTHON from source (4 to 11 minutes on 2 cores, once)"
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
