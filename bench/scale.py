#!/usr/bin/env python3
"""Scaling a discovered service in docker compose, under a steady request loop: the stack of
docker/compose.scale.yaml (one proxy, one `app` service whose replicas the proxy discovers)
goes from --from replicas up to --up, then down to --down. It reports how long each new
replica took to get its first request (goal: at most 2 x resolve_interval, counted from the
moment compose returns), how long the removed ones kept getting requests, and the failed
requests (goal: 0).

    bench/scale.py                   # 2 -> 5 -> 1 replicas, a GET every 10 ms on fresh connections

Builds the images first (docker/build.sh and docker build). Works with `docker compose` or
`docker-compose` (v1). Traffic goes only to 127.0.0.1 (ports compose publishes there) and, from
the proxy, to the containers this script starts. Writes nothing into the repository.
"""

import argparse
import http.client
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from compose import compose_command
from loopback import free_port

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker" / "compose.scale.yaml"


def log(msg):
    print(f"scale: {msg}", flush=True)


def get(port):
    """One GET on a fresh connection: (True, replica) or (False, why)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/")
        resp = conn.getresponse()
        resp.read()
        if resp.status != 200:
            return False, f"status {resp.status}"
        return True, resp.getheader("X-Target", "?")
    except (OSError, http.client.HTTPException) as e:
        return False, type(e).__name__
    finally:
        conn.close()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--from", dest="start", type=int, default=2)
    p.add_argument("--up", type=int, default=5)
    p.add_argument("--down", type=int, default=1)
    args = p.parse_args()
    interval = json.loads((ROOT / "docker" / "config" / "scale.json").read_text()).get("resolve_interval", 5)

    log("building static binaries and images")
    subprocess.run([str(ROOT / "docker" / "build.sh")], check=True, stdout=subprocess.DEVNULL)
    for dockerfile, image in [("Dockerfile.proxy", "ringproxy:local"), ("Dockerfile.target", "ringproxy-target:local")]:
        subprocess.run(["docker", "build", "-q", "-f", str(ROOT / "docker" / dockerfile), "-t", image,
                        str(ROOT / "docker")], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    port, admin = free_port(), free_port()
    project = f"ringproxy-scale-{os.getpid()}"
    base = compose_command("scale") + ["-f", str(COMPOSE), "-p", project]
    env = dict(os.environ, RINGPROXY_PORT=str(port), RINGPROXY_ADMIN_PORT=str(admin))

    def compose(*more):
        subprocess.run(base + list(more), env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    records = []  # (time, ok, replica or why)
    stop = threading.Event()

    def loop():
        deadline = time.monotonic() + 300
        while not stop.is_set() and time.monotonic() < deadline:
            ok, what = get(port)
            records.append((time.monotonic(), ok, what))
            time.sleep(0.01)

    try:
        compose("up", "-d", "--scale", f"app={args.start}")
        deadline = time.monotonic() + 60
        while get(port)[0] is False:
            if time.monotonic() > deadline:
                raise SystemExit("scale: the stack did not answer within 60 s")
            time.sleep(0.2)
        loader = threading.Thread(target=loop)
        loader.start()
        time.sleep(3)
        before = {r[2] for r in records if r[1]}

        log(f"scaling app {args.start} -> {args.up}")
        compose("up", "-d", "--no-recreate", "--scale", f"app={args.up}")
        scaled_up = time.monotonic()
        deadline = scaled_up + 30
        while len({r[2] for r in records if r[1]} - before) < args.up - args.start and time.monotonic() < deadline:
            time.sleep(0.1)
        first_seen = {}
        for at, ok, name in records:
            if ok and name not in before and name not in first_seen:
                first_seen[name] = at - scaled_up
        time.sleep(3)

        log(f"scaling app {args.up} -> {args.down}")
        serving = {r[2] for r in records if r[1] and r[0] > time.monotonic() - 2}
        compose("up", "-d", "--no-recreate", "--scale", f"app={args.down}")
        scaled_down = time.monotonic()
        time.sleep(max(6, 4 * interval))
        remaining = {r[2] for r in records if r[1] and r[0] > time.monotonic() - 2}
        removed = serving - remaining
        last_seen = {name: max(at for at, ok, n in records if ok and n == name) - scaled_down for name in removed}
        stop.set()
        loader.join()
    finally:
        stop.set()
        logs = subprocess.run(base + ["logs", "--no-color", "proxy"], env=env, capture_output=True, text=True).stdout
        subprocess.run(base + ["down"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    warnings = [line for line in logs.splitlines() if " WARN " in line or " ERROR " in line]
    if warnings:
        print(f"the proxy's warnings ({len(warnings)}):")
        for line in warnings[:20]:
            print("  " + line.split("|", 1)[-1].strip())

    failed = [r for r in records if not r[1]]
    print()
    print(f"resolve_interval {interval} s; {len(records)} requests, {len(failed)} failed")
    worst_join = max(first_seen.values(), default=float("nan"))
    print(f"scale up {args.start} -> {args.up}: {len(first_seen)} new replicas; first request after "
          f"{', '.join(f'{v:.2f}' for v in sorted(first_seen.values()))} s (goal <= {2 * interval} s)")
    print(f"scale down {args.up} -> {args.down}: {len(removed)} replicas removed; their last request "
          f"{', '.join(f'{v:+.2f}' for v in sorted(last_seen.values()))} s from when compose returned "
          f"(compose returns once the containers have stopped)")
    for r in failed[:10]:
        print(f"  failed: {r[2]}")
    ok = not failed and len(first_seen) == args.up - args.start and worst_join <= 2 * interval
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
