"""scripts/profile_lm.py on the tiny bundle and an int8 copy: ONNX Runtime's profiler accounts a step's
time to the graph's operators, the projections among them (the timings themselves are not judged)."""

import json
import subprocess
import sys

from conftest import REPO

TINY = REPO / "tests" / "fixtures" / "tiny-bundle"


def test_a_step_is_profiled_per_operator_type(tmp_path):
    int8 = tmp_path / "int8"
    subprocess.run([sys.executable, "-m", "clipcap_export.cli", "quantize", str(TINY), "--precision", "int8",
                    "--out", str(int8)], check=True, cwd=REPO / "export")
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "profile_lm.py"), str(TINY), str(int8),
                          "--rows", "1", "3", "--steps", "3", "--threads", "1", "--json"],
                         check=True, capture_output=True, text=True)
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(r["bundle"], r["rows"]) for r in rows] == [(str(TINY), 1), (str(TINY), 3), (str(int8), 1), (str(int8), 3)]
    for r in rows:
        assert 0 < r["nodes_us"] and 0 < r["step_us"] and 0 < r["profiled_step_us"]
        assert abs(sum(r["ops"].values()) - r["nodes_us"]) < 1e-6 * r["nodes_us"] + 1e-9
    # The fp32 graph's projections are Gemm; the int8 graph's MatMulInteger, each fused by ONNX Runtime
    # with the quantisation of its input as the graph loads.
    assert "Gemm" in rows[0]["ops"]
    assert "DynamicQuantizeMatMul" in rows[2]["ops"] and "MatMulInteger" not in rows[2]["ops"]
