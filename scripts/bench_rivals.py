"""clipcap against what a user would run instead, in one run, on the same machine, threads and shapes:
a greedy caption of a fixed length from a prefix of embeddings, on GPT-2 with the weights of a
`clipcap-export bundle --random-init` bundle (rebuilt here from the same seed).

- reference: ClipCap's own loop (`generate2`): no KV cache, the whole sequence re-run every step;
- pytorch-kv: transformers' GPT-2 with its KV cache;
- onnxruntime: the bundle's lm.onnx driven from Python (what clipcap adds or loses on top of the
  runtime itself);
- llama.cpp F32, F16, Q8_0 and Q4_0: the same weights converted to GGUF with llama.cpp's own
  converter, driven through llama-cpp-python's C API with the prefix fed as embeddings
  (`llama_batch.embd`); built by scripts/setup-rivals.sh, which this script runs on first use
  (`--no-llama` leaves them out);
- clipcap: `clipcap bench --json` on the same bundle, and on each `--quantized` copy of it
  (`clipcap-export quantize`), in a subprocess, between the rounds;
- several captions at once (`--streams`, 4 by default): clipcap at `--concurrency 4` on each bundle
  against llama.cpp F32 decoding four sequences of the prefix in one batch per step (seq_id 0 to 3).

`--device cuda` runs PyTorch on the GPU and ONNX Runtime (from Python, and clipcap) with its CUDA
provider, for a machine with an NVIDIA GPU and the onnxruntime-gpu wheel (llama.cpp stays out: the
build setup-rivals.sh makes is for the CPU).

The systems that compute in fp32 on the same weights (PyTorch with a KV cache, ONNX Runtime, llama.cpp
F32) must choose the reference loop's tokens: if one does not, the run fails before any timing,
naming it and its tokens. The 16-, 8- and 4-bit ones may differ; their share of the reference's
tokens is reported.

Rounds alternate between the systems, so that drift of a noisy machine spreads over all of them.
Per-step time is counted as clipcap's `model/step`: (prefix pass + steps) / steps, a caption of
`tokens` tokens taking tokens - 1 steps. The bundle's tokenizer.max_tokens must equal `tokens`
(export it with `--max-tokens`), so that clipcap's greedy caption has the same length.

    (cd export && .venv/bin/clipcap-export bundle --random-init full --max-tokens 20 --out /tmp/full20 &&
     for q in int8 int4; do .venv/bin/clipcap-export quantize /tmp/full20 --precision $q --out /tmp/full20-$q; done)
    export/.venv/bin/python scripts/bench_rivals.py --bundle /tmp/full20 --quantized /tmp/full20-int8 /tmp/full20-int4
"""

import argparse
import ctypes
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from transformers import GPT2LMHeadModel

from clipcap_export.graphs import lm_feeds, lm_input_names
from clipcap_export.models import Source, load_gpt2

REPO = Path(__file__).resolve().parents[1]
LLAMA_SOURCE = REPO / ".cache" / "llama.cpp"  # llama.cpp's converter, put there by scripts/setup-rivals.sh
# llama.cpp's file types, named as llama.cpp names them; Q4_0 is made from F32 by llama.cpp's quantiser.
GGUF_TYPES = {"F32": "f32", "F16": "f16", "Q8_0": "q8_0", "Q4_0": None}
# The rivals that compute what the reference loop computes, in fp32 on the same weights.
MUST_AGREE = ("pytorch-kv", "onnxruntime", "llama.cpp F32")


def reference(model: GPT2LMHeadModel, prefix: torch.Tensor, tokens: int) -> list[int]:
    embeds, out = prefix, []
    for _ in range(tokens):
        logits = model(inputs_embeds=embeds).logits[:, -1]
        token = logits.argmax(-1)
        out.append(int(token))
        embeds = torch.cat([embeds, model.transformer.wte(token)[:, None]], dim=1)
    return out


def pytorch_kv(model: GPT2LMHeadModel, prefix: torch.Tensor, tokens: int) -> list[int]:
    result = model(inputs_embeds=prefix, use_cache=True)
    token, out = result.logits[:, -1].argmax(-1), []
    for _ in range(tokens - 1):
        out.append(int(token))
        result = model(input_ids=token[:, None], cache=result.cache, use_cache=True)
        token = result.logits[:, -1].argmax(-1)
    out.append(int(token))
    return out


class OnnxLoop:
    def __init__(self, path: Path, spec: dict, threads: int, providers: list[str]) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.layers, self.width = spec["layers"], spec["width"]
        self.heads = spec["heads"]

    def __call__(self, prefix: np.ndarray, tokens: int) -> list[int]:
        head_dim = self.width // self.heads
        names = lm_input_names(self.layers)
        past = [np.zeros((1, self.heads, 0, head_dim), np.float32)] * (2 * self.layers)
        feeds = lm_feeds(names, prefix, np.zeros((1, 0), np.int64), [0], past)
        out = []
        for step in range(tokens):
            results = self.session.run(None, feeds)
            token = int(results[0][0].argmax())
            out.append(token)
            if step == tokens - 1:
                break
            feeds = lm_feeds(names, np.zeros((1, 0, self.width), np.float32), np.array([[token]], np.int64),
                             [prefix.shape[1] + step], results[2:])
        return out


_QUIET = []  # llama.cpp's log callback, referenced for as long as llama.cpp holds it


def quiet_llama_cpp() -> ModuleType:
    """llama_cpp, with its log (every tensor as a model loads or is quantised) silenced."""
    import llama_cpp

    if not _QUIET:
        _QUIET.append(llama_cpp.llama_log_callback(lambda level, text, data: None))
        llama_cpp.llama_log_set(_QUIET[0], None)
    return llama_cpp


def gguf_files(model: GPT2LMHeadModel, bundle: Path, work: Path, source: Path) -> dict[str, Path]:
    """The model in each of GGUF_TYPES, converted by llama.cpp's own convert_hf_to_gguf.py."""
    llama_cpp = quiet_llama_cpp()

    hf = work / "hf"
    model.save_pretrained(hf)
    config = json.loads((hf / "config.json").read_text())
    config["n_ctx"] = config["n_positions"]  # transformers 5 no longer saves n_ctx; the converter needs it
    (hf / "config.json").write_text(json.dumps(config))
    shutil.copy(bundle / "tokenizer.json", hf / "tokenizer.json")
    files = {}
    for name, outtype in GGUF_TYPES.items():
        files[name] = work / f"gpt2-{name}.gguf"
        if outtype is None:
            params = llama_cpp.llama_model_quantize_default_params()
            params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{name}")
            if llama_cpp.llama_model_quantize(str(files["F32"]).encode(), str(files[name]).encode(),
                                              ctypes.byref(params)) != 0:
                sys.exit(f"llama.cpp could not quantise {files['F32']} to {name}")
            continue
        convert = [sys.executable, str(source / "convert_hf_to_gguf.py"), str(hf), "--outtype", outtype,
                   "--outfile", str(files[name])]
        done = subprocess.run(convert, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"{' '.join(convert)} failed:\n{done.stderr[-2000:]}")
    return files


class LlamaLoop:
    """Greedy decoding on llama.cpp: the prefix goes in as embeddings (llama_batch_init with embd =
    width), then one token per step, as clipcap does it. With `streams` > 1, that many sequences
    (llama.cpp's seq_id) of the same prefix decode together: each prefix pass on its own, then one
    batch of `streams` tokens per step, as llama.cpp's server serves parallel requests."""

    def __init__(self, path: Path, width: int, prefix_length: int, tokens: int, threads: int,
                 streams: int = 1) -> None:
        ll = quiet_llama_cpp()

        self.ll, self.streams = ll, streams
        model = ll.llama_model_load_from_file(str(path).encode(), ll.llama_model_default_params())
        if not model:
            sys.exit(f"{path}: llama.cpp could not load it")
        params = ll.llama_context_default_params()
        params.n_ctx = streams * (prefix_length + tokens)
        params.n_batch = params.n_ubatch = max(prefix_length, streams)
        params.n_seq_max = streams
        params.n_threads = params.n_threads_batch = threads
        params.no_perf = True
        self.model, self.ctx = model, ll.llama_init_from_model(model, params)
        self.vocab = ll.llama_vocab_n_tokens(ll.llama_model_get_vocab(model))
        self.prefix = ll.llama_batch_init(prefix_length, width, 1)
        self.token = ll.llama_batch_init(streams, 0, 1)

    def _decode(self, batch: Any, rows: list[tuple[int, int]], last_only: bool) -> list[int]:
        """Feeds `batch` with its rows at (sequence, position); the greedy choice after each row that
        asks for logits (the last one, or every one)."""
        for i, (seq, pos) in enumerate(rows):
            batch.pos[i], batch.n_seq_id[i], batch.seq_id[i][0] = pos, 1, seq
            batch.logits[i] = not last_only or i == len(rows) - 1
        batch.n_tokens = len(rows)
        if self.ll.llama_decode(self.ctx, batch) != 0:
            sys.exit("llama_decode failed")
        asked = [len(rows) - 1] if last_only else range(len(rows))
        return [int(np.ctypeslib.as_array(self.ll.llama_get_logits_ith(self.ctx, i), shape=(self.vocab,)).argmax())
                for i in asked]

    def __call__(self, prefix: np.ndarray, tokens: int) -> list[int]:
        """The first stream's tokens (every stream has the same prefix)."""
        return self.all_streams(prefix, tokens)[0]

    def all_streams(self, prefix: np.ndarray, tokens: int) -> list[list[int]]:
        self.ll.llama_memory_clear(self.ll.llama_get_memory(self.ctx), True)
        length = prefix.shape[1]
        ctypes.memmove(self.prefix.embd, np.ascontiguousarray(prefix).ctypes.data, prefix.nbytes)
        out = [self._decode(self.prefix, [(s, p) for p in range(length)], True) for s in range(self.streams)]
        for step in range(tokens - 1):
            for s in range(self.streams):
                self.token.token[s] = out[s][-1]
            chosen = self._decode(self.token, [(s, length + step) for s in range(self.streams)], False)
            for s, token in enumerate(chosen):
                out[s].append(token)
        return out


def set_up_llama(source: Path) -> None:
    """llama-cpp-python and llama.cpp's converter, built by scripts/setup-rivals.sh on first use."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        print("llama-cpp-python is not installed: building it with scripts/setup-rivals.sh (once)", file=sys.stderr)
        subprocess.run(["bash", str(REPO / "scripts" / "setup-rivals.sh")], check=True)
    if not (source / "convert_hf_to_gguf.py").is_file():
        sys.exit(f"{source}: no convert_hf_to_gguf.py (scripts/setup-rivals.sh puts llama.cpp's there)")


def check_agreement(outputs: dict[str, list[int]]) -> None:
    """Fails the run when a rival of MUST_AGREE chose other tokens than the reference loop."""
    truth = outputs["reference"]
    wrong = [name for name in MUST_AGREE if name in outputs and outputs[name] != truth]
    if wrong:
        lines = "\n".join(f"  {name:<14} {outputs[name]}" for name in wrong)
        sys.exit(f"bench_rivals: FAILED: {', '.join(wrong)} chose other tokens than the reference loop, which "
                 f"fp32 on the same weights must reproduce:\n  {'reference':<14} {truth}\n{lines}")


def clipcap_bench(binary: Path, bundle: Path, image: Path, threads: int, runs: int, device: str,
                  streams: int = 1) -> dict:
    """`clipcap bench` of `image`; with `streams` > 1, that many captions of it in flight at once."""
    env = dict(os.environ, CLIPCAP__RUNTIME__INTRA_THREADS=str(threads),
               CLIPCAP__RUNTIME__PROVIDERS="cuda,cpu" if device == "cuda" else "cpu")
    out = subprocess.run(
        [str(binary), "bench", "--json", "--runs", str(runs), "--bundle", str(bundle), "--decoder", "greedy",
         "--concurrency", str(streams), *[str(image)] * streams],
        check=True, capture_output=True, text=True, env=env,
    )
    return json.loads(out.stdout)


def precision(manifest: dict) -> str:
    quantization = manifest["provenance"].get("quantization")
    return quantization["weights"] if quantization else "fp32"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, required=True, help="a bundle exported with --random-init and --max-tokens")
    p.add_argument("--quantized", type=Path, nargs="*", default=[],
                   help="copies of --bundle made by `clipcap-export quantize`, benchmarked with clipcap too")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=4, help="alternating rounds; medians are reported")
    p.add_argument("--clipcap", type=Path, default=REPO / "target/release/clipcap")
    p.add_argument("--image", type=Path, default=REPO / "tests/fixtures/images/coffee.png")
    p.add_argument("--llama-source", type=Path, default=LLAMA_SOURCE,
                   help="llama.cpp's source folder, for its GGUF converter (default: where setup-rivals.sh puts it)")
    p.add_argument("--no-llama", action="store_true", help="leave llama.cpp out")
    p.add_argument("--streams", type=int, default=4,
                   help="the rows for several captions at once: clipcap at this concurrency against llama.cpp F32 "
                        "decoding this many sequences in one batch (1: no such rows)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="cuda: PyTorch on the GPU, ONNX Runtime with its CUDA provider (needs --no-llama)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    manifest = tomllib.loads((args.bundle / "manifest.toml").read_text())
    spec, tokens = manifest["language_model"], manifest["tokenizer"]["max_tokens"]
    # provenance.language_model is "random:<config> seed=<n>" for a --random-init bundle.
    source = manifest["provenance"]["language_model"]
    if not source.startswith("random:"):
        sys.exit(f"{args.bundle}: not a --random-init bundle (provenance.language_model = {source!r})")
    bundles = {"fp32": args.bundle}
    for copy in args.quantized:
        other = tomllib.loads((copy / "manifest.toml").read_text())
        if other["provenance"]["language_model"] != source or other["tokenizer"]["max_tokens"] != tokens:
            sys.exit(f"{copy}: not a quantised copy of {args.bundle} (other weights or caption length)")
        bundles[precision(other)] = copy
    if args.device == "cuda" and not args.no_llama:
        sys.exit("--device cuda: pass --no-llama too (llama-cpp-python is built for the CPU here)")
    if not args.no_llama:
        set_up_llama(args.llama_source)
    config, seed = source.removeprefix("random:").split(" seed=")
    torch.set_num_threads(args.threads)
    model = load_gpt2(Source.random(config, int(seed))).eval().to(args.device)
    prefix_length = manifest["mapper"]["prefix_length"]
    rng = np.random.default_rng(0)
    prefix = (rng.standard_normal((1, prefix_length, spec["width"])) * 0.1).astype(np.float32)
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if args.device == "cuda" else ["CPUExecutionProvider"]
    onnx = OnnxLoop(args.bundle / spec["file"], spec, args.threads, providers)
    on_device = torch.from_numpy(prefix).to(args.device)

    systems = {
        "reference": lambda: reference(model, on_device, tokens),
        "pytorch-kv": lambda: pytorch_kv(model, on_device, tokens),
        "onnxruntime": lambda: onnx(prefix, tokens),
    }
    work = tempfile.TemporaryDirectory(prefix="bench-rivals-")
    streamed = {}  # llama.cpp's streams, timed for all of them and checked stream by stream
    if not args.no_llama:
        for name, path in gguf_files(model, args.bundle, Path(work.name), args.llama_source).items():
            loop = LlamaLoop(path, spec["width"], prefix_length, tokens, args.threads)
            systems[f"llama.cpp {name}"] = lambda loop=loop: loop(prefix, tokens)
            if name == "F32" and args.streams > 1:
                many = LlamaLoop(path, spec["width"], prefix_length, tokens, args.threads, args.streams)
                streamed[f"llama.cpp F32 x{args.streams}"] = lambda many=many: many.all_streams(prefix, tokens)
    with torch.inference_mode():
        outputs = {name: run() for name, run in systems.items()}  # warm-up, and the tokens to compare
        check_agreement(outputs)
        # Each stream's tokens, as the share of streams that chose the reference loop's tokens.
        stream_agreement = {name: sum(s == outputs["reference"] for s in run()) / args.streams
                            for name, run in streamed.items()}
        several = [f"clipcap {b} x{args.streams}" for b in bundles] if args.streams > 1 else []
        times: dict[str, list[float]] = {
            name: [] for name in [*systems, *(f"clipcap {b}" for b in bundles), *streamed, *several]}
        steps = []
        for _ in range(args.rounds):
            for name, run in [*systems.items(), *streamed.items()]:
                t = time.perf_counter()
                run()
                times[name].append((time.perf_counter() - t) * 1e3)
            for name, bundle in bundles.items():
                bench = clipcap_bench(args.clipcap, bundle, args.image, args.threads, 3, args.device)["decoders"][0]
                times[f"clipcap {name}"].append(bench["decode_ms"])
                steps.append(bench["steps"])
                if args.streams > 1:
                    # The captions in flight decode at once: one caption's decode time is the time
                    # of all of them.
                    bench = clipcap_bench(args.clipcap, bundle, args.image, args.threads, 3, args.device,
                                          args.streams)["decoders"][0]
                    times[f"clipcap {name} x{args.streams}"].append(bench["decode_ms"])
    work.cleanup()

    truth = outputs["reference"]
    base = statistics.median(times["clipcap fp32"])
    rows = [
        dict(system=name, caption_ms=statistics.median(t), ms_per_step=statistics.median(t) / (tokens - 1),
             vs_clipcap=statistics.median(t) / base,
             # the share of the reference loop's tokens this system chose too (clipcap's own
             # agreement with PyTorch is tested in export/tests)
             token_agreement=(sum(a == b for a, b in zip(outputs[name], truth, strict=True)) / tokens
                              if name in outputs else stream_agreement.get(name)))
        for name, t in times.items()
    ]
    if args.json:
        print(json.dumps(dict(tokens=tokens, threads=args.threads, rounds=args.rounds, clipcap_steps=steps,
                              systems=rows), indent=2))
        return
    print(f"greedy, {tokens} tokens ({tokens - 1} steps after the prefix pass), {args.threads} threads, "
          f"medians of {args.rounds} alternating rounds; clipcap's steps: {steps}")
    print(f"{', '.join(n for n in MUST_AGREE if n in outputs)} chose the reference loop's tokens")
    if args.streams > 1:
        print(f"rows xN: {args.streams} captions of the same prefix at once; caption ms is the time of all of "
              f"them, and tokens as reference the share of streams that chose the reference loop's tokens")
    print(f"{'system':<22} {'caption ms':>11} {'ms/step':>8} {'x clipcap fp32':>15} {'tokens as reference':>20}")
    for r in rows:
        share = "" if r["token_agreement"] is None else f"{r['token_agreement']:.0%}"
        print(f"{r['system']:<22} {r['caption_ms']:>11.1f} {r['ms_per_step']:>8.2f} {r['vs_clipcap']:>15.2f} "
              f"{share:>20}")


if __name__ == "__main__":
    main()
