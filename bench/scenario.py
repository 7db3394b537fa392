#!/usr/bin/env python3
"""The prototype's stop/start scenario (run.ps1): bring the stack up, send a GET every 0.2 s,
stop target 3 after 100 s, start it again after another 100 s, then tear everything down.

It prints progress while it runs and ends with a summary: requests sent, failures (must be 0),
per-target counts before, during and after the stop. It writes a CSV of requests per second per
target and a PNG plot of it with the stop and start marked. Exit code 0 only if there were no
failures, target 3 served nothing while stopped, and it served again within 3 x `sleeping`
after it started.

    bench/scenario.py                         # against docker compose (docker/build.sh first)
    bench/scenario.py --local                 # against local processes, no Docker
    bench/scenario.py --quick --local         # 15 s instead of 300 s
    bench/scenario.py --stop-at 10 --start-at 20 --end-at 30 --interval 0.1

Traffic goes only to 127.0.0.1.
"""

import argparse
import csv
import http.client
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from compose import compose_command
from loopback import can_connect, free_port, pyplot

ROOT = Path(__file__).resolve().parent.parent
TARGETS = 5


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--local", action="store_true", help="run local processes instead of docker compose")
    p.add_argument("--quick", action="store_true", help="stop at 5 s, start at 10 s, end at 15 s, 20 req/s")
    p.add_argument("--interval", type=float, default=0.2, help="seconds between requests (default 0.2)")
    p.add_argument("--stop-at", type=float, default=100, help="stop the target at this second (default 100)")
    p.add_argument("--start-at", type=float, default=200, help="start it again at this second (default 200)")
    p.add_argument("--end-at", type=float, help="stop sending at this second (default start-at + 100)")
    p.add_argument("--target", type=int, default=3, help="which target to stop, 1-5 (default 3)")
    p.add_argument("--bin-dir", default=str(ROOT / "target" / "release"), help="binaries for --local")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"), help="where the CSV and PNG go")
    a = p.parse_args()
    if a.quick:
        a.stop_at, a.start_at, a.end_at, a.interval = 5, 10, 15, 0.05
    if a.end_at is None:
        a.end_at = a.start_at + 100
    if not 0 < a.stop_at < a.start_at < a.end_at:
        p.error("need 0 < --stop-at < --start-at < --end-at")
    return a


def log(msg):
    print(f"scenario: {msg}", flush=True)


def wait_until(what, check, within=30.0):
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise SystemExit(f"scenario: timed out after {within:.0f} s waiting for {what}")


def get(port, path="/"):
    """One GET on a fresh connection, as the prototype did: (status, target) or (None, error)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status, resp.getheader("X-Target", "?")
    except (OSError, http.client.HTTPException) as e:
        return None, type(e).__name__
    finally:
        conn.close()


class Local:
    """Five target-svc processes and ringproxy on 127.0.0.1; stopping a target kills it."""

    def __init__(self, bin_dir):
        self.bin = Path(bin_dir)
        if not (self.bin / "ringproxy").exists():
            log("building release binaries")
            subprocess.run(["cargo", "build", "--release", "--workspace", "--quiet"], cwd=ROOT, check=True)
        self.ports = [free_port() for _ in range(TARGETS)]
        self.targets = [None] * TARGETS
        self.sleeping = 1.0
        self.port = free_port()
        self.config = Path(tempfile.mkstemp(prefix="ringproxy-scenario-", suffix=".json")[1])
        self.proxy = None

    def up(self):
        for i in range(TARGETS):
            self.start(i + 1)
        self.config.write_text(json.dumps({
            "ports": [f"http://127.0.0.1:{p}/" for p in self.ports],
            "sleeping": self.sleeping,
            "listen": f"127.0.0.1:{self.port}",
            "admin": f"127.0.0.1:{free_port()}",
        }))
        self.proxy = subprocess.Popen([str(self.bin / "ringproxy"), "--config", str(self.config)])
        wait_until("the proxy", lambda: get(self.port)[0] == 200)

    def start(self, n):
        cmd = [str(self.bin / "target-svc"), "--host", "127.0.0.1", "--port", str(self.ports[n - 1]), "--name", f"target{n}"]
        self.targets[n - 1] = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
        wait_until(f"target{n}", lambda: can_connect(self.ports[n - 1]))

    def stop(self, n):
        proc = self.targets[n - 1]
        proc.kill()
        proc.wait()

    def down(self):
        for proc in self.targets + [self.proxy]:
            if proc and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
        self.config.unlink(missing_ok=True)


class Compose:
    """docker compose with the images docker/build.sh makes; stopping a target stops its container."""

    def __init__(self):
        self.port = free_port()
        self.admin_port = free_port()
        self.project = f"ringproxy-scenario-{os.getpid()}"
        self.base = compose_command("scenario") + ["-f", str(ROOT / "docker" / "compose.yaml"), "-p", self.project]
        self.env = dict(os.environ, RINGPROXY_PORT=str(self.port), RINGPROXY_ADMIN_PORT=str(self.admin_port))
        self.sleeping = json.loads((ROOT / "docker" / "config" / "appsettings.json").read_text()).get("sleeping", 1)

    def compose(self, *args):
        subprocess.run(self.base + list(args), env=self.env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def up(self):
        log("building static binaries and images (docker/build.sh)")
        subprocess.run([str(ROOT / "docker" / "build.sh")], check=True)
        self.compose("up", "-d", "--build")
        wait_until("the compose stack", lambda: get(self.port)[0] == 200, within=60)
        wait_until("the published admin /readyz", lambda: get(self.admin_port, "/readyz")[0] == 200, within=30)
        log(f"admin endpoints published on 127.0.0.1:{self.admin_port} (/status, /metrics)")

    def start(self, n):
        self.compose("start", f"target{n}")

    def stop(self, n):
        self.compose("stop", f"target{n}")

    def down(self):
        subprocess.run(self.base + ["logs", "--no-color", "proxy"], env=self.env)
        self.compose("down")


def run(args, stack):
    """Sends the GETs on a fixed schedule while another thread stops and starts the target, so
    the traffic never pauses for a slow compose command. Returns the records and event times."""
    records = []  # (seconds since start, status or None, target or error)
    events = {}
    t0 = time.monotonic()

    def control():
        for at, begin, done, action, verb in (
            (args.stop_at, "stop_begin", "stop_done", stack.stop, "stopped"),
            (args.start_at, "start_begin", "start_done", stack.start, "started"),
        ):
            time.sleep(max(0.0, t0 + at - time.monotonic()))
            events[begin] = time.monotonic() - t0
            action(args.target)
            events[done] = time.monotonic() - t0
            log(f"t={events[done]:.1f}s target{args.target} {verb}")

    controller = threading.Thread(target=control, daemon=True)
    controller.start()
    n = 0
    next_progress = 0.0
    while time.monotonic() - t0 < args.end_at:
        sent = time.monotonic() - t0
        status, who = get(stack.port)
        records.append((sent, status, who))
        if sent >= next_progress:
            fails = sum(1 for r in records if r[1] != 200)
            log(f"t={sent:5.1f}s sent={len(records)} failures={fails}")
            next_progress += max(1.0, args.end_at / 20)
        n += 1
        time.sleep(max(0.0, t0 + n * args.interval - time.monotonic()))
    controller.join()
    return records, events


def phase_counts(records, lo, hi):
    counts = {f"target{i}": 0 for i in range(1, TARGETS + 1)}
    for sent, status, who in records:
        if lo <= sent < hi and status == 200:
            counts[who] = counts.get(who, 0) + 1
    return counts


def write_csv(path, records, end_at):
    seconds = math.ceil(end_at)
    names = [f"target{i}" for i in range(1, TARGETS + 1)]
    rows = [[s] + [0] * (TARGETS + 1) for s in range(seconds)]
    for sent, status, who in records:
        row = rows[min(int(sent), seconds - 1)]
        if status == 200 and who in names:
            row[1 + names.index(who)] += 1
        elif status != 200:
            row[-1] += 1
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["second"] + names + ["failures"])
        w.writerows(rows)
    return names, rows


def plot(path, names, rows, events, title):
    plt = pyplot(log)
    if plt is None:
        return False
    # At 1 request/s per target, one-second bins only flicker between 1 and 2: average over
    # windows of about a thirtieth of the run.
    width = max(1, len(rows) // 30)
    bins = [rows[i:i + width] for i in range(0, len(rows), width)]
    xs = [b[0][0] for b in bins]
    rate = lambda col: [sum(r[col] for r in b) / len(b) for b in bins]
    fig, ax = plt.subplots(figsize=(10, 4.5), dpi=100)
    for i, name in enumerate(names):
        ax.step(xs, rate(1 + i), where="post", label=name, linewidth=1.4)
    fails = rate(-1)
    if any(fails):
        ax.step(xs, fails, where="post", label="failures", color="black", linestyle=":")
    for key, label, colour in (("stop_done", "stopped", "red"), ("start_done", "started", "green")):
        if key in events:
            ax.axvline(events[key], color=colour, linestyle="--", linewidth=1)
            ax.text(events[key], ax.get_ylim()[1] * 0.95, f" {label}", color=colour, va="top")
    ax.set_xlabel("seconds since start")
    ax.set_ylabel(f"requests per second ({width} s average)" if width > 1 else "requests per second")
    ax.set_title(title)
    ax.legend(loc="lower left", ncol=3, fontsize="small")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def main():
    args = parse_args()
    mode = "local" if args.local else "compose"
    stack = Local(args.bin_dir) if args.local else Compose()
    log(f"{mode}: stop target{args.target} at {args.stop_at:g}s, start at {args.start_at:g}s, "
        f"end at {args.end_at:g}s, a GET every {args.interval:g}s")
    try:
        stack.up()
        records, events = run(args, stack)
    finally:
        stack.down()

    name = f"target{args.target}"
    before = phase_counts(records, 0, events["stop_begin"])
    during = phase_counts(records, events["stop_done"], events["start_begin"])
    after = phase_counts(records, events["start_done"], float("inf"))
    failures = [r for r in records if r[1] != 200]
    back = [sent - events["start_done"] for sent, status, who in records
            if who == name and status == 200 and sent >= events["start_done"]]
    revival = back[0] if back else None
    limit = 3 * stack.sleeping

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, png_path = out / f"scenario-{mode}.csv", out / f"scenario-{mode}.png"
    names, rows = write_csv(csv_path, records, args.end_at)
    plotted = plot(png_path, names, rows, events,
                   f"ringproxy ({mode}): {name} stopped at {events['stop_done']:.0f}s, "
                   f"started at {events['start_done']:.0f}s")

    print()
    print(f"requests sent: {len(records)}")
    print(f"failures:      {len(failures)}" + (f"  e.g. {failures[:3]}" if failures else ""))
    print(f"{'':10}{'before':>8}{'during':>8}{'after':>8}")
    for n in names:
        print(f"{n:10}{before[n]:>8}{during[n]:>8}{after[n]:>8}")
    print(f"{name} served again {revival:.2f} s after it started (limit {limit:g} s)" if revival is not None
          else f"{name} never served again")
    print(f"wrote {csv_path}" + (f" and {png_path}" if plotted else ""))

    problems = []
    if failures:
        problems.append(f"{len(failures)} failed requests")
    if during[name]:
        problems.append(f"{name} served {during[name]} requests while stopped")
    if revival is None or revival > limit:
        problems.append(f"{name} was not back within {limit:g} s")
    if problems:
        print("FAILED: " + "; ".join(problems))
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
