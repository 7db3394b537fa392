#!/usr/bin/env python3
"""Chaos soak: a steady load through ringproxy while faults hit its targets, for minutes.

Five target-svc processes and ringproxy run on 127.0.0.1. A fixed-rate load (GETs, and a share
of POSTs whose bodies the target echoes back) runs the whole time, opening connections as it
needs them, as wrk2 and locust's constant pacing do. Meanwhile, one event at a time, with at
most two targets impaired at once:

    kill        SIGKILL a target, start it again a few seconds later
    freeze      SIGSTOP a target for a few seconds, then SIGCONT
    reset       a target that resets every connection for a while (a listener of this script
                takes its port, closes each connection with RST, then gives the port back)
    slow        a target that answers every request 0.4 s late for a while
    remove/add  a reload (SIGHUP) that takes a target out of the config, and one that puts it
                back
    scale       a sixth target started and reloaded in, later reloaded out and stopped

Every event is logged with its time. Every second the script samples the proxy's RSS, open
descriptors and CPU, and each target's responses (from /metrics); it writes chaos.csv,
events.csv and chaos.png (requests per second per target with the events marked, RSS and
descriptors below) and a summary. Exit 1 if an idempotent request failed, a response was
wrong, a POST failed that no target had received, RSS grew more than 10 % after warm-up, or
the descriptors did not come back to their baseline.

    bench/chaos.py                     # 10 minutes at 2,000 requests/s
    bench/chaos.py --quick             # 35 s: every kind of event twice (run by cargo test)
    bench/chaos.py --duration 120 --rate 1000 --seed 7 --out /tmp/chaos

Results go to a new temporary directory unless --out names one. Traffic goes only to 127.0.0.1.
"""

import argparse
import asyncio
import csv
import json
import os
import random
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from loopback import free_port, pyplot, wait_port

ROOT = Path(__file__).resolve().parent.parent
TARGETS = 5
IDEMPOTENT = {"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"}
# Why a POST may fail: the proxy had sent it, and the target lost it (the access log's outcome
# of the last attempt). A POST that failed only on connecting was never received: the proxy
# must have tried another target.
LOST_AFTER_SENDING = {"reset", "eof", "timeout", "bad_response"}
SLOW_MS = 400
UPSTREAM_TIMEOUT = 2.0
CLIENT_TIMEOUT = 15.0
# Two of the proxy's pool trim periods (2 s each): idle buffers and connections a burst left
# are freed by then.
TRIM_PERIODS = 4.5
# --quick: every kind of event, twice: (second, kind, target, seconds held), from each start.
QUICK_PLAN = [(1, "freeze", 3, 2), (4, "kill", 2, 1.5), (6.5, "reset", 1, 1.5), (9, "slow", 4, 1.5),
              (11.5, "remove_add", 5, 1.5), (14, "scale", None, 1.5)]
QUICK_PASSES = (0, 17)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=600, help="seconds of load (default 600)")
    p.add_argument("--rate", type=float, default=2000, help="requests per second (default 2000)")
    p.add_argument("--post-share", type=float, default=0.2, help="share of POSTs with bodies (default 0.2)")
    p.add_argument("--seed", type=int, default=None, help="seed of the event timeline (default: random)")
    p.add_argument("--workers", type=int, default=1, help="the proxy's event loops (default 1)")
    p.add_argument("--quick", action="store_true", help="35 s, each kind of event twice, 1,000 requests/s")
    p.add_argument("--out", help="directory for chaos.csv, events.csv, chaos.png and summary.txt")
    p.add_argument("--bin-dir", default=str(ROOT / "target" / "release"))
    a = p.parse_args()
    if a.quick:
        a.duration, a.rate = 35, 1000
    if a.seed is None:
        a.seed = random.SystemRandom().randrange(1 << 32)
    return a


START = time.monotonic()


def now():
    return time.monotonic() - START


def log(msg):
    print(f"chaos: {now():7.2f} {msg}", flush=True)


# --- the parts ------------------------------------------------------------------------------

class Target:
    """One target-svc on a fixed port, and what can be done to it."""

    def __init__(self, n, bin_dir):
        self.n, self.bin, self.port = n, bin_dir, free_port()
        self.proc, self.resetter, self.stopped = None, None, False
        self.url = f"http://127.0.0.1:{self.port}/"

    def start(self, delay_ms=0):
        cmd = [str(self.bin / "target-svc"), "--host", "127.0.0.1", "--port", str(self.port), "--name", f"t{self.n}"]
        if delay_ms:
            cmd += ["--delay-ms", str(delay_ms)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, start_new_session=True)
        wait_port(self.port, 10, "chaos")

    def kill(self):
        if self.proc and self.proc.poll() is None:
            if self.stopped:
                self.proc.send_signal(signal.SIGCONT)
                self.stopped = False
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def freeze(self, on):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGSTOP if on else signal.SIGCONT)
            self.stopped = on

    async def reset_connections(self, seconds):
        """Holds the port for `seconds`, closing every connection with RST."""
        def refuse(_reader, writer):
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            writer.transport.abort()

        server = None
        for _ in range(100):
            try:
                server = await asyncio.start_server(refuse, "127.0.0.1", self.port, reuse_address=True)
                break
            except OSError:
                await asyncio.sleep(0.01)
        if server is None:
            raise SystemExit(f"chaos: cannot take port {self.port} for the resetter")
        await asyncio.sleep(seconds)
        server.close()
        await server.wait_closed()


class Proxy:
    def __init__(self, bin_dir, tmp, workers):
        self.bin, self.tmp = bin_dir, tmp
        self.port, self.admin = free_port(), free_port()
        self.config = tmp / "ringproxy.json"
        self.access = tmp / "access.log"
        self.workers = workers
        self.proc = None

    def write_config(self, targets):
        self.config.write_text(json.dumps({
            "ports": [t.url for t in targets],
            "sleeping": 0.5,
            "fall": 1,
            "rise": 2,
            "listen": f"127.0.0.1:{self.port}",
            "admin": f"127.0.0.1:{self.admin}",
            "upstream_timeout": UPSTREAM_TIMEOUT,
            "access_log": str(self.access),
            "access_log_format": "json",
            "workers": self.workers,
        }))

    def start(self, targets):
        self.write_config(targets)
        self.log = open(self.tmp / "ringproxy.out", "wb")
        self.proc = subprocess.Popen([str(self.bin / "ringproxy"), "--config", str(self.config)],
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_port(self.port, 15, "chaos")
        wait_port(self.admin, 15, "chaos")

    def metrics(self):
        """(reloads, {target URL: responses}) from /metrics, read by prometheus_client's parser."""
        from prometheus_client.parser import text_string_to_metric_families
        with socket.create_connection(("127.0.0.1", self.admin), timeout=2) as s:
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: chaos\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        text = data.partition(b"\r\n\r\n")[2].decode()
        responses, reloads = Counter(), 0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "ringproxy_target_responses_total":
                    responses[sample.labels.get("target", "?")] += sample.value
                elif sample.name == "ringproxy_reloads_total" and sample.labels.get("result") == "success":
                    reloads += sample.value
        return reloads, responses

    async def reload(self, targets):
        before = self.metrics()[0]
        self.write_config(targets)
        self.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while self.metrics()[0] <= before:
            if time.monotonic() > deadline:
                raise SystemExit("chaos: the reload was not applied within 10 s")
            await asyncio.sleep(0.05)

    def usage(self):
        """(RSS KiB, open descriptors, CPU seconds) of the proxy."""
        pid = self.proc.pid
        rss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                   if line.startswith("VmRSS:"))
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return rss, fds, cpu


# --- the load -------------------------------------------------------------------------------

class Load:
    """A fixed-rate load: request i starts at i / rate, on an idle keep-alive connection or a
    new one. Every request carries its own X-Request-Id, so a failure can be found in the
    proxy's access log; a POST's body comes back from /echo and is compared byte for byte."""

    def __init__(self, port, rate, post_share, seed):
        self.port, self.rate, self.post_share = port, rate, post_share
        self.rng = random.Random(seed ^ 0x5eed)
        self.idle = []
        self.open = 0
        self.records = []  # (start, method, outcome, request id)
        self.inflight = set()
        self.stopping = False

    async def connection(self):
        while self.idle:
            reader, writer = self.idle.pop()
            if not reader.at_eof() and not writer.is_closing():
                return reader, writer
            writer.close()
            self.open -= 1
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.open += 1
        return reader, writer

    async def one(self, i, method, body):
        start = now()
        rid = f"chaos-{i:09d}"
        outcome = "ok"
        writer = None
        try:
            reader, writer = await self.connection()
            if method == "GET":
                head = f"GET / HTTP/1.1\r\nHost: chaos\r\nX-Request-Id: {rid}\r\n\r\n".encode()
            else:
                head = (f"POST /echo HTTP/1.1\r\nHost: chaos\r\nX-Request-Id: {rid}\r\n"
                        f"Content-Type: application/octet-stream\r\nContent-Length: {len(body)}\r\n\r\n").encode()
            writer.write(head + body)
            status, got, close = await asyncio.wait_for(self.response(reader), CLIENT_TIMEOUT)
            expected = b"Hello, world!" if method == "GET" else body
            if status != 200:
                outcome = f"status {status}"
            elif got != expected:
                outcome = "wrong body"
            if close or status != 200:
                writer.close()
                self.open -= 1
            else:
                self.idle.append((reader, writer))
            writer = None
        except asyncio.TimeoutError:
            outcome = "client timeout"
        except (OSError, asyncio.IncompleteReadError, ValueError) as e:
            outcome = {ConnectionResetError: "reset", asyncio.IncompleteReadError: "closed"}.get(type(e), type(e).__name__)
        finally:
            if writer is not None:
                writer.close()
                self.open -= 1
        self.records.append((start, method, outcome, rid))

    async def response(self, reader):
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        fields = {}
        for line in lines[1:]:
            if ":" in line:
                name, _, value = line.partition(":")
                fields[name.strip().lower()] = value.strip()
        if "content-length" not in fields:
            raise ValueError("a response without Content-Length")
        body = await reader.readexactly(int(fields["content-length"]))
        return status, body, fields.get("connection", "").lower() == "close"

    async def run(self, seconds):
        i = 0
        t0 = time.monotonic()
        while not self.stopping:
            due = t0 + i / self.rate
            if due - t0 >= seconds:
                break
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if self.rng.random() < self.post_share:
                method, body = "POST", self.rng.randbytes(self.rng.randint(1, 32 * 1024))
            else:
                method, body = "GET", b""
            task = asyncio.ensure_future(self.one(i, method, body))
            self.inflight.add(task)
            task.add_done_callback(self.inflight.discard)
            i += 1
        if self.inflight:
            await asyncio.wait(self.inflight, timeout=CLIENT_TIMEOUT + 5)
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()


# --- the events -----------------------------------------------------------------------------

class Chaos:
    def __init__(self, args, targets, spare, proxy):
        self.args, self.targets, self.spare, self.proxy = args, targets, spare, proxy
        self.rng = random.Random(args.seed)
        self.events = []  # (time, text)
        self.configured = list(targets)
        self.impaired = set()

    def event(self, text):
        self.events.append((now(), text))
        log(text)

    async def kill(self, t, hold):
        self.event(f"SIGKILL t{t.n}")
        t.kill()
        await asyncio.sleep(hold)
        t.start()
        self.event(f"t{t.n} started again")

    async def freeze(self, t, hold):
        self.event(f"SIGSTOP t{t.n}")
        t.freeze(True)
        await asyncio.sleep(hold)
        t.freeze(False)
        self.event(f"SIGCONT t{t.n}")

    async def reset(self, t, hold):
        self.event(f"t{t.n} resets every connection")
        t.kill()
        await t.reset_connections(hold)
        t.start()
        self.event(f"t{t.n} answers again")

    async def slow(self, t, hold):
        self.event(f"t{t.n} answers {SLOW_MS} ms late")
        t.kill()
        t.start(delay_ms=SLOW_MS)
        await asyncio.sleep(hold)
        t.kill()
        t.start()
        self.event(f"t{t.n} answers at once again")

    async def remove_add(self, t, hold):
        self.configured.remove(t)
        await self.proxy.reload(self.configured)
        self.event(f"reload: t{t.n} removed")
        await asyncio.sleep(hold)
        self.configured.append(t)
        await self.proxy.reload(self.configured)
        self.event(f"reload: t{t.n} added back")

    async def scale(self, _t, hold):
        s = self.spare
        s.start()
        self.configured.append(s)
        await self.proxy.reload(self.configured)
        self.event(f"scale up: t{s.n} started and reloaded in")
        await asyncio.sleep(hold)
        self.configured.remove(s)
        await self.proxy.reload(self.configured)
        self.event(f"scale down: t{s.n} reloaded out")
        # Requests already on their way to it finish before it stops.
        await asyncio.sleep(UPSTREAM_TIMEOUT)
        s.kill()

    KINDS = ["kill", "freeze", "reset", "slow", "remove_add", "scale"]

    async def hit(self, kind, t, hold):
        self.impaired.add(t)
        try:
            await getattr(self, kind)(t, hold)
        finally:
            self.impaired.discard(t)

    async def run(self, seconds):
        """--quick: each kind once, in turn. Otherwise a random kind every 5-15 s, on a random
        target not already impaired, for 2-8 s, at most two at once."""
        running = set()
        if self.args.quick:
            # Two passes: the first is the warm-up (every path has taken its memory once), the
            # second must not raise the floor RSS settles to.
            plan = [(o + at, kind, n, hold) for o in QUICK_PASSES for at, kind, n, hold in QUICK_PLAN]
            for at, kind, n, hold in plan:
                await asyncio.sleep(max(0.0, at - now()))
                t = self.targets[n - 1] if n else None
                running.add(asyncio.ensure_future(self.hit(kind, t, hold)))
        else:
            while True:
                await asyncio.sleep(self.rng.uniform(5, 15))
                if now() > seconds - 20:
                    break
                running = {r for r in running if not r.done()}
                free = [t for t in self.targets if t not in self.impaired]
                if len(running) >= 2 or not free:
                    continue
                kind = self.rng.choice(self.KINDS)
                if kind == "scale" and self.spare in self.configured:
                    continue
                running.add(asyncio.ensure_future(self.hit(kind, self.rng.choice(free), self.rng.uniform(2, 8))))
        if running:
            await asyncio.gather(*running)


# --- sampling, report -----------------------------------------------------------------------

async def sample(proxy, load, everyone, rows, stop):
    """Once a second: time, RSS, descriptors, CPU %, client connections, and each target's
    responses in that second."""
    _, last = proxy.metrics()
    last_cpu = proxy.usage()[2]
    last_t = now()
    while not stop.is_set():
        await asyncio.sleep(1.0)
        rss, fds, cpu = proxy.usage()
        _, responses = proxy.metrics()
        t = now()
        # A target reloaded out and back in may start its count again.
        served = [max(0, responses[x.url] - last[x.url]) for x in everyone]
        rows.append([round(t, 2), rss, fds, round(100 * (cpu - last_cpu) / (t - last_t), 1), load.open, *served])
        last, last_cpu, last_t = responses, cpu, t


def access_outcomes(path):
    """{request id: (status, last attempt's outcome, every attempt)} from the JSON access log."""
    found = {}
    if not path.exists():
        return found
    for line in path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        tried = [a.get("outcome", "?") for a in entry.get("tried", [])]
        found[entry.get("request_id")] = (entry.get("status"), tried[-1] if tried else "ok", tried)
    return found


def plot(path, rows, names, events, title):
    plt = pyplot(log)
    if plt is None:
        return False
    xs = [r[0] for r in rows]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 7), dpi=100, sharex=True,
                                      gridspec_kw={"height_ratios": [2, 1]})
    for i, name in enumerate(names):
        top.plot(xs, [r[5 + i] for r in rows], label=name, linewidth=1.2)
    # Each event a line coloured by its kind; its words too when there are few enough to read.
    kinds = [("SIGKILL", "kill", "red"), ("SIGSTOP", "freeze", "blue"), ("resets", "reset", "orange"),
             ("late", "slow", "purple"), ("reload: t", "reload out/in", "green"), ("scale", "scale up/down", "brown")]
    shown = set()
    for t, text in events:
        kind = next(((label, colour) for word, label, colour in kinds if word in text), None)
        if kind is None:
            continue  # the end of an event (started again, SIGCONT, ...): its start is marked
        label, colour = kind
        top.axvline(t, color=colour, linestyle=":", linewidth=1, label=None if label in shown else label)
        shown.add(label)
        if len(events) <= 30:
            top.text(t, top.get_ylim()[1], " " + text, rotation=90, va="top", fontsize=6, color=colour)
    top.set_ylabel("responses per second")
    top.set_title(title)
    top.legend(loc="lower left", ncol=6, fontsize="x-small")
    top.grid(alpha=0.3)
    bottom.plot(xs, [r[1] / 1024 for r in rows], color="tab:red", label="RSS MiB")
    bottom.set_ylabel("RSS MiB", color="tab:red")
    bottom.set_xlabel("seconds since start")
    twin = bottom.twinx()
    twin.plot(xs, [r[2] for r in rows], color="tab:blue", label="descriptors")
    twin.set_ylabel("open descriptors", color="tab:blue")
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def summarize(args, rows, records, events, access, baseline_fds, end_usage, names):
    lines = []
    by = Counter((m, "ok" if o == "ok" else "failed") for _, m, o, _ in records)
    lines.append(f"seed {args.seed}, {args.duration:.0f} s at {args.rate:.0f} requests/s, "
                 f"{args.post_share:.0%} POSTs, {len(events)} events")
    lines.append(f"requests: {len(records)} ({', '.join(f'{m} {o} {n}' for (m, o), n in sorted(by.items()))})")
    failed_idempotent = [r for r in records if r[1] in IDEMPOTENT and r[2] != "ok"]
    wrong = [r for r in records if r[2] == "wrong body"]
    failed_posts = [r for r in records if r[1] == "POST" and r[2] != "ok"]
    unexplained = []
    why = Counter()
    for _, _, outcome, rid in failed_posts:
        status, last, tried = access.get(rid, (None, "not in the access log", []))
        why[f"{outcome}, last attempt {last}"] += 1
        if last not in LOST_AFTER_SENDING:
            unexplained.append((rid, outcome, status, tried))
    lines.append(f"failed idempotent requests: {len(failed_idempotent)}")
    for start, method, outcome, rid in failed_idempotent[:10]:
        lines.append(f"  {start:8.2f} {method} {rid}: {outcome}; proxy: {access.get(rid)}")
    lines.append(f"wrong responses: {len(wrong)}")
    lines.append(f"failed POSTs: {len(failed_posts)} ({len(unexplained)} that no target had received)")
    for reason, n in why.most_common():
        lines.append(f"  {n} x {reason}")
    for rid, outcome, status, tried in unexplained[:10]:
        lines.append(f"  never received: {rid}: {outcome}, proxy status {status}, tried {tried}")
    rss = [r[1] for r in rows]
    fds = [r[2] for r in rows]
    # After warm-up: the floor RSS settles to between bursts once the first events have passed
    # (--quick: a freeze, then nothing until 10 s), against the floor at the end, after the
    # load stopped and two trim periods passed. A leak raises the floor; a burst does not.
    # The long run's warm-up is its first quarter: by then every kind of event has happened a
    # few times and the allocator has reached its high-water layout (measured: repeated bursts
    # of 1,500 connections raise the settled RSS about 7 % over the first, then no more).
    warm_end, window = (QUICK_PASSES[1] - 5, 5) if args.quick else (max(60, args.duration / 4), 60)
    settled = [r[1] for r in rows if warm_end <= r[0] <= warm_end + window]
    warm_rss = min(settled) if settled else (rss[-1] if rss else 0)
    end_rss, end_fds = end_usage[0], end_usage[1]
    lines.append(f"RSS KiB: start {rss[0] if rss else 0}, after warm-up {warm_rss}, peak {max(rss, default=0)}, "
                 f"end {end_rss}")
    lines.append(f"descriptors: start {baseline_fds}, peak {max(fds, default=0)}, end {end_fds}")
    served = [sum(r[5 + i] for r in rows) for i in range(len(names))]
    lines.append("responses per target: " + ", ".join(f"{n} {int(s)}" for n, s in zip(names, served)))
    problems = []
    if failed_idempotent:
        problems.append(f"{len(failed_idempotent)} idempotent requests failed")
    if wrong:
        problems.append(f"{len(wrong)} wrong responses")
    if unexplained:
        problems.append(f"{len(unexplained)} POSTs failed that no target had received")
    if warm_rss and end_rss > warm_rss * 1.10:
        problems.append(f"RSS grew {100 * (end_rss / warm_rss - 1):.0f} % after warm-up")
    if end_fds > baseline_fds:
        problems.append(f"descriptors did not return to their baseline ({baseline_fds} -> {end_fds})")
    lines.append("verdict: " + ("PASS" if not problems else "FAIL: " + "; ".join(problems)))
    return lines, problems


async def soak(args, tmp, out):
    bin_dir = Path(args.bin_dir)
    targets = [Target(n, bin_dir) for n in range(1, TARGETS + 1)]
    spare = Target(TARGETS + 1, bin_dir)
    proxy = Proxy(bin_dir, tmp, args.workers)
    everyone = targets + [spare]
    names = [f"t{t.n}" for t in everyone]
    rows, stop = [], asyncio.Event()
    try:
        for t in targets:
            t.start()
        proxy.start(targets)
        await asyncio.sleep(0.5)
        baseline_fds = proxy.usage()[1]
        log(f"proxy on 127.0.0.1:{proxy.port}, {args.rate:.0f} requests/s for {args.duration:.0f} s, "
            f"seed {args.seed}; descriptors at rest: {baseline_fds}")
        load = Load(proxy.port, args.rate, args.post_share, args.seed)
        chaos = Chaos(args, targets, spare, proxy)
        sampler = asyncio.ensure_future(sample(proxy, load, everyone, rows, stop))
        await asyncio.gather(load.run(args.duration), chaos.run(args.duration))
        # Idle connections close on the client side; the proxy's descriptors must come back,
        # and what the burst took, within two of the proxy's 2 s trim periods.
        deadline = time.monotonic() + 15
        while proxy.usage()[1] > baseline_fds and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        await asyncio.sleep(TRIM_PERIODS)
        end_usage = proxy.usage()
        stop.set()
        await sampler
        # The access log is written by a helper thread: let it catch up.
        await asyncio.sleep(1.0)
        access = access_outcomes(proxy.access)
        lines, problems = summarize(args, rows, load.records, chaos.events, access, baseline_fds, end_usage, names)
    finally:
        stop.set()
        for t in everyone:
            t.kill()
        if proxy.proc and proxy.proc.poll() is None:
            proxy.proc.send_signal(signal.SIGTERM)
            try:
                proxy.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proxy.proc.kill()
    with open(out / "chaos.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["second", "rss_kib", "descriptors", "cpu_percent", "client_connections",
                    *[f"{n}_responses" for n in names]])
        w.writerows(rows)
    with open(out / "events.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["second", "event"])
        w.writerows((round(t, 2), e) for t, e in chaos.events)
    title = f"ringproxy chaos soak: {args.duration:.0f} s at {args.rate:.0f} requests/s (seed {args.seed})"
    plot(out / "chaos.png", rows, names, chaos.events, title)
    (out / "summary.txt").write_text("\n".join(lines) + "\n")
    for line in lines:
        print(line, flush=True)
    log(f"wrote {out}/chaos.csv, events.csv, chaos.png, summary.txt")
    return 1 if problems else 0


def main():
    args = parse_args()
    try:
        import prometheus_client  # noqa: F401 (the /metrics parser, checked before anything starts)
    except ImportError:
        raise SystemExit("chaos: needs prometheus_client to read /metrics: pip install prometheus_client")
    bin_dir = Path(args.bin_dir)
    if not (bin_dir / "ringproxy").exists() or not (bin_dir / "target-svc").exists():
        log("building release binaries")
        subprocess.run(["cargo", "build", "--release", "--workspace", "--quiet"], cwd=ROOT, check=True)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    tmp = Path(tempfile.mkdtemp(prefix="ringproxy-chaos-"))
    out = Path(args.out) if args.out else tmp
    out.mkdir(parents=True, exist_ok=True)
    sys.exit(asyncio.run(soak(args, tmp, out)))


if __name__ == "__main__":
    main()
