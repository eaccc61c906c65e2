"""scripts/bench_rivals.py end to end on a tiny random bundle: the reference loop, PyTorch with a KV
cache and ONNX Runtime from Python choose the same tokens, and clipcap's greedy caption has the same
length, so the timings compare like with like (the timings themselves are not judged here)."""

import json
import subprocess
import sys

from conftest import REPO


def test_rivals_run_the_same_caption_and_report_every_system(tmp_path, gpt2_files, clipcap_binary, rust_env):
    bundle = tmp_path / "bundle"
    subprocess.run([sys.executable, "-m", "clipcap_export.cli", "bundle", "--random-init", "tiny", "--max-tokens", "6",
                    "--tokenizer-dir", str(gpt2_files), "--out", str(bundle)], check=True, cwd=REPO / "export")
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_rivals.py"), "--bundle", str(bundle),
                          "--threads", "1", "--rounds", "2", "--clipcap", str(clipcap_binary), "--json"],
                         check=True, capture_output=True, text=True, env=rust_env)
    report = json.loads(out.stdout)
    assert report["same_tokens"] is True
    assert report["clipcap_steps"] == [5.0, 5.0]
    systems = {row["system"]: row for row in report["systems"]}
    assert list(systems) == ["reference", "pytorch-kv", "onnxruntime", "clipcap"]
    assert systems["clipcap"]["vs_clipcap"] == 1.0
    for row in systems.values():
        assert row["caption_ms"] > 0 and abs(row["ms_per_step"] - row["caption_ms"] / 5) < 1e-9
