"""The end-to-end harness's httpd, run in a container.

`ContainerHttpd` is `conftest.Httpd` with httpd running in a container made from
a mod_h2rs image (`make docker-image` builds `mod_h2rs:latest`, the official
httpd layout; `make docker-image-debian` builds `mod_h2rs:debian`, Debian's
apache2). Same constructor, same methods, same generated config, with what
differs between the host and the image rewritten:

- the workdir (generated config, logs, certificates) is mounted read-write and
  the document root read-only, each at its host path, so every path in the
  config means the same file on both sides; the error and access logs are read
  on the host as with a local httpd;
- module paths: the host's modules dir becomes the image's (`org.h2rs.moddir`
  label), the freshly built `build/mod_h2rs.so` becomes the image's own module
  (built against the image's httpd: never a host-built .so);
- `TypesConfig` points at the image's mime.types, `ScriptSock` at a path inside
  the container;
- `Listen 127.0.0.1:N` becomes `Listen N` inside the container and N is
  published on 127.0.0.1 only (same number outside); `<VirtualHost
  127.0.0.1:N>` becomes `<VirtualHost *:N>`.

The image's `User www-data` exists in both layouts. `pid` is the host's pid of
the container's httpd parent (PID 1 inside), so `children()`,
`worker_threads()` and signals sent with os.kill work as with a local httpd.
`graceful()`/`signal()` run `httpd -k ...` in the container (`docker exec`).
`stop()` sends SIGTERM, waits, keeps the container's own output in
`<dir>/container.log` and removes the container by id. Every container and
network made here is removed by id at the latest when the Python process exits.

Differences a test may see: over the default bridge network, connections reach
httpd through Docker's port publishing, so httpd sees the bridge's gateway as
the client address (`%h`, `Require local`), not 127.0.0.1; pass
`network="host"` to run in the host's network instead (nothing published, the
config unchanged). A config that points at a URL on the host's loopback
(`ProxyPass /x http://127.0.0.1:N/`, a test backend) gets the host's network
automatically: from a bridge network 127.0.0.1 is the container itself. A
`Listen` added after `start()` is not published until the next `start()`.

C modules the tests build with the host's apxs are built for the host's httpd;
`apxs_compile()` builds one for the image's httpd instead (in the image's
build stage, `h2rs-local/mod_h2rs-build:<tag>`, made by `make docker-image`).

Self-test: `python3 -m pytest tests/container.py` (or `python3 tests/container.py`);
it skips when no Docker engine answers or the image is missing. Images:
H2RS_IMAGE (default mod_h2rs:latest); the self-test also runs on
mod_h2rs:debian when that image exists.
"""
import atexit
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time
import uuid

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import conftest  # noqa: E402  (tests/conftest.py: Httpd, Docroot, MODULE, MODDIR)

DEFAULT_IMAGE = os.environ.get("H2RS_IMAGE", "mod_h2rs:latest")
CONTAINER_SCRIPTSOCK = "/tmp/h2rs-cgisock"
LABEL = "org.h2rs.test"

_containers = set()   # ids of the containers made here and not removed yet
_networks = set()     # ids of the networks made here and not removed yet
_layouts = {}


def docker(*args, check=True, timeout=120, **kw):
    r = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args[:3])}... failed ({r.returncode}): {r.stderr.strip()}")
    return r


def engine_available():
    try:
        return docker("info", "--format", "{{.ServerVersion}}", check=False, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def image_exists(image):
    return docker("image", "inspect", image, check=False).returncode == 0


def image_layout(image):
    """Where httpd, its modules and mime.types are in `image` (its org.h2rs.* labels)."""
    if image not in _layouts:
        r = docker("image", "inspect", "-f", "{{json .Config.Labels}}", image, check=False)
        if r.returncode != 0:
            raise RuntimeError(f"no image {image}: build it first (make docker-image, or make docker-image-debian)")
        labels = json.loads(r.stdout) or {}
        layout = {k[len("org.h2rs."):]: v for k, v in labels.items() if k.startswith("org.h2rs.")}
        missing = {"httpd", "moddir", "module", "mime-types"} - layout.keys()
        if missing:
            raise RuntimeError(f"{image} has no org.h2rs.{'/'.join(sorted(missing))} label: not built by docker/Dockerfile*")
        # Modules the host's httpd has compiled in (Debian: unixd, log_config,
        # logio, version, watchdog) that the image's has as DSOs (the official
        # layout builds every module shared): the generated config relies on them.
        r = docker("run", "--rm", "--network", "none", image, "sh", "-c",
                   f'{layout["httpd"]} -l; echo --; ls {layout["moddir"]}')
        static, _, dsos = r.stdout.partition("--")
        image_static = set(re.findall(r"^\s*(\S+)\.c$", static, re.M))
        dsos = set(dsos.split())
        layout["preload"] = [
            (m[len("mod_"):] + "_module", f'{layout["moddir"]}/{m}.so')
            for m in sorted(_host_static_modules() - image_static) if f"{m}.so" in dsos]
        _layouts[image] = layout
    return _layouts[image]


def _host_static_modules():
    try:
        out = subprocess.run([conftest.HTTPD, "-l"], capture_output=True, text=True, timeout=30).stdout
    except OSError:
        return set()
    return set(re.findall(r"^\s*(mod_\S+)\.c$", out, re.M))


def apxs_compile(source, image=None):
    """Compiles the C module `source` (a host path) with `apxs -c` against the
    httpd of `image`, in that image's build stage; returns the host path of the
    .so (in `.libs/` beside the source, like the host's apxs)."""
    image = image or DEFAULT_IMAGE
    layout = image_layout(image)
    name, _, tag = image.partition(":")
    build = f"h2rs-local/{name.split('/')[-1]}-build:{tag or 'latest'}"
    apxs = "/usr/bin/apxs" if layout.get("layout") == "debian" else "/usr/local/apache2/bin/apxs"
    src = pathlib.Path(source).resolve()
    r = docker("run", "--rm", "--network", "none", "--label", f"{LABEL}=1", "-v", f"{src.parent}:{src.parent}",
               "-w", str(src.parent), build, apxs, "-c", src.name, check=False, timeout=300)
    if r.returncode != 0:
        raise RuntimeError(f"apxs -c {src.name} in {build} failed: {r.stdout}{r.stderr}")
    return src.parent / ".libs" / (src.stem + ".so")


def cleanup():
    """Removes every container and network made here, by id."""
    for cid in list(_containers):
        docker("rm", "-f", "-v", cid, check=False, timeout=60)
        _containers.discard(cid)
    for nid in list(_networks):
        docker("network", "rm", nid, check=False, timeout=60)
        _networks.discard(nid)


atexit.register(cleanup)

_LISTEN = re.compile(r"^(\s*Listen\s+)(?:(?:127\.0\.0\.1|localhost|0\.0\.0\.0|\*):)?(\d+)(\b.*)$", re.M | re.I)
_VHOST = re.compile(r"^(\s*<VirtualHost\s+)([^>]*)>", re.M | re.I)
_TYPES = re.compile(r"^(\s*TypesConfig\s+)(\"[^\"]*\"|\S+)", re.M | re.I)
_LOOPBACK_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://(?:127\.\d+\.\d+\.\d+|localhost|\[::1\])\b", re.I)
_SOCK = re.compile(r"^(\s*ScriptSock\s+)(\"[^\"]*\"|\S+)", re.M | re.I)


def container_config(text, layout, host_network):
    """A config written for the host's httpd, as httpd in a container of
    `layout` (image_layout) must read it: the image's module paths and
    mime.types, modules the host has compiled in loaded, the CGI socket
    inside the container; on a bridge network, Listen and VirtualHost on
    every address of the container (ports are published on 127.0.0.1)."""
    host_moddir = conftest.MODDIR.rstrip("/") + "/"
    if layout["preload"]:
        text = "".join(f"LoadModule {name} {path}\n" for name, path in layout["preload"]
                       if not re.search(rf"^\s*LoadModule\s+{name}\s", text, re.M)) + text
    text = text.replace(host_moddir, layout["moddir"].rstrip("/") + "/")
    text = _TYPES.sub(lambda m: m[1] + f'"{layout["mime-types"]}"', text)
    if _SOCK.search(text):
        text = _SOCK.sub(lambda m: m[1] + CONTAINER_SCRIPTSOCK, text)
    else:
        text += f"\n<IfModule cgid_module>\n  ScriptSock {CONTAINER_SCRIPTSOCK}\n</IfModule>\n"
    if not host_network:
        text = _LISTEN.sub(lambda m: f"{m[1]}{m[2]}{m[3]}", text)
        text = _VHOST.sub(lambda m: m[1] + re.sub(r"\b127\.0\.0\.1:", "*:", m[2]) + ">", text)
    return text


class ContainerHttpd(conftest.Httpd):
    """`conftest.Httpd` with httpd in a container of `image` (see the module doc).

    Extra keyword arguments: image (default H2RS_IMAGE or mod_h2rs:latest);
    network: None (the default bridge, ports published on 127.0.0.1; the host's
    network when the config has a URL on the host's loopback), "host" (the
    host's network), or "new" (a network of its own, removed with it);
    mounts: more host paths to mount at the same path (read-write).
    """

    def __init__(self, workdir, docroot, *args, image=None, network=None, mounts=(), **kw):
        super().__init__(workdir, docroot, *args, **kw)
        self.image = image or DEFAULT_IMAGE
        self.layout = image_layout(self.image)
        self.workdir = pathlib.Path(workdir).resolve()
        self.network = network
        self.net = network          # in effect for the next start (see containerize)
        self.mounts = [pathlib.Path(m).resolve() for m in mounts]
        self.container = None
        self.network_id = None
        self.ports = [self.port]

    # ---- the config ---------------------------------------------------------------

    def _image_module(self, module):
        if not module:
            return module
        m = str(module)
        if m == str(conftest.MODULE) or os.path.basename(m) == "mod_h2rs.so":
            return self.layout["module"]
        if m.startswith(conftest.MODDIR.rstrip("/") + "/"):
            return self.layout["moddir"] + m[len(conftest.MODDIR.rstrip("/")):]
        return m

    def containerize(self, text):
        """The host config `text` as the container must read it; sets self.ports."""
        ports = [int(m[2]) for m in _LISTEN.finditer(text)]
        self.ports = list(dict.fromkeys(ports)) or [self.port]
        # A config that reaches a server on the host's loopback (ProxyPass
        # http://127.0.0.1:N/ to a test backend) needs the host's network: from
        # a bridge network, 127.0.0.1 is the container itself.
        self.net = self.network
        if self.network is None and _LOOPBACK_URL.search(text):
            self.net = "host"
        return container_config(text, self.layout, host_network=self.net == "host")

    def write_config(self):
        module = self.module
        self.module = self._image_module(module)
        try:
            super().write_config()
        finally:
            self.module = module
        self.conf.write_text(self.containerize(self.conf.read_text()))

    # ---- the container ------------------------------------------------------------

    def _mounts(self):
        paths = [self.workdir]
        for p in [self.dir.resolve(), pathlib.Path(self.docroot.path).resolve(), *self.mounts]:
            if not any(p == q or q in p.parents for q in paths):
                paths.append(p)
        args = []
        for p in paths:
            ro = ":ro" if p == pathlib.Path(self.docroot.path).resolve() and p != self.workdir else ""
            args += ["-v", f"{p}:{p}{ro}"]
        return args

    def _network_args(self):
        if self.net == "host":
            return ["--network", "host"]
        args = []
        if self.network == "new":
            if self.network_id is None:
                name = f"h2rs-test-{uuid.uuid4().hex[:10]}"
                self.network_id = docker("network", "create", "--label", f"{LABEL}=1", name).stdout.strip()
                _networks.add(self.network_id)
            args += ["--network", self.network_id]
        elif self.network:
            raise ValueError(f"network must be None, 'host' or 'new', not {self.network!r}")
        for p in self.ports:
            args += ["-p", f"127.0.0.1:{p}:{p}"]
        return args

    def _run_args(self):
        name = re.sub(r"[^a-zA-Z0-9_.-]", "_", str(self.dir.name))[:40]
        args = ["--label", f"{LABEL}=1", "--name", f"h2rs-test-{name}-{uuid.uuid4().hex[:6]}",
                *self._mounts()]
        for k, v in self.env.items():
            args += ["-e", f"{k}={v}"]
        return args

    def running(self):
        if not self.container:
            return False
        r = docker("inspect", "-f", "{{.State.Running}}", self.container, check=False)
        return r.stdout.strip() == "true"

    def container_logs(self):
        """What the container printed (httpd's output before its ErrorLog opened, crashes of PID 1)."""
        if not self.container:
            return ""
        r = docker("logs", self.container, check=False)
        return r.stdout + r.stderr

    def exec(self, *cmd, timeout=60):
        return docker("exec", self.container, *cmd, check=False, timeout=timeout)

    def configtest(self):
        self.write_config()
        if self.running():
            return self.exec(self.layout["httpd"], "-t", "-f", str(self.conf))
        # A throwaway container: same mounts, no ports, no network.
        return docker("run", "--rm", "--network", "none", *self._run_args(), self.image,
                      self.layout["httpd"], "-t", "-f", str(self.conf), check=False, timeout=120)

    def start(self):
        r = self.configtest()
        assert r.returncode == 0, f"config test failed: {r.stderr}{r.stdout}"
        (self.dir / "httpd.pid").unlink(missing_ok=True)
        r = docker("run", "-d", *self._run_args(), *self._network_args(), self.image,
                   self.layout["httpd"], "-DFOREGROUND", "-f", str(self.conf), check=False)
        cid = r.stdout.strip()
        if cid:
            _containers.add(cid)
            self.container = cid
        assert r.returncode == 0, f"docker run failed: {r.stderr}"
        deadline = time.time() + 30
        while time.time() < deadline:
            if self._answers():
                pid = docker("inspect", "-f", "{{.State.Pid}}", cid).stdout.strip()
                self.pid = int(pid)
                return self
            if not self.running():
                break
            time.sleep(0.05)
        out = self.container_logs()
        self._remove()
        raise AssertionError("httpd in the container did not answer:\n" + out[-2000:]
                             + self.read_error_log()[-3000:])

    def signal(self, how):
        r = self.exec(self.layout["httpd"], "-f", str(self.conf), "-k", how)
        assert r.returncode == 0, r.stderr

    def stop(self, timeout=20, settle=0.0):
        """SIGTERM to httpd in the container. `settle` (the host server's
        wait for closed connections before a hard stop) is accepted for the
        same signature; containers are stopped at once. Returns the seconds
        from the SIGTERM until httpd had exited, as the host server's stop
        does: the container's removal afterwards (its logs copied out, `docker
        rm`) took seconds on a busy host and is not part of httpd's stop."""
        stopped_after = None
        if self.container is None:
            self.pid = None
            return None
        try:
            if self.running():
                signalled = time.time()
                docker("kill", "-s", "TERM", self.container, check=False)
                try:
                    docker("wait", self.container, timeout=timeout)
                except subprocess.TimeoutExpired:
                    docker("kill", self.container, check=False)
                    raise AssertionError("httpd in the container did not stop in time")
                stopped_after = time.time() - signalled
        finally:
            self._remove()
            self.pid = None
        return stopped_after

    def _remove(self):
        if self.container is None:
            return
        try:
            (self.dir / "container.log").write_text(self.container_logs())
        except OSError:
            pass
        docker("rm", "-f", "-v", self.container, check=False, timeout=60)
        _containers.discard(self.container)
        self.container = None
        if self.network_id:
            docker("network", "rm", self.network_id, check=False, timeout=60)
            _networks.discard(self.network_id)
            self.network_id = None


# ---- self-test ----------------------------------------------------------------------
# python3 -m pytest tests/container.py

def _self_test_images():
    images = [DEFAULT_IMAGE]
    if "H2RS_IMAGE" not in os.environ:
        images.append("mod_h2rs:debian")
    return images


try:
    import pytest
except ImportError:  # the harness always has pytest; this keeps `import container` light
    pytest = None

if pytest is not None:

    @pytest.fixture(scope="module")
    def cwork():
        if not engine_available():
            pytest.skip("no Docker engine answers (docker info)")
        d = tempfile.mkdtemp(prefix="h2rs-ctest-")
        os.chmod(d, 0o755)
        yield pathlib.Path(d)
        cleanup()
        if not os.environ.get("H2RS_KEEP"):
            subprocess.run(["rm", "-rf", d])

    @pytest.fixture(scope="module")
    def cdoc(cwork):
        return conftest.Docroot(cwork)

    def _image_or_skip(image):
        if not image_exists(image):
            if image == DEFAULT_IMAGE:
                pytest.skip(f"no image {image}: run make docker-image")
            pytest.skip(f"no image {image} (make docker-image-debian)")

    def _curl(*args):
        return subprocess.run(["curl", "-s", "-S", "--max-time", "30", *args], capture_output=True, timeout=60)

    @pytest.mark.parametrize("image", _self_test_images())
    def test_container_httpd_start_curl_graceful_stop(cwork, cdoc, image):
        _image_or_skip(image)
        tag = re.sub(r"[^a-z0-9]", "-", image)
        h = ContainerHttpd(cwork, cdoc, name=f"self-{tag}", image=image, h2_conf="H2MinWorkers 2")
        try:
            h.start()
            assert h.pid and h.container
            # h2c prior knowledge, byte-exact
            out = cwork / f"{tag}-1m.bin"
            r = _curl("--http2-prior-knowledge", "-o", str(out), "-w", "%{http_version} %{http_code}", h.url("/1m.bin"))
            assert r.stdout.decode() == "2 200", r.stderr
            assert conftest.file_sha256(out) == cdoc.sha("1m.bin")
            # HTTP/1.1, the same bytes
            r = _curl("--http1.1", "-w", "%{http_version} %{http_code}", "-o", "/dev/null", h.url("/index.html"))
            assert r.stdout.decode() == "1.1 200", r.stderr
            # CGI through mod_cgid (ScriptSock inside the container), as www-data
            r = _curl("--http2-prior-knowledge", h.url("/cgi/env.cgi"))
            assert b"HTTP2=on" in r.stdout and b"SERVER_PROTOCOL=HTTP/2.0" in r.stdout, r.stdout
            # mime types come from the image's own mime.types
            r = _curl("--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{content_type}", h.url("/index.html"))
            assert r.stdout.decode().startswith("text/html"), r.stdout
            # logs are read on the host
            for _ in range(50):
                if any("HTTP/2.0" in l for l in h.read_access_log()):
                    break
                time.sleep(0.1)
            assert any('"GET /1m.bin HTTP/2.0" 200' in l for l in h.read_access_log()), h.read_access_log()
            # host pids: children and their Rust worker threads
            kids = h.children()
            assert kids, "no httpd children seen from the host"
            assert any(h.worker_threads(k) for k in kids), "no h2rs-worker threads in the children"
            # graceful restart inside the container, then it still serves
            h.new_log_lines()
            h.graceful()
            time.sleep(1)
            r = _curl("--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_version} %{http_code}", h.url("/"))
            assert r.stdout.decode() == "2 200", r.stderr
            assert "resuming normal operations" in h.read_error_log()
            h.check_log()
            # a config test in the running container
            assert h.configtest().returncode == 0
        finally:
            cid = h.container
            h.stop()
        assert h.container is None and h.pid is None
        assert docker("ps", "-a", "-q", "--filter", f"id={cid}").stdout.strip() == ""
        assert (h.dir / "container.log").exists()
        h.check_log()

    def test_container_httpd_tls(cwork, cdoc):
        """A TLS virtual host (conftest's tls_config, when the harness has it): h2 by ALPN,
        on a network of its own (removed with the container)."""
        _image_or_skip(DEFAULT_IMAGE)
        if not hasattr(conftest, "Certs") or not hasattr(conftest.Httpd, "tls_config"):
            pytest.skip("the harness has no TLS helpers yet")
        certs = conftest.Certs(cwork)
        h = ContainerHttpd(cwork, cdoc, name="self-tls", network="new")
        h.tls_config(certs, conftest.free_port())
        try:
            h.start()
            assert h.tls_port in h.ports
            r = _curl("-k", "--http2", "-o", "/dev/null", "-w", "%{http_version} %{http_code}",
                      f"https://127.0.0.1:{h.tls_port}/index.html")
            assert r.stdout.decode() == "2 200", r.stderr
            h.check_log()
        finally:
            h.stop()
        assert not _networks

    def test_container_httpd_proxy_to_a_host_backend(cwork, cdoc):
        """ProxyPass to the host's loopback: the container gets the host's network."""
        import http.server
        import threading
        _image_or_skip(DEFAULT_IMAGE)
        backend_dir = cwork / "backend"
        backend_dir.mkdir(exist_ok=True)
        (backend_dir / "b.txt").write_text("from the host backend\n")
        handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(backend_dir))
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        md = conftest.MODDIR
        h = ContainerHttpd(cwork, cdoc, name="self-proxy", extra=f"""LoadModule proxy_module {md}/mod_proxy.so
LoadModule proxy_http_module {md}/mod_proxy_http.so
ProxyPass /px/ http://127.0.0.1:{srv.server_address[1]}/""")
        try:
            h.start()
            assert h.net == "host"
            r = _curl("--http2-prior-knowledge", h.url("/px/b.txt"))
            assert r.stdout == b"from the host backend\n", r.stderr
            h.check_log()
        finally:
            h.stop()
            srv.shutdown()

    def test_apxs_compile_for_the_image(cwork, cdoc):
        """A C module built for the image's httpd (not the host's), loaded there."""
        _image_or_skip(DEFAULT_IMAGE)
        d = cwork / "hellomod"
        d.mkdir(exist_ok=True)
        (d / "mod_hello.c").write_text(r'''#include <string.h>
#include "httpd.h"
#include "http_config.h"
#include "http_protocol.h"
static int hello(request_rec *r) {
    if (!r->handler || strcmp(r->handler, "h2rs-hello")) return DECLINED;
    ap_set_content_type(r, "text/plain");
    ap_rprintf(r, "hello from %s\n", ap_get_server_banner());
    return OK;
}
static void hooks(apr_pool_t *p) { ap_hook_handler(hello, NULL, NULL, APR_HOOK_MIDDLE); }
module AP_MODULE_DECLARE_DATA hello_module = { STANDARD20_MODULE_STUFF, NULL, NULL, NULL, NULL, NULL, hooks };
''')
        so = apxs_compile(d / "mod_hello.c")
        assert so.exists()
        h = ContainerHttpd(cwork, cdoc, name="self-apxs", extra=f"""LoadModule hello_module {so}
<Location /hello>
  SetHandler h2rs-hello
</Location>""")
        try:
            h.start()
            r = _curl("--http2-prior-knowledge", h.url("/hello"))
            assert r.stdout.startswith(b"hello from Apache/2.4"), r.stdout
            h.check_log()
        finally:
            h.stop()

    def test_container_httpd_reports_a_bad_config(cwork, cdoc):
        _image_or_skip(DEFAULT_IMAGE)
        h = ContainerHttpd(cwork, cdoc, name="self-bad", h2_conf="H2MaxSessionStreams nope")
        r = h.configtest()
        assert r.returncode != 0
        assert "H2MaxSessionStreams" in (r.stderr + r.stdout)
        assert not _containers


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v", *sys.argv[1:]]))
