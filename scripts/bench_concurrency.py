"""Captions decoded together: `clipcap bench --concurrency N` for each bundle and N, one process each
(so that each peak RSS is its own), in rounds that alternate the order of N (1 2 4 8, then 8 4 2 1)
so that a machine that slows down during the run does not favour one N. Prints a Markdown table of
the median captions a second, p50 and p95 latency per caption, model ms per step and peak RSS, with
ratios against concurrency 1 of the same bundle.

    python3 scripts/bench_concurrency.py --bundle /tmp/full20 --bundle /tmp/full20-int8 \\
        tests/fixtures/images/*.png tests/fixtures/images/*.jpg

Standard library only: it runs `target/release/clipcap`, which must be built.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

CLIPCAP = Path(__file__).resolve().parent.parent / "target" / "release" / "clipcap"


def bench(bundle: str, decoder: str, concurrency: int, runs: int, images: list[str], env: dict | None) -> dict:
    command = [str(CLIPCAP), "bench", "--bundle", bundle, "--decoder", decoder, "--runs", str(runs),
               "--concurrency", str(concurrency), "--json", *images]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr}")
    report = json.loads(done.stdout)
    d = report["decoders"][0]
    return {"captions_per_s": d["captions_per_s"], "p50_ms": d["p50_ms"], "p95_ms": d["p95_ms"],
            "model_ms_per_step": d["model_ms_per_step"], "peak_rss_mb": report["machine"]["peak_rss_mb"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", action="append", required=True)
    parser.add_argument("--decoder", default="greedy")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--runs", type=int, default=2, help="measured rounds over the images in each process")
    parser.add_argument("--rounds", type=int, default=2, help="processes per (bundle, N), alternating the order")
    parser.add_argument("--padding", choices=["full", "longest"], default="full",
                        help="captioning.batch_padding for the runs")
    parser.add_argument("images", nargs="+")
    args = parser.parse_args()
    env = dict(os.environ, CLIPCAP__CAPTIONING__BATCH_PADDING=args.padding)
    results: dict[tuple[str, int], list[dict]] = {}
    for r in range(args.rounds):
        order = args.concurrency if r % 2 == 0 else list(reversed(args.concurrency))
        for bundle in args.bundle:
            for n in order:
                results.setdefault((bundle, n), []).append(bench(bundle, args.decoder, n, args.runs, args.images, env))
                print(f"round {r + 1}: {bundle} concurrency {n} done", file=sys.stderr)

    def median(bundle: str, n: int, key: str) -> float:
        return statistics.median(x[key] for x in results[(bundle, n)])

    print(f"| bundle | concurrency | captions/s | x conc. 1 | p50 ms | x conc. 1 | p95 ms | model ms/step | "
          f"peak RSS MB | x conc. 1 |  ({args.decoder}, padding {args.padding}, median of {args.rounds})")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for bundle in args.bundle:
        base = {k: median(bundle, args.concurrency[0], k) for k in ("captions_per_s", "p50_ms", "peak_rss_mb")}
        for n in args.concurrency:
            m = {k: median(bundle, n, k) for k in results[(bundle, n)][0]}
            print(f"| {Path(bundle).name} | {n} | {m['captions_per_s']:.2f} | "
                  f"{m['captions_per_s'] / base['captions_per_s']:.2f} | {m['p50_ms']:.0f} | "
                  f"{m['p50_ms'] / base['p50_ms']:.2f} | {m['p95_ms']:.0f} | {m['model_ms_per_step']:.1f} | "
                  f"{m['peak_rss_mb']:.0f} | {m['peak_rss_mb'] / base['peak_rss_mb']:.2f} |")


if __name__ == "__main__":
    main()
