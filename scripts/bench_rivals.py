"""clipcap against what a user would run instead, in one run, on the same machine, threads and shapes:
a greedy caption of a fixed length from a prefix of embeddings, on GPT-2 with the weights of a
`clipcap-export bundle --random-init` bundle (rebuilt here from the same seed).

- reference: ClipCap's own loop (`generate2`): no KV cache, the whole sequence re-run every step;
- pytorch-kv: transformers' GPT-2 with its KV cache;
- onnxruntime: the bundle's lm.onnx driven from Python (what clipcap adds or loses on top of the
  runtime itself);
- clipcap: `clipcap bench --json` on the same bundle, in a subprocess, between the rounds.

Rounds alternate between the systems, so that drift of a noisy machine spreads over all of them.
Per-step time is counted as clipcap's `model/step`: (prefix pass + steps) / steps, a caption of
`tokens` tokens taking tokens - 1 steps. The bundle's tokenizer.max_tokens must equal `tokens`
(export it with `--max-tokens`), so that clipcap's greedy caption has the same length.

    (cd export && .venv/bin/clipcap-export bundle --random-init full --max-tokens 20 --out /tmp/full20)
    export/.venv/bin/python scripts/bench_rivals.py --bundle /tmp/full20 --threads 2
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from clipcap_export.models import Source, load_gpt2

REPO = Path(__file__).resolve().parents[1]


def reference(model, prefix: torch.Tensor, tokens: int) -> list[int]:
    embeds, out = prefix, []
    for _ in range(tokens):
        logits = model(inputs_embeds=embeds).logits[:, -1]
        token = logits.argmax(-1)
        out.append(int(token))
        embeds = torch.cat([embeds, model.transformer.wte(token)[:, None]], dim=1)
    return out


def pytorch_kv(model, prefix: torch.Tensor, tokens: int) -> list[int]:
    result = model(inputs_embeds=prefix, use_cache=True)
    token, out = result.logits[:, -1].argmax(-1), []
    for _ in range(tokens - 1):
        out.append(int(token))
        result = model(input_ids=token[:, None], cache=result.cache, use_cache=True)
        token = result.logits[:, -1].argmax(-1)
    out.append(int(token))
    return out


class OnnxLoop:
    def __init__(self, path: Path, spec: dict, threads: int):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.layers, self.width = spec["layers"], spec["width"]
        self.heads = spec["heads"]
        self.outputs = [o.name for o in self.session.get_outputs()]

    def __call__(self, prefix: np.ndarray, tokens: int) -> list[int]:
        head_dim = self.width // self.heads
        empty = np.zeros((1, self.heads, 0, head_dim), np.float32)
        past = {f"past_key_values.{i}.{kv}": empty for i in range(self.layers) for kv in ("key", "value")}
        feeds = {"prefix_embeds": prefix, "input_ids": np.zeros((1, 0), np.int64), **past}
        out = []
        for step in range(tokens):
            results = dict(zip(self.outputs, self.session.run(None, feeds)))
            token = int(results["logits"][0].argmax())
            out.append(token)
            if step == tokens - 1:
                break
            feeds = {
                "prefix_embeds": np.zeros((1, 0, self.width), np.float32),
                "input_ids": np.array([[token]], np.int64),
                **{k: results[k.replace("past_key_values", "present")] for k in past},
            }
        return out


def clipcap_bench(binary: Path, bundle: Path, image: Path, threads: int, runs: int) -> dict:
    env = dict(os.environ, CLIPCAP__RUNTIME__INTRA_THREADS=str(threads))
    out = subprocess.run(
        [str(binary), "bench", "--json", "--runs", str(runs), "--bundle", str(bundle), "--decoder", "greedy", str(image)],
        check=True, capture_output=True, text=True, env=env,
    )
    return json.loads(out.stdout)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, required=True, help="a bundle exported with --random-init and --max-tokens")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=4, help="alternating rounds; medians are reported")
    p.add_argument("--clipcap", type=Path, default=REPO / "target/release/clipcap")
    p.add_argument("--image", type=Path, default=REPO / "tests/fixtures/images/coffee.png")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    manifest = tomllib.loads((args.bundle / "manifest.toml").read_text())
    spec, tokens = manifest["language_model"], manifest["tokenizer"]["max_tokens"]
    # provenance.language_model is "random:<config> seed=<n>" for a --random-init bundle.
    source = manifest["provenance"]["language_model"]
    if not source.startswith("random:"):
        sys.exit(f"{args.bundle}: not a --random-init bundle (provenance.language_model = {source!r})")
    config, seed = source.removeprefix("random:").split(" seed=")
    torch.set_num_threads(args.threads)
    model = load_gpt2(Source.random(config, int(seed))).eval()
    prefix_length = manifest["mapper"]["prefix_length"]
    rng = np.random.default_rng(0)
    prefix = (rng.standard_normal((1, prefix_length, spec["width"])) * 0.1).astype(np.float32)
    onnx = OnnxLoop(args.bundle / spec["file"], spec, args.threads)

    systems = {
        "reference": lambda: reference(model, torch.from_numpy(prefix), tokens),
        "pytorch-kv": lambda: pytorch_kv(model, torch.from_numpy(prefix), tokens),
        "onnxruntime": lambda: onnx(prefix, tokens),
    }
    with torch.inference_mode():
        outputs = {name: run() for name, run in systems.items()}  # warm-up, and the tokens to compare
        times: dict[str, list[float]] = {name: [] for name in [*systems, "clipcap"]}
        steps = []
        for _ in range(args.rounds):
            for name, run in systems.items():
                t = time.perf_counter()
                run()
                times[name].append((time.perf_counter() - t) * 1e3)
            bench = clipcap_bench(args.clipcap, args.bundle, args.image, args.threads, runs=3)["decoders"][0]
            times["clipcap"].append(bench["decode_ms"])
            steps.append(bench["steps"])

    agree = outputs["reference"] == outputs["pytorch-kv"] == outputs["onnxruntime"]
    base = statistics.median(times["clipcap"])
    rows = [
        dict(system=name, caption_ms=statistics.median(t), ms_per_step=statistics.median(t) / (tokens - 1),
             vs_clipcap=statistics.median(t) / base)
        for name, t in times.items()
    ]
    if args.json:
        print(json.dumps(dict(tokens=tokens, threads=args.threads, rounds=args.rounds, clipcap_steps=steps,
                              same_tokens=agree, systems=rows), indent=2))
        return
    print(f"greedy, {tokens} tokens ({tokens - 1} steps after the prefix pass), {args.threads} threads, "
          f"medians of {args.rounds} alternating rounds; clipcap's steps: {steps}")
    print(f"reference, pytorch-kv and onnxruntime chose the same tokens: {agree}")
    print(f"{'system':<12} {'caption ms':>11} {'ms/step':>8} {'x clipcap':>10}")
    for r in rows:
        print(f"{r['system']:<12} {r['caption_ms']:>11.1f} {r['ms_per_step']:>8.2f} {r['vs_clipcap']:>10.2f}")


if __name__ == "__main__":
    main()
