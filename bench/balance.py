#!/usr/bin/env python3
"""The balancing policies measured through the real proxy, on local target-svc processes:

  keys    `hash` key movement: 100 000 keys (an X-User header) over 10 targets; one target
          leaves, then comes back. Reports the share of keys that moved each time (goal: at
          most 1/10 + 1 % when it leaves, and every key back where it was when it returns).
  slow    one of 5 targets 10x slower (target-svc --delay-ms 20 against 2); wrk for each of
          round_robin, least_conn, p2c and hashring: the slow target's share of requests,
          requests/s and p99.
  start   slow start: round_robin with slow_start 10 s, a target killed and restarted under
          steady load; its requests per second over time, printed and plotted (PNG, needs
          matplotlib).

    bench/balance.py                 # all three; results in a temporary directory
    bench/balance.py keys --keys 20000
    bench/balance.py --out DIR       # where the CSV and PNG go (outside the repository by default)

Traffic goes only to 127.0.0.1. Needs wrk for `slow` (apt-get install wrk).
"""

import argparse
import csv
import http.client
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from loopback import free_port, pyplot, wait_port

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "target" / "release"


def log(msg):
    print(f"balance: {msg}", flush=True)


class Stack:
    """target-svc processes and one ringproxy over them, on free loopback ports."""

    def __init__(self, work, n, extra_config, delays=None):
        self.work, self.procs, self.targets = work, [], []
        self.ports = [free_port() for _ in range(n)]
        for i, port in enumerate(self.ports):
            self.start_target(i, (delays or {}).get(i, 0))
        self.port, self.admin = free_port(), free_port()
        config = {"ports": [f"http://127.0.0.1:{p}/" for p in self.ports], "listen": f"127.0.0.1:{self.port}",
                  "admin": f"127.0.0.1:{self.admin}", "max_connections": 15000, **extra_config}
        path = work / f"config-{self.port}.json"
        path.write_text(json.dumps(config))
        self.proxy = subprocess.Popen([str(BIN / "ringproxy"), "--config", str(path)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, 10, "balance")
        wait_port(self.admin, 10, "balance")

    def start_target(self, i, delay=0):
        cmd = [str(BIN / "target-svc"), "--host", "127.0.0.1", "--port", str(self.ports[i]), "--name", f"t{i + 1}"]
        if delay:
            cmd += ["--delay-ms", str(delay)]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
        if i < len(self.targets):
            self.targets[i] = proc
        else:
            self.targets.append(proc)
        wait_port(self.ports[i], 10, "balance")

    def kill_target(self, i):
        self.targets[i].kill()
        self.targets[i].wait()

    def status(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/status.json", timeout=5) as r:
            return json.load(r)

    def requests(self):
        return {t["id"]: t["requests"] for t in self.status()["targets"]}

    def stop(self):
        for proc in self.targets + [self.proxy]:
            proc.terminate()
        for proc in self.targets + [self.proxy]:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()


def owners(port, keys, threads=8):
    """Which target answers each key (X-User: key-N), over keep-alive connections."""
    result = [None] * keys

    def work(start):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        for k in range(start, keys, threads):
            conn.request("GET", "/", headers={"X-User": f"key-{k}"})
            resp = conn.getresponse()
            resp.read()
            result[k] = resp.getheader("X-Target")
        conn.close()

    pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return result


def keys(work, args):
    log(f"hash key movement: {args.keys:,} keys over 10 targets")
    stack = Stack(work, 10, {"policy": "hash", "hash_key": "header:X-User", "sleeping": 0.2})
    try:
        before = owners(stack.port, args.keys)
        stack.kill_target(3)
        owners(stack.port, 50)  # the first requests find it gone
        during = owners(stack.port, args.keys)
        stack.start_target(3)
        deadline = time.monotonic() + 10
        while stack.status()["live"] < 10 and time.monotonic() < deadline:
            time.sleep(0.1)
        after = owners(stack.port, args.keys)
    finally:
        stack.stop()
    held = sum(1 for o in before if o == "t4")
    moved = sum(1 for a, b in zip(before, during) if a != b)
    back = sum(1 for a, b in zip(before, after) if a != b)
    share = moved / args.keys
    print(f"\nkeys: t4 held {held:,} of {args.keys:,} keys ({held / args.keys:.2%}); when it left, {moved:,} "
          f"moved ({share:.2%}, goal <= 11.00%), all of them its own: {moved == held}; when it came back, "
          f"{back:,} keys were not where they started")
    return share <= 0.11 and back == 0


def wrk(port, seconds, connections):
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", f"http://127.0.0.1:{port}/"],
                         capture_output=True, text=True, check=True).stdout
    rps = float(out.split("Requests/sec:")[1].split()[0])
    p50, p90, p99 = (out.split(f" {q}%")[1].split()[0] for q in (50, 90, 99))
    return rps, p50, p90, p99


def slow(work, args):
    if not shutil.which("wrk"):
        raise SystemExit("balance: `slow` needs wrk (apt-get install wrk)")
    log("one of 5 targets 10x slower (20 ms against 2 ms): each policy under wrk -c32")
    rows = []
    for policy in ["round_robin", "least_conn", "p2c", "hashring"]:
        stack = Stack(work, 5, {"policy": policy}, delays={0: 20, 1: 2, 2: 2, 3: 2, 4: 2})
        try:
            before = stack.requests()
            rps, p50, p90, p99 = wrk(stack.port, args.seconds, 32)
            after = stack.requests()
        finally:
            stack.stop()
        served = {k: after[k] - before.get(k, 0) for k in after}
        total = sum(served.values())
        rows.append((policy, served["t1"] / total, rps, p50, p90, p99))
    print("\n| policy | slow target's share | requests/s | p50 | p90 | p99 |")
    print("|---|---:|---:|---:|---:|---:|")
    for policy, share, rps, p50, p90, p99 in rows:
        print(f"| {policy} | {share:.1%} | {rps:,.0f} | {p50} | {p90} | {p99} |")
    return True


def start(work, args):
    log("slow start: round_robin, slow_start 10 s; t3 killed at 5 s, restarted at 8 s, load until 30 s")
    stack = Stack(work, 3, {"policy": "round_robin", "slow_start": 10, "sleeping": 0.2})
    try:
        load = subprocess.Popen(["wrk", "-t1", "-c8", "-d30s", f"http://127.0.0.1:{stack.port}/"],
                                stdout=subprocess.DEVNULL) if shutil.which("wrk") else None
        if load is None:
            raise SystemExit("balance: `start` needs wrk (apt-get install wrk)")
        time.sleep(5)
        stack.kill_target(2)
        time.sleep(3)
        stack.start_target(2)
        load.wait()
        status = stack.status()
    finally:
        stack.stop()
    series = {t["id"]: t["rps"][-30:] for t in status["targets"]}
    path = args.out / "slow-start.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["second"] + list(series))
        for s in range(30):
            w.writerow([s] + [series[k][s] for k in series])
    print("\nrequests per second of t3 (killed at 5 s, restarted at 8 s, slow_start 10 s):")
    print("  " + " ".join(str(v) for v in series["t3"]))
    print("  and of t1: " + " ".join(str(v) for v in series["t1"]))
    print(f"CSV: {path}")
    plt = pyplot(print)
    if plt is None:
        return True
    fig, ax = plt.subplots(figsize=(9, 3.6))
    for k, v in series.items():
        ax.plot(range(30), v, label=k)
    ax.axvline(5, color="grey", ls=":")
    ax.axvline(8, color="grey", ls="--")
    ax.set_xlabel("seconds")
    ax.set_ylabel("requests/s")
    ax.set_title("slow start: t3 killed at 5 s, back at 8 s, ramps over 10 s")
    ax.legend()
    fig.tight_layout()
    png = args.out / "slow-start.png"
    fig.savefig(png, dpi=110)
    print(f"PNG: {png}")
    return True


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("parts", nargs="*", choices=["keys", "slow", "start", []], default=[])
    p.add_argument("--keys", type=int, default=100_000)
    p.add_argument("--seconds", type=int, default=10, help="wrk seconds per policy in `slow`")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    args.out = args.out or Path(tempfile.mkdtemp(prefix="ringproxy-balance-"))
    args.out.mkdir(parents=True, exist_ok=True)
    log("building release binaries")
    subprocess.run(["cargo", "build", "--release", "--workspace", "--quiet"], cwd=ROOT, check=True)
    work = Path(tempfile.mkdtemp(prefix="ringproxy-balance-work-"))
    ok = True
    try:
        for part in args.parts or ["keys", "slow", "start"]:
            ok &= {"keys": keys, "slow": slow, "start": start}[part](work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(main())
