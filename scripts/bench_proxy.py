#!/usr/bin/env python3
"""Reverse proxy benchmark (proxy_http2_module of mod_h2rs).

- Slow backend: N requests (default 400) at once through an h2c front with
  H2MaxWorkers 5 to an HTTP/2 backend (tests/h2backend.py) that answers each
  after 2 s: wall time and backend TCP connections, for mod_h2rs's proxy and
  for the stock mod_http2 + mod_proxy_http2 (which holds a worker per
  request; it runs a smaller N to stay bounded in time).
- Small requests: 1 KiB files from a backend httpd, through an h2c front,
  proxied over h2c by mod_h2rs's proxy vs. over HTTP/1.1 by mod_proxy_http
  (same front, same backend), interleaved rounds: median req/s.

Run it through `scripts/bench --proxy`. Loopback only, bounded."""
import argparse
import datetime
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from bench import MODDIR, OURS, STOCK, Server, free_port, versions, wait_listening, write_report  # noqa: E402


def h2load(*args, timeout=300):
    out = subprocess.run(["h2load", *args], capture_output=True, text=True, timeout=timeout).stdout
    ok = re.search(r"status codes: (\d+) 2xx", out)
    rps = re.search(r"finished in [0-9.]+\w+, ([0-9.]+) req/s", out)
    return (int(ok[1]) if ok else 0), (float(rps[1]) if rps else 0.0), out


def backend_stats(port):
    out = subprocess.run(["curl", "-s", "--http2-prior-knowledge", f"http://127.0.0.1:{port}/stats"],
                         capture_output=True, text=True).stdout
    return json.loads(out)


def slow_case(base, doc, n, label, module_lines, backend_port):
    server = Server(base, label, module_lines + f"\nProxyPass /slow/ h2c://127.0.0.1:{backend_port}/\nProxyTimeout 120", doc)
    try:
        server.start()
        before = backend_stats(backend_port)["connections"]
        t0 = time.time()
        ok, _, _ = h2load("-n", str(n), "-c", "4", "-m", "100", f"http://127.0.0.1:{server.port}/slow/delay?s=2")
        secs = time.time() - t0
        conns = backend_stats(backend_port)["connections"] - before
    finally:
        server.stop()
    return ok, secs, conns, server.crashed()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slow", type=int, default=400, help="slow requests through mod_h2rs's proxy")
    ap.add_argument("--slow-stock", type=int, default=40, help="slow requests through the stock modules")
    ap.add_argument("--small", type=int, default=20000, help="small requests per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "docs"))
    args = ap.parse_args()

    base = pathlib.Path(tempfile.mkdtemp(prefix="h2rs-proxybench-"))
    os.chmod(base, 0o755)
    doc = base / "doc"
    doc.mkdir()
    (doc / "1k.bin").write_bytes(os.urandom(1024))
    os.chmod(doc, 0o755)
    os.chmod(doc / "1k.bin", 0o644)
    backend_port = free_port()
    backend = subprocess.Popen([sys.executable, str(ROOT / "tests" / "h2backend.py"), str(backend_port)])
    ours_proxy = f"LoadModule http2_module {OURS}\nH2Direct on\nLoadModule proxy_module {MODDIR}/mod_proxy.so\n" \
                 f"LoadModule proxy_http2_module {OURS}"
    few = "\nH2MinWorkers 1\nH2MaxWorkers 5"
    stock_proxy = f"LoadModule http2_module {STOCK}\nH2Direct on\nLoadModule proxy_module {MODDIR}/mod_proxy.so\n" \
                  f"LoadModule proxy_http2_module {MODDIR}/mod_proxy_http2.so"
    crashed = False
    try:
        wait_listening(backend_port)
        ours = slow_case(base, doc, args.slow, "slow-ours", ours_proxy + few, backend_port)
        stock = slow_case(base, doc, args.slow_stock, "slow-stock", stock_proxy + few, backend_port)
        crashed |= ours[3] or stock[3]

        origin = Server(base, "origin", f"LoadModule http2_module {OURS}\nH2Direct on", doc)
        h2_front = Server(base, "front-h2", ours_proxy + f"\nProxyPass /p/ h2c://127.0.0.1:{origin.port}/", doc)
        h1_front = Server(base, "front-h1", f"LoadModule http2_module {OURS}\nH2Direct on\n"
                          f"LoadModule proxy_module {MODDIR}/mod_proxy.so\n"
                          f"LoadModule proxy_http_module {MODDIR}/mod_proxy_http.so\n"
                          f"ProxyPass /p/ http://127.0.0.1:{origin.port}/", doc)
        rates = {"h2c": [], "http/1.1": []}
        # CPU per request of front + backend: steadier than req/s on a
        # machine that runs other loads too.
        cpu = {"h2c": [], "http/1.1": []}
        fails = {"h2c": 0, "http/1.1": 0}
        try:
            for s in (origin, h2_front, h1_front):
                s.start()
            for _ in range(args.rounds):
                for name, srv in (("h2c", h2_front), ("http/1.1", h1_front)):
                    c0 = srv.cpu_seconds() + origin.cpu_seconds()
                    ok, rps, _ = h2load("-n", str(args.small), "-c", "10", "-m", "10",
                                        f"http://127.0.0.1:{srv.port}/p/1k.bin")
                    cpu[name].append((srv.cpu_seconds() + origin.cpu_seconds() - c0) * 1e6 / max(1, ok))
                    fails[name] += args.small - ok
                    rates[name].append(rps)
        finally:
            for s in (h2_front, h1_front, origin):
                s.stop()
                crashed |= s.crashed()
    finally:
        backend.kill()
        backend.wait()

    v = versions()
    date = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    med = {k: statistics.median(x) for k, x in rates.items()}
    mcpu = {k: statistics.median(x) for k, x in cpu.items()}
    # Ratios within each round (both proxies ran in it), then their median.
    rate_ratio = statistics.median(h / max(1.0, o) for h, o in zip(rates["h2c"], rates["http/1.1"]))
    cpu_ratio = statistics.median(h / max(1.0, o) for h, o in zip(cpu["h2c"], cpu["http/1.1"]))
    lines = [
        f"# Reverse proxy benchmark ({date})", "",
        f"Machine: {v['cpus']} CPUs, Linux {v['kernel']}; {v['httpd']}; mod_h2rs {v['mod_h2rs']}.", "",
        "## Slow backend: every answer after 2 s, H2MaxWorkers 5, h2load -c 4 -m 100", "",
        "| proxy | requests | answered 2xx | wall time | backend TCP connections |",
        "|---|---:|---:|---:|---:|",
        f"| mod_h2rs proxy_http2_module | {args.slow} | {ours[0]} | {ours[1]:.1f} s | {ours[2]} |",
        f"| stock mod_http2 + mod_proxy_http2 | {args.slow_stock} | {stock[0]} | {stock[1]:.1f} s | {stock[2]} |", "",
        f"## Small requests: 1 KiB through an h2c front, median of {args.rounds} rounds of {args.small}, -c 10 -m 10", "",
        "| front -> backend | req/s | CPU µs per request (front + backend httpd) |",
        "|---|---:|---:|",
        f"| mod_h2rs proxy, h2c to the backend | {med['h2c']:.0f} | {mcpu['h2c']:.0f} |",
        f"| mod_proxy_http, HTTP/1.1 to the backend | {med['http/1.1']:.0f} | {mcpu['http/1.1']:.0f} |",
        f"| ratio h2c / HTTP/1.1 (median of the rounds' ratios) | {rate_ratio:.2f} | {cpu_ratio:.2f} |",
    ]
    for name, n in fails.items():
        if n:
            lines += ["", f"**{n} small requests failed through the {name} proxy**"]
    if crashed:
        lines += ["", "**Crash or panic in an error log**"]
    write_report(lines, args.out, "bench-proxy.md")


if __name__ == "__main__":
    main()
