#!/usr/bin/env python3
"""What an idle connection costs ringproxy in RSS, by kind: a keep-alive client connection after
one request, a WebSocket tunnel after its 101, and a TLS connection after its handshake and one
request. For each kind a fresh release ringproxy is started, warmed with a few connections of
that kind, then N more are opened one after another; the figure is the RSS delta divided by N.

    bench/idle.py                 # 2 000 connections of each kind
    bench/idle.py -n 10000        # more connections, a steadier figure
    bench/idle.py --no-build      # use target/release as it is
    bench/idle.py --bin-dir DIR   # another build's ringproxy and target-svc (implies --no-build)

The target behind the proxy is target-svc for plain and TLS requests, and for tunnels a listener
of this script's own that answers every upgrade with a 101 and then only reads. Traffic goes only
to 127.0.0.1; nothing is written to the repository.
"""

import argparse
import json
import resource
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from loopback import free_port, wait_port

ROOT = Path(__file__).resolve().parent.parent


def log(message):
    print(f"idle: {message}", file=sys.stderr, flush=True)


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def quiet_websocket_target():
    """A listener that answers each connection's request head with a 101, then only reads."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4096)

    def serve(conn):
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                head += chunk
            conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
            while conn.recv(4096):
                pass

    def accept():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return listener


def read_head(sock):
    """Reads one response head and, when it says so, its Content-Length body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise SystemExit("idle: the proxy closed a connection")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(rest) < length:
        rest += sock.recv(4096)
    return head.split(b"\r\n")[0]


def open_plain(port):
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
    assert read_head(sock).startswith(b"HTTP/1.1 200"), "a keep-alive request"
    return sock


def open_tunnel(port):
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"GET /chat HTTP/1.1\r\nHost: bench\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
    assert read_head(sock).startswith(b"HTTP/1.1 101"), "a tunnel"
    return sock


def open_tls(port, context):
    sock = context.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="localhost")
    sock.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
    assert read_head(sock).startswith(b"HTTP/1.1 200"), "a TLS request"
    return sock


def measure(bin_dir, kind, config, port, opener, count, warm=50):
    """Starts ringproxy on `config`, opens `warm` then `count` connections with `opener`: the
    RSS delta over `count` in bytes, and the KiB before and after."""
    proxy = subprocess.Popen([str(bin_dir / "ringproxy"), "--config", str(config), "--log-level", "warn"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, who="idle")
        held = [opener() for _ in range(warm)]
        time.sleep(0.3)
        before = rss_kib(proxy.pid)
        held += [opener() for _ in range(count)]
        time.sleep(0.3)
        after = rss_kib(proxy.pid)
        for sock in held:
            sock.close()
        per = (after - before) * 1024 / count
        log(f"{kind}: {before} KiB with {warm}, {after} KiB with {warm + count}: {per:,.0f} B each")
        return per, before, after
    finally:
        proxy.terminate()
        proxy.wait(timeout=10)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-n", type=int, default=2000, help="idle connections of each kind")
    p.add_argument("--no-build", action="store_true", help="use the release binaries as they are")
    p.add_argument("--bin-dir", type=Path, help="where ringproxy and target-svc are (default: target/release)")
    args = p.parse_args()
    bin_dir = args.bin_dir or ROOT / "target" / "release"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * args.n + 1000)), hard))
    if not (args.no_build or args.bin_dir):
        subprocess.run(["cargo", "build", "--release", "--workspace", "--quiet"], cwd=ROOT, check=True)
    with tempfile.TemporaryDirectory(prefix="ringproxy-idle-") as tmp:
        tmp = Path(tmp)
        target_port = free_port()
        target = subprocess.Popen([str(bin_dir / "target-svc"), "--host", "127.0.0.1", "--port", str(target_port),
                                   "--name", "t1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ws = quiet_websocket_target()
        cert, key = tmp / "cert.pem", tmp / "key.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                        "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
                        "-addext", "subjectAltName=DNS:localhost"], check=True, capture_output=True)
        context = ssl.create_default_context(cafile=str(cert))
        try:
            wait_port(target_port, who="idle")
            rows = []
            for kind in ["keep-alive", "tunnel", "tls"]:
                port, tls_port = free_port(), free_port()
                upstream = f"127.0.0.1:{ws.getsockname()[1] if kind == 'tunnel' else target_port}"
                config = {"ports": [f"http://{upstream}/"], "listen": f"127.0.0.1:{port}", "admin": None}
                if kind == "tls":
                    config["tls"] = {"listen": f"127.0.0.1:{tls_port}", "cert": str(cert), "key": str(key)}
                path = tmp / f"{kind}.json"
                path.write_text(json.dumps(config))
                opener = {
                    "keep-alive": lambda: open_plain(port),
                    "tunnel": lambda: open_tunnel(port),
                    "tls": lambda: open_tls(tls_port, context),
                }[kind]
                rows.append((kind, *measure(bin_dir, kind, path, tls_port if kind == "tls" else port, opener, args.n)))
        finally:
            target.terminate()
            ws.close()
    print(f"| idle connection | bytes of RSS each | RSS KiB before → after {args.n} |")
    print("|---|---:|---|")
    for kind, per, before, after in rows:
        print(f"| {kind} | {per:,.0f} | {before:,} → {after:,} |")


if __name__ == "__main__":
    main()
