"""scripts/bench_rivals.py end to end on a tiny random bundle and a quantised copy of it, with the
rivals the test lab has (llama.cpp is the benchmark's own, built by scripts/setup-rivals.sh on first
use): the reference loop, PyTorch with a KV cache and ONNX Runtime from Python choose the same tokens,
and clipcap's greedy caption has the same length, so the timings compare like with like (the timings
themselves are not judged here). A rival that must agree and does not fails the run."""

import importlib.util
import json
import subprocess
import sys

import pytest
from conftest import REPO


def bench_rivals():
    spec = importlib.util.spec_from_file_location("bench_rivals", REPO / "scripts" / "bench_rivals.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rivals_run_the_same_caption_and_report_every_system(tmp_path, gpt2_files, clipcap_binary, rust_env):
    bundle, int8 = tmp_path / "bundle", tmp_path / "int8"
    export = [sys.executable, "-m", "clipcap_export.cli"]
    subprocess.run([*export, "bundle", "--random-init", "tiny", "--max-tokens", "6", "--tokenizer-dir", str(gpt2_files),
                    "--out", str(bundle)], check=True, cwd=REPO / "export")
    subprocess.run([*export, "quantize", str(bundle), "--precision", "int8", "--out", str(int8)], check=True,
                   cwd=REPO / "export")
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_rivals.py"), "--bundle", str(bundle),
                          "--quantized", str(int8), "--threads", "1", "--rounds", "2", "--clipcap", str(clipcap_binary),
                          "--no-llama", "--json"], check=True, capture_output=True, text=True, env=rust_env)
    report = json.loads(out.stdout)
    assert report["clipcap_steps"] == [5.0] * 4  # 2 rounds x 2 bundles
    systems = {row["system"]: row for row in report["systems"]}
    # With several captions at once (--streams 4): clipcap at concurrency 4 on each bundle.
    assert list(systems) == ["reference", "pytorch-kv", "onnxruntime", "clipcap fp32", "clipcap int8",
                             "clipcap fp32 x4", "clipcap int8 x4"]
    assert systems["clipcap fp32"]["vs_clipcap"] == 1.0
    for name in ["reference", "pytorch-kv", "onnxruntime"]:
        assert systems[name]["token_agreement"] == 1.0, name
    for row in systems.values():
        assert row["caption_ms"] > 0 and abs(row["ms_per_step"] - row["caption_ms"] / 5) < 1e-9


def test_a_rival_that_must_agree_and_does_not_fails_the_run_naming_it():
    check = bench_rivals().check_agreement
    reference = [5, 6, 7]
    # Quantised rivals may choose other tokens.
    check({"reference": reference, "pytorch-kv": reference, "llama.cpp F32": reference, "llama.cpp Q4_0": [1, 2, 3]})
    with pytest.raises(SystemExit) as failed:
        check({"reference": reference, "pytorch-kv": reference, "onnxruntime": [5, 6, 8],
               "llama.cpp F32": [9, 6, 7], "llama.cpp Q8_0": [1, 2, 3]})
    message = str(failed.value.code)
    assert "FAILED: onnxruntime, llama.cpp F32 chose other tokens" in message
    assert "[5, 6, 8]" in message and "[9, 6, 7]" in message and "Q8_0" not in message
