"""Ports on 127.0.0.1 for the bench scripts: a free one to listen on, and waiting for a
listener with a deadline. Nothing here sends traffic anywhere but the loopback."""

import socket
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def can_connect(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def wait_port(port, within=15.0, who="bench"):
    """Polls until something accepts on 127.0.0.1:port; exits the script after `within` s."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if can_connect(port):
            return
        time.sleep(0.05)
    raise SystemExit(f"{who}: nothing listens on 127.0.0.1:{port}")


def pyplot(log):
    """matplotlib's pyplot drawing to files (the Agg backend), or None with one line through
    `log` when matplotlib is not installed: the bench scripts' plots are optional."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed (pip install matplotlib): no PNG written")
        return None
    return plt
