"""The offline demo, end to end as CI runs it (about 8 minutes on 2 CPU cores): a synthetic world, a
CLIP trained contrastively on it, ClipCap trained on its embeddings, evaluated, exported; and the Rust
runtime captioning the exported bundle exactly as the PyTorch model does.

The BLEU-4 bar, 0.6, sits between what grammar alone earns and what the demo measures. Measured on
the demo's 200 test images: the caption of another random test image (perfect grammar, wrong scene)
scores BLEU-4 0.18, and one constant caption for every image ("a picture of two red circles on a blue
background.") 0.30, because the templates share most words; the trained demo scores 0.86
(demo/evaluation.md). Above 0.6 the model must get most colours, shapes, counts and places right.
"""

import json
import subprocess
import sys

from clipcap_export.bundle import read_manifest

BLEU4_BAR = 0.6


def test_demo_trains_exports_and_rust_matches_pytorch(tmp_path, gpt2_files, clipcap_binary, rust_env):
    out = tmp_path / "demo"
    subprocess.run([sys.executable, "-m", "clipcap_export.cli", "demo", "--out", str(out), "--tokenizer-dir",
                    str(gpt2_files)], check=True)
    summary = json.loads((out / "demo.json").read_text())
    assert summary["scores"]["BLEU-4"] >= BLEU4_BAR, summary["scores"]
    bundle = out / "bundle"
    assert sum(p.stat().st_size for p in bundle.iterdir()) < 20e6
    manifest = read_manifest(bundle)
    assert abs(manifest["provenance"]["evaluation"]["scores"]["bleu4"] - summary["scores"]["BLEU-4"]) < 1e-4
    assert manifest["provenance"]["training"]["prefix_length"] == 10

    data = json.loads((out / "world" / "dataset.json").read_text())
    images = [str(out / "world" / i["filepath"] / i["filename"]) for i in data["images"] if i["split"] == "test"][:8]
    checkpoint = sorted((out / "run").glob("checkpoint-*.pt"))[-1]
    ref = subprocess.run([sys.executable, "-m", "clipcap_export.cli", "caption", "--json", "--checkpoint",
                          str(checkpoint), "--tokenizer-dir", str(gpt2_files), "--max-tokens", "30", *images],
                         check=True, capture_output=True, text=True)
    rust = subprocess.run([str(clipcap_binary), "caption", "--json", "--decoder", "greedy", "--bundle", str(bundle),
                           *images], check=True, capture_output=True, text=True, env=rust_env)
    want = [json.loads(line) for line in ref.stdout.splitlines()]
    got = [json.loads(line) for line in rust.stdout.splitlines()]
    assert [g["token_ids"] for g in got] == [w["token_ids"] for w in want]
