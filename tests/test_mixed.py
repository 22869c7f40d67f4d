"""Everything at once: one httpd with the usual modules (SSI, deflate, the
disk cache, CGI, mod_proxy_http and our h2c proxy, TLS) under mixed traffic
from several kinds of client at the same time, with graceful restarts in
between. Each feature has its own tests elsewhere; this one looks for what
only their interplay shows: a crash, a stuck worker or child, an upload that
arrives changed, a request lost to a restart, a server that no longer serves
right afterwards.

H2RS_MIXED_SECONDS (default 25) and H2RS_MIXED_SEED (default 20261203) set up
longer runs."""
import hashlib
import os
import random
import threading
import time

import pytest

import rawh2
from conftest import MODDIR, MODULE, Docroot, Httpd, curl, free_port, h2load, registered, spawn_backend

SECONDS = float(os.environ.get("H2RS_MIXED_SECONDS", "25"))
SEED = int(os.environ.get("H2RS_MIXED_SEED", "20261203"))

# What h2load asks for, and the status each must get (the backend's reset of
# /h2/reset is the proxy's 502); none of them breaks its stream.
H2LOAD_URIS = {
    "/index.html": 200, "/1k.bin": 200, "/16k1.bin": 200, "/100k.bin": 200, "/1m.bin": 200,
    "/ssi.shtml": 200, "/big.txt": 200, "/cache/c.txt": 200, "/cgi/env.cgi": 200,
    "/cgi/big.cgi?300000": 200, "/nope": 404, "/dir/": 200, "/denied/secret.txt": 403, "/old": 301,
    "/h1/big?n=50000": 200, "/h1/sse?n=2": 200, "/h1/early": 200, "/h1/trailers": 200,
    "/h2/big?n=70000": 200, "/h2/delay?s=0.2": 200, "/h2/stream?n=2": 200, "/h2/trailers": 200,
    "/h2/early": 200, "/h2/reset": 502,
}
# What the aborting clients ask for: long responses they give up on.
LONG_URIS = ["/20m.bin", "/100m.bin", "/cgi/big.cgi?5000000", "/h2/big?n=5000000", "/h1/big?n=5000000",
             "/h2/stream?n=4", "/cgi/slow.cgi?2", "/h2/reset-mid"]


@pytest.fixture(scope="module")
def mixed(workdir, certs):
    d = workdir / "mixed"
    docroot = Docroot(d)
    (d / "cache").mkdir()
    os.chmod(d / "cache", 0o777)
    doc = docroot.path
    extra_files = {
        "ssi.shtml": '<p><!--#echo var="SERVER_PROTOCOL" --> <!--#include virtual="/dir/a.txt" -->'
                     ' <!--#include virtual="/cgi/env.cgi" --></p>\n',
        "big.txt": "compressible line of text\n" * 20000,
        "cache/c.txt": "cached body\n" * 100,
    }
    (doc / "cache").mkdir()
    os.chmod(doc / "cache", 0o755)
    for name, text in extra_files.items():
        (doc / name).write_text(text)
        os.chmod(doc / name, 0o644)
    h1port, h1proc = spawn_backend("backend.py")
    h2port, h2proc = spawn_backend("h2backend.py")
    tls_port = free_port()
    h = Httpd(workdir, docroot, name="srv-mixed", loglevel=os.environ.get("H2RS_MIXED_LOGLEVEL", "warn"), extra=f"""
LoadModule include_module {MODDIR}/mod_include.so
LoadModule filter_module {MODDIR}/mod_filter.so
LoadModule deflate_module {MODDIR}/mod_deflate.so
LoadModule cache_module {MODDIR}/mod_cache.so
LoadModule cache_disk_module {MODDIR}/mod_cache_disk.so
LoadModule proxy_module {MODDIR}/mod_proxy.so
LoadModule proxy_http_module {MODDIR}/mod_proxy_http.so
LoadModule proxy_http2_module {MODULE}
AddType text/html .shtml
AddOutputFilter INCLUDES .shtml
<Directory "{doc}">
  Options +Includes
</Directory>
<Location /big.txt>
  SetOutputFilter DEFLATE
</Location>
CacheRoot {d / "cache"}
CacheEnable disk /cache/
ProxyPass /h1/ http://127.0.0.1:{h1port}/
ProxyPass /h2/ h2c://127.0.0.1:{h2port}/
ProxyTimeout 10
LogFormat "%{{User-Agent}}i \\"%r\\" %>s %X" agent
CustomLog "{d / "agent.log"}" agent
""")
    h.tls_config(certs, tls_port)
    h.mixed_docroot = docroot
    h.agent_log = d / "agent.log"
    with registered(h):
        yield h
    h1proc.kill()
    h2proc.kill()
    h1proc.wait()
    h2proc.wait()


class Traffic:
    """The clients of one run, each a thread looping until `deadline`."""

    def __init__(self, h, workdir, seed):
        self.h = h
        self.dir = workdir
        self.deadline = time.time() + SECONDS
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.h2load_runs = []
        self.uploads = []
        self.raw_rounds = 0
        self.restarts = []
        uris = self.dir / "mixed-uris.txt"
        uris.write_text("".join(h.url(u) + "\n" for u in H2LOAD_URIS))
        self.uri_file = uris

    def running(self):
        return time.time() < self.deadline

    def choice(self, seq):
        with self.lock:
            return self.rng.choice(seq)

    def h2load(self):
        while self.running():
            r = h2load("-c", "8", "-m", "8", "-D", "4", "-i", str(self.uri_file), timeout=60)
            self.h2load_runs.append(r)

    def aborts(self):
        """Long downloads given up after a moment, over h2c, HTTP/1.1 and TLS."""
        while self.running():
            u = self.choice(LONG_URIS)
            where = self.choice(["h2c", "h1", "tls"])
            limit = str(self.choice([0.05, 0.2, 0.5, 1]))
            if where == "tls":
                curl("--http2", "-k", "-o", "/dev/null", "--max-time", limit,
                     f"https://127.0.0.1:{self.h.tls_port}{u}", timeout=30)
            else:
                proto = "--http2-prior-knowledge" if where == "h2c" else "--http1.1"
                curl(proto, "-o", "/dev/null", "--max-time", limit, self.h.url(u), timeout=30)

    def upload(self):
        """Bodies of every size to a CGI and through both proxies: each
        digest the handler saw must be the one sent."""
        n = 0
        while self.running():
            size = self.choice([0, 1, 16384, 100000, 1 << 20])
            data = os.urandom(size)
            f = self.dir / f"mixed-upload-{n % 4}"
            n += 1
            f.write_bytes(data)
            u = self.choice(["/cgi/sum.cgi", "/h1/echo", "/h2/echo"])
            via = self.choice(["h2c", "tls"])
            url = f"https://127.0.0.1:{self.h.tls_port}{u}" if via == "tls" else self.h.url(u)
            r = curl("--http2-prior-knowledge" if via == "h2c" else "--http2", "-k", "--data-binary", f"@{f}",
                     "-H", "content-type: application/octet-stream", "-w", "\n%{http_code}", url, timeout=60)
            out = r.stdout.decode(errors="replace")
            self.uploads.append((u, via, size, r.returncode, out.rsplit("\n", 1)[-1],
                                 hashlib.sha256(data).hexdigest() in out, r.stderr[-200:]))

    def raw(self):
        """Raw connections that open up to 30 streams and then reset some or
        all, send GOAWAY, read a little, or just close the socket."""
        uris = list(H2LOAD_URIS) + LONG_URIS
        while self.running():
            try:
                c = rawh2.Conn(self.h.port, timeout=3)
            except Exception:
                # A graceful restart can leave a connection in the listen
                # backlog for a while (the MPM's ServerLimit 2 is full with
                # the generation that is stopping): the next round retries.
                time.sleep(0.2)
                continue
            try:
                sids = [c.request(self.choice(uris)) for _ in range(self.choice(range(1, 31)))]
                time.sleep(self.choice([0, 0.01, 0.1]))
                act = self.choice(["reset one", "reset all", "goaway", "read", "close"])
                if act == "reset one":
                    c.send(rawh2.rst_stream(self.choice(sids), 8))
                elif act == "reset all":
                    c.send(*[rawh2.rst_stream(s, 8) for s in sids])
                elif act == "goaway":
                    c.send(rawh2.goaway(0, 0))
                if act != "close":
                    c.drain(0.3)
                self.raw_rounds += 1
            except (OSError, rawh2.ProtocolFailure):
                pass
            finally:
                c.close()

    def restart(self):
        while True:
            time.sleep(self.rng.uniform(5, 9))
            if not self.running():
                return
            before = set(self.h.mpm_children())
            self.h.graceful()
            self.restarts.append((time.time(), before))

    def run(self):
        """Runs every kind of traffic at once; returns the exceptions that
        ended a thread early (a hung curl's TimeoutExpired, say), which a
        thread would otherwise only report as a warning."""
        errors = []

        def recording(f):
            def run():
                try:
                    f()
                except Exception as e:  # noqa: BLE001 - the test reports it
                    errors.append(f"{f.__name__}: {e!r}")
            return run

        threads = [threading.Thread(target=recording(f)) for f in
                   (self.h2load, self.aborts, self.aborts, self.upload, self.raw, self.raw, self.restart)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return errors


def test_mixed_traffic_with_aborts_and_graceful_restarts(mixed, workdir):
    docroot = mixed.mixed_docroot
    traffic = Traffic(mixed, workdir, SEED)
    assert traffic.run() == []

    assert traffic.restarts, "no graceful restart happened"
    assert traffic.raw_rounds > 20

    # h2load. After a restart's shutdown notice (GOAWAY 2^31-1 + PING)
    # nghttp2 refuses, on the client's side, every request h2load submits
    # until the connection ends, and h2load counts those as errored: at most
    # the 8 x 8 stream slots per restart. A server that reset its streams at
    # a restart would have them resubmitted and refused on top of that.
    done = sum(r.get("done", 0) for r in traffic.h2load_runs)
    errored = sum(r.get("errored", 0) for r in traffic.h2load_runs)
    assert done > 1000, [r["output"][-600:] for r in traffic.h2load_runs]
    assert errored <= 64 * len(traffic.restarts), [r["output"][-1500:] for r in traffic.h2load_runs]

    # Every request h2load sent got its expected status, with two exceptions
    # that are httpd's own: a request h2load gave up on, in flight on a
    # connection it closed at the end of a run, is logged as aborted (X)
    # with whatever status its handler then had (500 where mod_cache's quick
    # handler saw its write fail); and a CGI can get mod_cgid's 503 while the
    # restart replaces its daemon (AH10246 "failed reading PID from cgi
    # daemon").
    lines = [line for line in mixed.agent_log.read_text().splitlines() if line.startswith("h2load")]
    assert len(lines) >= done
    for line in lines:
        path = line.split('"')[1].split()[1]
        status, connection = line.split('"')[2].split()
        assert (int(status) == H2LOAD_URIS[path] or connection == "X"
                or (path.startswith("/cgi/") and status == "503")), line

    # Uploads: whatever was answered 200 carried the digest of what was sent,
    # and restarts cost at most a few.
    assert len(traffic.uploads) >= 20
    answered = [u for u in traffic.uploads if u[3] == 0 and u[4] == "200"]
    assert [u for u in answered if not u[5]] == []
    assert len(answered) >= 0.9 * len(traffic.uploads), [u for u in traffic.uploads if u not in answered][:5]

    # Every generation a restart replaced exits: no child stays stuck on a
    # stream, a parked session or a proxied request.
    deadline = time.time() + 20
    old = set().union(*(before for _, before in traffic.restarts))
    while set(mixed.mpm_children()) & old and time.time() < deadline:
        time.sleep(0.1)
    assert not set(mixed.mpm_children()) & old, "an old generation's child did not exit"

    # And the server still serves right, on every path.
    r = curl("--http2-prior-knowledge", mixed.url("/100m.bin"), timeout=60)
    assert hashlib.sha256(r.stdout).hexdigest() == docroot.sha("100m.bin")
    r = curl("--http2", "-k", f"https://127.0.0.1:{mixed.tls_port}/1m.bin", timeout=60)
    assert hashlib.sha256(r.stdout).hexdigest() == docroot.sha("1m.bin")
    r = curl("--http2-prior-knowledge", mixed.url("/h2/big?n=1000"), timeout=20)
    assert r.stdout == (bytes(range(256)) * 4)[:1000]
    r = curl("--http2-prior-knowledge", mixed.url("/h1/big?n=1000"), timeout=20)
    assert r.stdout == bytes(i % 251 for i in range(1000))
    r = curl("--http2-prior-knowledge", "-H", "accept-encoding: gzip", "--compressed", mixed.url("/big.txt"))
    assert r.stdout == (docroot.path / "big.txt").read_bytes()
