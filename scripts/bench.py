#!/usr/bin/env python3
"""Side-by-side benchmark: one httpd binary three ways (mod_h2rs, the stock
mod_http2, HTTP/1.1 only), same MPM settings, docroot and logging, h2load
workloads interleaved A B C A B C ... for several rounds. Prints medians
(req/s, mean and p99 latency, CPU per request of the server and of the
client, peak RSS of the httpd processes) and the
ratios mod_h2rs/stock and mod_h2rs/HTTP/1.1 computed within each round;
writes docs/bench.md and docs/bench.png.

Run it through scripts/bench (it sets up the venv). Loopback only; every
load is bounded in count and time.
"""
import argparse
import datetime
import json
import os
import pathlib
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests"))
from httpd_env import HTTPD, MODDIR, ROOT, free_port  # noqa: E402
from httpd_env import MODULE as OURS, STOCK_MODULE as STOCK  # noqa: E402

MPM = f"""LoadModule mpm_event_module {MODDIR}/mod_mpm_event.so
ServerLimit 2
StartServers 2
ThreadLimit 64
ThreadsPerChild 64
MaxRequestWorkers 128
MinSpareThreads 64
MaxSpareThreads 128
# Lets the event MPM accept 1,000+ mostly idle connections per child (its
# limit is ThreadsPerChild + idle threads x this factor; the default 2 caps
# it near 190, and the idle workload would measure that cap).
AsyncRequestWorkerFactor 40
MaxConnectionsPerChild 0"""


class Server:
    def __init__(self, base, name, module_line, docroot, tls=None):
        """`tls`: (certificate, key) files for a TLS virtual host on a
        second port (`tls_port`), with the same protocols as the server."""
        self.name = name
        self.module_line = module_line
        self.pid = None  # set by start()
        self.dir = base / name
        self.dir.mkdir(parents=True)
        os.chmod(self.dir, 0o755)
        self.port = free_port()
        protocols = "h2c http/1.1" if module_line else "http/1.1"
        (self.dir / "httpd.conf").write_text(f"""ServerRoot "{self.dir}"
DefaultRuntimeDir "{self.dir}"
PidFile "{self.dir}/httpd.pid"
ErrorLog "{self.dir}/error.log"
LogLevel warn
ServerName 127.0.0.1
User www-data
Group www-data
{MPM}
LoadModule authz_core_module {MODDIR}/mod_authz_core.so
LoadModule mime_module {MODDIR}/mod_mime.so
LoadModule dir_module {MODDIR}/mod_dir.so
LoadModule alias_module {MODDIR}/mod_alias.so
LoadModule cgid_module {MODDIR}/mod_cgid.so
LoadModule status_module {MODDIR}/mod_status.so
{module_line}
TypesConfig /etc/mime.types
LogFormat "%h \\"%r\\" %>s %b %H" bench
CustomLog "{self.dir}/access.log" bench
ScriptSock "{self.dir}/cgisock"
Timeout 60
KeepAlive On
KeepAliveTimeout 30
MaxKeepAliveRequests 0
EnableSendfile On
Listen 127.0.0.1:{self.port}
DocumentRoot "{docroot}"
<Directory "{docroot}">
  Options +ExecCGI
  AddHandler cgi-script .cgi
  Require all granted
</Directory>
Protocols {protocols}
""")
        self.tls_port = None
        if tls:
            self.tls_port = free_port()
            cert, key = tls
            with open(self.dir / "httpd.conf", "a") as conf:
                conf.write(f"""LoadModule ssl_module {MODDIR}/mod_ssl.so
LoadModule socache_shmcb_module {MODDIR}/mod_socache_shmcb.so
SSLSessionCache "shmcb:{self.dir}/ssl_scache(512000)"
Listen 127.0.0.1:{self.tls_port}
<VirtualHost 127.0.0.1:{self.tls_port}>
  SSLEngine on
  SSLCertificateFile "{cert}"
  SSLCertificateKeyFile "{key}"
  Protocols {protocols.replace("h2c", "h2")}
</VirtualHost>
""")

    def start(self):
        subprocess.run(["bash", "-c", f"ulimit -n 16384; exec {HTTPD} -f {self.dir}/httpd.conf -k start"],
                       check=True)
        pidfile = self.dir / "httpd.pid"
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                if pidfile.exists() and pidfile.read_text().strip():
                    break
            except OSError:
                pass
            time.sleep(0.1)
        if not (pidfile.exists() and pidfile.read_text().strip()):
            raise RuntimeError(f"httpd {self.name} did not start: see {self.dir}/error.log")
        self.pid = int(pidfile.read_text())

    def stop(self):
        """SIGTERM to the parent; after 10 s SIGKILL to it and to the
        children it had (a parent killed leaves them on the port)."""
        if self.pid is None:
            return
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.pid)], capture_output=True, text=True).stdout
        children = [int(x) for x in out.split()]
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        for _ in range(100):
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
        for pid in (self.pid, *children):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def rss_kib(self):
        out = subprocess.run(["ps", "-o", "rss=", "--ppid", str(self.pid), "-p", str(self.pid)],
                             capture_output=True, text=True).stdout
        return sum(int(x) for x in out.split())

    def cpu_seconds(self):
        """CPU time (user + system) the server's processes used so far."""
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.pid)], capture_output=True, text=True).stdout
        total = 0
        for pid in [self.pid, *map(int, out.split())]:
            try:
                fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])  # utime, stime (clock ticks)
            except (OSError, IndexError, ValueError):
                pass
        return total / os.sysconf("SC_CLK_TCK")

    def crashed(self):
        log = (self.dir / "error.log").read_text(errors="replace")
        return bool(re.search(r"AH00052|segmentation fault|panick|exit signal", log, re.I))


class ContainerServer(Server):
    """mod_h2rs in a container of `image` (make docker-image), same config,
    on the host's network (no port-publishing proxy in the way: what is
    measured is httpd in the container, not Docker's userland proxy)."""

    def __init__(self, base, name, docroot, image, h2=True):
        import container  # tests/, on the path since the start
        self.docker = container.docker
        layout = container.image_layout(image)
        module_line = f"LoadModule http2_module {layout['module']}\nH2Direct on" if h2 else ""
        super().__init__(base, name, module_line, docroot)
        self.image, self.base, self.cid = image, base, None
        conf = self.dir / "httpd.conf"
        conf.write_text(container.container_config(conf.read_text(), layout, host_network=True))
        self.httpd = layout["httpd"]

    def start(self):
        r = self.docker("run", "-d", "--network", "host", "--ulimit", "nofile=16384:16384",
                        "-v", f"{self.base}:{self.base}", self.image,
                        self.httpd, "-DFOREGROUND", "-f", str(self.dir / "httpd.conf"))
        self.cid = r.stdout.strip()
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        self.pid = int(self.docker("inspect", "-f", "{{.State.Pid}}", self.cid).stdout.strip())

    def stop(self):
        if self.cid:
            self.docker("kill", "-s", "TERM", self.cid, check=False)
            self.docker("wait", self.cid, check=False, timeout=60)
            self.docker("rm", "-f", self.cid, check=False)
            self.cid = None


class RssSampler:
    def __init__(self, server):
        self.server, self.peak, self.stop_flag = server, 0, False
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop_flag:
            try:
                self.peak = max(self.peak, self.server.rss_kib())
            except Exception:
                pass
            time.sleep(0.1)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *a):
        self.stop_flag = True
        self.thread.join()


def h2load(server, args, h1, timeout):
    """Runs h2load; returns req/s, mean and p99 latency (ms), failures."""
    with tempfile.NamedTemporaryFile(prefix="h2load-", suffix=".log", delete=False) as f:
        log = f.name
    cmd = ["h2load", *(["--h1"] if h1 else []), "--log-file", log, *args]
    # Reaped with wait4 for h2load's own CPU time: the client shares the
    # machine's CPUs with the server, so its cost per request is part of
    # every throughput figure (RUSAGE_CHILDREN would also count the `ps`
    # runs of RssSampler).
    with tempfile.TemporaryFile() as stdout:
        proc = subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        timed_out = False
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if not pid and time.monotonic() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                timed_out = True
            if pid:
                # Reaped here: Popen must not wait for it again.
                proc.returncode = os.waitstatus_to_exitcode(status)
                break
            time.sleep(0.02)
        stdout.seek(0)
        # What h2load printed counts whatever its exit status, as before;
        # a run killed at the timeout counts as nothing done.
        out = "" if timed_out else stdout.read().decode(errors="replace")
    client_cpu = usage.ru_utime + usage.ru_stime
    lat = []
    try:
        with open(log) as fh:
            for line in fh:
                parts = line.split()
                if len(parts) == 3 and parts[1].startswith("2"):
                    lat.append(int(parts[2]) / 1000.0)
    finally:
        os.unlink(log)
    m = re.search(r"finished in [0-9.]+\w+, ([0-9.]+) req/s", out)
    fails = re.search(r"requests: \d+ total, \d+ started, (\d+) done, \d+ succeeded, (\d+) failed", out)
    lat.sort()
    done = int(fails[1]) if fails else 0
    return {
        "rps": float(m[1]) if m else 0.0,
        "mean_ms": statistics.fmean(lat) if lat else 0.0,
        "p99_ms": lat[int(len(lat) * 0.99) - 1] if lat else 0.0,
        "done": done,
        # None: h2load timed out or printed no summary (the run gave no
        # result; the report says so and the script fails).
        "failed": int(fails[2]) if fails else None,
        "client_cpu_us_per_req": client_cpu * 1e6 / max(1, done),
    }


def measured_run(server, args, h1, timeout):
    """A warm-up, then one h2load run (`args` end with the URL) with the
    server's peak RSS (`peak_rss_mib`) and CPU per request
    (`cpu_us_per_req`) added to h2load's figures."""
    h2load(server, ["-n", "500", "-c", "10"] + ([] if h1 else ["-m", "4"]) + args[-1:], h1, 60)
    cpu0 = server.cpu_seconds()
    with RssSampler(server) as rss:
        r = h2load(server, args, h1, timeout)
    r["peak_rss_mib"] = rss.peak / 1024
    # CPU the server spent per request: steadier than req/s on a machine
    # that also runs other work.
    r["cpu_us_per_req"] = (server.cpu_seconds() - cpu0) * 1e6 / max(1, r["done"])
    return r


def idle_workload(server, n, h1, over_tls=False):
    """n connections, one request each, idle 3 s: KiB of RSS per idle
    connection; then a second request on each: how many answered."""
    import h2.config
    import h2.connection
    import h2.events
    import h2.exceptions
    if over_tls:
        import ssl
        tls = ssl.create_default_context()
        tls.check_hostname, tls.verify_mode = False, ssl.CERT_NONE
        tls.set_alpn_protocols(["http/1.1" if h1 else "h2"])
    base = server.rss_kib()
    conns, ok2 = [], 0
    for _ in range(n):
        try:
            s = socket.create_connection(("127.0.0.1", server.tls_port if over_tls else server.port), timeout=15)
            if over_tls:
                s = tls.wrap_socket(s, server_hostname="127.0.0.1")
        except OSError:
            continue  # counted as not answered
        if h1:
            s.sendall(b"GET /1k.bin HTTP/1.1\r\nHost: x\r\n\r\n")
            conns.append((s, None))
        else:
            c = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
            c.initiate_connection()
            c.send_headers(1, [(":method", "GET"), (":scheme", "http"), (":authority", "x"), (":path", "/1k.bin")],
                           end_stream=True)
            s.sendall(c.data_to_send())
            conns.append((s, c))

    def answered(s, c, sid):
        deadline = time.time() + 15
        buf = b""
        while time.time() < deadline:
            try:
                s.settimeout(max(0.1, deadline - time.time()))
                d = s.recv(65536)
            except OSError:
                return False
            if not d:
                return False
            if c is None:
                buf += d
                if b"\r\n\r\n" in buf and len(buf.split(b"\r\n\r\n", 1)[1]) >= 1024:
                    return True
                continue
            try:
                events = c.receive_data(d)
            except h2.exceptions.ProtocolError:
                return False
            for ev in events:
                if isinstance(ev, h2.events.StreamEnded) and ev.stream_id == sid:
                    return True
            try:
                s.sendall(c.data_to_send())
            except OSError:
                return False
        return False

    first = sum(answered(s, c, 1) for s, c in conns)
    time.sleep(3)
    per_conn = (server.rss_kib() - base) / max(1, n)
    for s, c in conns:
        try:
            if c is None:
                s.sendall(b"GET /1k.bin HTTP/1.1\r\nHost: x\r\n\r\n")
            else:
                c.send_headers(3, [(":method", "GET"), (":scheme", "http"), (":authority", "x"),
                                   (":path", "/1k.bin")], end_stream=True)
                s.sendall(c.data_to_send())
        except (OSError, h2.exceptions.ProtocolError):
            pass  # closed by the server meanwhile (GOAWAY): not answered
    for s, c in conns:
        ok2 += answered(s, c, 3)
        s.close()
    return {"kib_per_idle_conn": per_conn, "first_answered": first, "second_answered": ok2}


WORKLOADS = [
    # name, path, h2 args, h1 args, timeout, over TLS
    ("1 KiB, c100 m10", "/1k.bin", ["-n", "100000", "-c", "100", "-m", "10"], ["-n", "100000", "-c", "100"], 120, False),
    ("1 KiB, c1 m100", "/1k.bin", ["-n", "30000", "-c", "1", "-m", "100"], ["-n", "30000", "-c", "1"], 120, False),
    # One request at a time per connection (clients that do not multiplex):
    # what HTTP/2's framing costs when nothing amortizes it.
    ("1 KiB, c100 m1", "/1k.bin", ["-n", "100000", "-c", "100", "-m", "1"], ["-n", "100000", "-c", "100"], 120, False),
    # Clients that pause between requests, as browsers do (h2load paces
    # each at 20 req/s): the rate is fixed, so the CPU column is the
    # figure. Each request finds its connection parked in the MPM.
    ("1 KiB, c200 m1 20/s", "/1k.bin", ["-n", "20000", "-c", "200", "-m", "1", "--rps", "20"],
     ["-n", "20000", "-c", "200", "--rps", "20"], 120, False),
    ("100 KiB, c50 m10", "/100k.bin", ["-n", "20000", "-c", "50", "-m", "10"], ["-n", "20000", "-c", "50"], 120, False),
    ("10 MiB, c4 m4", "/10m.bin", ["-n", "200", "-c", "4", "-m", "4"], ["-n", "200", "-c", "4"], 180, False),
    ("CGI, c10 m4", "/cgi/hello.cgi", ["-n", "2000", "-c", "10", "-m", "4"], ["-n", "2000", "-c", "10"], 180, False),
    # The same httpd over TLS (mod_ssl, TLS 1.3, an ECDSA P-256 certificate;
    # h2 negotiated by ALPN, HTTP/1.1 on a vhost without h2), which is how
    # browsers reach HTTP/2. Each client connects once, and 50 of them, so
    # that no child gets more busy connections than its 64 threads: beyond
    # that the event MPM closes HTTP/1.1's keep-alive connections, and
    # every reconnect is a handshake counted in the CPU per request.
    ("TLS 1 KiB, c50 m10", "/1k.bin", ["-n", "100000", "-c", "50", "-m", "10"], ["-n", "100000", "-c", "50"], 120,
     True),
    ("TLS 1 KiB, c50 m1", "/1k.bin", ["-n", "30000", "-c", "50", "-m", "1"], ["-n", "30000", "-c", "50"], 120, True),
    ("TLS 100 KiB, c50 m10", "/100k.bin", ["-n", "20000", "-c", "50", "-m", "10"], ["-n", "20000", "-c", "50"], 120,
     True),
]


def wait_listening(port, timeout=15):
    """Waits until something accepts connections on 127.0.0.1:`port`
    (a backend just spawned); fails the run if nothing does in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def start_pending(servers):
    """Starts the servers of a {name: server} not started yet."""
    for srv in servers.values():
        if srv.pid is None:
            srv.start()


def make_tls_cert(base):
    """A self-signed ECDSA certificate for the TLS workloads: (cert, key),
    or None where mod_ssl or the openssl tool is missing."""
    if not (pathlib.Path(MODDIR) / "mod_ssl.so").exists() or not shutil.which("openssl"):
        return None
    cert, key = base / "tls-cert.pem", base / "tls-key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    os.chmod(key, 0o644)  # httpd reads it, and need not run as root
    return cert, key


def make_docroot(base):
    d = base / "doc"
    (d / "cgi").mkdir(parents=True)
    for name, size in (("1k.bin", 1024), ("100k.bin", 100 * 1024), ("10m.bin", 10 << 20)):
        (d / name).write_bytes(os.urandom(size))
    cgi = d / "cgi" / "hello.cgi"
    cgi.write_text("#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\n'\necho hello\n")
    for dirpath, _, files in os.walk(base):
        os.chmod(dirpath, 0o755)
        for f in files:
            os.chmod(os.path.join(dirpath, f), 0o755 if f.endswith(".cgi") else 0o644)
    return d


def write_report(lines, out_dir, name):
    """Prints a report and writes it to OUT_DIR/NAME."""
    text = "\n".join(lines) + "\n"
    print(text)
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / name).write_text(text)


def versions():
    def first_line(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True).stdout.splitlines()[0]
        except Exception:
            return "?"
    return {
        "httpd": first_line([HTTPD, "-v"]).replace("Server version: ", ""),
        "h2load": first_line(["h2load", "--version"]),
        "mod_h2rs": subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                                   capture_output=True, text=True).stdout.strip(),
        "cpus": str(os.cpu_count()),
        "kernel": platform.release(),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=int(os.environ.get("ROUNDS", "3")))
    ap.add_argument("--quick", action="store_true", help="one round, smaller loads")
    ap.add_argument("--idle", type=int, default=1000, help="idle connections in the idle workload")
    ap.add_argument("--only", help="run only workloads whose name contains this")
    ap.add_argument("--container", nargs="?", const="mod_h2rs:latest", metavar="IMAGE",
                    help="also run mod_h2rs in a container of IMAGE (default mod_h2rs:latest, make docker-image)")
    ap.add_argument("--uptime", type=int, metavar="RUNS",
                    help="only RSS with uptime: RUNS back-to-back runs of 100,000 1 KiB requests per server")
    ap.add_argument("--out", default=str(ROOT / "docs"))
    args = ap.parse_args()
    rounds = 1 if args.quick else args.rounds
    # Killed (SIGTERM, a closed terminal): unwind, so that the `finally`
    # blocks stop every httpd started.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: sys.exit(143))

    base = pathlib.Path(tempfile.mkdtemp(prefix="h2rs-bench-"))
    os.chmod(base, 0o755)
    doc = make_docroot(base)
    servers = {"mod_h2rs": Server(base, "ours", f"LoadModule http2_module {OURS}\nH2Direct on", doc)}
    if STOCK.exists():
        servers["stock"] = Server(base, "stock", f"LoadModule http2_module {STOCK}\nH2Direct on", doc)
    servers["HTTP/1.1"] = Server(base, "h1", "", doc)
    if args.container:
        # The same image with and without HTTP/2: the container runtime's own
        # cost (seccomp, cgroups) shows in both, so compare them to each other.
        servers["mod_h2rs (container)"] = ContainerServer(base, "container", doc, args.container)
        servers["HTTP/1.1 (container)"] = ContainerServer(base, "container-h1", doc, args.container, h2=False)
    if args.uptime:
        hosts = {k: s for k, s in servers.items() if not isinstance(s, ContainerServer)}
        try:
            start_pending(servers)
            lines = uptime(hosts, args.uptime)
        finally:
            for s in servers.values():
                s.stop()
        crashed = [k for k, s in hosts.items() if s.crashed()]
        if crashed:
            lines += ["", f"**Crash or panic in the error log of: {', '.join(crashed)}**"]
        write_report(lines, pathlib.Path(args.out), "bench-uptime.md")
        shutil.rmtree(base, ignore_errors=True)
        return
    results = {}  # workload -> server -> [round results]
    workloads = [w for w in WORKLOADS if not args.only or args.only in w[0]]
    # The TLS rows get servers of their own, started when they come: mod_ssl
    # and OpenSSL loaded in the cleartext rows' servers would change those
    # rows' figures (RSS above all). Host servers only: the container rows
    # compare the runtime's cost, which TLS does not change.
    tls_servers = {}
    with_idle = not args.only or "idle" in args.only
    tls = make_tls_cert(base) if with_idle or any(w[5] for w in workloads) else None
    if tls:
        for key, srv in servers.items():
            if not isinstance(srv, ContainerServer):
                tls_servers[key] = Server(base, f"{srv.dir.name}-tls", srv.module_line, doc, tls)
    try:
        start_pending(servers)
        for name, path, h2args, h1args, timeout, over_tls in workloads:
            if over_tls and not tls:
                print(f"{name}: skipped (no mod_ssl.so or openssl)", flush=True)
                continue
            if over_tls:
                start_pending(tls_servers)
            tested = tls_servers if over_tls else servers
            if args.quick:
                h2args = [a if a not in ("100000", "30000", "20000") else str(int(a) // 4) for a in h2args]
                h1args = [a if a not in ("100000", "30000", "20000") else str(int(a) // 4) for a in h1args]
            results[name] = {k: [] for k in tested}
            for rnd in range(rounds):
                for key, srv in tested.items():
                    h1 = key.startswith("HTTP/1.1")
                    scheme, port = ("https", srv.tls_port) if over_tls else ("http", srv.port)
                    url = f"{scheme}://127.0.0.1:{port}{path}"
                    r = measured_run(srv, (h1args if h1 else h2args) + [url], h1, timeout)
                    results[name][key].append(r)
                    print(f"{name:18} round {rnd + 1} {key:9} {r['rps']:9.0f} req/s  mean {r['mean_ms']:7.2f} ms  "
                          f"p99 {r['p99_ms']:7.2f} ms  CPU {r['cpu_us_per_req']:6.0f} us/req  "
                          f"client {r['client_cpu_us_per_req']:6.0f} us/req  "
                          f"peak RSS {r['peak_rss_mib']:6.1f} MiB  failed {r['failed']}", flush=True)
        if not args.only or "idle" in args.only:
            idle_runs = [(f"{args.idle} idle conns", servers, False)]
            if tls_servers:
                idle_runs.append((f"{args.idle} idle conns over TLS", tls_servers, True))
            for name, idle_servers, over_tls in idle_runs:
                start_pending(idle_servers)
                results[name] = {k: [] for k in idle_servers}
                for key, srv in idle_servers.items():
                    if isinstance(srv, ContainerServer):
                        continue  # the container rows compare throughput only
                    r = idle_workload(srv, args.idle, key.startswith("HTTP/1.1"), over_tls)
                    results[name][key].append(r)
                    print(f"{name:18} {key:9} {r['kib_per_idle_conn']:6.1f} KiB/conn, first {r['first_answered']}, "
                          f"second {r['second_answered']}", flush=True)
    finally:
        started = {**servers, **{f"{k} (TLS)": s for k, s in tls_servers.items() if s.pid is not None}}
        for s in started.values():
            s.stop()
        crashed = [k for k, s in started.items() if s.crashed()]
    report(results, servers, rounds, pathlib.Path(args.out), crashed)
    shutil.rmtree(base, ignore_errors=True)
    if crashed or no_result(results) or not (workloads or with_idle):
        sys.exit(1)


def uptime(servers, runs):
    """RSS of each server after back-to-back runs of 1 KiB `-c 100 -m 10`
    (HTTP/1.1: `-c 100`), interleaved across the servers: memory that
    grows with the requests served shows here, not in a single run.
    Returns the report's lines."""
    marks = sorted(m for m in {1, 2, 5, runs} | set(range(10, runs + 1, 10)) if m <= runs)
    rss = {k: {} for k in servers}
    rps = {k: [] for k in servers}
    for run in range(1, runs + 1):
        for key, srv in servers.items():
            h1 = key.startswith("HTTP/1.1")
            url = f"http://127.0.0.1:{srv.port}/1k.bin"
            r = h2load(srv, ["-n", "100000", "-c", "100", *([] if h1 else ["-m", "10"]), url], h1, 120)
            rps[key].append(r["rps"])
            if run in marks:
                time.sleep(0.5)  # let the last connections close
                rss[key][run] = srv.rss_kib() / 1024
                print(f"run {run:3d} {key:9} RSS {rss[key][run]:6.1f} MiB  {r['rps']:9.0f} req/s", flush=True)
    v = versions()
    lines = [f"# RSS with uptime ({datetime.datetime.now():%Y-%m-%d %H:%M})", "",
             f"Machine: {v['cpus']} CPUs, Linux {v['kernel']}; {v['httpd']}; {v['h2load']}; mod_h2rs {v['mod_h2rs']}.",
             f"One server each, {runs} back-to-back runs of 100,000 1 KiB requests (`-c 100 -m 10`, HTTP/1.1 "
             "`-c 100`), interleaved across the servers; RSS of all httpd processes after the run. "
             "`scripts/bench --uptime RUNS` writes this file.", "",
             "| server | " + " | ".join(f"after {m}" for m in marks) + " | median req/s |",
             "|---|" + "---:|" * (len(marks) + 1)]
    for key in servers:
        lines.append(f"| {key} | " + " | ".join(f"{rss[key].get(m, 0):.1f}" for m in marks)
                     + f" | {med(rps[key]):.0f} |")
    return lines


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else 0.0


def failed_cell(rs):
    """The failed requests of a row's rounds, and its rounds without a result."""
    failed = sum(r["failed"] for r in rs if r.get("failed") is not None)
    lost = sum(1 for r in rs if "failed" in r and r["failed"] is None)
    return f"{failed} ({lost} runs gave no result)" if lost else str(failed)


def no_result(results):
    """'workload: server' of every run that gave no result."""
    return sorted({f"{name}: {key}" for name, per in results.items() for key, rs in per.items()
                   for r in rs if "failed" in r and r["failed"] is None})


def report(results, servers, rounds, out, crashed):
    v = versions()
    date = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    lines = [f"# Benchmark ({date})", "",
             f"Machine: {v['cpus']} CPUs, Linux {v['kernel']}; {v['httpd']}; {v['h2load']}; mod_h2rs {v['mod_h2rs']}.",
             f"Event MPM, 2 children x 64 threads, access log on, loopback; {rounds} interleaved round(s), medians.",
             "TLS rows: mod_ssl, TLS 1.3 (h2load negotiates TLS_AES_128_GCM_SHA256), an ECDSA P-256 certificate; "
             "h2 by ALPN, HTTP/1.1 on a virtual host without h2.",
             "CGI rows: the server's CPU leaves out the scripts' own (mod_cgid's daemon reaps them "
             "without accounting).",
             ""]
    lines += ["| workload | server | req/s | mean ms | p99 ms | CPU µs/req | client CPU µs/req | peak RSS MiB | failed |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    ratios = ["", "| workload | mod_h2rs / stock (req/s) | mod_h2rs / HTTP/1.1 (req/s) | p99 mod_h2rs / stock "
              "| CPU per request mod_h2rs / HTTP/1.1 | client CPU per request h2 / h1 |",
              "|---|---:|---:|---:|---:|---:|"]
    chart = {}
    container_notes = []
    for name, per in results.items():
        if "idle" in name:
            continue
        for key, rs in per.items():
            lines.append(f"| {name} | {key} | {med([r['rps'] for r in rs]):.0f} | {med([r['mean_ms'] for r in rs]):.2f} | "
                         f"{med([r['p99_ms'] for r in rs]):.2f} | {med([r['cpu_us_per_req'] for r in rs]):.0f} | "
                         f"{med([r['client_cpu_us_per_req'] for r in rs]):.0f} | "
                         f"{med([r['peak_rss_mib'] for r in rs]):.1f} | "
                         f"{failed_cell(rs)} |")
        ours = per["mod_h2rs"]
        vs_stock = [o["rps"] / s["rps"] for o, s in zip(ours, per.get("stock", [])) if s["rps"]]
        vs_h1 = [o["rps"] / h["rps"] for o, h in zip(ours, per["HTTP/1.1"]) if h["rps"]]
        p99 = [o["p99_ms"] / s["p99_ms"] for o, s in zip(ours, per.get("stock", [])) if s["p99_ms"]]
        cpu = [o["cpu_us_per_req"] / h["cpu_us_per_req"] for o, h in zip(ours, per["HTTP/1.1"]) if h["cpu_us_per_req"]]
        client = [o["client_cpu_us_per_req"] / h["client_cpu_us_per_req"]
                  for o, h in zip(ours, per["HTTP/1.1"]) if h["client_cpu_us_per_req"]]
        ratios.append(f"| {name} | {med(vs_stock):.2f} | {med(vs_h1):.2f} | {med(p99):.2f} | {med(cpu):.2f} "
                      f"| {med(client):.2f} |")
        if "mod_h2rs (container)" in per:
            cont, cont_h1 = per["mod_h2rs (container)"], per["HTTP/1.1 (container)"]
            in_container = [c["rps"] / o["rps"] for c, o in zip(cont, ours) if o["rps"]]
            vs_h1_in = [c["rps"] / h["rps"] for c, h in zip(cont, cont_h1) if h["rps"]]
            container_notes.append(f"| {name} | {med(in_container):.2f} | {med(vs_h1_in):.2f} |")
        chart[name] = {k: med([r["rps"] for r in rs]) for k, rs in per.items()}
    idle = [(n, p) for n, p in results.items() if "idle" in n]
    if idle:
        lines += ["", "| idle workload | server | KiB per idle connection | answered first | answered again |",
                  "|---|---|---:|---:|---:|"]
        for name, per in idle:
            for key, rs in per.items():
                if not rs:
                    continue
                r = rs[0]
                lines.append(f"| {name} | {key} | {r['kib_per_idle_conn']:.1f} | {r['first_answered']} | "
                             f"{r['second_answered']} |")
    if crashed:
        lines += ["", f"**Crash or panic in the error log of: {', '.join(crashed)}**"]
    if no_result(results):
        lines += ["", "**Runs that gave no result (h2load timed out or printed no summary): "
                  f"{', '.join(no_result(results))}**"]
    if "stock" not in servers:
        lines += ["", f"**No stock module ({STOCK}): no comparison with it**"]
    if container_notes:
        ratios += ["", "| workload | mod_h2rs in a container / on the host (req/s) | mod_h2rs / HTTP/1.1, both in a container |",
                   "|---|---:|---:|", *container_notes]
    text = "\n".join(lines + ratios) + "\n"
    print("\n" + text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.md").write_text(text)
    (out / "bench.json").write_text(json.dumps({"date": date, "versions": v, "results": results}, indent=1))
    if not chart:
        return  # only the idle workload ran: nothing to chart
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        names = list(chart)
        keys = list(servers)
        # At most five workloads per row: the TLS rows go under the others.
        cols = min(5, len(names))
        rows = (len(names) + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.6 * rows), squeeze=False)
        axes = list(axes.flat)
        for ax in axes[len(names):]:
            ax.set_visible(False)
        colors = {"mod_h2rs": "#2a7ab0", "stock": "#c0504d", "HTTP/1.1": "#7f7f7f", "mod_h2rs (container)": "#5b9bd5",
                  "HTTP/1.1 (container)": "#bfbfbf"}
        for ax, name in zip(axes, names):
            vals = [chart[name].get(k, 0) for k in keys]
            ax.bar(range(len(keys)), vals, color=[colors.get(k, "#999") for k in keys])
            ax.set_xticks(range(len(keys)))
            ax.set_xticklabels(keys, rotation=30, fontsize=8)
            ax.set_title(name, fontsize=9)
            ax.set_ylabel("req/s", fontsize=8)
            ax.tick_params(axis="y", labelsize=7)
        fig.suptitle(f"mod_h2rs vs stock mod_http2 vs HTTP/1.1 — {date}, {v['cpus']} CPUs, {v['httpd']}", fontsize=9)
        fig.tight_layout()
        fig.savefig(out / "bench.png", dpi=110)
        print(f"wrote {out / 'bench.md'} and {out / 'bench.png'}")
    except ImportError:
        print("matplotlib missing: no chart")


if __name__ == "__main__":
    main()
