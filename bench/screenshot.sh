#!/usr/bin/env bash
# Makes docs/status.png, the status page's picture in docs/operations.md: ringproxy in front of
# three local target-svc processes, some traffic, one target killed so that the page shows it down
# and its failover in the feed, then headless chromium (Debian package) takes the shot.
# Everything runs on 127.0.0.1 and is stopped at the end. Writes docs/status.png only.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v chromium >/dev/null || { echo "screenshot: needs chromium (apt-get install chromium)" >&2; exit 1; }
cargo build --release --workspace --quiet
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done
  echo "screenshot: nothing listens on 127.0.0.1:$1" >&2; return 1
}
ports=() ; for i in 1 2 3; do ports+=("$(free_port)"); done
proxy=$(free_port); admin=$(free_port)
for i in 0 1 2; do
  target/release/target-svc --host 127.0.0.1 --port "${ports[$i]}" --name "t$((i + 1))" >/dev/null &
  pids+=($!)
done
for p in "${ports[@]}"; do wait_port "$p"; done
cat > "$work/config.json" <<JSON
{"ports": ["http://127.0.0.1:${ports[0]}/", "http://127.0.0.1:${ports[1]}/", "http://127.0.0.1:${ports[2]}/"],
 "listen": "127.0.0.1:$proxy", "admin": "127.0.0.1:$admin", "sleeping": 2}
JSON
target/release/ringproxy --config "$work/config.json" >/dev/null 2>&1 &
pids+=($!)
wait_port "$proxy"
# 20 s of traffic at about 200 requests/s, target 2 killed at 12 s: the sparklines show both.
end=$((SECONDS + 20))
killed=0
while ((SECONDS < end)); do
  for _ in $(seq 20); do curl -s -o /dev/null "http://127.0.0.1:$proxy/"; done
  if ((killed == 0 && SECONDS >= end - 8)); then kill "${pids[1]}"; killed=1; fi
  sleep 0.05
done
mkdir -p docs
chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1280,520 \
  --virtual-time-budget=3000 --user-data-dir="$work/profile" \
  --screenshot="$PWD/docs/status.png" "http://127.0.0.1:$admin/status" 2>/dev/null
echo "screenshot: wrote docs/status.png"
