#!/usr/bin/env python3
"""One event loop against two, in one run: ringproxy with "workers": 1 and 2, HAProxy with
nbthread 1 and 2, nginx with worker_processes 1 and 2, in front of the same five target-svc
backends, under wrk in alternation (every setup once per round, medians over the rounds).

For each workload (keep-alive GETs and `Connection: close`, both at c50 by default) it reports
requests/s, p99, the proxy's CPU µs per request (all its threads or worker processes) and the
whole machine's, and the ratios: each proxy's 2 against its 1, and ringproxy against the other
two at the same count. wrk runs with two threads so that it is not the first to run out of
one core.

    bench/workers.py                 # 3 rounds of 10 s per setup and workload
    bench/workers.py --quick         # 3 rounds of 3 s
    bench/workers.py --out DIR       # also write the report to DIR/workers.md

Traffic goes only to 127.0.0.1. Needs wrk, nginx-light and haproxy (Debian packages; installed
with apt-get when missing and running as root). Writes nothing into the repository.
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import compare
from compare import Procs, free_port, measured_wrk, run_wrk, wait_port

ROOT = compare.ROOT
SETUPS = [("ringproxy", 1), ("haproxy", 1), ("nginx", 1), ("ringproxy", 2), ("haproxy", 2), ("nginx", 2)]
NAMES = {"ringproxy": "ringproxy", "haproxy": "HAProxy", "nginx": "nginx"}
WORKLOADS = {"keepalive": ("keep-alive GET", []), "close": ("`Connection: close`", ["-H", "Connection: close"])}


def log(msg):
    print(f"workers: {msg}", flush=True)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=int, default=10, help="seconds of wrk per setup per round")
    p.add_argument("--connections", type=int, default=50, help="wrk -c")
    p.add_argument("--workload", choices=list(WORKLOADS), action="append", help="only this workload (repeatable)")
    p.add_argument("--quick", action="store_true", help="3 rounds of 3 s")
    p.add_argument("--out", type=Path, help="a directory for workers.md")
    a = p.parse_args()
    if a.quick:
        a.duration = 3
    return a


def config(tmp, name, count, port, backends):
    if name == "ringproxy":
        return compare.ringproxy_config(tmp, port, backends, workers=count, name=f"ringproxy-{count}.json")
    if name == "haproxy":
        return compare.haproxy_config(tmp, port, backends, maxconn=4000, name=f"haproxy-{count}.cfg", threads=count)
    return compare.nginx_config(tmp, f"nginx-{count}", port, backends, workers=count)


def main():
    args = parse_args()
    compare.ensure_tools(False)
    log("building release binaries")
    subprocess.run(["cargo", "build", "--release", "--workspace", "--quiet"], cwd=ROOT, check=True)
    tmp = Path(tempfile.mkdtemp(prefix="ringproxy-workers-"))
    procs = Procs()
    results = {}
    try:
        backends = [free_port() for _ in range(5)]
        backend_procs = [procs.start([str(ROOT / "target/release/target-svc"), "--host", "127.0.0.1", "--port",
                                      str(port), "--name", f"b{i}"]) for i, port in enumerate(backends, 1)]
        for port in backends:
            wait_port(port)
        backend_pids = [p.pid for p in backend_procs]
        ports, pids = {}, {}
        for name, count in SETUPS:
            port = free_port()
            proc = procs.start(compare.proxy_command(name, config(tmp, name, count, port, backends)))
            wait_port(port)
            ports[name, count] = port
            pids[name, count] = compare.worker_pids(name, proc, count)
        for workload in args.workload or list(WORKLOADS):
            extra = WORKLOADS[workload][1]
            for setup in SETUPS:
                run_wrk(ports[setup], 1, args.connections, extra, threads=2)
            cells = {setup: [] for setup in SETUPS}
            for r in range(1, args.rounds + 1):
                for setup in SETUPS:
                    res = measured_wrk(ports[setup], args.duration, args.connections, pids[setup], backend_pids,
                                       extra, threads=2)
                    cells[setup].append(res)
                    log(f"{workload} round {r}/{args.rounds} {setup[0]:9} x{setup[1]} {res['rps']:>9.0f} req/s  "
                        f"p99 {res['p99']:.2f} ms  errors {res['errors']}  proxy CPU "
                        f"{res['proxy_user_us'] + res['proxy_kernel_us']:.1f} us/request  "
                        f"machine {res['machine_us']:.1f} us/request")
            results[workload] = cells
    finally:
        procs.stop_all()
    report = render(args, results)
    print("\n" + report)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "workers.md").write_text(report)
        log(f"report in {args.out / 'workers.md'}")
    return 0


def render(args, results):
    lines = [
        f"{args.rounds} rounds of {args.duration} s per cell, wrk -t2 -c{args.connections}, in alternation; medians. "
        f"{compare.machine()}.",
        "",
        "| workload | proxy | requests/s ×1 | ×2 | ×2 / ×1 | p99 ms ×1, ×2 | proxy CPU µs/request ×1, ×2 "
        "| machine CPU µs/request ×1, ×2 | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    ratio_lines = []
    for workload, cells in results.items():
        med = {s: {k: statistics.median(r[k] for r in cells[s]) for k in ("rps", "p99", "machine_us")} for s in cells}
        cpu = {s: statistics.median(r["proxy_user_us"] + r["proxy_kernel_us"] for r in cells[s]) for s in cells}
        for name in NAMES:
            one, two = med[name, 1], med[name, 2]
            errors = sum(r["errors"] for c in (1, 2) for r in cells[name, c])
            lines.append(
                f"| {WORKLOADS[workload][0]} | {NAMES[name]} | {one['rps']:,.0f} | {two['rps']:,.0f} | "
                f"{two['rps'] / one['rps']:.2f}× | {one['p99']:.2f}, {two['p99']:.2f} | "
                f"{cpu[name, 1]:.1f}, {cpu[name, 2]:.1f} | {one['machine_us']:.1f}, {two['machine_us']:.1f} | {errors} |")
        for count in (1, 2):
            r = med["ringproxy", count]["rps"]
            ratio_lines.append(
                f"- {WORKLOADS[workload][0]}, {count} each: ringproxy / HAProxy **{r / med['haproxy', count]['rps']:.2f}×**, "
                f"/ nginx **{r / med['nginx', count]['rps']:.2f}×** in requests/s; proxy CPU per request "
                f"{cpu['ringproxy', count] / cpu['haproxy', count]:.2f}× HAProxy's.")
    return "\n".join(lines + [""] + ratio_lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
