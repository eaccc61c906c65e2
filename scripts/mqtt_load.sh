#!/usr/bin/env bash
# How many devices one mosquitto takes (docs/fleet.md): starts Debian's mosquitto on a loopback port
# (anonymous, no persistence; the subscriber's queue raised so that only the broker's speed limits it),
# then runs examples/mqtt_load.rs for growing numbers of simulated devices, each publishing a
# 600-byte record a second with QoS 1, and prints one JSON line per run (sent, received, rate,
# publish-to-receive latency p50/p99/max, connections lost).
#   bash scripts/mqtt_load.sh [SECONDS] [DEVICES...]     default: 30 s; 100 500 1000 2000 4000 8000
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-30}
shift || true
counts=("$@")
((${#counts[@]})) || counts=(100 500 1000 2000 4000 8000)
ulimit -n "$(ulimit -Hn)"
cargo build -q --release --example mqtt_load
dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
user=$([ "$(id -u)" = 0 ] && echo "user root" || true)
cat > "$dir/mosquitto.conf" <<CONF
$user
listener $port 127.0.0.1
allow_anonymous true
max_queued_messages 1000000
log_dest file $dir/broker.log
CONF
mosquitto -c "$dir/mosquitto.conf" &
broker=$!
trap 'kill $broker 2>/dev/null; wait $broker 2>/dev/null; rm -rf "$dir"' EXIT
sleep 1
echo "mosquitto $(mosquitto -h | head -n 1 | awk '{print $3}') on 127.0.0.1:$port, $(nproc) cores, ${seconds} s a run" >&2
for n in "${counts[@]}"; do
    target/release/examples/mqtt_load --port "$port" --devices "$n" --seconds "$seconds"
    sleep 2
done
