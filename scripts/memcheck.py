#!/usr/bin/env python3
"""Memory errors under real traffic: httpd (`-X`, one process) with
build/mod_h2rs.so runs under valgrind's memcheck while clients exercise
the module's paths, then every memcheck log must say "0 errors".

The traffic (h2c and h2 over TLS): static files of every size (mapped and
copied), ranges, an h2c Upgrade, a deflated file, error pages, mod_status, uploads of 3 MiB
through mod_proxy_http and through proxy_http2_module (tests/backend.py,
tests/h2backend.py, over h2c and over TLS with the backend's certificate
verified, and to a backend whose certificate is refused), their downloads, trailers, 103s, backend resets
mid-response and a backend that closes mid-body, WebSocket tunnels
(RFC 8441, through mod_proxy_http), h2load rounds, streams
reset by the client mid-download and mid-upload, clients that vanish with
streams in flight, a client GOAWAY, streams held by a zero window; then
`tests/netfuzz.py` (mutated frame sequences) for `--fuzz` seconds.
CGI is left out: mod_cgid's daemon does not run its scripts under valgrind.

    scripts/memcheck [--fuzz SECONDS] [--keep]

Takes about 5 minutes with the default 120 s of fuzzing. Exit status 1 on
any memcheck error, a crash or a panic; the logs are kept then (and with
--keep) and their directory printed."""
import argparse
import glob
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "scripts"))
import h2.errors  # noqa: E402
import h2.settings  # noqa: E402

from bench_callgrind import under_valgrind  # noqa: E402
from conftest import (CRASH_RE, H2STATUS_LOCATION, MODDIR, MODULE, Certs, Docroot, Httpd, free_port,  # noqa: E402
                      wait_listening)
from h2client import H2Client  # noqa: E402
from wsclient import BINARY, CLOSE, TEXT, Tunnel  # noqa: E402


def curl(*args):
    r = subprocess.run(["curl", "-sS", "-k", "-o", "/dev/null", "-w", "%{http_code}", *args],
                       capture_output=True, timeout=300)
    return r.stdout.decode()


def requests(base, tls, wd):
    paths = ["/index.html", "/1k.bin", "/100k.bin", "/1m.bin", "/20m.bin", "/nope", "/dir/", "/old",
             "/gz/100k.bin", "/server-status", "/proxy/big?n=200000", "/proxy/sse?n=2", "/proxy/trailers",
             "/proxy/broken?framing=chunked", "/api/big?n=300000", "/api/headers", "/api/early",
             "/api/trailers", "/api/reset", "/api/reset-mid", "/tlsapi/headers", "/tlsapi/big?n=300000",
             "/tlsbad/headers", "/h2status"]
    codes = []
    for p in paths:
        codes.append(f"{p} {curl('--http2-prior-knowledge', base + p)}")
        codes.append(f"{p} (tls) {curl('--http2', tls + p)}")
    codes.append("range " + curl("--http2-prior-knowledge", "-r", "0-99,200-299", base + "/100k.bin"))
    # h2c Upgrade, then a second request on the connection: the session's
    # first idle goes back through the upgrading request's end.
    codes.append("upgrade " + curl("--http2", base + "/index.html", "-o", "/dev/null", base + "/1k.bin"))
    body = wd / "upload.bin"
    body.write_bytes(os.urandom(3 << 20))
    for p in ("/proxy/echo", "/api/echo", "/tlsapi/echo"):
        codes.append(f"POST {p} {curl('--http2-prior-knowledge', '--data-binary', f'@{body}', base + p)}")
        codes.append(f"POST {p} (tls) {curl('--http2', '--data-binary', f'@{body}', tls + p)}")
    print("  " + ", ".join(codes), flush=True)
    for url in (base + "/1k.bin", base + "/proxy/big?n=20000", base + "/api/headers", base + "/tlsapi/headers"):
        r = subprocess.run(["h2load", "-n", "1000", "-c", "4", "-m", "10", url], capture_output=True, text=True,
                           timeout=600)
        print("  h2load " + url + ": " + " ".join(l for l in r.stdout.splitlines() if "requests:" in l), flush=True)


def websockets(port):
    """RFC 8441 tunnels through mod_proxy_http: echoes, a close, and
    tunnels reset or left behind by their client."""
    c = H2Client(port)
    tunnels = [Tunnel(c, "/ws/echo") for _ in range(5)]
    for t in tunnels:
        t.wait_open()
        t.send(TEXT, b"hello")
        t.send(BINARY, os.urandom(70000))
    echoed = sum(1 for t in tunnels for _ in range(2) if t.recv()[0] in (TEXT, BINARY))
    tunnels[0].send(CLOSE, b"\x03\xe8")
    tunnels[0].wait_end()
    c.conn.reset_stream(tunnels[1].sid, h2.errors.ErrorCodes.CANCEL)
    c.flush()
    time.sleep(1)
    c.sock.close()  # the other three are left open
    print(f"  websockets: {echoed} of 10 messages echoed", flush=True)


def hostile_clients(port):
    for path in ("/20m.bin", "/gz/20m.bin", "/api/big?n=5000000", "/proxy/big?n=5000000"):
        c = H2Client(port)
        sid = c.request(path)
        c.wait(lambda: len(c.streams[sid].data) > 0 or c.streams[sid].done, timeout=60)
        if not c.streams[sid].done:
            c.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
            c.flush()
        c.wait_stream(c.request("/index.html"), timeout=60)
        c.close()
    for path in ("/proxy/echo", "/api/echo"):
        c = H2Client(port)
        sid = c.request(path, method="POST", end_stream=False)
        c.send_body(sid, b"x" * 30000, end_stream=False)
        time.sleep(1)
        c.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
        c.flush()
        time.sleep(1)
        c.close()
    for path in ("/20m.bin", "/api/big?n=5000000", "/proxy/sse?n=10", "/api/delay?s=2"):
        c = H2Client(port)
        c.request(path)
        time.sleep(1)
        c.sock.close()  # gone without a word
    c = H2Client(port)
    for p in ("/1m.bin", "/api/delay?s=1", "/proxy/big?n=100000"):
        c.request(p)
    c.conn.close_connection()
    c.flush()
    time.sleep(2)
    c.sock.close()
    c = H2Client(port, settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
    for _ in range(20):
        c.request("/100k.bin")
    time.sleep(2)
    c.sock.close()
    print("  hostile clients done", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fuzz", type=float, default=120, help="seconds of tests/netfuzz.py (default 120)")
    ap.add_argument("--keep", action="store_true", help="keep the logs")
    args = ap.parse_args()
    if not shutil.which("valgrind"):
        sys.exit("memcheck: valgrind is not installed (scripts/memcheck installs it)")
    wd = pathlib.Path(tempfile.mkdtemp(prefix="h2rs-memcheck-"))
    os.chmod(wd, 0o755)
    doc = Docroot(wd)
    certs = Certs(wd)
    backends = []
    ports = {}
    for script in ("backend.py", "h2backend.py", "wsbackend.py"):
        port = ports[script] = free_port()
        extra_args = [str(wd / "ws-events.log")] if script == "wsbackend.py" else []
        backends.append(subprocess.Popen([sys.executable, str(ROOT / "tests" / script), str(port), *extra_args],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_listening(port)
    # h2:// backends: one whose certificate passes SSLProxyVerify require
    # (its own, as the CA), one whose names do not match (refused).
    for name, cert in (("tls", certs.main), ("tlsbad", certs.other)):
        port = ports[name] = free_port()
        backends.append(subprocess.Popen([sys.executable, str(ROOT / "tests" / "h2backend.py"), str(port), "100",
                                          *map(str, cert)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_listening(port)
    extra = f"""
LoadModule proxy_module {MODDIR}/mod_proxy.so
LoadModule proxy_http_module {MODDIR}/mod_proxy_http.so
LoadModule proxy_http2_module {MODULE}
LoadModule deflate_module {MODDIR}/mod_deflate.so
LoadModule filter_module {MODDIR}/mod_filter.so
ProxyPass /proxy/ http://127.0.0.1:{ports["backend.py"]}/
ProxyPass /api/ h2c://127.0.0.1:{ports["h2backend.py"]}/
ProxyPass /ws/ http://127.0.0.1:{ports["wsbackend.py"]}/ upgrade=websocket timeout=10
Alias /gz "{doc.path}"
<Location /gz/>
  SetOutputFilter DEFLATE
</Location>
""" + H2STATUS_LOCATION
    h = Httpd(wd, doc, name="srv", h2_conf="H2Direct on\nH2MinWorkers 2\nH2MaxWorkers 8\nH2WebSockets on", extra=extra)
    tls_port = free_port()
    h.tls_config(certs, tls_port)
    # After tls_config, which loads mod_ssl (the SSLProxy* directives are its).
    # A client certificate too (loaded, though this backend does not ask).
    client_pem = wd / "client.pem"
    client_pem.write_bytes(pathlib.Path(certs.main[0]).read_bytes() + pathlib.Path(certs.main[1]).read_bytes())
    h.extra += f"""
ProxyPass /tlsapi/ h2://localhost:{ports["tls"]}/
ProxyPass /tlsbad/ h2://localhost:{ports["tlsbad"]}/
<Proxy "h2://localhost:{ports["tls"]}/">
  SSLProxyVerify require
  SSLProxyCACertificateFile {certs.main[0]}
  SSLProxyMachineCertificateFile {client_pem}
</Proxy>
"""
    h.write_config()
    memcheck = ["--tool=memcheck", "--leak-check=no", "--num-callers=40", "--error-limit=no",
                f"--log-file={wd}/memcheck.%p.log"]
    failed = False
    try:
        with under_valgrind(memcheck, h.conf, h.port, wd / "valgrind.err"):
            print("requests", flush=True)
            requests(f"http://127.0.0.1:{h.port}", f"https://127.0.0.1:{tls_port}", wd)
            print("websockets", flush=True)
            websockets(h.port)
            print("hostile clients", flush=True)
            hostile_clients(h.port)
            if args.fuzz > 0:
                print(f"netfuzz {args.fuzz:.0f} s", flush=True)
                r = subprocess.run([sys.executable, str(ROOT / "tests" / "netfuzz.py"), "--port", str(h.port),
                                    "--seconds", str(args.fuzz)], capture_output=True, text=True,
                                   timeout=args.fuzz + 600)
                print("  " + "\n  ".join(r.stdout.strip().splitlines()[-3:]), flush=True)
                failed |= r.returncode != 0
            time.sleep(2)
    finally:
        for b in backends:
            b.kill()
            b.wait()
    for log in sorted(glob.glob(f"{wd}/memcheck.*.log")):
        summary = [line for line in open(log).read().splitlines() if "ERROR SUMMARY" in line]
        print(f"{os.path.basename(log)}: {summary[-1].split('== ')[-1] if summary else 'no summary'}")
        failed |= not summary or " 0 errors" not in summary[-1]
    crashes = [line for line in h.read_error_log().splitlines() if CRASH_RE.search(line)]
    if crashes:
        print("crash or panic in the error log:\n" + "\n".join(crashes[:5]))
        failed = True
    if failed or args.keep:
        print(f"logs kept in {wd}")
    else:
        shutil.rmtree(wd, ignore_errors=True)
    print("memcheck: " + ("FAILED" if failed else "clean"))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
