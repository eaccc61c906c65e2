"""Where a language-model step's time goes: ONNX Runtime's own profiler on a bundle's lm.onnx, one
decoding step (one new token a row over a cache of `--past` positions, as clipcap's full padding
runs it) at each `--rows`, summed per operator type.

    export/.venv/bin/python scripts/profile_lm.py /tmp/full20 /tmp/full20-int8 --rows 1 5

For each bundle and row count: the wall time of a step (median of `--steps`, without the profiler),
the mean step with the profiler on and the share of it the profiler attributes to nodes, and the
operator types by time (milliseconds a step, and share of the profiled step). What the nodes do not
account for is ONNX Runtime's own work between them (allocation, the executor, copying inputs and
outputs); what clipcap adds around a run (gathering rows' caches, copying logits) is `clipcap bench`'s
model/step minus this step's time.
"""

import argparse
import json
import statistics
import tempfile
import time
import tomllib
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnxruntime as ort

from clipcap_export.graphs import lm_feeds, lm_input_names


def session(path: Path, threads: int, profile_dir: str | None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if profile_dir is not None:
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(profile_dir) / "lm")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def feeds(names: list[str], spec: dict, rows: int, past: int) -> dict[str, np.ndarray]:
    heads, width, layers = spec["heads"], spec["width"], spec["layers"]
    rng = np.random.default_rng(0)
    caches = [rng.standard_normal((rows, heads, past, width // heads), dtype=np.float32) for _ in range(2 * layers)]
    return lm_feeds(names, np.zeros((rows, 0, width), np.float32), np.full((rows, 1), 11, np.int64),
                    [past] * rows, caches)


def profile(bundle: Path, rows: int, past: int, steps: int, threads: int) -> dict:
    manifest = tomllib.loads((bundle / "manifest.toml").read_text())
    spec = manifest["language_model"]
    path = bundle / spec["file"]
    names = lm_input_names(spec["layers"])
    inputs = feeds(names, spec, rows, past)
    plain = session(path, threads, None)
    for _ in range(3):
        plain.run(None, inputs)
    walls = []
    for _ in range(steps):
        t = time.perf_counter()
        plain.run(None, inputs)
        walls.append((time.perf_counter() - t) * 1e6)
    del plain
    with tempfile.TemporaryDirectory() as tmp:
        profiled = session(path, threads, tmp)
        for _ in range(3 + steps):
            profiled.run(None, inputs)
        events = json.loads(Path(profiled.end_profiling()).read_text())
    per_op: dict[str, float] = defaultdict(float)
    runs = [e for e in events if e.get("cat") == "Session" and e["name"] == "model_run"][3:]
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= runs[0]["ts"]:
            per_op[e["args"]["op_name"]] += e["dur"] / steps
    return {"bundle": str(bundle), "rows": rows, "past": past, "step_us": statistics.median(walls),
            "profiled_step_us": statistics.mean(e["dur"] for e in runs), "nodes_us": sum(per_op.values()),
            "ops": dict(sorted(per_op.items(), key=lambda kv: -kv[1]))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundles", type=Path, nargs="+")
    p.add_argument("--rows", type=int, nargs="+", default=[1, 5], help="rows a step (5: beam search's 5 beams)")
    p.add_argument("--past", type=int, default=29, help="cache positions (full padding pads to the bundle's longest)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", action="store_true", help="one JSON object a line instead of the tables")
    args = p.parse_args()
    for bundle in args.bundles:
        for rows in args.rows:
            r = profile(bundle, rows, args.past, args.steps, args.threads)
            if args.json:
                print(json.dumps(r))
                continue
            whole = r["profiled_step_us"]
            print(f"{bundle} rows={rows} past={args.past}: step {r['step_us'] / 1e3:.2f} ms ({whole / 1e3:.2f} ms "
                  f"profiled), nodes {r['nodes_us'] / 1e3:.2f} ms ({r['nodes_us'] / whole:.0%} of the profiled step)")
            for op, us in list(r["ops"].items())[:8]:
                print(f"  {op:28s} {us / 1e3:8.3f} ms  {us / whole:6.1%}")


if __name__ == "__main__":
    main()
