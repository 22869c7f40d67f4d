#!/usr/bin/env python3
"""WebSocket benchmark (RFC 8441): many tunnels through mod_h2rs and
mod_proxy_http to a WebSocket echo backend (tests/wsbackend.py).

- Opens CONNS connections x PER_CONN extended-CONNECT tunnels with default
  worker settings, checks every one is open and echoes a message, and
  reports what the open tunnels cost the server: threads and resident
  memory per tunnel.
- Echo latency: sequential round trips of a small message through one
  tunnel over HTTP/2, and through the same httpd and backend over an
  HTTP/1.1 WebSocket (Upgrade), and straight to the backend as a floor.

Run it through `scripts/bench --websockets`. Loopback only, bounded."""
import argparse
import datetime
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "tests"))

from bench import MODDIR, OURS, Server, free_port, versions, write_report  # noqa: E402
from h2client import H2Client  # noqa: E402
from wsclient import CLOSE, TEXT, Tunnel  # noqa: E402


def threads_of(server):
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(server.pid)], capture_output=True, text=True).stdout
    total = 0
    for pid in out.split():
        try:
            for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("Threads:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def percentile(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * q))] if xs else 0.0


def open_tunnels(port, conns, per_conn):
    clients, tunnels = [], []
    for _ in range(conns):
        c = H2Client(port)
        c.wait(lambda: c.remote_settings, timeout=10)
        clients.append(c)
        tunnels += [Tunnel(c, "/ws/echo") for _ in range(per_conn)]
    deadline = time.time() + 60
    opened = 0
    for t in tunnels:
        try:
            opened += t.wait_open(timeout=max(0.1, deadline - time.time())) == 200
        except TimeoutError:
            pass
    return clients, tunnels, opened


def echo_all(tunnels):
    for i, t in enumerate(tunnels):
        t.send(TEXT, f"tunnel {i}".encode())
    ok = 0
    for i, t in enumerate(tunnels):
        try:
            ok += t.recv(timeout=30) == (TEXT, f"tunnel {i}".encode())
        except (TimeoutError, ConnectionError):
            pass
    return ok


def h2_latency(port, n):
    c = H2Client(port)
    c.wait(lambda: c.remote_settings, timeout=10)
    t = Tunnel(c, "/ws/echo")
    assert t.wait_open() == 200
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        t.send(TEXT, b"x" * 32)
        t.recv()
        times.append((time.perf_counter() - t0) * 1e6)
    t.send(CLOSE, b"\x03\xe8")
    c.close()
    return times


def ws_latency(url, n):
    from websockets.sync.client import connect
    times = []
    with connect(url) as ws:
        for i in range(n):
            t0 = time.perf_counter()
            ws.send("x" * 32)
            ws.recv()
            times.append((time.perf_counter() - t0) * 1e6)
    return times


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--conns", type=int, default=10)
    ap.add_argument("--per-conn", type=int, default=100)
    ap.add_argument("--echoes", type=int, default=500, help="round trips for the latency figures")
    ap.add_argument("--out", default=str(ROOT / "docs"))
    args = ap.parse_args()

    base = pathlib.Path(tempfile.mkdtemp(prefix="h2rs-wsbench-"))
    os.chmod(base, 0o755)
    doc = base / "doc"
    doc.mkdir()
    events = base / "ws-events.log"
    backend_port = free_port()
    backend = subprocess.Popen([sys.executable, str(ROOT / "tests" / "wsbackend.py"), str(backend_port), str(events)])
    proxy = f"""LoadModule proxy_module {MODDIR}/mod_proxy.so
LoadModule proxy_http_module {MODDIR}/mod_proxy_http.so
ProxyPass /ws/ http://127.0.0.1:{backend_port}/ upgrade=websocket timeout=120"""
    server = Server(base, "ours", f"LoadModule http2_module {OURS}\nH2Direct on\nH2WebSockets on\n{proxy}", doc)
    server.start()
    try:
        time.sleep(1)
        rss0, threads0 = server.rss_kib(), threads_of(server)
        t0 = time.time()
        clients, tunnels, opened = open_tunnels(server.port, args.conns, args.per_conn)
        open_secs = time.time() - t0
        time.sleep(2)
        rss1, threads1 = server.rss_kib(), threads_of(server)
        echoed = echo_all(tunnels)
        for c in clients:
            c.close()
        total = args.conns * args.per_conn
        h2 = h2_latency(server.port, args.echoes)
        h1 = ws_latency(f"ws://127.0.0.1:{server.port}/ws/echo", args.echoes)
        direct = ws_latency(f"ws://127.0.0.1:{backend_port}/echo", args.echoes)
    finally:
        server.stop()
        backend.kill()
        backend.wait()
    crashed = server.crashed()

    v = versions()
    date = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    per_tunnel_kib = (rss1 - rss0) / max(1, opened)
    lines = [
        f"# WebSocket benchmark ({date})", "",
        f"Machine: {v['cpus']} CPUs, Linux {v['kernel']}; {v['httpd']}; mod_h2rs {v['mod_h2rs']}. "
        "mod_proxy_http `upgrade=websocket` to a Python `websockets` echo backend, default H2 worker settings.", "",
        "| tunnels (connections x per connection) | opened | echoed | time to open all | server threads before / with tunnels | RSS per open tunnel |",
        "|---|---:|---:|---:|---:|---:|",
        f"| {total} ({args.conns} x {args.per_conn}) | {opened} | {echoed} | {open_secs:.1f} s | {threads0} / {threads1} | "
        f"{per_tunnel_kib:.0f} KiB |", "",
        f"| echo round trip ({args.echoes} x 32 bytes) | median µs | p99 µs |",
        "|---|---:|---:|",
        f"| HTTP/2 tunnel through httpd (mod_h2rs) | {statistics.median(h2):.0f} | {percentile(h2, 0.99):.0f} |",
        f"| HTTP/1.1 WebSocket through httpd | {statistics.median(h1):.0f} | {percentile(h1, 0.99):.0f} |",
        f"| straight to the backend | {statistics.median(direct):.0f} | {percentile(direct, 0.99):.0f} |",
    ]
    if crashed:
        lines += ["", "**Crash or panic in the error log**"]
    write_report(lines, args.out, "bench-websockets.md")


if __name__ == "__main__":
    main()
