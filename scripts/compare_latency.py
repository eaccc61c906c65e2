"""Does live comparison slow the primary caption down? Runs `clipcap serve` on a watched folder twice,
without and with `captioning.compare`, drops the same images into the folder at a fixed rate (a
camera), and reports, per run: the primary caption's own time (`ms.total`), the time from a file's
arrival to its caption on the event stream, how many frames were captioned, and the comparisons done
and skipped (from /metrics).

    export/.venv/bin/python scripts/compare_latency.py --bundle demo/bundle --images demo/images \
        --compare beam:num_beams=5 --compare sample:top_p=0.9 --frames 120 --period-ms 250
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run(args: argparse.Namespace, compare: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "in").mkdir()
        port = free_port()
        plugins = REPO / "target" / "release"
        (tmp / "clipcap.toml").write_text(
            f'[service]\nbundle = {json.dumps(str(Path(args.bundle).resolve()))}\nlisten = "127.0.0.1:{port}"\n'
            f'[source]\nkind = "folder"\nfolder = {json.dumps(str(tmp / "in"))}\npoll_ms = 10\n'
            f'[captioning]\ninterval_ms = 1\ncompare = {json.dumps(compare)}\n'
            f'[plugins]\ndirectories = [{json.dumps(str(plugins))}]\nallow_insecure = true\n')
        daemon = subprocess.Popen([str(args.clipcap), "serve", "--config", str(tmp / "clipcap.toml")],
                                  stderr=open(tmp / "stderr.log", "w"))
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + 120
            while True:
                try:
                    if json.load(urllib.request.urlopen(f"{url}/readyz")).get("ready"):
                        break
                except OSError:
                    pass
                if daemon.poll() is not None or time.time() > deadline:
                    sys.exit(f"the daemon did not become ready:\n{(tmp / 'stderr.log').read_text()}")
                time.sleep(0.1)
            arrived: dict[str, float] = {}
            captions: list[dict] = []

            def listen() -> None:
                stream = urllib.request.urlopen(f"{url}/v1/captions/stream")
                event = None
                for line in stream:
                    line = line.decode().strip()
                    if line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:") and event == "caption":
                        e = json.loads(line[5:])
                        e["received"] = time.time()
                        captions.append(e)

            threading.Thread(target=listen, daemon=True).start()
            time.sleep(0.5)
            images = sorted(Path(args.images).glob("*.png"))
            for i in range(args.frames):
                name = f"{i:05d}-{images[i % len(images)].name}"
                shutil.copy(images[i % len(images)], tmp / "in" / f".{name}")
                os.rename(tmp / "in" / f".{name}", tmp / "in" / name)
                arrived[name] = time.time()
                time.sleep(args.period_ms / 1000)
            time.sleep(2)
            metrics = urllib.request.urlopen(f"{url}/metrics").read().decode()
        finally:
            daemon.terminate()
            daemon.wait(30)
    latency = [1000 * (c["received"] - arrived[Path(c["origin"]).name]) for c in captions]
    total = [c["ms"]["total"] for c in captions]
    counted = {line.split(" ")[0]: float(line.split(" ")[1]) for line in metrics.splitlines()
               if line.startswith("clipcap_compare_") and "{" in line and not line.startswith("#")}
    return dict(compare=compare, frames=args.frames, captioned=len(captions),
                primary_ms=dict(p50=percentile(total, 0.5), p95=percentile(total, 0.95)),
                arrival_to_caption_ms=dict(p50=percentile(latency, 0.5), p95=percentile(latency, 0.95),
                                           mean=statistics.fmean(latency)),
                compare_counters={k: v for k, v in counted.items() if "_total" in k})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", default=str(REPO / "demo" / "bundle"))
    p.add_argument("--images", default=str(REPO / "demo" / "images"))
    p.add_argument("--clipcap", default=str(REPO / "target" / "release" / "clipcap"))
    p.add_argument("--compare", action="append", default=[], help="a decoder to compare (repeatable)")
    p.add_argument("--frames", type=int, default=120)
    p.add_argument("--period-ms", type=int, default=250, help="time between two frames")
    args = p.parse_args()
    if not args.compare:
        p.error("name at least one --compare decoder")
    off, on = run(args, []), run(args, args.compare)
    print(json.dumps(dict(without=off, with_compare=on), indent=2))
    for name, part in (("primary ms.total", "primary_ms"), ("arrival to caption ms", "arrival_to_caption_ms")):
        print(f"{name}: p50 {off[part]['p50']:.1f} -> {on[part]['p50']:.1f} "
              f"(x{on[part]['p50'] / off[part]['p50']:.2f}), p95 {off[part]['p95']:.1f} -> {on[part]['p95']:.1f} "
              f"(x{on[part]['p95'] / off[part]['p95']:.2f})")
    print(f"frames captioned: {off['captioned']} / {on['captioned']} of {args.frames}")


if __name__ == "__main__":
    main()
