#!/usr/bin/env python3
"""Two ringproxy binaries side by side, with HAProxy as the yardstick, over the same backends.

A change to the hot path is judged against the binary before it, on the same machine in the
same minute: five target-svc backends, the two proxies and HAProxy (compare.py's setups), wrk
against each in alternation (A B H, A B H, ...), and per proxy the requests/s, p99 and its own
CPU µs per request (/proc), each round and the medians.

    git worktree add /tmp/before HEAD~1 && (cd /tmp/before && cargo build --release)
    bench/ab.py /tmp/before/target/release/ringproxy target/release/ringproxy --path /bytes/1048576 -c 10

Traffic goes only to 127.0.0.1. Every process it starts is stopped at the end; nothing in the
repository is written.
"""

import argparse
import os
import statistics
import tempfile
from pathlib import Path

import compare
import loopback
from loopback import free_port


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("a", help="the first ringproxy binary (before)")
    p.add_argument("b", help="the second ringproxy binary (after)")
    p.add_argument("--path", default="/", help="what wrk asks for")
    p.add_argument("-c", "--connections", type=int, default=50, help="wrk -c")
    p.add_argument("--duration", type=int, default=5, help="seconds of wrk per proxy per round")
    p.add_argument("--rounds", type=int, default=3)
    return p.parse_args()


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main():
    args = parse_args()
    compare.ensure_tools(False)
    tmp = Path(tempfile.mkdtemp(prefix="ringproxy-ab-"))
    procs = compare.Procs()
    try:
        backends = [free_port() for _ in range(5)]
        for i, port in enumerate(backends, 1):
            procs.start([str(compare.ROOT / "target/release/target-svc"), "--host", "127.0.0.1", "--port", str(port),
                         "--name", f"b{i}"])
        for port in backends:
            loopback.wait_port(port, 15.0, "ab")
        ports, pids = {}, {}
        for name, binary in (("a", args.a), ("b", args.b)):
            ports[name] = free_port()
            command = compare.proxy_command("ringproxy", compare.ringproxy_config(tmp, ports[name], backends,
                                                                                  name=f"{name}.json"))
            command[0] = str(Path(binary).resolve())
            pids[name] = procs.start(command).pid
            loopback.wait_port(ports[name], 15.0, "ab")
        ports["haproxy"] = free_port()
        haproxy = procs.start(compare.proxy_command(
            "haproxy", compare.haproxy_config(tmp, ports["haproxy"], backends, maxconn=args.connections + 1000)))
        loopback.wait_port(ports["haproxy"], 15.0, "ab")
        pids["haproxy"] = compare.worker_pid("haproxy", haproxy)
        for name in ports:
            compare.run_wrk(ports[name], 1, args.connections, path=args.path)
        runs = {name: [] for name in ports}
        for r in range(1, args.rounds + 1):
            for name in ports:
                before = cpu_seconds(pids[name])
                result = compare.run_wrk(ports[name], args.duration, args.connections, path=args.path)
                us = (cpu_seconds(pids[name]) - before) / max(result["rps"] * args.duration, 1) * 1e6
                runs[name].append((result["rps"], result["p99"], us))
                print(f"ab: round {r}/{args.rounds} {name:8} {result['rps']:>9.0f} req/s  p99 {result['p99']:.2f} ms  "
                      f"proxy CPU {us:.1f} us/request", flush=True)
        print(f"\nwrk -t1 -c{args.connections} {args.path}, {args.rounds} rounds of {args.duration} s, medians:\n")
        print("| proxy | requests/s | p99 ms | proxy CPU µs per request |\n|---|---:|---:|---:|")
        labels = {"a": f"a: {args.a}", "b": f"b: {args.b}", "haproxy": "HAProxy"}
        for name in ports:
            rps, p99, us = (statistics.median(run[i] for run in runs[name]) for i in range(3))
            print(f"| {labels[name]} | {rps:,.0f} | {p99:.2f} | {us:.1f} |")
    finally:
        procs.stop_all()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
