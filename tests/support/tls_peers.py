"""Peers for the close and half-close tests of tests/tls.rs and tests/websocket.rs.

    tls_peers.py upgrader PORTFILE MODE   a target on 127.0.0.1 that answers one upgrade with
                                          101: MODE "bulk" sends 2,820,000 bytes and closes;
                                          MODE "late" waits 300 ms, sends "hello", then
                                          " world", then closes. Writes its port to PORTFILE.
    tls_peers.py fetch HOST PORT PATH [tls] [slow] [upgrade]
                                          one request; prints the status line and the body's
                                          length; with tls, a ragged EOF (no close_notify) is
                                          an error; slow: a 4 KiB receive buffer, reading only
                                          after 1.5 s
    tls_peers.py resume HOST PORT OTHERS GATE
                                          a TLS session that must resume: one request, then
                                          OTHERS clients that each make a new session, then
                                          (once the file GATE exists) the first session again;
                                          prints "OTHERS DONE", then "REUSED True|False STATUS s"
"""

import os

import socket
import ssl
import sys
import time


def upgrader(portfile, mode):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    with open(portfile, "w") as f:
        f.write(str(srv.getsockname()[1]))
    conn, _ = srv.accept()
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = conn.recv(4096)
        if not chunk:
            return
        head += chunk
    answer = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    if mode == "bulk":
        conn.sendall(answer + b"z" * 2_820_000)
    else:
        time.sleep(0.3)
        conn.sendall(answer + b"hello")
        time.sleep(0.1)
        conn.sendall(b" world")
    conn.close()


def fetch(host, port, path, flags):
    s = socket.socket()
    if "slow" in flags:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect((host, int(port)))
    if "tls" in flags:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        s = ctx.wrap_socket(s, server_hostname="localhost", suppress_ragged_eofs=False)
    extra = "Connection: Upgrade\r\nUpgrade: websocket\r\n" if "upgrade" in flags else ""
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode())
    if "halfclose" in flags:
        s.shutdown(socket.SHUT_WR)
    if "slow" in flags:
        time.sleep(1.5)
    data = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    except ssl.SSLEOFError as e:
        print(f"RAGGED {e}", flush=True)
    head, _, body = data.partition(b"\r\n\r\n")
    print(f"STATUS {head.split(b' ')[1].decode() if head else '-'} BODY {len(body)} {body[:12]!r}", flush=True)


def resume(host, port, others, gate):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE

    def get(session=None):
        s = ctx.wrap_socket(socket.create_connection((host, int(port)), timeout=10), server_hostname="localhost",
                            session=session)
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        # Read to the end, so TLS 1.3's ticket, sent after the handshake, has arrived.
        return s.session, s.session_reused, data.split(b" ", 2)[1].decode()

    first, _, _ = get()
    for _ in range(int(others)):
        get()
    print("OTHERS DONE", flush=True)
    deadline = time.monotonic() + 20
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.02)
    _, reused, status = get(first)
    print(f"REUSED {reused} STATUS {status}", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "upgrader":
        upgrader(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "resume":
        resume(*sys.argv[2:6])
    else:
        fetch(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:])
