"""The release daemon under a long mixed load, on the demo bundle, checked for lost captions and leaks.

Load, all at once: the folder source fed a new demo image every 0.5 s; uploaders posting demo images
(and broken bytes) with random decoders, bad ones included; event-stream clients that connect, read
for a few seconds, drop, and resume with Last-Event-ID; /metrics scraped every second.

Checks at the end:
- every accepted caption is in the caption log (ids 1..N, none missing, none twice), and every
  stream client saw every caption from its first connection on, across its reconnections;
- the daemon's RSS, open descriptors and threads, each measured at rest (10 s warm-up load, then
  quiet) before the load and again after it: RSS grows less than 5 %, descriptors and threads not
  at all;
- every upload got the status its input calls for (200, or 400 for a bad decoder or broken bytes).
Prints upload latency p50/p99, statuses, and errors by kind from /metrics.

usage: scripts/soak.sh SECONDS   (the release binary and plugins must be built)
"""

import argparse
import http.client
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMAGES = sorted((ROOT / "demo/images").glob("*.png"))
# Decoders an upload names, and the status each gets: 200, or 400 when the spec is refused.
DECODERS = [
    (None, 200),
    ("greedy", 200),
    ("beam:num_beams=3", 200),
    ("sample:top_k=40,temperature=0.8", 200),
    ("contrastive", 200),
    ("nosuch", 400),
    ("beam:num_beams=0", 400),
    ("beam:num_beams=2,num_beams=3", 400),
    ("beam:,,", 400),
]
BROKEN = b"\x89PNG\r\n\x1a\n" + os.urandom(2000)  # a PNG signature, then noise: 400
QUIET_S = 15  # longer than tokio's idle blocking threads live (10 s)


def proc_status(pid: int) -> dict:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return {
        "rss_kb": int(fields["VmRSS"].split()[0]),
        "threads": int(fields["Threads"]),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
    }


class Soak:
    def __init__(self, work: Path, port: int) -> None:
        self.work, self.port = work, port
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.uploads = []  # (decoder, expected status, status, seconds, id or None)
        self.streams = []  # per client: caption ids in the order received
        self.scrapes = 0
        self.failures = []

    def request(self, method: str, path: str, body: bytes | None = None, timeout: float = 60,
                client: str = "127.0.0.1") -> tuple[int, bytes]:
        """The status and body of a request from the loopback address `client`."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout, source_address=(client, 0))
        try:
            conn.request(method, path, body=body, headers={"Host": "127.0.0.1"})
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def feed(self) -> None:
        n = 0
        while not self.stop.wait(0.5):
            image = IMAGES[n % len(IMAGES)]
            part = self.work / "in" / f".{n}.part"
            shutil.copy(image, part)
            part.rename(self.work / "in" / f"{n:06d}.png")
            stale = self.work / "in" / f"{n - 20:06d}.png"
            stale.unlink(missing_ok=True)
            n += 1

    def upload(self, seed: int) -> None:
        """Uploads as a client of its own (an address of its own: the daemon takes clients in turns)."""
        client = f"127.0.0.{10 + seed}"
        rng = random.Random(seed)
        while not self.stop.is_set():
            decoder, expected = rng.choice(DECODERS)
            body = IMAGES[rng.randrange(len(IMAGES))].read_bytes()
            if rng.random() < 0.1:
                body, expected = BROKEN, 400
            query = "" if decoder is None else "?decoder=" + decoder
            start = time.monotonic()
            status, answer = self.request("POST", "/v1/caption" + query, body, client=client)
            seconds = time.monotonic() - start
            caption_id = json.loads(answer)["id"] if status == 200 else None
            with self.lock:
                self.uploads.append((decoder, expected, status, seconds, caption_id))
            # A pause, so that captions come at a few a second: a stream client starved of the CPU
            # for as long as the daemon's 64-event backlog lasts would skip captions by design.
            time.sleep(rng.uniform(0.1, 0.5))

    def stream(self, index: int, seed: int) -> None:
        """Reads the stream for 2-8 s at a time, then drops it and resumes from the last id seen."""
        rng = random.Random(seed)
        seen = []
        with self.lock:
            self.streams.append(seen)
        last = None
        final = False
        while True:
            final = self.stop.is_set()
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            headers = {"Host": "127.0.0.1"}
            if last:
                headers["Last-Event-ID"] = last
            conn.request("GET", "/v1/captions/stream", headers=headers)
            response = conn.getresponse()
            deadline = time.monotonic() + rng.uniform(2, 8)
            event = event_id = None
            try:
                while time.monotonic() < deadline:
                    line = response.readline().decode().rstrip("\n")
                    if line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("id: "):
                        event_id = line[4:]
                    elif line == "" and event_id:
                        if event == "caption":
                            seen.append(int(event_id.split(":")[1]))
                        last, event, event_id = event_id, None, None
            except TimeoutError:
                if final:  # caught up after the load stopped: nothing more is coming
                    conn.close()
                    return
            conn.close()
            if final:
                return
            time.sleep(rng.uniform(0, 1))

    def scrape(self, pid: int, samples: list) -> None:
        while not self.stop.wait(1):
            status, _ = self.request("GET", "/metrics")
            if status != 200:
                self.failures.append(f"/metrics answered {status}")
            self.scrapes += 1
            samples.append(proc_status(pid))

    def load(self, seconds: float, pid: int, samples: list, uploaders: int, streams: int) -> None:
        self.stop.clear()
        threads = [threading.Thread(target=self.feed)]
        threads += [threading.Thread(target=self.upload, args=(i,)) for i in range(uploaders)]
        threads += [threading.Thread(target=self.scrape, args=(pid, samples))]
        readers = [threading.Thread(target=self.stream, args=(i, 100 + i)) for i in range(streams)]
        for t in threads + readers:
            t.start()
        time.sleep(seconds)
        self.stop.set()
        for t in threads + readers:
            t.join()


def percentile(values: list, q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("seconds", type=float)
    parser.add_argument("--uploaders", type=int, default=3)
    parser.add_argument("--streams", type=int, default=3)
    parser.add_argument("--clipcap", type=Path, default=ROOT / "target/release/clipcap")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="clipcap-soak-"))
    (work / "in").mkdir()
    port = random.randrange(20000, 40000)
    (work / "clipcap.toml").write_text(f"""
[service]
bundle = "{ROOT / 'demo/bundle'}"
listen = "127.0.0.1:{port}"
caption_log = "{work / 'captions.jsonl'}"
uploads_per_minute = 0
history = 1000
[source]
kind = "folder"
folder = "{work / 'in'}"
poll_ms = 100
[captioning]
interval_ms = 250
[plugins]
directories = ["{ROOT / 'target/release'}"]
allow_insecure = true
""")
    env = dict(os.environ, ORT_DYLIB_PATH=str(ROOT / ".cache/onnxruntime/libonnxruntime.so"))
    stderr = open(work / "stderr.log", "w")
    daemon = subprocess.Popen([args.clipcap, "--config", work / "clipcap.toml", "serve"], env=env, stderr=stderr)
    soak = Soak(work, port)
    try:
        while True:
            if daemon.poll() is not None:
                print((work / "stderr.log").read_text(), file=sys.stderr)
                return 1
            try:
                if soak.request("GET", "/readyz", timeout=5)[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.5)

        # Warm-up, then the daemon at rest: the baseline.
        soak.load(10, daemon.pid, [], args.uploaders, 0)
        time.sleep(QUIET_S)
        before = proc_status(daemon.pid)
        warm_uploads = len(soak.uploads)

        samples = []
        soak.load(args.seconds, daemon.pid, samples, args.uploaders, args.streams)
        time.sleep(QUIET_S)
        after = proc_status(daemon.pid)
        _, metrics = soak.request("GET", "/metrics")
    finally:
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(timeout=60)

    failures = list(soak.failures)
    if code != 0:
        failures.append(f"the daemon exited with {code} after SIGTERM")
    logged = [json.loads(line) for line in (work / "captions.jsonl").read_text().splitlines()]
    ids = [r["id"] for r in logged if r["event"] == "caption"]
    if ids != list(range(1, len(ids) + 1)):
        failures.append(f"the log's caption ids are not 1..{len(ids)} in order")
    uploads = soak.uploads[warm_uploads:]
    for decoder, expected, status, _, caption_id in soak.uploads:
        if status != expected:
            failures.append(f"upload with decoder {decoder!r} answered {status}, expected {expected}")
        if caption_id is not None and caption_id not in ids:
            failures.append(f"upload caption {caption_id} is not in the log")
    for i, seen in enumerate(soak.streams):
        if not seen or seen != list(range(seen[0], len(ids) + 1)):
            missing = sorted(set(range(seen[0] if seen else 1, len(ids) + 1)) - set(seen))
            failures.append(f"stream client {i} missed captions {missing[:10]} (saw {len(seen)})")
    growth = after["rss_kb"] / before["rss_kb"] - 1
    if growth >= 0.05:
        failures.append(f"RSS grew {growth:.1%} at rest: {before['rss_kb']} kB before, {after['rss_kb']} kB after")
    for key in ("fds", "threads"):
        if after[key] > before[key]:
            failures.append(f"{key} grew at rest: {before[key]} before, {after[key]} after")

    latencies = [u[3] for u in uploads if u[2] == 200]
    statuses = {}
    for u in uploads:
        statuses[u[2]] = statuses.get(u[2], 0) + 1
    errors = {
        line.split('"')[1]: float(line.rsplit(" ", 1)[1])
        for line in metrics.decode().splitlines()
        if line.startswith("clipcap_errors_total{")
    }
    peak = max(s["rss_kb"] for s in samples) if samples else after["rss_kb"]
    print(f"soak: {args.seconds:.0f} s, {args.uploaders} uploaders, {args.streams} stream clients, "
          f"/metrics scraped {soak.scrapes} times")
    from_folder = sum(r["source"] == "folder" for r in logged if r["event"] == "caption")
    print(f"captions: {len(ids)} logged ({from_folder} from the folder); "
          f"uploads by status: {dict(sorted(statuses.items()))}")
    if latencies:
        print(f"upload latency (200s): p50 {percentile(latencies, 0.5) * 1e3:.0f} ms, "
              f"p99 {percentile(latencies, 0.99) * 1e3:.0f} ms, max {max(latencies) * 1e3:.0f} ms")
    print(f"stream clients saw {[len(s) for s in soak.streams]} captions")
    print(f"at rest before/after: RSS {before['rss_kb']}/{after['rss_kb']} kB ({growth:+.1%}), "
          f"fds {before['fds']}/{after['fds']}, threads {before['threads']}/{after['threads']}; "
          f"peak RSS under load {peak} kB")
    print(f"errors by kind: {errors}")
    for f in failures[:20]:
        print(f"FAILED: {f}")
    if not failures:
        shutil.rmtree(work)
    else:
        print(f"kept {work}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
