"""WebSockets over HTTP/2 (RFC 8441): extended CONNECT streams through
mod_proxy_http's `upgrade=websocket` to a real WebSocket backend
(tests/wsbackend.py, Python `websockets`), checked with a frame-level client
and with headless Chromium."""
import base64
import hashlib
import json
import os
import pathlib
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse

import h2.errors
import h2.events
import pytest

from conftest import Httpd, cpu_seconds, free_port, registered, spawn_backend, wait_for
from h2client import H2Client
from rawh2 import read_http1_head
from wsclient import BINARY, CLOSE, PING, PONG, TEXT, Tunnel, frame

ENABLE_CONNECT_PROTOCOL = 0x8


@pytest.fixture(scope="module")
def ws_backend(tmp_path_factory):
    """The WebSocket backend: (port, events file)."""
    events = tmp_path_factory.mktemp("wsbackend") / "events.log"
    events.write_text("")
    port, proc = spawn_backend("wsbackend.py", events)
    yield port, events
    proc.kill()
    proc.wait()


# The eager backend's first message: blank lines in it, which are no
# response head.
EAGER_MESSAGE = b"first, with the 101\r\n\r\nand blank lines\n\n"


@pytest.fixture(scope="module")
def eager_backend():
    """A WebSocket backend that sends its 101 and its first message
    (EAGER_MESSAGE) in one write, so the proxy reads both at once (as it may
    whenever the backend is quick): the message then waits in the backend
    connection's input filters, not in its socket. It echoes a close frame,
    then closes."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve(conn):
        with conn:
            conn.settimeout(20)
            head = read_http1_head(conn)
            if b"\r\n\r\n" not in head:
                return
            key = next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
                       if line.lower().startswith(b"sec-websocket-key:"))
            accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
            conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                         b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
                         + frame(TEXT, EAGER_MESSAGE, masked=False))
            got = b""
            while len(got) < 2 or len(got) < 2 + (got[1] & 0x7F) + 4:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                got += chunk
            conn.sendall(frame(CLOSE, b"\x03\xe8", masked=False))

    def accept_loop():
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except socket.timeout:
                continue
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept_loop, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    listener.close()


def proxy_conf(port, eager_port=None):
    eager = f"\nProxyPass /eager/ http://127.0.0.1:{eager_port}/ upgrade=websocket timeout=10" if eager_port else ""
    return f"""LoadModule proxy_module /usr/lib/apache2/modules/mod_proxy.so
LoadModule proxy_http_module /usr/lib/apache2/modules/mod_proxy_http.so
ProxyPass /ws/ http://127.0.0.1:{port}/ upgrade=websocket timeout=10
ProxyPass /down/ http://127.0.0.1:{free_port()}/ upgrade=websocket timeout=5{eager}"""


@pytest.fixture(scope="module")
def ws_server(workdir, docroot, ws_backend, eager_backend):
    h = Httpd(workdir, docroot, name="ws-on", h2_conf="H2WebSockets on",
              extra=proxy_conf(ws_backend[0], eager_backend))
    with registered(h):
        yield h


def client_for(server):
    c = H2Client(server.port)
    c.wait(lambda: ENABLE_CONNECT_PROTOCOL in c.remote_settings or c.remote_settings, timeout=10)
    return c


def backend_events(events, path):
    return [line for line in events.read_text().splitlines() if line.split()[1] == path]


# ---- negotiation ---------------------------------------------------------------

def test_setting_is_advertised_only_when_on(ws_server, make_server, ws_backend):
    c = client_for(ws_server)
    assert c.remote_settings.get(ENABLE_CONNECT_PROTOCOL) == 1
    c.close()

    off = make_server(extra=proxy_conf(ws_backend[0])).start()
    c = client_for(off)
    assert c.remote_settings.get(ENABLE_CONNECT_PROTOCOL, 0) == 0
    t = Tunnel(c, "/ws/echo")
    s = t.wait_end()
    # Malformed without the setting (RFC 8441 3): reset, never a tunnel.
    assert s.reset == h2.errors.ErrorCodes.PROTOCOL_ERROR, (s.status, s.reset)
    # The connection goes on.
    sid = c.request("/index.html")
    assert c.wait_stream(sid).status == 200
    c.close()


def test_upgrade_request_seen_by_the_backend(ws_server):
    c = client_for(ws_server)
    t = Tunnel(c, "/ws/headers", headers=[("sec-websocket-protocol", "chat, superchat")])
    assert t.wait_open() == 200
    # The HTTP/1.1 upgrade fields are not part of an HTTP/2 response.
    for name in ("upgrade", "connection", "sec-websocket-accept"):
        assert t.stream.header(name) is None, name
    assert t.stream.header("sec-websocket-protocol") == "chat"
    op, payload = t.recv()
    seen = json.loads(payload)
    assert op == TEXT
    assert seen["upgrade"].lower() == "websocket"
    assert "upgrade" in seen["connection"].lower()
    assert len(seen["sec-websocket-key"]) == 24  # base64 of 16 random bytes
    assert seen["sec-websocket-version"] == "13"
    assert seen["x-forwarded-host"] == f"127.0.0.1:{ws_server.port}"  # :authority became Host
    t.send(CLOSE, b"\x03\xe8")
    assert t.recv()[0] == CLOSE
    c.close()


def test_message_read_with_the_101_reaches_the_client(ws_server):
    # mod_proxy's tunnel polls the backend socket for input, but this message
    # was read together with the 101 and waits in the backend connection's
    # filters: only a transfer from the backend at the tunnel's start (which
    # httpd 2.4 makes when the client side first polls writable) moves it.
    c = client_for(ws_server)
    t = Tunnel(c, "/eager/")
    assert t.wait_open() == 200
    assert t.recv(timeout=5) == (TEXT, EAGER_MESSAGE)
    t.send(CLOSE, b"\x03\xe8")
    assert t.recv()[0] == CLOSE
    c.close()


# ---- data ----------------------------------------------------------------------

SIZES = [0, 1, 125, 126, 65535, 65536, 300_000, 1 << 20]


def test_messages_of_every_size_both_ways(ws_server):
    c = client_for(ws_server)
    t = Tunnel(c, "/ws/echo")
    assert t.wait_open() == 200
    for i, size in enumerate(SIZES):
        payload = os.urandom(size)
        t.send(BINARY, payload)
        assert t.recv(timeout=30) == (BINARY, payload), size
        text = (f"message {i} " * (size // 10 + 1))[:size].encode()
        t.send(TEXT, text)
        assert t.recv(timeout=30) == (TEXT, text), size
    t.send(CLOSE, b"\x03\xe8")
    assert t.recv()[0] == CLOSE
    c.close()


def test_mod_proxy_wstunnel_without_fallback_tunnels_without_spinning(make_server, ws_backend):
    """mod_proxy_wstunnel's own tunnel (`ProxyWebsocketFallbackToProxyHttp
    Off`) polls the connection's socket, not the one our hook gives: on a
    stream's connection that socket is readable exactly when the stream
    has input or has ended, so an idle tunnel costs no CPU (the stream
    connections' placeholder socket polled ready at once, and the loop
    spun a core for the tunnel's life)."""
    srv = make_server(h2_conf="H2WebSockets on", extra=f"""LoadModule proxy_module /usr/lib/apache2/modules/mod_proxy.so
LoadModule proxy_wstunnel_module /usr/lib/apache2/modules/mod_proxy_wstunnel.so
ProxyWebsocketFallbackToProxyHttp Off
ProxyPass /wst/ ws://127.0.0.1:{ws_backend[0]}/ timeout=10""").start()
    c = client_for(srv)
    t = Tunnel(c, "/wst/echo")
    assert t.wait_open() == 200
    t.send(TEXT, b"hello")
    assert t.recv() == (TEXT, b"hello")
    kids = srv.mpm_children()
    before = cpu_seconds(kids)
    time.sleep(2)
    used = cpu_seconds(kids) - before
    t.send(TEXT, b"still there")
    assert t.recv() == (TEXT, b"still there")
    t.send(CLOSE, b"\x03\xe8")
    assert t.recv()[0] == CLOSE
    c.close()
    assert used < 0.5, f"{used:.2f} s of CPU in 2 s of an idle tunnel"


def test_a_backends_first_message_with_blank_lines_passes_whole(make_server, eager_backend):
    """mod_proxy_wstunnel's own tunnel hands the backend's 101 and its
    first message on as they came, here in one piece: the bytes after the
    101 are WebSocket frames, not another response head. A message with a
    blank line in it was parsed as one: its start lost, the stream reset."""
    srv = make_server(h2_conf="H2WebSockets on", extra=f"""LoadModule proxy_module /usr/lib/apache2/modules/mod_proxy.so
LoadModule proxy_wstunnel_module /usr/lib/apache2/modules/mod_proxy_wstunnel.so
ProxyWebsocketFallbackToProxyHttp Off
ProxyPass /wst/ ws://127.0.0.1:{eager_backend}/ timeout=10""").start()
    c = client_for(srv)
    for _ in range(3):
        t = Tunnel(c, "/wst/greet")
        assert t.wait_open() == 200
        assert t.recv() == (TEXT, EAGER_MESSAGE)
        t.send(CLOSE, b"\x03\xe8")
        assert t.recv()[0] == CLOSE
    c.close()


def test_ping_pong_passes_through(ws_server):
    c = client_for(ws_server)
    t = Tunnel(c, "/ws/echo")
    assert t.wait_open() == 200
    t.send(PING, b"are you there")
    assert t.recv() == (PONG, b"are you there")
    c.close()


def test_many_tunnels_on_one_connection_with_requests_alongside(ws_server, ws_backend, docroot):
    n = 24
    c = client_for(ws_server)
    tunnels = [Tunnel(c, "/ws/echo") for _ in range(n)]
    statuses = [t.wait_open() for t in tunnels]
    assert statuses == [200] * n
    # Every tunnel is open at once: each answers while all the others stay
    # open (none waits for another to end).
    for i, t in enumerate(tunnels):
        t.send(TEXT, f"tunnel {i}".encode())
    for i, t in enumerate(tunnels):
        assert t.recv() == (TEXT, f"tunnel {i}".encode())
    # Ordinary requests on the same connection are answered meanwhile.
    sids = [c.request("/1k.bin") for _ in range(10)]
    for sid in sids:
        s = c.wait_stream(sid, timeout=10)
        assert s.status == 200 and bytes(s.data) == docroot.file("1k.bin").read_bytes()
    for t in tunnels:
        t.send(CLOSE, b"\x03\xe8")
    for t in tunnels:
        assert t.recv()[0] == CLOSE
        assert t.wait_end().ended
    c.close()


# ---- closing -------------------------------------------------------------------

def test_close_from_the_client_ends_the_stream_promptly(ws_server, ws_backend):
    c = client_for(ws_server)
    t = Tunnel(c, "/ws/echo?client-close")
    assert t.wait_open() == 200
    t.send(CLOSE, b"\x03\xe8done")
    t0 = time.time()
    assert t.recv() == (CLOSE, b"\x03\xe8done")
    s = t.wait_end(timeout=8)
    took = time.time() - t0
    # Ended cleanly: END_STREAM, then at most RST_STREAM NO_ERROR, which
    # tells the client to stop sending (RFC 9113 8.1).
    assert s.ended and s.reset in (None, h2.errors.ErrorCodes.NO_ERROR), s.reset
    # Well before mod_proxy's tunnel timeout (10 s): the backend's close
    # ended the tunnel.
    assert took < 8, took
    c.close()
    wait_for(lambda: backend_events(ws_backend[1], "/echo?client-close"))
    assert backend_events(ws_backend[1], "/echo?client-close") == ["closed /echo?client-close 1000"]


def test_close_from_the_backend(ws_server, ws_backend):
    c = client_for(ws_server)
    t = Tunnel(c, "/ws/close")
    assert t.wait_open() == 200
    t.send(TEXT, b"last words")
    assert t.recv() == (TEXT, b"last words")
    assert t.recv() == (CLOSE, b"\x0f\xa0bye")
    t.send(CLOSE, b"\x0f\xa0")
    s = t.wait_end(timeout=8)
    # Ended cleanly: END_STREAM, then at most RST_STREAM NO_ERROR, which
    # tells the client to stop sending (RFC 9113 8.1).
    assert s.ended and s.reset in (None, h2.errors.ErrorCodes.NO_ERROR), s.reset
    c.close()
    wait_for(lambda: backend_events(ws_backend[1], "/close"))
    assert backend_events(ws_backend[1], "/close") == ["closed /close 4000"]


def test_a_tunnel_outlives_a_graceful_restart(make_server, ws_backend):
    """A graceful restart leaves an open tunnel to the old generation: its
    connection gets the GOAWAY notice, the tunnel goes on echoing, new
    connections go to the new generation, and the old child exits once the
    tunnel has closed (the server ends the connection itself)."""
    srv = make_server(h2_conf="H2WebSockets on", extra=proxy_conf(ws_backend[0])).start()
    c = H2Client(srv.port, survive_goaway=True)
    c.wait(lambda: c.remote_settings, timeout=10)
    t = Tunnel(c, "/ws/echo?graceful")
    assert t.wait_open() == 200
    t.send(TEXT, b"before")
    assert t.recv() == (TEXT, b"before")
    old = set(srv.mpm_children())
    srv.graceful()
    c.wait(lambda: c.goaway is not None, timeout=10)
    assert c.goaway[0] == h2.errors.ErrorCodes.NO_ERROR
    assert wait_for(lambda: set(srv.mpm_children()) - old, timeout=20), "no new generation"
    fresh = H2Client(srv.port)
    assert fresh.wait_stream(fresh.request("/index.html")).status == 200
    fresh.close()
    for i in range(3):
        message = f"after the restart {i}".encode()
        t.send(TEXT, message)
        assert t.recv() == (TEXT, message)
    assert set(srv.mpm_children()) & old, "the old child left while its tunnel was open"
    t.send(CLOSE, b"\x03\xe8")
    assert t.recv() == (CLOSE, b"\x03\xe8")
    s = t.wait_end(timeout=8)
    # Ended cleanly: END_STREAM, then at most RST_STREAM NO_ERROR, which
    # tells the client to stop sending (RFC 9113 8.1).
    assert s.ended and s.reset in (None, h2.errors.ErrorCodes.NO_ERROR), s.reset
    assert wait_for(lambda: not set(srv.mpm_children()) & old, timeout=20), "the old child stayed"
    c.close()
    assert wait_for(lambda: backend_events(ws_backend[1], "/echo?graceful"))
    assert backend_events(ws_backend[1], "/echo?graceful") == ["closed /echo?graceful 1000"]


def test_client_reset_mid_message_ends_the_backend_connection(ws_server, ws_backend):
    c = client_for(ws_server)
    t = Tunnel(c, "/ws/echo?reset")
    assert t.wait_open() == 200
    whole = frame(BINARY, os.urandom(50_000))
    c.send_body(t.sid, whole[:20_000], end_stream=False)
    c.conn.reset_stream(t.sid, h2.errors.ErrorCodes.CANCEL)
    c.flush()
    # The backend sees its connection end without a close frame.
    wait_for(lambda: backend_events(ws_backend[1], "/echo?reset"), timeout=10)
    assert backend_events(ws_backend[1], "/echo?reset") == ["closed /echo?reset 1006"]
    # The connection goes on.
    t2 = Tunnel(c, "/ws/echo")
    assert t2.wait_open() == 200
    t2.send(TEXT, b"after reset")
    assert t2.recv() == (TEXT, b"after reset")
    c.close()


# ---- refusals ------------------------------------------------------------------

def test_refused_where_no_websocket_is(ws_server):
    c = client_for(ws_server)
    # A static file answers 200 to the GET: not a tunnel, so 502.
    t = Tunnel(c, "/index.html")
    s = t.wait_end()
    assert s.status == 502 and s.ended and not s.data
    # Errors go back as they are.
    t = Tunnel(c, "/no/such/file")
    s = t.wait_end()
    assert s.status == 404 and s.ended
    # A backend that is down.
    t = Tunnel(c, "/down/echo")
    s = t.wait_end(timeout=15)
    assert s.reset is not None or s.status >= 500, (s.status, s.reset)
    # Protocols other than websocket have no handler in httpd.
    t = Tunnel(c, "/ws/echo", protocol="something-else")
    s = t.wait_end()
    assert s.status == 501
    sid = c.request("/index.html")
    assert c.wait_stream(sid).status == 200
    c.close()


def test_refused_by_a_virtual_host_without_websockets(make_server, ws_backend):
    """H2WebSockets of the name-based virtual host that serves the request
    counts, not only that of the connection's (as the stock module: 501),
    though both proxy WebSockets."""
    srv = make_server(extra=proxy_conf(ws_backend[0]))
    srv.extra += "\n".join(f"""
<VirtualHost 127.0.0.1:{srv.port}>
  ServerName {name}
  {conf}
</VirtualHost>""" for name, conf in [("on.test", "H2WebSockets on"), ("off.test", "")])
    srv.start()
    c = client_for(srv)
    assert c.remote_settings.get(ENABLE_CONNECT_PROTOCOL) == 1
    c.default_authority = "off.test"
    s = Tunnel(c, "/ws/echo").wait_end()
    assert s.status == 501 and s.ended, (s.status, s.reset)
    c.default_authority = "on.test"
    t = Tunnel(c, "/ws/echo")
    assert t.wait_open() == 200
    t.send(TEXT, b"hello")
    assert t.recv() == (TEXT, b"hello")
    c.close()


def test_a_refused_101_ends_the_backend_tunnel(make_server):
    """A backend whose 101 has a wrong Sec-WebSocket-Accept: the client gets
    502, and the tunnel mod_proxy_http runs after the 101 ends at the
    backend's next message (its output goes nowhere). Before, the tunnel ran
    on, and a backend that kept talking held its connection and a thread
    until the client ended its stream; a silent backend, until the
    tunnel's timeout (30 s here)."""
    listener = socket.create_server(("127.0.0.1", 0))
    closed_after = {}

    def serve(talks):
        conn, _ = listener.accept()
        with conn:
            read_http1_head(conn)
            conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                         b"Connection: Upgrade\r\nSec-WebSocket-Accept: forged\r\n\r\n")
            t0 = time.time()
            conn.settimeout(0.1)
            try:
                while time.time() - t0 < 15:
                    if talks:
                        conn.sendall(frame(TEXT, b"still here", masked=False))
                    try:
                        if conn.recv(4096) == b"":
                            break
                    except socket.timeout:
                        pass
                else:
                    return
            except OSError:
                pass
            closed_after[talks] = time.time() - t0

    srv = make_server(h2_conf="H2WebSockets on", extra=f"""LoadModule proxy_module /usr/lib/apache2/modules/mod_proxy.so
LoadModule proxy_http_module /usr/lib/apache2/modules/mod_proxy_http.so
ProxyPass /forger/ http://127.0.0.1:{listener.getsockname()[1]}/ upgrade=websocket timeout=30""").start()
    try:
        c = client_for(srv)
        for talks in (True, False):
            thread = threading.Thread(target=serve, args=(talks,), daemon=True)
            thread.start()
            t = Tunnel(c, "/forger/echo")
            assert t.wait_open() == 502
            thread.join(20)
            assert talks in closed_after and closed_after[talks] < 10, (talks, closed_after)
        c.close()
    finally:
        listener.close()


# ---- a real browser ------------------------------------------------------------

PAGE = """<!doctype html>
<html><body><pre id="out">pending</pre>
<script>
// Reports what it got as a request the test finds in the access log.
const report = (what) => fetch("/report?" + encodeURIComponent(what));
const ws = new WebSocket("wss://" + location.host + "/ws/echo");
const got = [];
ws.onopen = () => { ws.send("hello over h2"); ws.send(new Uint8Array([0, 1, 2, 255])); };
ws.onmessage = async (ev) => {
  got.push(typeof ev.data === "string" ? ev.data : Array.from(new Uint8Array(await ev.data.arrayBuffer())).join(","));
  if (got.length === 2) { ws.close(1000); report("result:" + JSON.stringify(got)); }
};
ws.onerror = () => report("error");
</script></body></html>
"""


def test_chromium_opens_a_websocket_over_h2(workdir, docroot, ws_backend, make_server, certs):
    chromium = shutil.which("chromium")
    if not chromium:
        pytest.fail("chromium is not installed (scripts/setup-deps installs it)")
    (docroot.path / "ws.html").write_text(PAGE)
    tls_port = free_port()
    srv = make_server(h2_conf="H2WebSockets on", extra=proxy_conf(ws_backend[0]))
    srv.tls_config(certs, tls_port)
    srv.start()
    profile = pathlib.Path(workdir) / f"chromium-{tls_port}"
    browser = subprocess.Popen(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--ignore-certificate-errors",
         "--no-first-run", f"--user-data-dir={profile}", f"https://127.0.0.1:{tls_port}/ws.html"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        reported = lambda: [line for line in srv.read_access_log() if '"GET /report?' in line]
        wait_for(reported, timeout=60)
    finally:
        # The browser and its helper processes: the process group we started.
        os.killpg(browser.pid, 9)
        browser.wait()
    lines = srv.read_access_log()
    want = "/report?" + urllib.parse.quote('result:["hello over h2","0,1,2,255"]', safe="")
    assert any(want in line for line in lines), lines
    ws_lines = [line for line in lines if '"GET /ws/echo' in line]
    assert ws_lines, lines
    assert all("HTTP/2.0" in line for line in ws_lines), ws_lines
    page = [line for line in lines if '"GET /ws.html' in line]
    assert page and "HTTP/2.0" in page[0], lines
