#!/usr/bin/env python3
"""ringproxy side by side with nginx and HAProxy, on this machine, in one run.

Five backends (target-svc, or nginx with --backend nginx), and three proxies with equivalent
setups: round robin over the five, upstream keep-alive, one worker or thread each, logs off.
Then, for each proxy:
  - wrk load in alternation (A B C, A B C, ... so drift hits all alike): requests/s, p50, p99,
    errors, and the medians' ratios ringproxy/HAProxy and ringproxy/nginx; during the same runs,
    CPU µs per request of the proxy (user and kernel), the backends, wrk and the whole machine,
    and TCP segments per request; a fourth load, wrk straight to one backend, shows the machine
    without a proxy;
  - RSS per idle keep-alive client connection (10 000 connections, RSS delta / 10 000; HAProxy
    reserves two descriptors per connection and refuses to start when they exceed the open-files
    hard limit, so where that limit cannot be raised it gets as many as fit under it);
  - syscalls per proxied request on a warm keep-alive connection (strace -c);
  - user-space instructions per proxied keep-alive request (callgrind: two runs of N1 and N2
    requests, the difference divided by N2 - N1), stable where wall time is noisy.
Then the workload matrix, each workload in alternation the same way: keep-alive GETs at c50,
`Connection: close` at c50, 1 MiB responses at c10 (MiB/s), 1 MiB POST bodies the target reads
whole before answering at c10, keep-alive at c1000 and at c1, and TLS terminated at the proxy
(keep-alive, and a full handshake per request) at c50; per cell requests/s, p50, p99,
the ratios, and the proxy's CPU µs per request.

The report is written to a directory outside the repository (--out, by default a fresh
temporary one) and printed; --update also writes bench/results/compare-<date>.md and
bench/results/latest.md and replaces the tables in docs/performance.md between the bench
markers. Every process it starts is stopped at the end.

    bench/compare.py                       # full: 3 rounds of 10 s, 10 000 idle connections, every workload
    bench/compare.py --quick               # 3 rounds of 3 s, 2 000 idle connections: a smoke run
    bench/compare.py --workload close      # one row of the matrix, without the keep-alive extras
    bench/compare.py --update              # and update the committed results and docs/performance.md
    bench/compare.py --perf                # also `perf record -a -g` behind each proxy (Debian linux-perf)

Traffic goes only to 127.0.0.1. Needs wrk, nginx-light, haproxy, strace and valgrind, and
linux-perf for --perf (Debian packages; installed with apt-get when missing and running as root).
"""

import argparse
import datetime
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import loopback
from loopback import free_port

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
# The committed copy of the report's tables, between its bench markers (--update).
PERFORMANCE_PAGE = ROOT / "docs" / "performance.md"
PROXIES = ["ringproxy", "haproxy", "nginx"]
REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
PACKAGES = {"wrk": "wrk", "nginx": "nginx-light", "haproxy": "haproxy", "strace": "strace", "valgrind": "valgrind",
            "openssl": "openssl"}
MIB = 1 << 20
# The matrix: what wrk asks for, at which concurrency. "bytes": the response size, to report
# MiB/s; "body": a request body the target reads whole before it answers.
WORKLOADS = {
    "keepalive": {"label": "keep-alive GET, c50", "connections": 50, "path": "/"},
    "close": {"label": "`Connection: close`, c50", "connections": 50, "path": "/", "headers": ["Connection: close"]},
    "bulk": {"label": "1 MiB responses, c10", "connections": 10, "path": f"/bytes/{MIB}", "bytes": MIB},
    "post": {"label": "1 MiB POST bodies, c10", "connections": 10, "path": "/", "body": MIB},
    "c1000": {"label": "keep-alive GET, c1000", "connections": 1000, "path": "/"},
    "c1": {"label": "keep-alive GET, c1", "connections": 1, "path": "/"},
    # TLS terminated at the proxy (plain HTTP to the targets): ECDSA P-256, TLS 1.3.
    "tls": {"label": "TLS keep-alive GET, c50", "connections": 50, "path": "/", "tls": True},
    "tls-close": {"label": "TLS `Connection: close` (a handshake each), c50", "connections": 50, "path": "/",
                  "headers": ["Connection: close"], "tls": True},
}


def log(msg):
    print(f"compare: {msg}", flush=True)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=int, default=10, help="seconds of wrk per proxy per round")
    p.add_argument("--connections", type=int, default=50, help="wrk -c")
    p.add_argument("--backend", choices=["target-svc", "nginx"], default="target-svc")
    p.add_argument("--idle", type=int, default=10_000, help="idle keep-alive connections for the RSS figure")
    p.add_argument("--quick", action="store_true", help="3 rounds of 3 s, 2 000 idle connections")
    p.add_argument("--workload", choices=list(WORKLOADS), help="run one row of the matrix only")
    p.add_argument("--out", type=Path, help="where the report goes (default: a new temporary directory)")
    p.add_argument("--update", action="store_true",
                   help="also write bench/results/ and the table in docs/performance.md (the committed copies)")
    p.add_argument("--no-docs", "--no-readme", dest="no_docs", action="store_true",
                   help="with --update: leave the table in docs/performance.md alone")
    p.add_argument("--perf", action="store_true", help="also profile the machine with perf record -a -g behind each proxy")
    a = p.parse_args()
    if a.quick:
        a.duration, a.idle = 3, 2000
    return a


def ensure_tools(perf):
    wanted = dict(PACKAGES, **({"perf": "linux-perf"} if perf else {}))
    missing = [tool for tool in wanted if shutil.which(tool) is None]
    if not missing:
        return
    packages = [wanted[t] for t in missing]
    if os.geteuid() != 0:
        raise SystemExit(f"compare: missing {missing}: apt-get install {' '.join(packages)}")
    log(f"installing {' '.join(packages)}")
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", *packages], check=True,
                   env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))


def wait_port(port, within=15.0):
    loopback.wait_port(port, within, "compare")


def wait_port_free(port, within=15.0):
    """Until nothing accepts on the port (a stopped nginx's worker may outlive its master)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            time.sleep(0.05)
        except OSError:
            return
    raise SystemExit(f"compare: 127.0.0.1:{port} is still taken")


class Procs:
    """Every process started, so all of them stop at the end whatever happens."""

    def __init__(self):
        self.procs = []

    def start(self, cmd, **kw):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=kw.pop("stderr", subprocess.DEVNULL),
                                start_new_session=True, **kw)
        self.procs.append(proc)
        return proc

    def stop(self, proc, sig=signal.SIGTERM, within=30.0):
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=within)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def stop_all(self):
        for proc in reversed(self.procs):
            self.stop(proc, within=5)


# --- configurations -----------------------------------------------------------------------

# TLS 1.3 suites in ringproxy's order of preference, given to nginx and HAProxy too.
TLS13_SUITES = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"


def make_certificate(tmp):
    """A self-signed ECDSA P-256 certificate for 127.0.0.1, for the TLS rows: (cert, key, both
    in one file as HAProxy takes them)."""
    cert, key, pem = tmp / "cert.pem", tmp / "key.pem", tmp / "haproxy.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    pem.write_text(cert.read_text() + key.read_text())
    return cert, key, pem


def ringproxy_config(tmp, port, backends, workers=1, name="ringproxy.json", tls=None):
    """tls: (port, (cert, key, pem)) for a TLS listener beside the plain one."""
    path = tmp / name
    ports = ", ".join(f'"http://127.0.0.1:{b}/"' for b in backends)
    tls_key = ""
    if tls:
        tls_port, (cert, key, _) = tls
        tls_key = f', "tls": {{"listen": "127.0.0.1:{tls_port}", "cert": "{cert}", "key": "{key}"}}'
    path.write_text(f'{{"ports": [{ports}], "listen": "127.0.0.1:{port}", "admin": null, "max_connections": 15000, '
                    f'"workers": {workers}{tls_key}}}')
    return path


def nginx_config(tmp, name, port, backends, master=True, workers=1, tls=None):
    """A proxy (backends given) or a backend answering Hello, world! (backends None)."""
    prefix = tmp / name
    for sub in ("logs", "body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (prefix / sub).mkdir(parents=True, exist_ok=True)
        # Started as root, nginx's worker runs as nobody and must write its temporary files here.
        (prefix / sub).chmod(0o777)
    if backends:
        servers = "\n".join(f"        server 127.0.0.1:{b};" for b in backends)
        upstream = f"    upstream backends {{\n{servers}\n        keepalive 64;\n    }}\n"
        # Request bodies stream to the target as they come, as ringproxy and HAProxy send them.
        location = ("proxy_pass http://backends; proxy_http_version 1.1; "
                    "proxy_set_header Connection \"\"; proxy_request_buffering off;")
    else:
        upstream = ""
        location = 'default_type text/plain; return 200 "Hello, world!";'
    tls_lines = ""
    if tls:
        tls_port, (cert, key, _) = tls
        # The same suite preference as ringproxy's (AES-128-GCM first, the server's choice), and
        # the same protocols: Debian's nginx 1.22 offers only TLS 1.0-1.2 unless told (1.23.4
        # added 1.3 to the default, and Debian's own nginx.conf lists it), so wrk would resume
        # TLS 1.2 sessions with no key exchange while the others run TLS 1.3's ECDHE each time.
        tls_lines = (f"\n        listen 127.0.0.1:{tls_port} ssl;\n        ssl_certificate {cert};"
                     f"\n        ssl_certificate_key {key};\n        ssl_prefer_server_ciphers on;"
                     f"\n        ssl_protocols TLSv1.2 TLSv1.3;"
                     f"\n        ssl_conf_command Ciphersuites {TLS13_SUITES};")
    path = prefix / "nginx.conf"
    path.write_text(f"""daemon off;
master_process {'on' if master else 'off'};
worker_processes {workers};
worker_rlimit_nofile 20000;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log error;
events {{ worker_connections 16000; multi_accept on; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    # No body size limit, as ringproxy and HAProxy have none by default (nginx's is 1 MiB).
    client_max_body_size 0;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
{upstream}    server {{
        listen 127.0.0.1:{port};{tls_lines}
        location / {{ {location} }}
    }}
}}
""")
    return path


def haproxy_config(tmp, port, backends, maxconn, name="haproxy.cfg", threads=1, tls=None):
    servers = "\n".join(f"    server s{i} 127.0.0.1:{b}" for i, b in enumerate(backends, 1))
    tls_bind = f"\n    bind 127.0.0.1:{tls[0]} ssl crt {tls[1][2]}" if tls else ""
    path = tmp / name
    suites = f"\n    ssl-default-bind-ciphersuites {TLS13_SUITES}" if tls else ""
    path.write_text(f"""global
    nbthread {threads}{suites}
    maxconn {maxconn}
defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 30s
    timeout http-keep-alive 60s
    option http-keep-alive
    http-reuse always
frontend fe
    bind 127.0.0.1:{port}{tls_bind}
    default_backend be
backend be
    balance roundrobin
{servers}
""")
    return path


def proxy_command(name, config):
    return {
        "ringproxy": [str(ROOT / "target/release/ringproxy"), "--config", str(config), "--log-level", "error"],
        "nginx": ["nginx", "-c", str(config), "-p", str(config.parent)],
        "haproxy": ["haproxy", "-db", "-f", str(config)],
    }[name]


# --- measurements ---------------------------------------------------------------------------

def wrk_args(workload, tmp):
    """wrk's arguments for a workload of the matrix (a Lua script for a request body)."""
    w = WORKLOADS[workload]
    args = []
    for header in w.get("headers", []):
        args += ["-H", header]
    if "body" in w:
        script = tmp / f"{workload}.lua"
        script.write_text(f'wrk.method = "POST"\nwrk.body = string.rep("x", {w["body"]})\n'
                          f'wrk.headers["Content-Type"] = "application/octet-stream"\n')
        args += ["-s", str(script)]
    return args, w["path"]


def run_wrk(port, duration, connections, extra=(), path="/", threads=1, scheme="http"):
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency", *extra,
                          f"{scheme}://127.0.0.1:{port}{path}"], capture_output=True, text=True, check=True).stdout

    def latency(pct):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not m:
            return float("nan")
        return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(non2xx.group(1)) if non2xx else 0) + (sum(map(int, sock.groups())) if sock else 0)
    return {"rps": rps, "p50": latency(50), "p99": latency(99), "errors": errors, "requests": requests}


def cpu_split(pids):
    """(user, kernel) CPU seconds of these processes, all their threads."""
    user = system = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            user, system = user + int(fields[11]), system + int(fields[12])
        except OSError:
            pass
    tick = os.sysconf("SC_CLK_TCK")
    return user / tick, system / tick


def machine_busy():
    """CPU seconds the whole machine has spent busy since boot: /proc/stat's first line, less
    idle and iowait (user nice system idle iowait irq softirq steal)."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def tcp_out_segments():
    """TCP segments sent by the machine so far (/proc/net/snmp, Tcp: OutSegs)."""
    rows = [ln.split() for ln in Path("/proc/net/snmp").read_text().splitlines() if ln.startswith("Tcp:")]
    return int(dict(zip(rows[0][1:], rows[1][1:]))["OutSegs"])


def children_cpu():
    """CPU seconds of every child this script has waited for (wrk, once its run is over)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measured_wrk(port, duration, connections, proxy_pids, backend_pids, extra=(), path="/", threads=1,
                 scheme="http"):
    """A wrk run, and where the machine's CPU went per request during it: the proxy (user and
    kernel), the backends, wrk itself and the whole machine, plus TCP segments per request.
    On two shared cores the whole machine's figure is what sets requests/s."""
    proxy0, backends0 = cpu_split(proxy_pids), sum(cpu_split(backend_pids))
    wrk0, machine0, segments0 = children_cpu(), machine_busy(), tcp_out_segments()
    result = run_wrk(port, duration, connections, extra, path, threads, scheme)
    per_request = 1e6 / max(result["requests"], 1)
    proxy1 = cpu_split(proxy_pids)
    result["proxy_user_us"] = (proxy1[0] - proxy0[0]) * per_request
    result["proxy_kernel_us"] = (proxy1[1] - proxy0[1]) * per_request
    result["backend_us"] = (sum(cpu_split(backend_pids)) - backends0) * per_request
    result["wrk_us"] = (children_cpu() - wrk0) * per_request
    result["machine_us"] = (machine_busy() - machine0) * per_request
    result["segments"] = (tcp_out_segments() - segments0) / result["requests"]
    return result


# Where a proxy's kernel time goes: kernel functions and what they stand for, as inclusive
# shares of the proxy's own samples (`perf report --children`). Indented rows are part of the
# row above them; netfilter's hooks run inside several of the others.
KERNEL_PARTS = [
    ("tcp_sendmsg", "sending (on loopback the sender also runs the receiving side)"),
    ("net_rx_action", "  of which delivering the segment to the receiving socket"),
    ("sock_def_readable", "    of which waking the receiving process"),
    ("tcp_recvmsg", "receiving"),
    ("do_epoll_wait", "epoll_wait"),
    ("__schedule", "being switched out and in again"),
    ("nf_hook_slow", "netfilter hooks (iptables, conntrack), inside the rows above"),
]


def perf_rows(data, *args):
    """`perf report` rows: (the first percentage, the fields after the percentages)."""
    out = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "-g", "none", *args],
                         capture_output=True, text=True).stdout
    for m in re.finditer(r"^\s+([\d.]+)%\s+(?:[\d.]+%\s+)?(.*\S)", out, re.M):
        yield float(m.group(1)), m.group(2).split()


def perf_profile(port, duration, connections, tmp, name, proxy_pid, backend_pids, extra=(), path="/",
                 scheme="http"):
    """`perf record -a -g` over a wrk run: the machine's samples by command and by user space or
    kernel (`perf report --sort comm,dso`, rows of 0.5 % and more), the proxy's own CPU per
    request split into user space and the KERNEL_PARTS, and the run's /proc figures."""
    data = tmp / f"perf-{name}.data"
    recorder = subprocess.Popen(["perf", "record", "-a", "-g", "-F", "999", "-o", str(data)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # perf creates its data file as it starts; the few milliseconds before its counters open
    # cannot move the shares of a 5 s profile, so waiting for the file is enough.
    deadline = time.monotonic() + 10
    while not data.exists():
        if time.monotonic() > deadline or recorder.poll() is not None:
            raise SystemExit("compare: perf record did not start")
        time.sleep(0.05)
    result = measured_wrk(port, duration, connections, [proxy_pid], backend_pids, extra, path, scheme=scheme)
    recorder.send_signal(signal.SIGINT)
    recorder.wait(timeout=60)
    rows = [(pct, *fields[:2]) for pct, fields in perf_rows(data, "--no-children", "--sort", "comm,dso")
            if pct >= 0.5]
    cpu_us = result["proxy_user_us"] + result["proxy_kernel_us"]
    parts = [(what, share, share * cpu_us / 100) for what, share in proxy_breakdown(data, proxy_pid)]
    data.unlink(missing_ok=True)
    return {"machine": rows, "cpu_us": cpu_us, "parts": parts, "run": result}


def proxy_breakdown(data, proxy_pid):
    """The proxy's samples in a `perf record -a -g` profile, as percentages of its own: user
    space, then each of KERNEL_PARTS (inclusive). perf's "pid" sort key is the thread id, and
    its `--pid` filter loses callers in --children mode, so the proxy's rows are picked here."""
    threads = {int(t.name) for t in Path(f"/proc/{proxy_pid}/task").iterdir()}
    ours = lambda field: int(field.split(":", 1)[0]) in threads  # "7376:ringproxy"
    total = user = 0.0
    for pct, (thread, dso, *_) in perf_rows(data, "--no-children", "--sort", "pid,dso"):
        if ours(thread):
            total += pct
            user += pct if dso != "[kernel.kallsyms]" else 0.0
    children = {}
    for pct, (thread, kind, sym, *_) in perf_rows(data, "--children", "--sort", "pid,sym"):
        if kind == "[k]" and ours(thread):
            children[sym] = children.get(sym, 0.0) + pct
    of_proxy = lambda pct: 100 * pct / total if total else float("nan")
    return [("user space", of_proxy(user))] + [(what, of_proxy(children.get(sym, 0.0))) for sym, what in KERNEL_PARTS]


def keep_alive_requests(port, n):
    """n GETs on one connection, each response read whole (Content-Length framed)."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = b""
        for _ in range(n):
            s.sendall(REQUEST)
            while True:
                end = buf.find(b"\r\n\r\n")
                if end >= 0:
                    m = re.search(rb"content-length:\s*(\d+)", buf[:end], re.I)
                    total = end + 4 + int(m.group(1))
                    if len(buf) >= total:
                        buf = buf[total:]
                        break
                chunk = s.recv(65536)
                if not chunk:
                    raise SystemExit("compare: connection closed during keep-alive requests")
                buf += chunk


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def worker_pid(name, proc):
    """The process that serves: nginx's worker, else the process itself."""
    return worker_pids(name, proc)[0]


def worker_pids(name, proc, count=1):
    """The processes that serve: nginx's `count` workers, else the process itself (whose
    threads, if it has several, /proc counts together)."""
    if name != "nginx":
        return [proc.pid]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        if len(children) >= count:
            return [int(c) for c in children]
        time.sleep(0.05)
    raise SystemExit("compare: nginx started too few workers")


def fit_descriptors(idle):
    """How many idle connections HAProxy can take; raises the open-files limit where allowed.

    HAProxy reserves two descriptors per connection (client and server side) and will not start
    when they exceed the hard limit; every process started inherits the limit set here."""
    need = 2 * idle + 1000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard >= need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, need), hard))
        return idle
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, need))
        return idle
    except (ValueError, OSError):
        fitted = (hard - 1000) // 2
        log(f"open-files hard limit {hard} cannot be raised: HAProxy gets {fitted} idle connections, not {idle}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return fitted


def idle_rss_per_connection(port, pid, count):
    keep_alive_requests(port, 100)
    before = rss_kib(pid)
    conns = []
    try:
        for _ in range(count):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(REQUEST)
            got = b""
            while not got.endswith(b"Hello, world!"):
                chunk = s.recv(4096)
                if not chunk:
                    raise SystemExit("compare: an idle-test connection was closed")
                got += chunk
            conns.append(s)
        time.sleep(0.5)  # let the proxy settle into idleness before reading its RSS
        after = rss_kib(pid)
    finally:
        for s in conns:
            s.close()
    return (after - before) * 1024 / count


def syscalls_per_request(port, pid, n, tmp):
    keep_alive_requests(port, 200)
    out = tmp / f"strace-{pid}.txt"
    tracer = subprocess.Popen(["strace", "-c", "-f", "-p", str(pid), "-o", str(out)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 5
    # strace says "Process N attached" on stderr once it is in place.
    while time.monotonic() < deadline and "attached" not in (tracer.stderr.readline() or ""):
        pass
    keep_alive_requests(port, n)
    tracer.send_signal(signal.SIGINT)
    tracer.wait(timeout=10)
    # "% time  seconds  usecs/call  calls  errors  syscall": calls is the fourth field.
    rows = [ln.split() for ln in out.read_text().splitlines() if re.match(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+\d+", ln)]
    calls = {row[-1]: int(row[3]) for row in rows}
    total = calls.pop("total", 0)
    waits = sum(c for name, c in calls.items() if name.startswith("epoll_"))
    return (total / n, (total - waits) / n), out.read_text()


def callgrind_instructions(name, config, port, n, tmp, procs):
    """User-space instructions for a whole run that serves `n` keep-alive requests."""
    out = tmp / f"callgrind-{name}-{n}.out"
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--trace-children=no",
           *proxy_command(name, config)]
    wait_port_free(port)
    errors = tmp / f"callgrind-{name}-{n}.err"
    with open(errors, "w") as err:
        proc = procs.start(cmd, stderr=err)
    wait_port(port, within=60)
    keep_alive_requests(port, n)
    os.killpg(proc.pid, signal.SIGTERM)
    # Under valgrind a signal may not wake nginx's epoll_wait: a connection does, and then it
    # sees the flag the signal set. Bounded: 60 s, then SIGKILL (and no figure).
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        except OSError:
            pass
        time.sleep(0.2)
    procs.stop(proc, signal.SIGKILL, within=5)
    text = out.read_text() if out.exists() else ""
    for line in text.splitlines():
        if line.startswith("summary:") or line.startswith("totals:"):
            return int(line.split()[1])
    log(f"no callgrind total for {name} (exit {proc.returncode}); its figure is left out:\n"
        + errors.read_text()[-600:])
    return None


# --- the run --------------------------------------------------------------------------------

def machine():
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    return f"{os.cpu_count()} cores, {cpu}, Linux {platform.release()}"


def commit():
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    return rev + ("+dirty" if dirty else "")


def main():
    args = parse_args()
    ensure_tools(args.perf)
    idle = {name: args.idle for name in PROXIES}
    idle["haproxy"] = fit_descriptors(args.idle)
    log("building release binaries")
    subprocess.run(["cargo", "build", "--release", "--workspace", "--quiet"], cwd=ROOT, check=True)
    tmp = Path(tempfile.mkdtemp(prefix="ringproxy-compare-"))
    procs = Procs()
    try:
        backends = [free_port() for _ in range(5)]
        log(f"starting five {args.backend} backends")
        backend_procs = []
        for i, port in enumerate(backends, 1):
            if args.backend == "nginx":
                cfg = nginx_config(tmp, f"backend{i}", port, None)
                backend_procs.append(("nginx", procs.start(["nginx", "-c", str(cfg), "-p", str(cfg.parent)])))
            else:
                backend_procs.append(("target-svc", procs.start([
                    str(ROOT / "target/release/target-svc"), "--host", "127.0.0.1", "--port", str(port),
                    "--name", f"b{i}"])))
        for port in backends:
            wait_port(port)
        backend_pids = [worker_pid(kind, proc) for kind, proc in backend_procs]

        ports = {name: free_port() for name in PROXIES}
        certificate = make_certificate(tmp)
        tls_ports = {name: free_port() for name in PROXIES}
        tls = {name: (tls_ports[name], certificate) for name in PROXIES}
        configs = {
            "ringproxy": ringproxy_config(tmp, ports["ringproxy"], backends, tls=tls["ringproxy"]),
            "haproxy": haproxy_config(tmp, ports["haproxy"], backends, maxconn=idle["haproxy"] + 100,
                                      tls=tls["haproxy"]),
            "nginx": nginx_config(tmp, "nginx-proxy", ports["nginx"], backends, tls=tls["nginx"]),
        }
        running = {}
        for name in PROXIES:
            running[name] = procs.start(proxy_command(name, configs[name]))
            wait_port(ports[name])
            wait_port(tls_ports[name])
        pids = {name: worker_pid(name, proc) for name, proc in running.items()}

        # "none": wrk straight to one backend, no proxy: what the machine carries without a hop.
        ports["none"], pids["none"] = backends[0], None
        selected = [args.workload] if args.workload else list(WORKLOADS)
        extras = args.workload is None
        load = {}
        if "keepalive" in selected:
            loads = PROXIES + ["none"]
            log("warming up")
            for name in loads:
                run_wrk(ports[name], 2, args.connections)
            load = {name: [] for name in loads}
            for r in range(1, args.rounds + 1):
                for name in loads:
                    proxy_pids = [pids[name]] if pids[name] else []
                    result = measured_wrk(ports[name], args.duration, args.connections, proxy_pids, backend_pids)
                    load[name].append(result)
                    log(f"round {r}/{args.rounds} {name:9} {result['rps']:>9.0f} req/s  p50 {result['p50']:.2f} ms  "
                        f"p99 {result['p99']:.2f} ms  errors {result['errors']}  CPU us/request: proxy "
                        f"{result['proxy_user_us']:.1f} user + {result['proxy_kernel_us']:.1f} kernel, backends "
                        f"{result['backend_us']:.1f}, wrk {result['wrk_us']:.1f}, machine {result['machine_us']:.1f}")
        # The keep-alive extras come before the other workloads: RSS per idle connection is
        # measured on a proxy that has not yet grown its heap for c1000 or 1 MiB bodies.
        profiles, rss, syscalls, traces = {}, {}, {}, {}
        if extras and args.perf:
            for name in PROXIES:
                log(f"{name}: perf record -a -g over 5 s of wrk")
                profiles[name] = perf_profile(ports[name], 5, args.connections, tmp, name, pids[name], backend_pids)
        for name in PROXIES if extras else []:
            log(f"{name}: RSS with {idle[name]} idle keep-alive connections")
            rss[name] = idle_rss_per_connection(ports[name], pids[name], idle[name])
            time.sleep(1)  # the closes above are processed before the next proxy is measured
        for name in PROXIES if extras else []:
            log(f"{name}: syscalls per request (strace -c, 2000 keep-alive requests)")
            syscalls[name], traces[name] = syscalls_per_request(ports[name], pids[name], 2000, tmp)

        matrix, row_profiles = {}, {}
        for workload in selected:
            if workload == "keepalive":
                matrix[workload] = {n: load[n] for n in PROXIES}
                continue
            if args.backend == "nginx" and workload in ("bulk", "post"):
                log(f"{workload}: needs the target-svc backends (/bytes, a target that reads the body); skipped")
                continue
            extra, path = wrk_args(workload, tmp)
            conns = WORKLOADS[workload]["connections"]
            scheme, where = ("https", tls_ports) if WORKLOADS[workload].get("tls") else ("http", ports)
            for name in PROXIES:
                run_wrk(where[name], 1, conns, extra, path, scheme=scheme)
            cells = {name: [] for name in PROXIES}
            for r in range(1, args.rounds + 1):
                for name in PROXIES:
                    result = measured_wrk(where[name], args.duration, conns, [pids[name]], backend_pids, extra, path,
                                          scheme=scheme)
                    cells[name].append(result)
                    log(f"{workload} round {r}/{args.rounds} {name:9} {result['rps']:>9.0f} req/s  "
                        f"p99 {result['p99']:.2f} ms  errors {result['errors']}  proxy CPU "
                        f"{result['proxy_user_us'] + result['proxy_kernel_us']:.1f} us/request")
            matrix[workload] = cells
            if args.perf:
                for name in PROXIES:
                    log(f"{workload}: perf record -a -g over 5 s of wrk behind {name}")
                    row_profiles.setdefault(workload, {})[name] = perf_profile(
                        where[name], 5, conns, tmp, f"{workload}-{name}", pids[name], backend_pids, extra, path,
                        scheme)
        if not extras:
            report = render_matrix(args, matrix) + render_row_profiles(row_profiles)
            print("\n" + report)
            write_report(args, report, "")
            shutil.rmtree(tmp, ignore_errors=True)
            return 0
        for proc in running.values():
            procs.stop(proc)
        instructions = {}
        n1, n2 = 200, 1200
        # Under valgrind nginx runs as one process: a forked worker would profile apart.
        configs["nginx"] = nginx_config(tmp, "nginx-callgrind", ports["nginx"], backends, master=False)
        # valgrind keeps descriptors for itself: HAProxy's 2 x maxconn must fit under what is left.
        configs["haproxy"] = haproxy_config(tmp, ports["haproxy"], backends, maxconn=1000, name="haproxy-callgrind.cfg")
        for name in PROXIES:
            log(f"{name}: instructions per request (callgrind, {n1} and {n2} requests)")
            i1 = callgrind_instructions(name, configs[name], ports[name], n1, tmp, procs)
            i2 = callgrind_instructions(name, configs[name], ports[name], n2, tmp, procs)
            instructions[name] = (i2 - i1) / (n2 - n1) if i1 and i2 else float("nan")
    finally:
        procs.stop_all()

    report = (render(args, load, rss, idle, syscalls, instructions, profiles) + "\n" + render_matrix(args, matrix)
              + render_row_profiles(row_profiles))
    print("\n" + report)
    write_report(args, report, "\n## strace -c of ringproxy\n\n```\n" + traces["ringproxy"] + "```\n")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


def write_report(args, report, appendix):
    """The report into --out (outside the repository by default); with --update, the committed
    copies too: bench/results/ and the table in docs/performance.md."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d-%H%M")
    out = args.out or Path(tempfile.mkdtemp(prefix="ringproxy-compare-results-"))
    out.mkdir(parents=True, exist_ok=True)
    (out / f"compare-{stamp}.md").write_text(report + appendix)
    log(f"wrote {out / f'compare-{stamp}.md'}")
    if not args.update:
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"compare-{stamp}.md").write_text(report + appendix)
    (RESULTS / "latest.md").write_text(report)
    log(f"wrote bench/results/compare-{stamp}.md and bench/results/latest.md")
    if args.no_docs or args.workload:
        return
    if replace_bench_table(PERFORMANCE_PAGE, report):
        log("replaced the table in docs/performance.md")
    else:
        log("docs/performance.md has no bench markers: its table is left alone")


def replace_bench_table(page, report):
    """Puts `report` between the bench markers of `page`; False when the markers are missing."""
    text = page.read_text()
    start, end = "<!-- bench:start -->", "<!-- bench:end -->"
    if start not in text or end not in text:
        return False
    head, rest = text.split(start, 1)
    page.write_text(head + start + "\n" + report + end + rest.split(end, 1)[1])
    return True


def render_matrix(args, matrix):
    """One row per workload: each proxy's medians and ringproxy's ratios to the others."""
    lines = [
        f"The workload matrix ({args.rounds} rounds of {args.duration} s per cell, in alternation; medians). "
        "Throughput is requests/s, or MiB/s for 1 MiB responses; a ratio above 1 is better for throughput, "
        "below 1 for p99 and CPU.",
        "",
        "| workload | ringproxy | HAProxy | nginx | / HAProxy | / nginx | p50 ms ringproxy, HAProxy, nginx "
        "| p99 ms ringproxy, HAProxy, nginx | p99 / HAProxy | p99 / nginx "
        "| proxy CPU µs per request ringproxy, HAProxy, nginx | CPU / HAProxy | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for workload, cells in matrix.items():
        scale = WORKLOADS[workload].get("bytes", 0) / MIB
        med = {n: {k: statistics.median(r[k] for r in cells[n]) for k in ("rps", "p50", "p99")} for n in PROXIES}
        cpu = {n: statistics.median(r["proxy_user_us"] + r["proxy_kernel_us"] for r in cells[n]) for n in PROXIES}
        errors = sum(r["errors"] for n in PROXIES for r in cells[n])
        tput = {n: med[n]["rps"] * scale if scale else med[n]["rps"] for n in PROXIES}
        unit = " MiB/s" if scale else ""
        r, h, x = "ringproxy", "haproxy", "nginx"
        lines.append(
            f"| {WORKLOADS[workload]['label']} | {tput[r]:,.0f}{unit} | {tput[h]:,.0f} | {tput[x]:,.0f} | "
            f"{tput[r] / tput[h]:.2f}× | {tput[r] / tput[x]:.2f}× | "
            f"{med[r]['p50']:.2f}, {med[h]['p50']:.2f}, {med[x]['p50']:.2f} | "
            f"{med[r]['p99']:.2f}, {med[h]['p99']:.2f}, {med[x]['p99']:.2f} | "
            f"{med[r]['p99'] / med[h]['p99']:.2f}× | {med[r]['p99'] / med[x]['p99']:.2f}× | "
            f"{cpu[r]:.1f}, {cpu[h]:.1f}, {cpu[x]:.1f} | {cpu[r] / cpu[h]:.2f}× | {errors} |")
    return "\n".join(lines) + "\n"


def render_row_profiles(row_profiles):
    """With --perf, one line per row and proxy: where the machine's and the proxy's CPU went per
    request during a 5 s profile of that row."""
    if not row_profiles:
        return ""
    parts = [what.strip() for what, _, _ in next(iter(next(iter(row_profiles.values())).values()))["parts"]]
    keep = ["user space", "sending (on loopback the sender also runs the receiving side)", "receiving",
            "epoll_wait", "being switched out and in again"]
    short = {"user space": "user", keep[1]: "sending", "receiving": "receiving", "epoll_wait": "epoll_wait",
             "being switched out and in again": "switched"}
    lines = ["", "Where each row's CPU goes: `perf record -a -g` over 5 s of wrk behind each proxy, after the "
             "row's rounds. µs per request: the whole machine (/proc), the backends, wrk, the proxy, and the "
             "proxy's own split (`perf report --children`, inclusive; sending includes the receiver's side on "
             "loopback).", "",
             "| workload | proxy | requests/s | machine | backends | wrk | proxy | "
             + " | ".join(short[k] for k in keep) + " |",
             "|---|---|" + "---:|" * (6 + len(keep))]
    for workload, by_proxy in row_profiles.items():
        for name in PROXIES:
            prof = by_proxy[name]
            run = prof["run"]
            split = {what.strip(): us for what, _, us in prof["parts"]}
            lines.append(f"| {WORKLOADS[workload]['label']} | {name} | {run['rps']:,.0f} | {run['machine_us']:.1f} | "
                         f"{run['backend_us']:.1f} | {run['wrk_us']:.1f} | {prof['cpu_us']:.1f} | "
                         + " | ".join(f"{split.get(k, float('nan')):.1f}" for k in keep) + " |")
    assert all(k in parts for k in keep)
    return "\n".join(lines) + "\n"


def render(args, load, rss, idle, syscalls, instructions, profiles):
    keys = ("rps", "p50", "p99", "proxy_user_us", "proxy_kernel_us", "backend_us", "wrk_us", "machine_us",
            "segments")
    med = {n: {k: statistics.median(r[k] for r in load[n]) for k in keys} for n in load}
    errors = {n: sum(r["errors"] for r in load[n]) for n in load}
    lines = [
        f"`bench/compare.py` on {datetime.date.today()}, commit {commit()}, {machine()}.",
        f"wrk -t1 -c{args.connections}, {args.rounds} rounds of {args.duration} s in alternation, "
        f"five {args.backend} backends; medians.",
        "",
        "| proxy | requests/s | p50 ms | p99 ms | errors | bytes RSS per idle connection "
        "| syscalls per request (without epoll) | instructions per request |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in PROXIES:
        lines.append(f"| {n} | {med[n]['rps']:,.0f} | {med[n]['p50']:.2f} | {med[n]['p99']:.2f} | {errors[n]} | "
                     f"{rss[n]:,.0f} | {syscalls[n][0]:.2f} ({syscalls[n][1]:.2f}) | {instructions[n]:,.0f} |")
    ratio = lambda other, key: med["ringproxy"][key] / med[other][key]
    lines += [
        "",
        f"ringproxy / HAProxy: {ratio('haproxy', 'rps'):.2f}× requests/s, p99 {ratio('haproxy', 'p99'):.2f}×, "
        f"instructions {instructions['ringproxy'] / instructions['haproxy']:.2f}×.  ",
        f"ringproxy / nginx: {ratio('nginx', 'rps'):.2f}× requests/s, p99 {ratio('nginx', 'p99'):.2f}×, "
        f"instructions {instructions['ringproxy'] / instructions['nginx']:.2f}×.  ",
        "(A ratio below 1 is better for p99 and instructions; nan: that measurement failed.)",
        "",
    ]
    rp_rss, rp_instructions, rp_syscalls = rss["ringproxy"], instructions["ringproxy"], syscalls["ringproxy"][1]
    targets = [
        ("requests/s ≥ 1.3× HAProxy and ≥ 1.5× nginx", ratio("haproxy", "rps") >= 1.3 and ratio("nginx", "rps") >= 1.5,
         f"{ratio('haproxy', 'rps'):.2f}× and {ratio('nginx', 'rps'):.2f}×"),
        ("p99 no worse than either", ratio("haproxy", "p99") <= 1 and ratio("nginx", "p99") <= 1,
         f"{ratio('haproxy', 'p99'):.2f}× and {ratio('nginx', 'p99'):.2f}×"),
        ("instructions per request ≤ 0.5× nginx", rp_instructions <= 0.5 * instructions["nginx"],
         f"{rp_instructions / instructions['nginx']:.2f}×"),
        ("≤ 512 bytes RSS per idle connection", rp_rss <= 512, f"{rp_rss:,.0f} B"),
        ("about 4 syscalls per request besides epoll", rp_syscalls <= 4.5, f"{rp_syscalls:.2f}"),
    ]
    verdicts = "; ".join(f"{what}: {'met' if ok else '**not met**'} ({got})" for what, ok, got in targets)
    lines += [
        f"Targets (issue #6): {verdicts}; no heap allocation per request: asserted by `tests/alloc.rs`.",
        "",
        "Where the CPU goes, in µs per request during the same wrk runs (/proc; medians). "
        "\"none\" is wrk straight to one backend, no proxy.",
        "",
        "| proxy | requests/s | proxy user | proxy kernel | backends | wrk | whole machine | TCP segments per request |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in load:
        m = med[n]
        lines.append(f"| {n} | {m['rps']:,.0f} | {m['proxy_user_us']:.1f} | {m['proxy_kernel_us']:.1f} | "
                     f"{m['backend_us']:.1f} | {m['wrk_us']:.1f} | {m['machine_us']:.1f} | {m['segments']:.2f} |")
    r, h, x = med["ringproxy"], med["haproxy"], med["nginx"]
    needed = h["machine_us"] / 1.3
    free = r["machine_us"] - r["proxy_user_us"]
    cores = os.cpu_count()
    busy = ", ".join(f"{n} {med[n]['machine_us'] * med[n]['rps'] / 1e4 / cores:.0f} %" for n in PROXIES)
    lines += [
        "",
        f"The {cores} cores are about as busy behind each proxy ({busy}), so requests/s follows "
        "1 / (whole machine µs per request). "
        f"To carry 1.3× HAProxy's requests/s the machine would have to spend at most {needed:.1f} µs per "
        f"request behind ringproxy; it spends {r['machine_us']:.1f}. ringproxy's own code (user space) "
        f"accounts for {r['proxy_user_us']:.1f} µs of that: were it free, the machine would spend {free:.1f} µs, "
        f"{h['machine_us'] / free:.2f}× HAProxy's requests/s and {x['machine_us'] / free:.2f}× nginx's. "
        f"Its kernel time ({r['proxy_kernel_us']:.1f} µs) is the loopback TCP work of the {r['segments']:.2f} "
        "segments per proxied request, the minimum for a proxy that makes one upstream exchange per request, "
        "which HAProxy and nginx pay too.",
    ]
    if profiles:
        lines += ["", "`perf record -a -g` over 5 s of wrk behind each proxy: the proxy's own CPU in µs per "
                  "request (/proc, that run), split by what it was doing (`perf report --children --sort pid,sym`: "
                  "inclusive shares of the proxy's samples; indented rows are part of the row above).", "",
                  "| the proxy's CPU | " + " | ".join(PROXIES) + " |",
                  "|---|" + "---:|" * len(PROXIES),
                  "| all of it | " + " | ".join(f"{profiles[n]['cpu_us']:.1f}" for n in PROXIES) + " |"]
        for i, (what, _, _) in enumerate(profiles["ringproxy"]["parts"]):
            label = what.replace("  ", "\u2003")  # Markdown keeps em spaces
            cells = " | ".join(f"{profiles[n]['parts'][i][2]:.1f} ({profiles[n]['parts'][i][1]:.0f} %)" for n in PROXIES)
            lines.append(f"| {label} | {cells} |")
        lines += ["", "The same profiles, share of all the machine's samples "
                  "(`perf report --no-children --sort comm,dso`, rows of 0.5 % and more):", ""]
        for n in PROXIES:
            rows = ", ".join(f"{comm} {dso} {pct:.1f} %" for pct, comm, dso in profiles[n]["machine"])
            lines.append(f"- behind {n}: {rows}")
    idle_note = f"Idle RSS: {args.idle} keep-alive connections, RSS delta / {args.idle}"
    if idle["haproxy"] != args.idle:
        idle_note += (f" (HAProxy: {idle['haproxy']}, as many as its two descriptors per connection allow under "
                      f"the open-files hard limit of {resource.getrlimit(resource.RLIMIT_NOFILE)[1]})")
    lines += [
        "",
        f"{idle_note}. Syscalls: `strace -c -f` over 2000 "
        "requests on one warm keep-alive connection, where epoll waits cannot amortise (under load they do). "
        "Instructions: callgrind, user space, (runs of 1200 − 200 requests) / 1000.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
