#!/usr/bin/env bash
# The daemon's peak memory on a bundle, what systemd's MemoryMax= must leave room for: `clipcap serve`
# with two compared decoders in their own processes (captioning.compare, isolated by default), then
# every photograph of tests/fixtures/images uploaded ROUNDS times with each of greedy, beam search
# (5 beams), sampling and MAGIC, while the folder source captions them too. Prints each process's
# peak RSS (VmHWM) and their sum, an upper bound of the service cgroup's peak.
# usage: scripts/memory_peak.sh BUNDLE [ROUNDS]   (default 3; target/release/clipcap must be built)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bundle=$(cd "$1" && pwd) rounds=${2:-3}
export ORT_DYLIB_PATH=$root/.cache/onnxruntime/libonnxruntime.so  # as .cargo/config.toml sets it
work=$(mktemp -d)
port=$((20000 + RANDOM % 20000))
mkdir "$work/in"
cat > "$work/clipcap.toml" <<EOF
[service]
bundle = "$bundle"
listen = "127.0.0.1:$port"
caption_log = "$work/captions.jsonl"
uploads_per_minute = 0
[source]
kind = "folder"
folder = "$work/in"
[captioning]
interval_ms = 200
compare = ["beam:num_beams=5", "magic"]
[plugins]
directories = ["$root/target/release"]
allow_insecure = true
EOF
"$root/target/release/clipcap" --config "$work/clipcap.toml" serve 2>"$work/stderr.log" &
daemon=$!
trap 'kill $daemon 2>/dev/null; wait $daemon 2>/dev/null; rm -rf "$work"' EXIT
until curl -sf "http://127.0.0.1:$port/readyz" >/dev/null; do
    kill -0 $daemon 2>/dev/null || { cat "$work/stderr.log"; exit 1; }
    sleep 0.5
done

# The processes of the service: the daemon and its decoder hosts, children of the daemon.
processes() { echo $daemon; pgrep -P $daemon || true; }
peaks=()
record() {  # keeps each process's latest VmHWM: decoder hosts can restart
    for pid in $(processes); do
        kb=$(sed -n 's/^VmHWM:\s*\([0-9]*\) kB/\1/p' "/proc/$pid/status" 2>/dev/null || true)
        [ -n "$kb" ] && peaks[$pid]=$kb
    done
}
uploads=0
for round in $(seq "$rounds"); do
    for image in "$root"/tests/fixtures/images/*; do
        cp "$image" "$work/in/.$round-$(basename "$image")" && mv "$work/in/.$round-$(basename "$image")" "$work/in/$round-$(basename "$image")"
        for decoder in greedy beam:num_beams=5 sample:top_k=40 magic; do
            curl -sf -X POST --data-binary "@$image" "http://127.0.0.1:$port/v1/caption?decoder=$decoder" >/dev/null
            uploads=$((uploads + 1))
            record
        done
    done
done
total=0
for pid in "${!peaks[@]}"; do
    name=$(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | cut -c1-60 || echo "(gone)")
    printf '%8d MiB  pid %d  %s\n' $((peaks[$pid] / 1024)) "$pid" "$name"
    total=$((total + peaks[$pid]))
done
captions=$(grep -c '"event":"caption"' "$work/captions.jsonl")
echo "bundle $bundle: $uploads uploads, $captions captions; sum of peaks $((total / 1024)) MiB"
