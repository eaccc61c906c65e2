"""scripts/bench_rivals.py end to end on a tiny random bundle and a quantised copy of it: the reference
loop, PyTorch with a KV cache, ONNX Runtime from Python and llama.cpp at F32 (the prefix fed as
embeddings) choose the same tokens, and clipcap's greedy caption has the same length, so the timings
compare like with like (the timings themselves are not judged here)."""

import json
import subprocess
import sys

from conftest import REPO


def test_rivals_run_the_same_caption_and_report_every_system(tmp_path, gpt2_files, clipcap_binary, rust_env):
    bundle, int8 = tmp_path / "bundle", tmp_path / "int8"
    export = [sys.executable, "-m", "clipcap_export.cli"]
    subprocess.run([*export, "bundle", "--random-init", "tiny", "--max-tokens", "6", "--tokenizer-dir", str(gpt2_files),
                    "--out", str(bundle)], check=True, cwd=REPO / "export")
    subprocess.run([*export, "quantize", str(bundle), "--precision", "int8", "--out", str(int8)], check=True,
                   cwd=REPO / "export")
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_rivals.py"), "--bundle", str(bundle),
                          "--quantized", str(int8), "--threads", "1", "--rounds", "2", "--clipcap", str(clipcap_binary),
                          "--json"], check=True, capture_output=True, text=True, env=rust_env)
    report = json.loads(out.stdout)
    assert report["same_tokens"] is True
    assert report["clipcap_steps"] == [5.0] * 4  # 2 rounds x 2 bundles
    systems = {row["system"]: row for row in report["systems"]}
    llama = [f"llama.cpp {t}" for t in ("F32", "F16", "Q8_0", "Q4_0")]
    assert list(systems) == ["reference", "pytorch-kv", "onnxruntime", *llama, "clipcap fp32", "clipcap int8"]
    assert systems["clipcap fp32"]["vs_clipcap"] == 1.0
    for name in ["pytorch-kv", "onnxruntime", "llama.cpp F32"]:
        assert systems[name]["token_agreement"] == 1.0, name
    for name in llama:
        assert 0 <= systems[name]["token_agreement"] <= 1
    for row in systems.values():
        assert row["caption_ms"] > 0 and abs(row["ms_per_step"] - row["caption_ms"] / 5) < 1e-9
