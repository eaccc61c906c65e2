#!/usr/bin/env bash
# The GPU benchmark, for a machine with an NVIDIA GPU: `clipcap bench` on the full-size bundle (fp32
# and fp16) with the CPU, CUDA and TensorRT providers, then bench_rivals.py --device cuda (PyTorch on
# the GPU, ONNX Runtime's CUDA provider from Python, clipcap) for the same greedy caption. Sized to
# finish within 10 minutes on a data-centre GPU with 16 cores; everything goes to OUT (default
# target/gpu-bench), the tables to OUT/tables.md.
#
# Needs scripts/setup.sh's build and the export virtualenv (scripts/setup-export.sh), with two changes the machine must already
# have or be able to install: the `onnxruntime-gpu` wheel in place of `onnxruntime` (its library
# brings the CUDA and TensorRT providers; TensorRT's own libraries must be on the loader's path for
# the TensorRT rows), and a CUDA build of PyTorch for the PyTorch rows. Both ONNX Runtime wheels
# install the same `onnxruntime` package, so the CPU one goes first:
#
#   export/.venv/bin/pip uninstall -y onnxruntime   # once
#   export/.venv/bin/pip install onnxruntime-gpu==1.23.2 tensorrt-cu12-libs
#   bash scripts/gpu-bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
py=export/.venv/bin/python
out=$(realpath -m "${1:-target/gpu-bench}")
mkdir -p "$out"
export PYTHONWARNINGS=ignore

nvidia-smi -L || { echo "gpu-bench: no NVIDIA GPU (nvidia-smi -L failed)" >&2; exit 2; }
lib=$("$py" - <<'PY'
import sys
from pathlib import Path
import onnxruntime
if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
    sys.exit(f"gpu-bench: onnxruntime {onnxruntime.__version__} has no CUDA provider; install onnxruntime-gpu")
print(min(Path(onnxruntime.__file__).parent.glob("capi/libonnxruntime.so*")))
PY
)
"$py" -c 'import torch, sys; torch.cuda.is_available() or sys.exit("gpu-bench: PyTorch has no CUDA (install a CUDA build of torch)")'
[ -x target/release/clipcap ] || cargo build --release --locked
export ORT_DYLIB_PATH=$lib CLIPCAP__PLUGINS__DIRECTORIES=$PWD/target/release/plugins
# clipcap loads libonnxruntime.so itself, so the CUDA, cuDNN and TensorRT libraries that the wheels
# bring (nvidia-*-cu12 with PyTorch, tensorrt-cu12-libs) must be on the loader's path.
site=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
for d in "$site"/nvidia/*/lib "$site"/tensorrt_libs; do
    [ -d "$d" ] && LD_LIBRARY_PATH=$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
done
export LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}

# The full-size shapes (CLIP ViT-B/32, GPT-2 124M) with seeded random weights; 20-token captions.
if [ ! -f "$out/full20/manifest.toml" ]; then
    (cd export && .venv/bin/clipcap-export bundle --random-init full --max-tokens 20 --out "$out/full20")
fi
if [ ! -f "$out/full20-fp16/manifest.toml" ]; then
    (cd export && .venv/bin/clipcap-export quantize "$out/full20" --precision fp16 --out "$out/full20-fp16")
fi

images=(tests/fixtures/images/astronaut.png tests/fixtures/images/coffee.png)
bench() { # NAME BUNDLE PROVIDERS [CONFIG=VALUE...]
    local name=$1 bundle=$2 providers=$3
    shift 3
    echo "### $name ($(basename "$bundle"), providers $providers)" | tee -a "$out/tables.md"
    env CLIPCAP__RUNTIME__PROVIDERS="$providers" "$@" target/release/clipcap bench --bundle "$bundle" \
        --decoder greedy --decoder beam:num_beams=5 --runs 3 "${images[@]}" 2> "$out/$name.log" |
        tee -a "$out/tables.md"
}
: > "$out/tables.md"
bench cpu "$out/full20" cpu
bench cuda "$out/full20" cuda,cpu
bench cuda-fp16 "$out/full20-fp16" cuda,cpu
# TensorRT twice on one engine cache: the first start builds the engines, the second reuses them
# (compare "first caption ... after the process started").
rm -rf "$out/trt-cache"
trt=(CLIPCAP__RUNTIME__TENSORRT_CACHE="$out/trt-cache" RUST_LOG=info)
bench tensorrt-build "$out/full20" tensorrt,cuda,cpu "${trt[@]}"
bench tensorrt "$out/full20" tensorrt,cuda,cpu "${trt[@]}"

echo "### rivals on the GPU (greedy, 20 tokens)" | tee -a "$out/tables.md"
"$py" scripts/bench_rivals.py --device cuda --no-llama --bundle "$out/full20" --quantized "$out/full20-fp16" \
    --threads "$(nproc)" | tee -a "$out/tables.md"
echo "gpu-bench: tables in $out/tables.md"
