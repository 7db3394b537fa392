#!/usr/bin/env python3
"""Reload under load, measured with wrk: ringproxy in front of local target-svc processes, wrk
keep-alive load for a fixed time, once without reloads and once while the config is rewritten
and SIGHUP'd N times (adding and removing targets). Reports requests/s of both runs, the
errors wrk saw (non-2xx answers and socket errors: both must be 0), and the requests each
target served during the reload run, from /status.json.

    bench/reload.py                  # 2 runs of 20 s at c50, 20 reloads
    bench/reload.py --quick          # 2 runs of 5 s, 20 reloads

Traffic goes only to 127.0.0.1. Needs wrk (Debian package; installed with apt-get when
missing and running as root). Writes nothing into the repository.
"""

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import loopback
from loopback import free_port

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "target" / "release"
# Target sets the reloads cycle through, as indexes into the four targets.
SETS = [[0, 1], [1, 2], [2, 3, 0], [3], [0, 1, 2, 3], [0, 2]]


def log(msg):
    print(f"reload: {msg}", flush=True)


def wait_port(port):
    loopback.wait_port(port, 10.0, "reload")


def need_wrk():
    if shutil.which("wrk"):
        return
    if os.geteuid() == 0 and shutil.which("apt-get"):
        log("installing wrk")
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, stdout=subprocess.DEVNULL)
        return
    raise SystemExit("reload: wrk is missing (apt-get install wrk)")


def wrk(port, seconds, connections):
    """wrk keep-alive GETs; (requests/s, requests, non-2xx, socket errors)."""
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
    errors = sum(int(n) for n in m.groups()) if (
        m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)) else 0
    return rps, total, non2xx, errors


def status(admin):
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/status.json", timeout=5) as r:
        return json.load(r)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="runs of 5 s")
    p.add_argument("--seconds", type=int, default=20)
    p.add_argument("--reloads", type=int, default=20)
    p.add_argument("--connections", type=int, default=50)
    args = p.parse_args()
    seconds = 5 if args.quick else args.seconds
    need_wrk()
    log("building release binaries")
    subprocess.run(["cargo", "build", "--release", "--workspace", "--quiet"], cwd=ROOT, check=True)

    work = Path(tempfile.mkdtemp(prefix="ringproxy-reload-"))
    ports = [free_port() for _ in range(4)]
    port, admin = free_port(), free_port()
    config = work / "config.json"
    procs = []

    def write_config(targets):
        config.write_text(json.dumps({
            "ports": [f"http://127.0.0.1:{ports[i]}/" for i in targets],
            "listen": f"127.0.0.1:{port}",
            "admin": f"127.0.0.1:{admin}",
            "max_connections": 15000,
        }))

    try:
        for i, tport in enumerate(ports):
            procs.append(subprocess.Popen(
                [str(BIN / "target-svc"), "--host", "127.0.0.1", "--port", str(tport), "--name", f"t{i + 1}"],
                stdout=subprocess.DEVNULL))
        for tport in ports:
            wait_port(tport)
        write_config(SETS[0])
        proxy = subprocess.Popen([str(BIN / "ringproxy"), "--config", str(config)],
                                 stdout=subprocess.DEVNULL, stderr=open(work / "proxy.log", "w"))
        procs.append(proxy)
        wait_port(port)
        wait_port(admin)

        log(f"baseline: wrk -c{args.connections} for {seconds} s, no reloads")
        base = wrk(port, seconds, args.connections)

        def reloader():
            for n in range(args.reloads):
                time.sleep(seconds / (args.reloads + 1))
                write_config(SETS[(n + 1) % len(SETS)])
                proxy.send_signal(signal.SIGHUP)

        log(f"with reloads: wrk -c{args.connections} for {seconds} s, {args.reloads} reloads")
        before = {t["url"]: t["requests"] for t in status(admin)["targets"]}
        thread = threading.Thread(target=reloader)
        thread.start()
        under = wrk(port, seconds, args.connections)
        thread.join()
        after = status(admin)
        reloads = after["reloads"]

        print()
        print(f"| run | requests/s | requests | non-2xx | socket errors |")
        print(f"|---|---:|---:|---:|---:|")
        print(f"| no reload | {base[0]:,.0f} | {base[1]:,} | {base[2]} | {base[3]} |")
        print(f"| {args.reloads} reloads | {under[0]:,.0f} | {under[1]:,} | {under[2]} | {under[3]} |")
        print()
        print(f"throughput during reloads: {under[0] / base[0]:.2f}x the run without")
        print(f"reloads applied: {reloads['success']} ok, {reloads['failure']} failed")
        print("targets at the end, and the requests each served during the reload run:")
        for t in after["targets"]:
            # A target removed and added again starts counting from zero when it rejoins.
            earlier = before.get(t["url"], 0)
            served = t["requests"] - earlier if t["requests"] >= earlier else t["requests"]
            print(f"  {t['id']} {t['url']}: {served:,} (since the run began or it last rejoined)")
        failed = under[2] + under[3] + base[2] + base[3]
        if failed or reloads["success"] != args.reloads:
            print("FAILED: requests failed or a reload was not applied")
            return 1
        print("OK")
        return 0
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
