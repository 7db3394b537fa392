#!/usr/bin/env bash
# Runs ringproxy on :8000 in front of five target-svc processes on 127.0.0.1:9001-9005,
# using config/appsettings.json. No Docker needed. Ctrl-C stops them all.
# Extra arguments go to ringproxy (e.g. --log-level debug).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace --quiet

pids=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Polls until something accepts on 127.0.0.1:$1, for at most five seconds.
wait_port() {
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "run-local: nothing listens on 127.0.0.1:$1" >&2
  return 1
}

for i in 1 2 3 4 5; do
  target/release/target-svc --host 127.0.0.1 --port "900$i" --name "target-$i" &
  pids+=($!)
done
for i in 1 2 3 4 5; do wait_port "900$i"; done

target/release/ringproxy --config config/appsettings.json "$@" &
pids+=($!)
wait_port 8000
echo "run-local: try  curl localhost:8000/   (Ctrl-C stops everything)"
wait "${pids[-1]}"
