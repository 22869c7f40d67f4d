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
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "tests"))

from bench import MODDIR, OURS, Server, free_port, versions, wait_listening, write_report  # noqa: E402
from h2client import H2Client  # noqa: E402
from wsclient import TEXT, Tunnel, frame, parse  # noqa: E402


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


def _round_trips(sock, n, request, answered):
    """n sequential round trips on a raw socket: `request` is sent, bytes
    are read until `answered(buffer)` says how much of the buffer one
    answer took. Both protocols use this same minimal client loop, so
    what differs between them is the server's path, not client code."""
    times, buf = [], b""
    for _ in range(n):
        t0 = time.perf_counter()
        sock.sendall(request)
        while True:
            used = answered(buf)
            if used:
                buf = buf[used:]
                break
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed during the latency loop")
            buf += chunk
        times.append((time.perf_counter() - t0) * 1e6)
    return times


def _one_h2_data_frame(sid):
    """How many bytes a complete DATA frame of stream `sid` at the start
    of the buffer takes (0 if none yet); other frames are skipped."""
    def answered(buf):
        off = 0
        while len(buf) - off >= 9:
            length = int.from_bytes(buf[off:off + 3], "big")
            if len(buf) - off < 9 + length:
                return 0
            ftype, fsid = buf[off + 3], int.from_bytes(buf[off + 5:off + 9], "big") & 0x7FFFFFFF
            off += 9 + length
            if ftype == 0 and fsid == sid and length > 0:
                return off
        return 0
    return answered


def h2_latency(port, n):
    """Round trips through an RFC 8441 tunnel: opened with the h2 client,
    then raw DATA frames (n x 38 bytes stays inside the initial windows)."""
    c = H2Client(port)
    c.wait(lambda: c.remote_settings, timeout=10)
    t = Tunnel(c, "/ws/echo")
    assert t.wait_open() == 200
    msg = frame(TEXT, b"x" * 32)
    data = len(msg).to_bytes(3, "big") + b"\x00\x00" + t.sid.to_bytes(4, "big") + msg
    c.sock.settimeout(10)
    times = _round_trips(c.sock, n, data, _one_h2_data_frame(t.sid))
    c.close()
    return times


def ws_latency(host, port, path, n):
    """Round trips over an HTTP/1.1 WebSocket: handshake, then raw frames."""
    import base64
    sock = socket.create_connection((host, port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed during the handshake")
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head[:80]

    def answered(buf):
        frames, used = parse(buf)
        return used if frames else 0
    times = _round_trips(sock, n, frame(TEXT, b"x" * 32), answered)
    sock.close()
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
    try:
        wait_listening(backend_port)
        server.start()
        time.sleep(1)  # the children settle (their threads and RSS)
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
        h1 = ws_latency("127.0.0.1", server.port, "/ws/echo", args.echoes)
        direct = ws_latency("127.0.0.1", backend_port, "/echo", args.echoes)
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
