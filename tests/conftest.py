"""End-to-end test harness: a real httpd (the system's, found through apxs)
with a generated config in a temp dir, event MPM, free 127.0.0.1 ports, the
freshly built build/mod_h2rs.so. Servers are stopped by pid. Every test
fails if the error log shows a crash, an AH00052 or a panic.
"""
import collections
import contextlib
import hashlib
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import h2.settings
import pytest

from h2client import H2Client
from httpd_env import APXS, HTTPD, MODDIR, MODULE, ROOT, STOCK_MODULE, apxs, free_port  # noqa: F401

CRASH_RE = re.compile(
    r"AH00052|segmentation fault|exit signal (Seg|Abort|Bus)|panick|AH00051|AH00060|double free|h2rs-test: wrong thread",
    re.IGNORECASE,
)
# The lines of a panic the module caught: what `allow_panic` excuses (a
# crash of the process is never excused).
CAUGHT_PANIC_RE = re.compile(r"panicked at|recovered from a panic|h2rs: stream \d+ panicked")

# The stock module's status handler, for servers that fuzz or check memory.
H2STATUS_LOCATION = """
<Location /h2status>
  SetHandler http2-status
</Location>
"""

def threaded_mpm(name):
    """A small threaded MPM config: at most 2 children of 32 threads."""
    return f"""LoadModule mpm_{name}_module {{moddir}}/mod_mpm_{name}.so
ServerLimit 2
StartServers 1
ThreadLimit 64
ThreadsPerChild 32
MaxRequestWorkers 64
MinSpareThreads 16
MaxSpareThreads 64"""


EVENT_MPM = threaded_mpm("event")
WORKER_MPM = threaded_mpm("worker")

PREFORK_MPM = """LoadModule mpm_prefork_module {moddir}/mod_mpm_prefork.so
StartServers 2
MaxRequestWorkers 10"""


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Docroot:
    """Files every server of a test run serves, readable by www-data."""

    SIZES = {
        "empty.bin": 0,
        "1b.bin": 1,
        "1k.bin": 1024,
        "16k1.bin": 16 * 1024 + 1,
        "100k.bin": 100 * 1024,
        "1m.bin": 1 << 20,
        "20m.bin": 20 << 20,
        "100m.bin": 100 << 20,
    }

    def __init__(self, base):
        self.path = pathlib.Path(base) / "doc"
        self.path.mkdir(parents=True)
        for name, size in self.SIZES.items():
            with open(self.path / name, "wb") as f:
                left = size
                while left > 0:
                    n = min(left, 1 << 20)
                    f.write(os.urandom(n))
                    left -= n
        (self.path / "index.html").write_text("<html><body>mod_h2rs test</body></html>\n")
        (self.path / "dir").mkdir()
        (self.path / "dir" / "a.txt").write_text("a\n")
        (self.path / "dir" / "b.txt").write_text("b\n")
        (self.path / "denied").mkdir()
        (self.path / "denied" / "secret.txt").write_text("secret\n")
        cgi = self.path / "cgi"
        cgi.mkdir()
        scripts = {
            "env.cgi": r"""#!/bin/sh
printf 'Content-Type: text/plain\r\n\r\n'
echo "HTTP2=${HTTP2:-} SERVER_PROTOCOL=${SERVER_PROTOCOL:-} H2_STREAM_ID=${H2_STREAM_ID:-} H2_STREAM_TAG=${H2_STREAM_TAG:-}"
""",
            "sum.cgi": r"""#!/bin/sh
printf 'Content-Type: text/plain\r\n\r\n'
sha256sum | cut -d' ' -f1
""",
            "slow.cgi": r"""#!/bin/sh
sleep "${QUERY_STRING:-1}"
printf 'Content-Type: text/plain\r\n\r\nslow done\n'
""",
            "big.cgi": r"""#!/bin/sh
printf 'Content-Type: application/octet-stream\r\n\r\n'
head -c "${QUERY_STRING:-100000}" /dev/zero
""",
            "fail.cgi": "#!/bin/sh\nexit 1\n",
        }
        for name, text in scripts.items():
            p = cgi / name
            p.write_text(text)
            p.chmod(0o755)
        for dirpath, dirnames, filenames in os.walk(base):
            os.chmod(dirpath, 0o755)
            for f in filenames:
                p = os.path.join(dirpath, f)
                os.chmod(p, os.stat(p).st_mode | 0o444)

    def file(self, name):
        return self.path / name

    def sha(self, name):
        return file_sha256(self.path / name)


class Httpd:
    """One httpd instance with its own ServerRoot, logs and port."""

    def __init__(self, workdir, docroot, name="h2", module=MODULE, h2_conf="", extra="",
                 mpm=EVENT_MPM, protocols="h2c http/1.1", loglevel="warn", env=None, descriptors=None,
                 hosts=None):
        self.dir = pathlib.Path(workdir) / name
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o755)
        # Writable by the children's user (www-data): where they dump core.
        self.core_dir = self.dir / "cores"
        self.core_dir.mkdir(exist_ok=True)
        os.chmod(self.core_dir, 0o1777)
        self.docroot = docroot
        self.port = free_port()
        self.module = module
        self.h2_conf = h2_conf
        self.extra = extra
        self.mpm = mpm.format(moddir=MODDIR)
        self.protocols = protocols
        self.loglevel = loglevel
        self.env = env or {}
        # RLIMIT_NOFILE of the server (its soft limit), or the caller's.
        self.descriptors = descriptors
        # /etc/hosts as the server sees it (names with several addresses),
        # bind-mounted in a mount namespace of its own; the host's is untouched.
        self.hosts = hosts
        self.pid = None
        # new_log_lines()'s position, which tests move to look at what a
        # request logged, and the crash check's own, which they cannot.
        self.log_offset = 0
        self.checked_offset = 0
        self.allow_panic = False

    @property
    def conf(self):
        return self.dir / "httpd.conf"

    @property
    def error_log(self):
        return self.dir / "error.log"

    @property
    def access_log(self):
        return self.dir / "access.log"

    def url(self, path="/"):
        return f"http://127.0.0.1:{self.port}{path}"

    def tls_config(self, certs, tls_port, protocols="h2 http/1.1", extra=""):
        """Adds mod_ssl and a TLS virtual host on `tls_port`."""
        self.extra += "\n" + SSL_MODULES + f"\nSSLSessionCache shmcb:{self.dir}/ssl_scache(512000)\n"
        self.extra += tls_vhost(tls_port, certs.main, protocols=protocols, extra=extra)
        self.tls_port = tls_port
        return self

    def write_config(self):
        load = f"LoadModule http2_module {self.module}" if self.module else ""
        text = f"""ServerRoot "{self.dir}"
DefaultRuntimeDir "{self.dir}"
PidFile "{self.dir}/httpd.pid"
CoreDumpDirectory "{self.core_dir}"
ErrorLog "{self.error_log}"
LogLevel {self.loglevel}
ServerName 127.0.0.1
User www-data
Group www-data
{self.mpm}
LoadModule authz_core_module {MODDIR}/mod_authz_core.so
LoadModule authz_host_module {MODDIR}/mod_authz_host.so
LoadModule mime_module {MODDIR}/mod_mime.so
LoadModule dir_module {MODDIR}/mod_dir.so
LoadModule autoindex_module {MODDIR}/mod_autoindex.so
LoadModule alias_module {MODDIR}/mod_alias.so
LoadModule cgid_module {MODDIR}/mod_cgid.so
LoadModule rewrite_module {MODDIR}/mod_rewrite.so
LoadModule headers_module {MODDIR}/mod_headers.so
LoadModule status_module {MODDIR}/mod_status.so
{load}
TypesConfig /etc/mime.types
LogFormat "%h \\"%r\\" %>s %b %H %{{H2_STREAM_ID}}e" acc
CustomLog "{self.access_log}" acc
ScriptSock "{self.dir}/cgisock"
Timeout 30
KeepAlive On
KeepAliveTimeout 5
MaxKeepAliveRequests 0
EnableSendfile On
Listen 127.0.0.1:{self.port}
DocumentRoot "{self.docroot.path}"
DirectoryIndex index.html
<Directory />
  AllowOverride None
  Require all denied
</Directory>
<Directory "{self.docroot.path}">
  Options +ExecCGI +Indexes
  AddHandler cgi-script .cgi
  AllowOverride None
  Require all granted
</Directory>
<Directory "{self.docroot.path}/denied">
  Require all denied
</Directory>
RewriteEngine On
RewriteRule ^/old$ /index.html [R=301,L]
<Location /server-status>
  SetHandler server-status
</Location>
ExtendedStatus On
Protocols {self.protocols}
{self.h2_conf}
{self.extra}
"""
        self.conf.write_text(text)

    def configtest(self):
        self.write_config()
        return subprocess.run([HTTPD, "-t", "-f", str(self.conf)], capture_output=True, text=True)

    def start(self):
        r = self.configtest()
        assert r.returncode == 0, f"config test failed: {r.stderr}"
        env = dict(os.environ, **self.env)
        descriptors = self.descriptors

        def limits():
            allow_core_dumps()
            if descriptors:
                import resource
                resource.setrlimit(resource.RLIMIT_NOFILE,
                                   (descriptors, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

        cmd = [HTTPD, "-f", str(self.conf), "-k", "start"]
        if self.hosts is not None:
            if os.geteuid() != 0:
                pytest.skip("an /etc/hosts of its own needs a mount namespace: root")
            hosts = self.dir / "hosts"
            hosts.write_text(self.hosts)
            # util-linux's unshare makes the new namespace's mounts private:
            # the bind mount is seen by this httpd's processes only.
            cmd = ["unshare", "--mount", "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"', str(hosts), *cmd]
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, preexec_fn=limits)
        assert r.returncode == 0, f"httpd did not start: {r.stderr}"
        deadline = time.time() + 15
        while time.time() < deadline:
            if self._answers():
                self.pid = int((self.dir / "httpd.pid").read_text().strip())
                return self
            time.sleep(0.05)
        raise AssertionError("httpd did not answer:\n" + self.read_error_log()[-3000:])

    def _answers(self):
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"HEAD / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                return s.recv(16).startswith(b"HTTP/1.1")
        except OSError:
            return False

    def signal(self, how):
        r = subprocess.run([HTTPD, "-f", str(self.conf), "-k", how], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr

    def graceful(self):
        self.signal("graceful")

    def open_connections(self):
        """Server-side TCP connections on this server's ports (any state but
        LISTEN), from /proc/net/tcp{,6}."""
        ports = {p for p in (self.port, getattr(self, "tls_port", None)) if p}
        n = 0
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            try:
                lines = open(table).read().splitlines()[1:]
            except OSError:
                continue
            for line in lines:
                f = line.split()
                if len(f) > 3 and f[3] != "0A" and int(f[1].rsplit(":", 1)[1], 16) in ports:
                    n += 1
        return n

    def stop(self, timeout=20, settle=3.0):
        """SIGTERM (a hard stop), after up to `settle` seconds for the
        connections the tests closed to finish closing: the event MPM's hard
        stop races with workers finishing lingering closes
        (close_worker_sockets() may touch a socket whose pool is gone, a
        SIGSEGV in apr_os_sock_get, reproduced with the stock module too).
        Returns the seconds from the SIGTERM until httpd had exited (None if
        it was not running)."""
        if self.pid is None:
            return None
        deadline = time.time() + settle
        while time.time() < deadline and self.open_connections():
            time.sleep(0.05)
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            self.pid = None
            return None
        signalled = time.time()
        if not self.wait_exited(timeout):
            os.kill(self.pid, signal.SIGKILL)
            raise AssertionError("httpd did not stop in time")
        return time.time() - signalled

    def wait_exited(self, timeout):
        """Whether the httpd parent has exited within `timeout` seconds (its
        pid is then forgotten)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                self.pid = None
                return True
            time.sleep(0.05)
        return False

    def rss_kib(self):
        """VmRSS of the httpd parent and its children, KiB (from /proc)."""
        total = 0
        for pid in [self.pid] + self.children():
            try:
                with open(f"/proc/{pid}/status") as f:
                    for line in f:
                        if line.startswith("VmRSS:"):
                            total += int(line.split()[1])
            except OSError:
                pass
        return total

    def children(self):
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.pid)], capture_output=True, text=True).stdout
        return [int(x) for x in out.split()]

    def mpm_children(self):
        """The children that serve connections (threaded; not mod_cgid's
        single-threaded daemon)."""
        kids = []
        for pid in self.children():
            try:
                if len(os.listdir(f"/proc/{pid}/task")) > 1:
                    kids.append(pid)
            except OSError:
                pass
        return kids

    def thread_names(self, pid):
        """Names of the threads of a process."""
        names = []
        for t in pathlib.Path(f"/proc/{pid}/task").iterdir():
            try:
                names.append((t / "comm").read_text().strip())
            except OSError:
                continue
        return names

    def worker_threads(self, pid):
        """Names of the mod_h2rs worker threads of a child process."""
        return [name for name in self.thread_names(pid) if name.startswith("h2rs-worker")]

    def read_error_log(self):
        try:
            return self.error_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def read_access_log(self):
        try:
            return self.access_log.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []

    def wait_access_log(self, wanted, count=1, timeout=5):
        """The access log's lines that contain `wanted`, once there are at
        least `count` of them or `timeout` seconds have passed. httpd logs a
        request when its connection retires it, which may be just after the
        client has the whole answer, so a test that reads the log at once
        races with the server."""
        deadline = time.monotonic() + timeout
        while True:
            lines = [line for line in self.read_access_log() if wanted in line]
            if len(lines) >= count or time.monotonic() > deadline:
                return lines
            time.sleep(0.05)

    def new_log_lines(self):
        text = self.read_error_log()
        new = text[self.log_offset:]
        self.log_offset = len(text)
        return new

    def check_log(self):
        """Fails on a crash or panic logged since the last check, and on a
        core file: a caught panic passes where the test allows it."""
        text = self.read_error_log()
        new, self.checked_offset = text[self.checked_offset:], len(text)
        bad = [l for l in new.splitlines()
               if CRASH_RE.search(l) and not (self.allow_panic and CAUGHT_PANIC_RE.search(l))]
        cores = self.kept_cores()
        assert not bad and not cores, \
            "crash or panic in the error log:\n" + "\n".join(bad[:5]) + cores

    def kept_cores(self):
        """Moves the core files of crashed children out of the test's
        directory (which is removed) and says where they are, with each
        one's backtrace when gdb is installed."""
        cores = sorted(self.core_dir.glob("core*"))
        if not cores:
            return ""
        keep = pathlib.Path(tempfile.gettempdir()) / "h2rs-cores" / self.dir.name
        keep.mkdir(parents=True, exist_ok=True)
        report = [f"\ncore files kept in {keep} (httpd: {HTTPD}, module: {MODULE})"]
        for core in cores:
            kept = keep / core.name
            shutil.move(str(core), kept)
            if shutil.which("gdb"):
                bt = subprocess.run(["gdb", "-batch", "-ex", "bt 30", HTTPD, str(kept)],
                                    capture_output=True, text=True, timeout=120).stdout
                report.append(f"{kept}:\n" + "\n".join(l for l in bt.splitlines() if l.startswith("#")))
        return "\n".join(report)


def allow_core_dumps():
    """httpd (started with this as preexec_fn) may dump core: with
    CoreDumpDirectory set it makes its children dumpable again after they
    change user, and a crash then leaves a core to debug."""
    import resource
    resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))


# ---- fixtures -----------------------------------------------------------------

@pytest.fixture(scope="session")
def workdir():
    d = tempfile.mkdtemp(prefix="h2rs-test-")
    os.chmod(d, 0o755)
    yield pathlib.Path(d)
    if not os.environ.get("H2RS_KEEP"):
        shutil.rmtree(d, ignore_errors=True)


class Certs:
    """Self-signed certificates the TLS tests use (made with openssl)."""

    def __init__(self, base):
        self.dir = pathlib.Path(base) / "certs"
        self.dir.mkdir()
        self.main = self._make("main", "127.0.0.1", ["IP:127.0.0.1", "DNS:a.test", "DNS:b.test", "DNS:localhost"])
        self.other = self._make("other", "c.test", ["DNS:c.test"])

    def _make(self, name, cn, sans):
        key, crt = self.dir / f"{name}.key", self.dir / f"{name}.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                        "-subj", f"/CN={cn}", "-addext", "subjectAltName=" + ",".join(sans),
                        "-keyout", str(key), "-out", str(crt)], check=True, capture_output=True)
        os.chmod(key, 0o644)
        os.chmod(crt, 0o644)
        return crt, key


SSL_MODULES = f"""LoadModule ssl_module {MODDIR}/mod_ssl.so
LoadModule socache_shmcb_module {MODDIR}/mod_socache_shmcb.so"""


def tls_vhost(port, cert, server_name=None, protocols="h2 http/1.1", extra="", listen=True):
    """A TLS virtual host (name-based when server_name is given)."""
    crt, key = cert
    name = f"ServerName {server_name}" if server_name else ""
    lines = [f"Listen 127.0.0.1:{port}"] if listen else []
    lines.append(f"""<VirtualHost 127.0.0.1:{port}>
  {name}
  SSLEngine on
  SSLCertificateFile {crt}
  SSLCertificateKeyFile {key}
  Protocols {protocols}
  {extra}
</VirtualHost>""")
    return "\n".join(lines)


@pytest.fixture(scope="session")
def certs(workdir):
    return Certs(workdir)


@pytest.fixture(scope="session")
def test_module(workdir):
    """tests/modules/mod_h2rs_test.c built with apxs (handlers h2rs-echo,
    h2rs-drip): returns the LoadModule line."""
    d = pathlib.Path(workdir) / "testmod"
    d.mkdir()
    shutil.copy(ROOT / "tests" / "modules" / "mod_h2rs_test.c", d)
    r = subprocess.run([APXS, "-c", "mod_h2rs_test.c"], cwd=d, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    return f"LoadModule h2rs_test_module {d / '.libs' / 'mod_h2rs_test.so'}"


@contextlib.contextmanager
def tcp_server(serve):
    """A TCP server on 127.0.0.1 that runs `serve(conn)` in a thread per
    connection (closed after it): yields its port."""
    import threading
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)

    def run(conn):
        with conn:
            serve(conn)

    def accept():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=run, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield srv.getsockname()[1]
    finally:
        srv.close()


def wait_listening(port, timeout=10):
    """Whether something accepts connections on 127.0.0.1:port in time."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def spawn_backend(script, *args, timeout=15, env=None):
    """Starts tests/SCRIPT PORT ARGS... as a process on a free port (with
    `env` added to its environment) and waits until it listens: returns
    (port, process)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / script), str(port), *map(str, args)],
                            env=dict(os.environ, **(env or {})))
    if not wait_listening(port, timeout=timeout):
        proc.kill()
        pytest.fail(f"{script} did not start")
    return port, proc


@pytest.fixture(scope="session")
def backend():
    """The HTTP/1.1 backend of tests/backend.py: returns its port."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "backend.py"), str(port)])
    wait_listening(port)
    yield port
    proc.kill()
    proc.wait()


@pytest.fixture(scope="session")
def docroot(workdir):
    assert MODULE.exists(), "build the module first (make)"
    return Docroot(workdir)


_servers = []


@contextlib.contextmanager
def registered(h):
    """Starts `h` as a test module's server: its error log is checked after
    every test, and when it stops."""
    h.start()
    _servers.append(h)
    try:
        yield h
    finally:
        _servers.remove(h)
        h.stop()
        h.check_log()


@pytest.fixture(scope="module")
def server(workdir, docroot, request):
    """The default server of a test module: event MPM, h2c + http/1.1."""
    name = "srv-" + request.module.__name__.split(".")[-1]
    h = Httpd(workdir, docroot, name=name)
    h.start()
    _servers.append(h)
    yield h
    h.stop()
    _servers.remove(h)
    h.check_log()


@pytest.fixture
def make_server(workdir, docroot, request):
    """Starts extra servers for one test; stops them and checks their logs."""
    made = []
    counter = [0]

    def make(**kw):
        counter[0] += 1
        kw.setdefault("name", f"{request.node.name[:40]}-{counter[0]}")
        h = Httpd(workdir, docroot, **kw)
        made.append(h)
        return h

    yield make
    for h in made:
        h.stop()
        h.check_log()


@pytest.fixture(autouse=True)
def _check_logs_after_each_test():
    yield
    for h in list(_servers):
        if h.pid is not None:
            h.check_log()


# ---- clients ------------------------------------------------------------------

def cpu_seconds(pids):
    """User and system CPU time the processes have used so far."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def wait_for(pred, timeout=10):
    """Whether `pred()` becomes true within `timeout` seconds (polled): for
    what the server does after the client has its answer, such as the
    access log line, written once the response went out."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


def run(cmd, timeout=120, **kw):
    return subprocess.run(cmd, capture_output=True, timeout=timeout, **kw)


def curl(*args, timeout=120):
    return run(["curl", "-s", "-S", *args], timeout=timeout)


H1Response = collections.namedtuple("H1Response", "status body headers")


def h1_request(srv, path, method="GET", headers=(), body=None):
    """One request over HTTP/1.1 (curl), with a Content-Length unless a
    header says chunked: its final status, body and header fields (names in
    lower case)."""
    args = ["curl", "-sS", "--http1.1", "-X", method, "-D", "-", "-o", "-"]
    for n, v in headers:
        args += ["-H", f"{n}: {v}"]
    if body is not None:
        args += ["--data-binary", "@-"]
    out = run([*args, srv.url(path)], input=body).stdout
    # With -D - and -o - the heads come first (interim ones before the
    # final one), then the body.
    while True:
        head, _, out = out.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        if not 100 <= status < 200:
            break
    fields = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    return H1Response(status, out, fields)


def h2c(srv, **kw):
    """A frame-level client on a new connection to `srv`, with stream
    windows of 16 MiB (large responses need no WINDOW_UPDATE)."""
    return H2Client(srv.port, settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 24}, **kw)


def h2_request(srv, path, method="GET", headers=(), body=None, length=True):
    """The stream of one request on a new connection; a body goes with a
    content-length (as curl sends over HTTP/1.1) unless `length` is false."""
    if body is not None and length:
        headers = list(headers) + [("content-length", str(len(body)))]
    c = h2c(srv)
    st = c.wait_stream(c.request(path, method=method, headers=headers, body=body))
    c.close()
    return st


def h2load(*args, timeout=180):
    r = run(["h2load", *args], timeout=timeout, text=True)
    out = r.stdout
    res = {"output": out}
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
    if m:
        res.update(total=int(m[1]), started=int(m[2]), done=int(m[3]), succeeded=int(m[4]),
                   failed=int(m[5]), errored=int(m[6]))
    m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if m:
        res.update(s2xx=int(m[1]), s3xx=int(m[2]), s4xx=int(m[3]), s5xx=int(m[4]))
    m = re.search(r"finished in [0-9.]+\w+, ([0-9.]+) req/s", out)
    if m:
        res["rps"] = float(m[1])
    return res


# ---- target -------------------------------------------------------------------
# H2RS_TARGET=local (default): the system's httpd with build/mod_h2rs.so.
# H2RS_TARGET=container: the same tests against httpd in a container of the
# image H2RS_IMAGE (default mod_h2rs:latest, made by `make docker-image`),
# through tests/container.py's ContainerHttpd (same interface as Httpd).
TARGET = os.environ.get("H2RS_TARGET", "local")
if TARGET == "container":
    import container  # noqa: E402  (it imports this module back; all of it is defined by now)

    if not container.engine_available():
        raise pytest.UsageError("H2RS_TARGET=container: no Docker engine answers (docker info)")
    if not container.image_exists(container.DEFAULT_IMAGE):
        raise pytest.UsageError(f"H2RS_TARGET=container: no image {container.DEFAULT_IMAGE} (make docker-image)")
    Httpd = container.ContainerHttpd  # noqa: F811
elif TARGET != "local":
    raise pytest.UsageError(f"H2RS_TARGET={TARGET}: use local or container")
