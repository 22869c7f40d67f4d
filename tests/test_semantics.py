"""Issue 3: every handler, every HTTP feature over HTTP/2 streams: request
bodies, flow control by consumption, validation and limits, trailers,
interim responses, streaming, bodyless responses, conditional and range
requests, compression, error responses, environment and logging."""
import gzip
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time

import h2.errors
import h2.events
import h2.settings
import pytest

from conftest import (H2STATUS_LOCATION, MODDIR, Httpd, curl, h2c, h2load, registered, sha256, tcp_server,
                      wait_for)
from h2client import H2Client, Stream, assert_cut_after_head
from rawh2 import INITIAL_WINDOW_SIZE, Conn, read_http1_head, window_update

MODULES = f"""LoadModule proxy_module {MODDIR}/mod_proxy.so
LoadModule proxy_http_module {MODDIR}/mod_proxy_http.so
LoadModule dav_module {MODDIR}/mod_dav.so
LoadModule dav_fs_module {MODDIR}/mod_dav_fs.so
LoadModule deflate_module {MODDIR}/mod_deflate.so
LoadModule filter_module {MODDIR}/mod_filter.so
LoadModule auth_basic_module {MODDIR}/mod_auth_basic.so
LoadModule authn_core_module {MODDIR}/mod_authn_core.so
LoadModule authn_file_module {MODDIR}/mod_authn_file.so
LoadModule authz_user_module {MODDIR}/mod_authz_user.so
LoadModule env_module {MODDIR}/mod_env.so
LoadModule setenvif_module {MODDIR}/mod_setenvif.so"""


def fnv(data):
    h = 14695981039346656037
    for b in data:
        h ^= b
        h = (h * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


@pytest.fixture(scope="module")
def srv(workdir, docroot, test_module, backend):
    d = workdir / "sem"
    (d / "dav").mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o777)
    os.chmod(d / "dav", 0o777)
    pw = d / "htpasswd"
    subprocess.run(["htpasswd", "-cb", str(pw), "alice", "secret"], check=True, capture_output=True)
    os.chmod(pw, 0o644)
    extra = f"""{MODULES}
{test_module}
LogFormat "%h \\"%r\\" %>s %b %H %I %O %{{H2_STREAM_ID}}e" sem
CustomLog "{workdir}/srv-sem/sem.log" sem
LogFormat "%{{User-Agent}}i \\"%r\\" %>s %X" delivery
CustomLog "{workdir}/srv-sem/delivery.log" delivery
LogFormat "%{{User-Agent}}i %H %k" numbered
CustomLog "{workdir}/srv-sem/numbered.log" numbered
<Location /echo>
  SetHandler h2rs-echo
</Location>
<Location /drip>
  SetHandler h2rs-drip
</Location>
<Location /twice>
  SetHandler h2rs-twice
</Location>
<Location /cut>
  SetHandler h2rs-cut
</Location>
<Location /length>
  SetHandler h2rs-length
</Location>
<Location /connid>
  SetHandler h2rs-connid
</Location>
<Location /fail-late>
  SetHandler h2rs-fail-late
</Location>
<Location /fail-late-doc>
  SetHandler h2rs-fail-late
  ErrorDocument 500 /index.html
</Location>
{H2STATUS_LOCATION}<Location /h2vars>
  SetHandler h2rs-h2vars
</Location>
<Location /limited>
  SetHandler h2rs-echo
  LimitRequestBody 1000
</Location>
ProxyPass /proxy/ http://127.0.0.1:{backend}/
DavLockDB "{d}/davlock"
Alias /dav "{d}/dav"
<Directory "{d}/dav">
  Dav On
  Require all granted
</Directory>
<Location /private>
  AuthType Basic
  AuthName "h2rs test"
  AuthUserFile "{pw}"
  Require valid-user
</Location>
<Location /gz>
  SetOutputFilter DEFLATE
</Location>
Alias /gz "{docroot.path}"
ErrorDocument 404 /index.html
<Location /h2only>
  Require expr %{{HTTP2}} == 'on'
</Location>
Alias /h2only "{docroot.path}"
<If "%{{HTTP2}} == 'on'">
  Header always set X-Was-H2 yes
</If>
"""
    h = Httpd(workdir, docroot, name="srv-sem", extra=extra, h2_conf="H2EarlyHints on")
    with registered(h):
        yield h


# ---- request bodies ----------------------------------------------------------

@pytest.mark.parametrize("size", [0, 1, 65535, 65537, 1 << 20, 16 << 20])
@pytest.mark.parametrize("with_cl", [True, False])
def test_request_body_reaches_the_handler(srv, size, with_cl):
    body = os.urandom(size)
    c = h2c(srv)
    headers = [("content-length", str(size))] if with_cl else []
    sid = c.request("/echo", method="POST", headers=headers, body=body)
    st = c.wait_stream(sid, timeout=60)
    assert st.status == 200
    assert st.data.decode().splitlines()[0].startswith(f"length={size} fnv={fnv(body)} ")
    c.close()


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH"])
def test_methods_with_bodies_reach_cgi(srv, method, workdir):
    body = os.urandom(300_000)
    f = workdir / f"body-{method}"
    f.write_bytes(body)
    r = curl("--http2-prior-knowledge", "-X", method, "--data-binary", f"@{f}", srv.url("/cgi/sum.cgi"))
    assert r.stdout.decode().strip() == sha256(body)
    # Without content-length (curl streams stdin with -T -).
    r = subprocess.run(["curl", "-s", "--http2-prior-knowledge", "-X", method, "-T", "-", srv.url("/cgi/sum.cgi")],
                       input=body, capture_output=True, timeout=60)
    assert r.stdout.decode().strip() == sha256(body)


def test_upload_through_mod_proxy_http(srv):
    body = os.urandom(2_000_000)
    c = h2c(srv)
    st = c.wait_stream(c.request("/proxy/echo", method="POST", body=body,
                                 headers=[("content-length", str(len(body)))]))
    assert st.status == 200 and st.data.decode().strip() == f"length={len(body)} sha256={sha256(body)}"
    st = c.wait_stream(c.request("/proxy/echo", method="POST", body=body))  # no content-length
    assert st.status == 200 and st.data.decode().strip() == f"length={len(body)} sha256={sha256(body)}"
    # The stream ends a moment after the last bytes: mod_proxy_http's
    # nonblocking first reads find them held for the end, its blocking
    # reads then get them.
    small = b"tail" * 100
    sid = c.request("/proxy/echo", method="POST", end_stream=False, headers=[("content-length", str(len(small)))])
    c.send_body(sid, small, end_stream=False)
    time.sleep(0.3)
    c.send_body(sid, b"", end_stream=True)
    st = c.wait_stream(sid)
    assert st.status == 200 and st.data.decode().strip() == f"length={len(small)} sha256={sha256(small)}"
    c.close()


def test_dav_upload_and_download(srv, workdir):
    body = os.urandom(5 << 20)
    f = workdir / "dav-up.bin"
    f.write_bytes(body)
    r = curl("--http2-prior-knowledge", "-T", str(f), "-o", "/dev/null", "-w", "%{http_code}",
             srv.url("/dav/up.bin"))
    assert r.stdout in (b"201", b"204"), r.stdout
    r = curl("--http2-prior-knowledge", srv.url("/dav/up.bin"))
    assert sha256(r.stdout) == sha256(body)


def test_one_gib_upload_byte_exact(srv, workdir):
    """1 GiB to an in-process handler (CRC-32 of what it read)."""
    import zlib
    path = workdir / "1g.bin"
    crc = 0
    with open(path, "wb") as f:
        block = os.urandom(1 << 20)
        for i in range(1024):
            chunk = bytes([i & 0xFF]) + block[1:]
            f.write(chunk)
            crc = zlib.crc32(chunk, crc)
    # -T streams the file (--data-binary would load 1 GiB into curl's memory).
    r = curl("--http2-prior-knowledge", "-X", "POST", "-T", str(path), "-H", "Content-Type: application/octet-stream",
             srv.url("/echo"), timeout=600)
    path.unlink()
    assert r.stdout.decode().split()[0] == f"length={1 << 30}", r.stdout
    assert r.stdout.decode().split()[2] == f"crc32={crc:08x}", r.stdout


def test_upload_flow_follows_consumption(make_server, docroot):
    """A handler that does not read yet: the client can send about one
    stream window, not the whole body; once the handler reads, the rest
    flows."""
    slow = docroot.path / "cgi" / "slowsum.cgi"
    if not slow.exists():
        slow.write_text("#!/bin/sh\nsleep 2\nprintf 'Content-Type: text/plain\\r\\n\\r\\n'\nsha256sum | cut -d' ' -f1\n")
        slow.chmod(0o755)
    srv = make_server(h2_conf="H2WindowSize 65535").start()
    body = os.urandom(8 << 20)
    c = H2Client(srv.port)
    sid = c.request("/cgi/slowsum.cgi", method="POST", end_stream=False)
    sent = 0
    deadline = time.time() + 1.2
    while time.time() < deadline:
        window = min(c.conn.local_flow_control_window(sid), len(body) - sent, c.conn.max_outbound_frame_size)
        if window > 0:
            c.conn.send_data(sid, body[sent:sent + window])
            sent += window
            c.flush()
        else:
            c.read_some(timeout=0.1)
    # One stream window plus what pipes and sockets on the way to the CGI
    # hold; nowhere near the 8 MiB body.
    assert sent < 1 << 20, sent
    c.send_body(sid, body[sent:])
    st = c.wait_stream(sid, timeout=60)
    assert st.data.decode().strip() == sha256(body)
    c.close()


def test_uploads_beyond_the_running_streams_all_complete(srv, tmp_path):
    """100 uploads of 100 KiB at once on one connection (h2load -c 1 -m
    100): more streams than run at once, each body beyond its stream
    window. All are answered. Before 2026-12-04 the streams waiting for a
    worker held the connection's window with their first 64 KiB and the
    running ones stalled until Timeout: 408s, 22 req/s (the stock module:
    2,200 req/s)."""
    f = tmp_path / "body"
    f.write_bytes(os.urandom(100 * 1024))
    res = h2load("-n", "1000", "-c", "1", "-m", "100", "-d", str(f), srv.url("/echo"), timeout=60)
    assert res.get("s2xx") == 1000, res["output"]


def test_a_response_before_the_whole_body_stops_the_upload(srv):
    """A 413 (LimitRequestBody) answers before the client has sent its
    body: once the response is out, RST_STREAM NO_ERROR asks the client to
    stop (RFC 9113 8.1), and the bytes it sent meanwhile go back to the
    connection's window, so the next upload on the connection passes.
    Before, the stream stayed open with its window spent until the
    connection timed out."""
    c = H2Client(srv.port)  # the default 64 KiB windows: spent quickly
    sid = c.request("/limited", method="POST", end_stream=False)
    c.conn.send_data(sid, b"x" * 2000)
    c.flush()
    c.wait(lambda: c.streams[sid].reset is not None, timeout=10)
    st = c.streams[sid]
    assert (st.status, st.ended, st.reset) == (413, True, h2.errors.ErrorCodes.NO_ERROR)
    body = os.urandom(400_000)
    st = c.wait_stream(c.request("/echo", method="POST", body=body), timeout=20)
    assert st.status == 200 and st.data.startswith(f"length={len(body)} fnv={fnv(body)} ".encode()), st.data
    c.close()


def test_expect_100_continue(srv):
    c = h2c(srv)
    sid = c.request("/echo", method="POST", headers=[("expect", "100-continue")], end_stream=False)
    c.wait(lambda: c.streams[sid].interim or c.streams[sid].done, timeout=10)
    st = c.streams[sid]
    assert st.interim and dict(st.interim[0])[b":status"] == b"100"
    c.send_body(sid, b"after continue")
    st = c.wait_stream(sid)
    assert st.data.startswith(b"length=14 ")
    c.close()


@pytest.mark.parametrize("length", [None, 7])
def test_request_trailers_reach_the_handler(srv, length):
    """With a body of unknown length (chunk-framed for HTTP_IN, which
    parses the trailers) and of known length (HTTP_IN stops at the length:
    trailers sent with the last data are taken with it, as the stock module
    does); names spelled as the stock module spells them for httpd."""
    c = h2c(srv)
    sid = c.request("/echo", method="POST", end_stream=False,
                    headers=[("content-length", str(length))] if length else [])
    c.conn.send_data(sid, b"payload")
    c.conn.send_headers(sid, [(b"x-checksum", b"abc123"), (b"x-other", b"2")], end_stream=True)
    c.flush()
    st = c.wait_stream(sid)
    lines = st.data.decode().splitlines()
    assert lines[0].startswith(f"length=7 fnv={fnv(b'payload')} ")
    assert "trailer X-Checksum: abc123" in lines and "trailer X-Other: 2" in lines, lines
    c.close()


@pytest.mark.parametrize("merge", ["on", "off"])
@pytest.mark.parametrize("length", [None, 7])
def test_merge_trailers_puts_request_trailers_in_the_headers(make_server, test_module, merge, length):
    """`MergeTrailers on`: the request's trailers are also among its
    headers, for a body of known length (they came only to trailers_in) as
    for one of unknown length (HTTP_IN merges those it parses)."""
    srv = make_server(extra=f"{test_module}\nMergeTrailers {merge}\n<Location /echo>\n  SetHandler h2rs-echo\n</Location>")
    srv.start()
    c = h2c(srv)
    sid = c.request("/echo", method="POST", end_stream=False,
                    headers=[("echo-field", "x-checksum")] + ([("content-length", str(length))] if length else []))
    c.conn.send_data(sid, b"payload")
    c.conn.send_headers(sid, [(b"x-checksum", b"abc123")], end_stream=True)
    c.flush()
    lines = c.wait_stream(sid).data.decode().splitlines()
    assert "trailer X-Checksum: abc123" in lines, lines
    assert f"headers_in x-checksum: {'abc123' if merge == 'on' else '(none)'}" in lines, lines
    c.close()


def test_request_trailers_after_the_last_data_of_a_known_length_body(srv):
    """HTTP_IN stops reading at the length: the last bytes wait (briefly)
    for the stream's end, so trailers a moment after them still reach the
    handler."""
    c = h2c(srv)
    sid = c.request("/echo", method="POST", end_stream=False, headers=[("content-length", "7")])
    c.send_body(sid, b"payload", end_stream=False)
    time.sleep(0.3)
    c.conn.send_headers(sid, [(b"x-checksum", b"late")], end_stream=True)
    c.flush()
    lines = c.wait_stream(sid).data.decode().splitlines()
    assert lines[0].startswith(f"length=7 fnv={fnv(b'payload')} ")
    assert "trailer X-Checksum: late" in lines, lines
    c.close()


def test_a_known_length_body_whose_stream_stays_open_is_answered(srv):
    """A client that sends all the declared bytes but keeps its stream
    open gets its answer after a short wait, not after the server's
    Timeout (30 s, beyond the client's wait here); the server then closes
    the stream with NO_ERROR (RFC 9113 8.1) and the connection goes on."""
    c = h2c(srv)
    sid = c.request("/echo", method="POST", end_stream=False, headers=[("content-length", "7")])
    c.send_body(sid, b"payload", end_stream=False)
    c.wait(lambda: c.streams[sid].data or c.streams[sid].done, timeout=10)
    assert c.streams[sid].data.startswith(f"length=7 fnv={fnv(b'payload')} ".encode())
    st = c.wait_stream(sid)
    assert st.ended and st.reset in (None, 0), vars(st)
    assert c.wait_stream(c.request("/index.html")).status == 200
    c.close()


# ---- validation and limits ---------------------------------------------------

@pytest.mark.parametrize("headers", [
    [("te", "gzip")], [("connection", "close")], [("keep-alive", "1")], [("transfer-encoding", "chunked")],
    [("upgrade", "h2c")], [("proxy-connection", "x")], [("x-bad", " lead")], [("x-bad", "trail ")],
    [("x-bad", "a\x00b")], [("X-Upper", "1")],
])
def test_malformed_fields_reset_the_stream(srv, headers):
    c = H2Client(srv.port, validate=False)
    sid = c.request("/1k.bin", headers=headers)
    st = c.wait_stream(sid)
    assert st.reset == h2.errors.ErrorCodes.PROTOCOL_ERROR, (headers, st.status, st.reset)
    assert c.wait_stream(c.request("/1k.bin")).status == 200
    c.close()


def test_cookie_crumbs_are_joined_and_authority_is_host(make_server, docroot):
    show = docroot.path / "cgi" / "show.cgi"
    if not show.exists():
        show.write_text("#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\n'\n"
                        "echo \"cookie=$HTTP_COOKIE host=$HTTP_HOST\"\n")
        show.chmod(0o755)
    srv = make_server().start()
    c = H2Client(srv.port)
    st = c.wait_stream(c.request("/cgi/show.cgi", headers=[("cookie", "a=1"), ("cookie", "b=2")],
                                 authority="example.test"))
    assert st.data.decode().strip() == "cookie=a=1; b=2 host=example.test"
    c.close()


def test_repeated_request_fields_are_joined_as_on_http1(make_server, docroot):
    """Repeated fields reach httpd as one, their values joined by ", ", as
    httpd's HTTP/1.1 parser joins them: a handler reading a field (one
    apr_table_get) sees every value, and two Host fields (no :authority) or
    two Content-Length fields are refused with 400 as on HTTP/1.1."""
    show = docroot.path / "cgi" / "show-xff.cgi"
    show.write_text("#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\n'\n"
                    "echo \"xff=$HTTP_X_FORWARDED_FOR accept=$HTTP_ACCEPT\"\n")
    show.chmod(0o755)
    srv = make_server().start()
    fields = [("x-forwarded-for", "198.51.100.7"), ("accept", "a/b"), ("x-forwarded-for", "203.0.113.9")]
    h1 = curl("--http1.1", *[a for n, v in fields for a in ("-H", f"{n}: {v}")], srv.url("/cgi/show-xff.cgi"))
    assert h1.stdout.decode().strip() == "xff=198.51.100.7, 203.0.113.9 accept=a/b"
    c = H2Client(srv.port, validate=False)
    st = c.wait_stream(c.request("/cgi/show-xff.cgi", headers=fields))
    assert st.data.decode() == h1.stdout.decode()
    sid = c.conn.get_next_available_stream_id()
    c.conn.send_headers(sid, [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/index.html"),
                              (b"host", b"a.example"), (b"host", b"b.example")], end_stream=True)
    c.streams[sid] = Stream(sid)
    c.flush()
    assert c.wait_stream(sid).status == 400
    st = c.wait_stream(c.request("/cgi/sum.cgi", method="POST", body=b"hello",
                                 headers=[("content-length", "5"), ("content-length", "5")]))
    assert st.status == 400
    assert c.wait_stream(c.request("/index.html")).status == 200
    c.close()


def test_mod_remoteip_sees_every_x_forwarded_for_field(make_server):
    """A trusted proxy in front that adds its own X-Forwarded-For field
    after the client's: mod_remoteip must take the client address from the
    last field, as on HTTP/1.1. When repeated fields reached httpd as
    separate entries, it read only the first, the client's own, so a client
    could claim any address (6.6.6.6 here)."""
    srv = make_server(extra=f"""LoadModule remoteip_module {MODDIR}/mod_remoteip.so
RemoteIPHeader X-Forwarded-For
RemoteIPInternalProxy 127.0.0.1
LogFormat "%a %r" remoteip
CustomLog "remoteip.log" remoteip""").start()
    fields = [("x-forwarded-for", "6.6.6.6"), ("x-forwarded-for", "198.51.100.7")]
    curl("--http1.1", "-o", "/dev/null", *[a for n, v in fields for a in ("-H", f"{n}: {v}")], srv.url("/index.html"))
    c = H2Client(srv.port)
    assert c.wait_stream(c.request("/index.html", headers=fields)).status == 200
    c.close()
    expected = ["198.51.100.7 GET /index.html HTTP/1.1", "198.51.100.7 GET /index.html HTTP/2.0"]
    log = srv.dir / "remoteip.log"
    assert wait_for(lambda: log.read_text().splitlines()[-2:] == expected), log.read_text()


def test_request_limits_answer_431_and_414(make_server):
    srv = make_server(extra="LimitRequestFields 10\nLimitRequestFieldSize 200\nLimitRequestLine 300").start()
    c = H2Client(srv.port)
    st = c.wait_stream(c.request("/1k.bin", headers=[(f"x-h{i}", "v") for i in range(12)]))
    assert st.status == 431
    # Counted as HTTP/1.1 counts header lines: 10 fields besides the pseudo
    # headers, and a browser's cookie crumbs as the one Cookie line.
    st = c.wait_stream(c.request("/1k.bin", headers=[(f"x-h{i}", "v") for i in range(10)]))
    assert st.status == 200
    crumbs = [("cookie", f"c{i}=1") for i in range(25)]
    st = c.wait_stream(c.request("/1k.bin", headers=[("te", "Trailers")] + crumbs + [("x-a", "1")] * 8))
    assert st.status == 200
    st = c.wait_stream(c.request("/1k.bin", headers=[("x-big", "v" * 300)]))
    assert st.status == 431
    st = c.wait_stream(c.request("/" + "p" * 400))
    assert st.status == 414
    # Far beyond the field limit: the stream is reset (ENHANCE_YOUR_CALM).
    st = c.wait_stream(c.request("/1k.bin", headers=[(f"x-h{i}", "v") for i in range(150)]))
    assert st.reset == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM, (st.status, st.reset)
    assert c.wait_stream(c.request("/1k.bin")).status == 200
    c.close()
    assert srv.wait_access_log('" 431 ') and srv.wait_access_log('" 414 '), srv.read_access_log()


# ---- responses -----------------------------------------------------------------

def test_streamed_output_arrives_as_flushed(srv):
    c = h2c(srv)
    t0 = time.time()
    sid = c.request("/drip?4")
    arrivals = []
    while not c.streams[sid].done:
        before = len(c.streams[sid].data)
        c.read_some(timeout=5)
        if len(c.streams[sid].data) > before:
            arrivals.append(time.time() - t0)
    assert c.streams[sid].data.decode() == "".join(f"chunk {i}\n" for i in range(4))
    # The handler sleeps 300 ms between chunks: the first must not wait for
    # the last.
    assert arrivals[0] < arrivals[-1] - 0.5, arrivals
    c.close()


def test_server_sent_events_through_mod_proxy_stream(srv):
    c = h2c(srv)
    t0 = time.time()
    sid = c.request("/proxy/sse?n=4")
    first = None
    while not c.streams[sid].done:
        c.read_some(timeout=5)
        if first is None and c.streams[sid].data:
            first = time.time() - t0
    total = time.time() - t0
    assert c.streams[sid].data.count(b"data: event") == 4
    assert first is not None and first < total - 0.5, (first, total)
    c.close()


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_a_response_its_backend_cut_short_is_reset_not_ended(srv, framing):
    """mod_proxy_http's backend closes after half the body: its bytes go
    out, then RST_STREAM INTERNAL_ERROR, never END_STREAM. HTTP/1.1 closes
    short of the length or without the last chunk; the stock module resets.
    (The module before ended the stream: the chunked case, with no length
    to tell, reached the client as a complete response.)"""
    c = h2c(srv)
    sid = c.request(f"/proxy/broken?framing={framing}")
    assert 0 < assert_cut_after_head(c.wait_stream(sid)) <= 50000
    sid = c.request("/index.html")
    assert c.wait_stream(sid).status == 200
    c.close()


def test_a_cgi_that_stalls_mid_response_past_timeout_gets_its_stream_reset(make_server, docroot):
    """A CGI writes half its body and then nothing for longer than
    `Timeout`: mod_cgid gives up, and the client gets the bytes and
    RST_STREAM INTERNAL_ERROR soon after the timeout (HTTP/1.1 closes the
    connection without the last chunk; the stock module left the stream
    open until the client gave up)."""
    script = docroot.path / "cgi" / "stall.cgi"
    script.write_text("#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\n'\n"
                      "head -c 50000 /dev/zero\nsleep 10\necho late\n")
    script.chmod(0o755)
    srv = make_server(extra="Timeout 2").start()
    c = H2Client(srv.port, settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20})
    started = time.time()
    sid = c.request("/cgi/stall.cgi")
    assert assert_cut_after_head(c.wait_stream(sid, timeout=10)) == 50000
    took = time.time() - started
    assert took < 8, f"reset after {took:.1f} s: when the CGI ended, not at the timeout"
    assert c.wait_stream(c.request("/index.html")).status == 200
    c.close()


def test_head_and_bodyless_statuses_carry_no_data(srv, docroot):
    c = h2c(srv)
    sid = c.request("/cgi/env.cgi", method="HEAD")
    st = c.wait_stream(sid)
    assert st.status == 200 and st.data == b""
    etag = c.wait_stream(c.request("/1k.bin")).header("etag")
    sid = c.request("/1k.bin", headers=[("if-none-match", etag)])
    st = c.wait_stream(sid)
    assert st.status == 304 and st.data == b""
    assert not [e for e in c.events_of(h2.events.DataReceived) if e.stream_id == sid and e.data]
    lm = c.wait_stream(c.request("/1k.bin")).header("last-modified")
    st = c.wait_stream(c.request("/1k.bin", headers=[("if-modified-since", lm)]))
    assert st.status == 304 and st.data == b""
    # Logged as HTTP/1.1 logs them: no body bytes (%b "-"), though the
    # handler passed the file for the HEAD.
    st = c.wait_stream(c.request("/1k.bin?head", method="HEAD"))
    assert st.status == 200 and st.data == b""
    assert srv.wait_access_log('"HEAD /1k.bin?head HTTP/2.0" 200 - '), srv.read_access_log()[-3:]
    c.close()


def test_ranges_single_and_multipart(srv, docroot):
    data = docroot.file("1k.bin").read_bytes()
    c = h2c(srv)
    st = c.wait_stream(c.request("/1k.bin", headers=[("range", "bytes=100-199")]))
    assert st.status == 206 and bytes(st.data) == data[100:200]
    assert st.header("content-range") == "bytes 100-199/1024"
    st = c.wait_stream(c.request("/1k.bin", headers=[("range", "bytes=0-9,500-509")]))
    assert st.status == 206 and st.header("content-type").startswith("multipart/byteranges")
    assert data[0:10] in st.data and data[500:510] in st.data
    c.close()


def test_content_length_is_kept_when_known(srv):
    c = h2c(srv)
    st = c.wait_stream(c.request("/1m.bin"))
    assert st.header("content-length") == str(1 << 20)
    c.close()


def test_deflate_compression(srv, docroot):
    c = h2c(srv)
    st = c.wait_stream(c.request("/gz/100k.bin", headers=[("accept-encoding", "gzip")]))
    assert st.header("content-encoding") == "gzip"
    assert gzip.decompress(bytes(st.data)) == docroot.file("100k.bin").read_bytes()
    c.close()


def test_compression_after_a_client_that_accepts_none(srv, docroot):
    """mod_deflate removes itself for a client that accepts no encoding, so
    that request is a plain static file, which c1 learns to run itself.
    A browser's request for the same URL must not run there with
    compression (its output copied into memory on c1, cut at 1 MiB): the
    accepted encodings are part of what c1 learns by."""
    c = h2c(srv)
    for _ in range(3):
        st = c.wait_stream(c.request("/gz/1m.bin?learn"))
        assert st.status == 200 and st.header("content-encoding") is None and len(st.data) == 1 << 20
    st = c.wait_stream(c.request("/gz/1m.bin?learn", headers=[("accept-encoding", "gzip")]))
    assert (st.status, st.reset, st.header("content-encoding")) == (200, None, "gzip"), (st.status, st.reset)
    assert gzip.decompress(bytes(st.data)) == docroot.file("1m.bin").read_bytes()
    c.close()


def test_compression_after_a_304_of_the_same_url(srv, docroot):
    """mod_deflate takes itself out of the chain for a 304: a browser's
    revalidations of a URL whose full GET is compressed must not teach c1
    to run that GET itself (its compressed output copied into memory on
    c1, cut at 1 MiB)."""
    import email.utils
    path = "/gz/1m.bin?revalidated"
    gzip_ok = [("accept-encoding", "gzip")]
    mtime = os.stat(docroot.file("1m.bin")).st_mtime
    teach = gzip_ok + [("if-modified-since", email.utils.formatdate(mtime, usegmt=True))]
    c = h2c(srv)
    for _ in range(3):
        st = c.wait_stream(c.request(path, headers=teach))
        assert st.status == 304 and not st.data, st.status
    st = c.wait_stream(c.request(path, headers=gzip_ok))
    assert (st.status, st.reset, st.header("content-encoding")) == (200, None, "gzip"), (st.status, st.reset)
    assert gzip.decompress(bytes(st.data)) == docroot.file("1m.bin").read_bytes()
    c.close()


def test_response_trailers_from_a_handler_and_a_proxy(srv):
    c = h2c(srv)
    st = c.wait_stream(c.request("/echo", method="POST", headers=[("want-trailers", "1")], body=b"abc"))
    assert dict(st.trailers) == {b"x-body-length": b"3", b"grpc-status": b"0"}
    st = c.wait_stream(c.request("/proxy/trailers"))
    assert st.data == b"hello"
    assert dict(st.trailers).get(b"grpc-status") == b"0", st.trailers
    c.close()


# ---- the http2-status handler -------------------------------------------------

def test_http2_status_reports_the_connection_as_the_stock_module_does(srv):
    c = h2c(srv)
    assert c.wait_stream(c.request("/1k.bin")).status == 200
    drip = c.request("/drip?5")  # in flight while the report is made
    st = c.wait_stream(c.request("/h2status", headers=[("accept-encoding", "gzip")]))
    assert st.status == 200 and st.header("content-type") == "application/json", st.headers
    assert st.header("content-encoding") is None
    report = json.loads(bytes(st.data))
    assert report["version"] == "draft-01"
    assert report["settings"] == {"SETTINGS_MAX_CONCURRENT_STREAMS": 100, "SETTINGS_MAX_FRAME_SIZE": 16384,
                                  "SETTINGS_INITIAL_WINDOW_SIZE": 65535, "SETTINGS_ENABLE_PUSH": 0}
    # The client's SETTINGS (h2c() asks for a 16 MiB stream window).
    assert report["peerSettings"]["SETTINGS_INITIAL_WINDOW_SIZE"] == 1 << 24
    assert report["peerSettings"]["SETTINGS_HEADER_TABLE_SIZE"] == 4096
    assert set(report["peerSettings"]) == {"SETTINGS_MAX_CONCURRENT_STREAMS", "SETTINGS_MAX_FRAME_SIZE",
                                           "SETTINGS_INITIAL_WINDOW_SIZE", "SETTINGS_ENABLE_PUSH",
                                           "SETTINGS_HEADER_TABLE_SIZE", "SETTINGS_MAX_HEADER_LIST_SIZE"}
    assert st.header("conn-flow-in") == str(report["connFlowIn"]) and report["connFlowIn"] > 0
    assert st.header("conn-flow-out") == str(report["connFlowOut"]) and report["connFlowOut"] > 0
    assert report["sentGoAway"] == 0
    # The report's own stream and the drip in flight; the first request
    # is gone.
    streams = report["streams"]
    assert str(drip) in streams and str(st.id) in streams and "1" not in streams, streams
    assert streams[str(st.id)]["state"] == "HALF_CLOSED_REMOTE"
    assert streams[str(st.id)]["dataIn"] > 0 and streams[str(st.id)]["dataOut"] == 0
    stats = report["stats"]
    assert stats["in"]["requests"] == 3 and stats["in"]["resets"] == 0
    # Responses submitted: the 1 KiB file's and the drip's first head, at
    # least; the report's own is not yet.
    assert 1 <= stats["out"]["responses"] <= 2
    assert stats["in"]["frames"] >= 4 and stats["in"]["octets"] > 0
    assert stats["out"]["frames"] >= 3 and stats["out"]["octets"] > 1024
    assert stats["push"] == {"promises": 0, "submits": 0, "resets": 0}
    assert c.wait_stream(drip).status == 200
    c.close()


def test_http2_status_takes_a_body_and_answers_trailers_with_a_trailer(srv):
    c = h2c(srv)
    sid = c.request("/h2status", method="POST", end_stream=False)
    c.conn.send_data(sid, b"x" * 500)
    c.conn.send_headers(sid, [(b"x-checksum", b"abc")], end_stream=True)
    c.flush()
    st = c.wait_stream(sid)
    assert st.status == 200
    assert json.loads(bytes(st.data))["streams"][str(sid)]["dataIn"] > 500
    assert dict(st.trailers) == {b"h2-trailers-in": b"1"}, st.trailers
    # A longer body is read up to its first KiB, as by the stock handler:
    # the report comes before the body has ended, and the connection goes
    # on.
    sid = c.request("/h2status", method="POST", end_stream=False)
    c.conn.send_data(sid, b"y" * 5000)
    c.flush()
    st = c.wait_stream(sid)
    assert st.status == 200 and json.loads(bytes(st.data))["version"] == "draft-01"
    assert c.wait_stream(c.request("/1k.bin")).status == 200
    c.close()


def test_many_http2_status_requests_at_once_all_get_their_report(srv):
    # Each worker waits for c1's answer: none may be lost when twenty ask
    # in one read, beside a download that keeps c1 writing.
    c = h2c(srv)
    big = c.request("/1m.bin")
    sids = [c.request("/h2status") for _ in range(20)]
    for sid in sids:
        st = c.wait_stream(sid)
        assert st.status == 200, (sid, st.status, st.reset)
        assert str(sid) in json.loads(bytes(st.data))["streams"]
    assert len(c.wait_stream(big).data) == 1 << 20
    c.close()


def test_http2_status_is_for_http2_requests_only(srv):
    # HTTP/1.1, and methods other than GET (HEAD) and POST: the handler
    # declines, as the stock module's, and the location has no file.
    r = curl("--http1.1", "-s", "-o", "/dev/null", "-w", "%{http_code}", srv.url("/h2status"))
    assert r.stdout.decode() == "404"
    c = h2c(srv)
    assert c.wait_stream(c.request("/h2status", method="PUT", body=b"x")).status == 405
    c.close()


def test_other_modules_read_the_http2_variables_through_http2_var_lookup(srv):
    """The optional function of mod_http2.h, as the stock module answers it
    (a module of the tests calls it from its handler)."""
    c = h2c(srv)
    c.wait_stream(c.request("/1k.bin"))
    st = c.wait_stream(c.request("/h2vars"))
    got = dict(line.split("=", 1) for line in st.data.decode().splitlines() if "=" in line)
    # The tag: the child's process id, the session's number, the stream's.
    pid, _, rest = got.pop("H2_STREAM_TAG").partition("-")
    assert int(pid) in srv.children() and re.fullmatch(rf"\d+-{st.id}", rest), (pid, rest)
    assert got == {"HTTP2": "on", "H2PUSH": "off", "H2_PUSH": "off", "H2_PUSHED": "", "H2_PUSHED_ON": "",
                   "H2_STREAM_ID": str(st.id), "NOT_H2": "", "connection HTTP2": "on"}, got
    c.close()
    r = curl("--http1.1", "-s", srv.url("/h2vars"))
    assert r.stdout.decode().splitlines() == ["HTTP2=off", "H2PUSH=off", "H2_PUSH=off", "H2_PUSHED=", "H2_PUSHED_ON=",
                                              "H2_STREAM_ID=", "H2_STREAM_TAG=", "NOT_H2=", "connection HTTP2=off"]


def test_stream_connections_have_ids_no_mpm_connection_has(srv):
    """A stream's connection id (c->id) is above every id the MPM gives
    its connections (mod_cgid's daemon, shared by the children, finds a
    request's script by it, and ends that script with the request): the
    stock module's scheme gave connection 0's stream on worker 3 the id
    of the HTTP/1.1 connection on thread 3."""
    ids = set()
    for _ in range(3):
        c = h2c(srv)
        sids = [c.request("/connid") for _ in range(4)]
        ids |= {int(c.wait_stream(s).data) for s in sids}
        c.close()
    assert all(i >= 1 << 40 for i in ids), ids
    r = curl("--http1.1", "-s", srv.url("/connid"))
    assert int(r.stdout) < 1 << 40


def test_require_host_and_hostname_lookups_on_streams(make_server):
    """`Require host` (a double reverse lookup of the client's address)
    and `HostnameLookups On` (%h) on many streams of a connection at once:
    each stream's connection keeps the name it looks up in its own pool
    (the address was c1's, whose pool the workers then allocated from
    while c1's thread did)."""
    srv = make_server(name="hostnames")
    srv.extra = f"""HostnameLookups On
LogFormat "%h %>s" hosts
CustomLog "{srv.dir}/hosts.log" hosts
<Location /1k.bin>
  Require host localhost
</Location>
<Location /index.html>
  Require host example.invalid
</Location>"""
    srv.start()
    c = h2c(srv)
    for _ in range(3):
        sids = [c.request("/1k.bin") for _ in range(8)]
        assert all(c.wait_stream(s).status == 200 for s in sids)
    assert c.wait_stream(c.request("/index.html")).status == 403
    c.close()
    assert wait_for(lambda: (srv.dir / "hosts.log").exists()
                    and (srv.dir / "hosts.log").read_text().count("localhost 200") >= 24)


def test_the_stream_tag_names_the_connection_for_its_whole_life(srv):
    """H2_STREAM_TAG's middle number is the session's: the same for every
    stream of a connection, also after it went idle (back to the event
    MPM, which gives a resumed connection the id of the thread that takes
    it), and another for every connection (it was c1's id: the thread's,
    which the next connections on that thread had as well)."""
    sessions = []
    for _ in range(6):
        c = h2c(srv)
        tags = []
        for _ in range(2):
            st = c.wait_stream(c.request("/h2vars"))
            tags.append(dict(line.split("=", 1) for line in st.data.decode().splitlines())["H2_STREAM_TAG"])
            time.sleep(0.1)  # idle: the session goes back to the MPM
        c.close()
        middles = {t.split("-")[1] for t in tags}
        assert len(middles) == 1, tags
        sessions.append((tags[0].split("-")[0], middles.pop()))
    assert len(set(sessions)) == len(sessions), sessions


def test_request_field_names_reach_http11_backends_spelled_as_http11_clients_do(srv):
    """HTTP/2 sends field names in lower case; httpd gets them as the stock
    module gives them (first letters upper-cased), so mod_proxy_http passes
    "User-Agent" on to an HTTP/1.1 backend, not "user-agent"."""
    c = h2c(srv)
    st = c.wait_stream(c.request("/proxy/headers", headers=[("user-agent", "ua/1"), ("x-custom-thing", "v"),
                                                            ("accept", "*/*"), ("cookie", "a=1"), ("cookie", "b=2")]))
    assert st.status == 200, st.status
    lines = st.data.decode().splitlines()
    assert {"User-Agent: ua/1", "X-Custom-Thing: v", "Accept: */*", "Cookie: a=1; b=2"} <= set(lines), lines
    assert not [line for line in lines if line[0].islower()], lines
    c.close()


def test_interim_103_from_a_proxied_backend(srv):
    c = h2c(srv)
    st = c.wait_stream(c.request("/proxy/early"))
    assert st.status == 200 and st.data == b"after the hints\n"
    assert st.interim and dict(st.interim[0])[b":status"] == b"103", st.interim
    assert dict(st.interim[0])[b"link"] == b"</early.css>; rel=preload"
    # A field HTTP/2 cannot carry (a control byte) is left out of the
    # interim; it reset the stream, final response and all.
    st = c.wait_stream(c.request("/proxy/early-bad"))
    assert st.status == 200 and st.data == b"after the hints\n", (st.status, st.reset)
    assert [dict(i).get(b"x-bad") for i in st.interim] == [None], st.interim
    c.close()


def test_a_body_that_stalls_past_h2streamtimeout_is_answered_408(make_server, test_module):
    """A body stalled for H2StreamTimeout fails the handler's read; its 408
    goes out whole (ended, not reset), as over HTTP/1.1: the stream itself
    is fine."""
    srv = make_server(h2_conf="H2StreamTimeout 1", extra=f"""{test_module}
<Location /echo>
  SetHandler h2rs-echo
</Location>""").start()
    c = H2Client(srv.port)
    sid = c.request("/echo", method="POST", end_stream=False)
    c.send_body(sid, b"x" * 100, end_stream=False)
    st = c.wait_stream(sid, timeout=10)
    # (then RST_STREAM NO_ERROR: the rest of the body is not wanted)
    assert (st.status, st.ended) == (408, True) and st.reset in (None, h2.errors.ErrorCodes.NO_ERROR), st.reset
    c.close()


def test_the_stream_timeout_is_that_of_the_requests_own_virtual_host(make_server, test_module):
    """H2StreamTimeout (else Timeout) of the name-based virtual host that
    serves the request applies, as with the stock module and HTTP/1.1, not
    the one the connection was opened on; and a virtual host's
    `H2StreamTimeout 0` gives it back its own Timeout over the main
    server's H2StreamTimeout."""
    srv = make_server(h2_conf="H2StreamTimeout 1")
    vhost = "\n".join(f"""<VirtualHost 127.0.0.1:{srv.port}>
  ServerName {name}
  {conf}
</VirtualHost>""" for name, conf in [("first.test", ""), ("patient.test", "H2StreamTimeout 20"),
                                        ("own-timeout.test", "H2StreamTimeout 0\n  Timeout 20")])
    srv.extra = f"""{test_module}
<Location /echo>
  SetHandler h2rs-echo
</Location>
{vhost}"""
    srv.start()
    c = H2Client(srv.port)
    sids = {name: c.request("/echo", method="POST", end_stream=False, authority=name)
            for name in ("first.test", "patient.test", "own-timeout.test")}
    for sid in sids.values():
        c.send_body(sid, b"x" * 100, end_stream=False)
    # The connection's own virtual host (the first) keeps the 1 s.
    assert c.wait_stream(sids["first.test"], timeout=10).status == 408
    stalled_until = time.time() + 1.5  # the others stall on, past 1 s
    while time.time() < stalled_until:
        c.read_some(timeout=stalled_until - time.time())
    for name in ("patient.test", "own-timeout.test"):
        c.send_body(sids[name], b"y" * 100, end_stream=True)
        st = c.wait_stream(sids[name], timeout=10)
        assert st.status == 200 and st.data.startswith(b"length=200 "), (name, st.status, st.reset)
    c.close()


def test_a_response_cut_by_a_failed_write_is_reset_not_ended(make_server, backend):
    """A client that opens no window on a stream (a paused download; the
    connection's window is open) for longer than H2StreamTimeout makes the
    handler's write fail; mod_proxy_http then gives up (DONE) and httpd
    still ends the request with EOS. The stream must be reset, as HTTP/1.1
    closes its connection: before, the EOS ended it, and the client got
    the first part of a chunked response with END_STREAM, as if complete."""
    srv = make_server(h2_conf="H2StreamTimeout 1",
                      extra=f"{MODULES}\nProxyPass /proxy/ http://127.0.0.1:{backend}/").start()
    c = H2Client(srv.port, auto_ack_data=False)
    c.conn.increment_flow_control_window(1 << 24)
    sid = c.request("/proxy/bigchunked?n=4000000")
    c.wait(lambda: c.streams[sid].status is not None, timeout=10)
    time.sleep(3)  # the stream's window stays shut past H2StreamTimeout
    c.auto_ack_data = True
    c.conn.increment_flow_control_window(1 << 20, stream_id=sid)
    c.flush()
    st = c.wait_stream(sid)
    assert st.status == 200 and len(st.data) < 4000000
    assert st.reset is not None and not st.ended, (st.reset, st.ended, len(st.data))
    c.close()
    srv.new_log_lines()  # mod_proxy_http logs the failed write


def test_interim_103_goes_out_only_under_h2_early_hints(make_server, backend):
    """H2EarlyHints off (the default): a 103 from a proxied backend does not
    reach the client, as with the stock module; the final response does."""
    srv = make_server(extra=f"{MODULES}\nProxyPass /proxy/ http://127.0.0.1:{backend}/")
    srv.start()
    c = h2c(srv)
    st = c.wait_stream(c.request("/proxy/early"))
    assert st.status == 200 and st.data == b"after the hints\n"
    assert not st.interim, st.interim
    c.close()


def test_error_responses_from_every_phase(srv):
    c = h2c(srv)
    st = c.wait_stream(c.request("/private/"))
    assert st.status == 401 and st.header("www-authenticate").startswith("Basic")
    import base64
    auth = "Basic " + base64.b64encode(b"alice:secret").decode()
    st = c.wait_stream(c.request("/private/", headers=[("authorization", auth)]))
    assert st.status in (200, 404)
    st = c.wait_stream(c.request("/limited", method="POST", body=b"x" * 5000,
                                 headers=[("content-length", "5000")]))
    assert st.status == 413
    # `Header always` once, as over HTTP/1.1: the header filter merges the
    # tables before the error bucket's ap_die (it was sent twice).
    assert [v for n, v in st.headers if n == b"x-was-h2"] == [b"yes"], st.headers
    st = c.wait_stream(c.request("/cgi/fail.cgi"))
    assert st.status == 500
    st = c.wait_stream(c.request("/no/such/thing"))
    assert st.status == 404 and b"mod_h2rs test" in st.data  # ErrorDocument
    c.close()
    srv.new_log_lines()  # the failing CGI logs its error


def test_output_after_the_response_ends_is_dropped(srv):
    """A handler whose request is answered twice (mod_security2 blocking a
    response body: its 502 goes out, then httpd's 500 after it) gives the
    client the first response only, as HTTP/1.1 does (its chunked body
    ends at the first EOS, and the connection closes after the 502): the
    second document is not appended to the body."""
    h1 = curl("--http1.1", "-w", "%{http_code}", srv.url("/twice"))
    first, code = h1.stdout[:-3], h1.stdout[-3:]
    assert code == b"502" and b"502 Bad Gateway" in first and b"500" not in first
    c = h2c(srv)
    st = c.wait_stream(c.request("/twice"))
    assert st.status == 502
    assert st.data == first, st.data
    assert st.header("content-length") in (None, str(len(st.data)))
    assert st.reset is None
    c.close()
    srv.new_log_lines()


@pytest.mark.parametrize("path", ["/fail-late", "/fail-late-doc"])
def test_a_handler_that_fails_after_its_head_has_its_stream_reset(srv, docroot, path):
    """A handler that fails once its head and part of its body went out:
    httpd then sends its error response (or the ErrorDocument) on the same
    connection. HTTP/1.1 (and the stock module) append it to the body and
    end the response as if complete, for caches to keep; here the stream
    is reset, as for a backend that broke off."""
    c = h2c(srv)
    st = c.wait_stream(c.request(path))
    assert st.status in (None, 200) and st.reset == h2.errors.ErrorCodes.INTERNAL_ERROR and not st.ended, \
        (st.status, st.reset, st.ended)
    # (The reset may overtake the body's start; never the error page.)
    assert b"the start of a body\n".startswith(bytes(st.data)), bytes(st.data)
    assert c.wait_stream(c.request("/1k.bin")).status == 200
    c.close()
    srv.new_log_lines()  # the cut is logged


def test_a_response_cut_while_the_client_window_is_used_up_resets_that_stream_only(srv):
    """A response that breaks off after its head (a backend gone mid-body)
    at a moment when the client's connection window is used up (a download
    took it, the client's WINDOW_UPDATE is yet to come): that stream is
    reset, the connection and its download go on. (It ended the whole
    connection with ENHANCE_YOUR_CALM, the answer to a client that never
    opens its window.)"""
    c = Conn(srv.port, settings_pairs=[(INITIAL_WINDOW_SIZE, 1 << 24)], auto_window=False)
    download = c.request("/1m.bin")
    c.wait(lambda: len(c.resp(download).body) >= 65535, what="the connection window's worth of the download")
    cut = c.request("/cut")
    c.wait(lambda: c.resp(cut).done or c.goaway is not None or c.closed, what="the cut response's reset")
    # (Its head may or may not go out before the reset: the worker's cut
    # can reach c1 together with it.)
    assert c.goaway is None and c.resp(cut).reset == h2.errors.ErrorCodes.INTERNAL_ERROR, c.log()
    c.send(window_update(0, 1 << 20))
    r = c.response(download)
    assert r.status == 200 and len(r.body) == 1 << 20
    c.expect_alive()
    c.close()
    srv.new_log_lines()  # the cut is logged


# ---- environment and logging ------------------------------------------------------

def test_http2_expressions(srv):
    r = curl("--http2-prior-knowledge", "-D", "-", "-o", "/dev/null", srv.url("/index.html"))
    assert re.search(rb"(?im)^x-was-h2: yes", r.stdout)
    r = curl("--http1.1", "-D", "-", "-o", "/dev/null", srv.url("/index.html"))
    assert not re.search(rb"(?im)^x-was-h2", r.stdout)
    r = curl("--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_code}", srv.url("/h2only/1k.bin"))
    assert r.stdout == b"200"
    r = curl("--http1.1", "-o", "/dev/null", "-w", "%{http_code}", srv.url("/h2only/1k.bin"))
    assert r.stdout == b"403"


def test_access_log_with_logio_counts_each_stream(srv, workdir):
    log = workdir / "srv-sem" / "sem.log"
    before = len(log.read_text().splitlines()) if log.exists() else 0
    c = h2c(srv)
    a = c.request("/1m.bin")
    b = c.request("/echo", method="POST", body=os.urandom(100_000))
    c.wait(lambda: c.streams[a].done and c.streams[b].done)
    c.close()
    deadline = time.time() + 5
    while len(log.read_text().splitlines()) < before + 2 and time.time() < deadline:
        time.sleep(0.05)
    lines = log.read_text().splitlines()[before:]
    big = [l for l in lines if '"GET /1m.bin HTTP/2.0" 200' in l][0].split()
    post = [l for l in lines if '"POST /echo HTTP/2.0" 200' in l][0].split()
    # %h "%r" %>s %b %H %I %O stream
    i_big, o_big = int(big[-3]), int(big[-2])
    i_post, o_post = int(post[-3]), int(post[-2])
    assert (1 << 20) < o_big < (1 << 20) + 4096, o_big
    assert i_big < 1000, i_big
    assert 100_000 <= i_post < 110_000, i_post
    assert o_post < 1000, o_post


def test_access_log_counts_a_body_of_unknown_length_as_the_client_sent_it(srv, workdir):
    """%I of a request whose body has no content-length is its HEADERS
    frame and its body, as for a body of declared length (and in the stock
    module), not the HTTP/1.1 chunk framing the body reaches httpd in (12
    bytes in two DATA frames logged 10 bytes more, 1 MiB 1,127)."""
    log = workdir / "srv-sem" / "sem.log"
    before = len(log.read_text().splitlines()) if log.exists() else 0
    c = h2c(srv)
    c.flush()
    sid = c.conn.get_next_available_stream_id()
    c.conn.send_headers(sid, [(b":method", b"POST"), (b":scheme", b"http"),
                              (b":authority", f"127.0.0.1:{srv.port}".encode()), (b":path", b"/echo?unknown-length")])
    head = c.conn.data_to_send()
    c.send_raw(head)
    c.streams[sid] = Stream(sid)
    # Apart, so that most reach httpd as a chunk of their own.
    for _ in range(20):
        c.conn.send_data(sid, b"x" * 50)
        c.flush()
        time.sleep(0.01)
    c.conn.end_stream(sid)
    c.flush()
    st = c.wait_stream(sid)
    c.close()
    assert st.status == 200 and st.data.decode().startswith("length=1000 "), st.data
    deadline = time.time() + 5
    lines = []
    while not lines and time.time() < deadline:
        lines = [l for l in log.read_text().splitlines()[before:] if '"POST /echo?unknown-length HTTP/2.0" 200' in l]
        time.sleep(0.05)
    # %h "%r" %>s %b %H %I %O stream
    assert int(lines[0].split()[-3]) == len(head) + 1000, (lines[0], len(head))


def test_access_log_counts_an_http1_request_once(srv, workdir):
    """%I of an HTTP/1.1 request is the bytes its client sent, also when
    its first byte came alone and c1 peeked at the input twice to tell it
    from the HTTP/2 preface (mod_logio counted every peek: 25 bytes more
    here; and every connection's first request 24 more, as with the stock
    module)."""
    log = workdir / "srv-sem" / "sem.log"
    before = len(log.read_text().splitlines()) if log.exists() else 0
    req = f"POST /echo?peeked HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc".encode()
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        s.sendall(req[:1])
        time.sleep(0.3)
        s.sendall(req[1:])
        got = b""
        while chunk := s.recv(65536):
            got += chunk
    assert got.startswith(b"HTTP/1.1 200"), got[:200]
    deadline = time.time() + 5
    lines = []
    while not lines and time.time() < deadline:
        lines = [l for l in log.read_text().splitlines()[before:] if '"POST /echo?peeked HTTP/1.1" 200' in l]
        time.sleep(0.05)
    # %h "%r" %>s %b %H %I %O stream
    assert int(lines[0].split()[-3]) == len(req), (lines[0], len(req))


def test_access_log_tells_delivered_responses_from_cut_ones(srv, workdir):
    """%X is "-" for a response the client got in full and "X" for one it
    reset. (About 1 complete response in 30 was logged X, whenever c1 sent
    its end before the worker had returned from the request; the stock
    module logs such X too.)"""
    log = workdir / "srv-sem" / "delivery.log"
    uris = workdir / "delivery-uris.txt"
    uris.write_text("".join(srv.url(u) + "\n" for u in
                            ["/index.html", "/1k.bin", "/100k.bin", "/nope", "/old", "/dir/", "/cgi/env.cgi",
                             "/proxy/big?n=5000", "/denied/secret.txt", "/gz/1k.bin"]))
    r = h2load("-c", "4", "-m", "8", "-n", "2000", "-H", "user-agent: delivered", "-i", str(uris))
    assert r.get("done") == 2000 and r.get("errored") == 0, r["output"][-800:]

    c = h2c(srv)
    sid = c.request("/drip?10", headers=[("user-agent", "cut")])
    c.wait(lambda: len(c.streams[sid].data) > 0)
    c.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
    c.flush()
    c.close()

    def lines(agent):
        return [line for line in log.read_text().splitlines() if line.startswith(agent + " ")]

    deadline = time.time() + 10
    while (len(lines("delivered")) < 2000 or not lines("cut")) and time.time() < deadline:
        time.sleep(0.1)
    delivered = lines("delivered")
    assert len(delivered) == 2000
    assert [line for line in delivered if not line.endswith(" -")] == []
    assert [line.rsplit(" ", 1)[1] for line in lines("cut")] == ["X"]


def test_access_log_numbers_the_requests_of_a_connection(srv, workdir):
    """%k counts the requests of a connection before this one, as for
    HTTP/1.1's keep-alive requests (every HTTP/2 request logged 0 before;
    the stock module logs 1 for most). The request an h2c Upgrade turns
    into stream 1 is its connection's first (the 101 of the HTTP/1.1
    request before it is logged too, as HTTP/1.1, when that request ends:
    as the session first goes idle, before or after curl's second request,
    so the lines are compared in any order)."""
    log = workdir / "srv-sem" / "numbered.log"
    for agent, count in (("h2-three", 3), ("h2-one", 1)):
        c = h2c(srv)
        for _ in range(count):
            assert c.wait_stream(c.request("/index.html", headers=[("user-agent", agent)])).status == 200
        c.close()
    for agent, proto in (("h1-keepalive", "--http1.1"), ("h2c-upgrade", "--http2")):
        r = curl(proto, "-A", agent, "-o", "/dev/null", "-o", "/dev/null", "-w", "%{http_version} ",
                 srv.url("/index.html"), srv.url("/1k.bin"))
        assert r.stdout.split() == ([b"1.1", b"1.1"] if proto == "--http1.1" else [b"2", b"2"])

    def numbers(agent):
        return sorted(" ".join(line.split()[1:]) for line in log.read_text().splitlines()
                      if line.startswith(agent + " "))

    expected = {"h2-three": ["HTTP/2.0 0", "HTTP/2.0 1", "HTTP/2.0 2"], "h2-one": ["HTTP/2.0 0"],
                "h1-keepalive": ["HTTP/1.1 0", "HTTP/1.1 1"],
                "h2c-upgrade": ["HTTP/1.1 0", "HTTP/2.0 0", "HTTP/2.0 1"]}
    deadline = time.time() + 5
    while {a: numbers(a) for a in expected} != expected and time.time() < deadline:
        time.sleep(0.05)
    assert {a: numbers(a) for a in expected} == expected


def test_status_counts_http2_requests_and_bytes(make_server):
    """mod_status's Total Accesses and Total kBytes (what monitoring reads
    from server-status?auto) count HTTP/2 requests as HTTP/1.1 ones: httpd
    counts a request when its EOR bucket is destroyed, through the
    connection's scoreboard handle, which a c2 gets from c1 for that
    moment. (Before, 300 HTTP/2 requests counted 0.)"""
    srv = make_server().start()

    def totals():
        r = curl("--http1.1", srv.url("/server-status?auto"))
        found = dict(re.findall(r"^(Total Accesses|Total kBytes): (\d+)$", r.stdout.decode(), re.M))
        return int(found["Total Accesses"]), int(found["Total kBytes"])

    accesses, kbytes = totals()
    r = h2load("-n", "300", "-c", "3", "-m", "10", srv.url("/100k.bin"))
    assert r.get("done") == 300 and r.get("errored") == 0, r["output"][-800:]
    polls = 0
    deadline = time.time() + 10
    while True:
        polls += 1
        now_accesses, now_kbytes = totals()
        if now_accesses - accesses >= 300 + polls or time.time() > deadline:
            break
        time.sleep(0.2)
    # The 300 requests and the status pages read since (each counted once
    # it is done).
    assert 300 + polls <= now_accesses - accesses <= 300 + polls + 1, (accesses, now_accesses, polls)
    assert now_kbytes - kbytes >= 300 * 100, (kbytes, now_kbytes)


def test_request_times_include_the_wait_for_a_worker_and_reach_the_status(make_server):
    """A stream's request_time is when its head arrived, as the stock
    module has it: %D includes a wait for a worker (it started when a
    worker took the request). And its duration reaches mod_status's Total
    Duration, as HTTP/1.1's do (HTTP/2 requests added none)."""
    srv = make_server(h2_conf="H2MinWorkers 1\nH2MaxWorkers 1")
    srv.extra = f'LogFormat "%r %D" dur\nCustomLog "{srv.dir}/dur.log" dur'
    srv.start()

    def total_ms():
        r = curl("--http1.1", srv.url("/server-status?auto"))
        return int(re.search(rb"^Total Duration: (\d+)$", r.stdout, re.M).group(1))

    before = total_ms()
    c = h2c(srv)
    sids = [c.request("/cgi/slow.cgi?1") for _ in range(2)]  # one worker: one waits
    c.wait(lambda: all(c.streams[s].done for s in sids), timeout=20)
    assert [c.streams[s].status for s in sids] == [200, 200]
    c.close()
    log = srv.dir / "dur.log"
    assert wait_for(lambda: log.exists() and log.read_text().count("slow.cgi") == 2)
    durations = sorted(int(line.split()[-1]) for line in log.read_text().splitlines() if "slow.cgi" in line)
    assert durations[0] >= 1_000_000 and durations[1] >= 1_900_000, durations
    assert wait_for(lambda: total_ms() - before >= 2_900), (before, total_ms())


def test_status_page_shows_h2_sessions(srv):
    c = h2c(srv)
    slow = c.request("/cgi/slow.cgi?2")
    # The connection's thread waits on its streams: the slow CGI (and the
    # status page itself) are open, and on workers; the oldest one's request
    # is shown, as HTTP/1.1 shows its request line, with the virtual host.
    # The row is written each time the thread blocks, so a page made while
    # it was busy sending may miss it: asked again, a few times at most.
    row = rb"<td nowrap>127\.0\.0\.1:%d</td><td nowrap>h2: [12] open, [12] on workers; GET /cgi/slow\.cgi\?2<"
    pages = []
    for _ in range(5):
        pages.append(c.wait_stream(c.request("/server-status")).data)
        if re.search(row % srv.port, pages[-1]):
            break
        time.sleep(0.1)
    assert re.search(row % srv.port, pages[-1]), pages[-1][-2000:]
    c.wait_stream(slow)
    c.close()


def test_ssl_variables_on_tls_streams(make_server, certs, docroot):
    from conftest import free_port
    from h2client import tls_socket
    ssl_cgi = docroot.path / "cgi" / "ssl.cgi"
    if not ssl_cgi.exists():
        ssl_cgi.write_text("#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\n'\n"
                           "echo \"HTTPS=$HTTPS SSL_PROTOCOL=$SSL_PROTOCOL HTTP2=$HTTP2\"\n")
        ssl_cgi.chmod(0o755)
    port = free_port()
    srv = make_server()
    srv.tls_config(certs, port, extra='<Directory "%s/cgi">\n  SSLOptions +StdEnvVars\n</Directory>' % docroot.path)
    srv.start()
    c = H2Client(port, sock=tls_socket(port))
    st = c.wait_stream(c.request("/cgi/ssl.cgi"))
    assert re.match(r"HTTPS=on SSL_PROTOCOL=TLSv1\.[23] HTTP2=on", st.data.decode()), st.data
    c.close()


def test_h2_variables_replace_ones_set_before_them(make_server, certs):
    """The stream's variables replace any of the same name set earlier in
    the request (here by mod_rewrite), on h2c and under TLS (where mod_ssl
    has set its own variables first): one entry each, ours. A static file,
    not a CGI script: CGI's environment keeps the last of duplicate names,
    the access log (%{H2_STREAM_ID}e) the first."""
    from conftest import free_port
    from h2client import tls_socket
    port = free_port()
    rewrite = "RewriteEngine on\nRewriteRule ^/index\\.html$ - [E=H2_STREAM_ID:bogus,E=HTTP2:bogus,E=OTHER:kept]"
    srv = make_server(extra=rewrite)
    srv.tls_config(certs, port, extra=rewrite)
    srv.start()
    for c in (H2Client(srv.port), H2Client(port, sock=tls_socket(port))):
        assert c.wait_stream(c.request("/index.html")).status == 200
        c.close()
    logged = srv.wait_access_log("/index.html", count=2)
    assert len(logged) == 2 and all(line.endswith(" HTTP/2.0 1") for line in logged), logged


def test_h2_variables_are_set_before_fixups_that_answer_the_request(srv):
    """mod_dir's redirect of a directory named without its slash comes from
    a fixup at APR_HOOK_LAST; the stream's variables are set before it (at
    the stock module's place, APR_HOOK_MIDDLE), so its log line has them."""
    c = h2c(srv)
    st = c.wait_stream(c.request("/dir"))
    assert st.status == 301 and st.header("location").endswith("/dir/"), (st.status, st.headers)
    c.close()
    logged = srv.wait_access_log('"GET /dir HTTP/2.0" 301')
    assert logged[-1].endswith(f" HTTP/2.0 {st.id}"), logged


def echo(conn, data=b""):
    """Sends `data`, then every byte that comes back until the end."""
    while data:
        conn.sendall(data)
        data = conn.recv(65536)


@pytest.fixture
def tcp_echo():
    """A TCP echo server: returns its port."""
    with tcp_server(lambda conn: echo(conn, conn.recv(65536))) as port:
        yield port


def test_connect_tunnels_through_mod_proxy_connect(make_server, tcp_echo, docroot):
    """A plain CONNECT (RFC 9113 8.5) on a forward proxy (mod_proxy_connect):
    the stream becomes a tunnel, bytes go through unbuffered and byte-exact
    both ways, several tunnels at once beside ordinary requests, and the
    client's END_STREAM ends its tunnel."""
    srv = make_server(extra=f"""LoadModule proxy_module {MODDIR}/mod_proxy.so
LoadModule proxy_connect_module {MODDIR}/mod_proxy_connect.so
ProxyRequests On
AllowCONNECT {tcp_echo}
<Proxy "*">
  Require all granted
</Proxy>""").start()
    c = H2Client(srv.port)
    tunnels = [c.connect(f"127.0.0.1:{tcp_echo}") for _ in range(3)]
    c.wait(lambda: all(c.streams[t].status is not None for t in tunnels), timeout=10)
    assert [c.streams[t].status for t in tunnels] == [200] * 3
    # A small message comes back at once (nothing waits for a buffer to fill).
    c.send_body(tunnels[0], b"ping", end_stream=False)
    c.wait(lambda: bytes(c.streams[tunnels[0]].data) == b"ping", timeout=5)
    payload = os.urandom(200_000)
    for t in tunnels[1:]:
        for i in range(0, len(payload), 20_000):
            c.send_body(t, payload[i:i + 20_000], end_stream=False)
    assert c.wait_stream(c.request("/1k.bin")).status == 200
    c.wait(lambda: all(len(c.streams[t].data) >= len(payload) for t in tunnels[1:]), timeout=20)
    assert all(sha256(bytes(c.streams[t].data)) == sha256(payload) for t in tunnels[1:])
    for t in tunnels:
        c.send_body(t, b"", end_stream=True)
    c.wait(lambda: all(c.streams[t].done for t in tunnels), timeout=10)
    c.close()


@pytest.fixture
def upstream_proxy():
    """A forward proxy that answers every CONNECT with 200 and then echoes
    (whatever the target): returns its port."""
    def serve(conn):
        head = read_http1_head(conn)
        if b"\r\n\r\n" in head:
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            echo(conn, head.split(b"\r\n\r\n", 1)[1] or conn.recv(65536))

    with tcp_server(serve) as port:
        yield port


def test_a_connect_chained_to_a_remote_proxy_is_answered_at_once(make_server, upstream_proxy):
    """With ProxyRemote, mod_proxy_connect sends the CONNECT on to the
    next proxy and passes its answer through the tunnel as bytes: the 200
    is a head without body bytes behind it. It was not sent until the
    tunnel ended (ProxyTimeout), and the client, waiting for it before
    speaking, never spoke."""
    srv = make_server(extra=f"""LoadModule proxy_module {MODDIR}/mod_proxy.so
LoadModule proxy_connect_module {MODDIR}/mod_proxy_connect.so
LoadModule proxy_http_module {MODDIR}/mod_proxy_http.so
ProxyRequests On
ProxyTimeout 20
ProxyRemote * http://127.0.0.1:{upstream_proxy}
<Proxy "*">
  Require all granted
</Proxy>""").start()
    c = H2Client(srv.port)
    t = c.connect("origin.example:443")
    c.wait(lambda: c.streams[t].status is not None, timeout=5)
    assert c.streams[t].status == 200
    c.send_body(t, b"hello through two proxies", end_stream=False)
    c.wait(lambda: bytes(c.streams[t].data) == b"hello through two proxies", timeout=5)
    c.send_body(t, b"", end_stream=True)
    c.close()


@pytest.fixture(scope="module")
def origin_server():
    """A plain HTTP/1.1 origin on 127.0.0.1 that answers every GET with the
    request target it got."""
    import http.server

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = f"origin saw {self.path}".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_OPTIONS(self):
            self.do_GET()

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address[1]
    srv.shutdown()


@pytest.mark.parametrize("where", ["server", "proxy-section", "off"])
def test_h2proxyrequests_makes_a_forward_proxy(make_server, origin_server, where):
    """H2ProxyRequests on (at the server level, or inside <Proxy "*">,
    where it sets the server's value as with the stock module): a request
    for another host is given to mod_proxy with its absolute URI and goes
    to that origin, also when it names the host in Host rather than
    :authority (RFC 9113 8.3.1; its URI had no host: 400). Off: the
    request is served here, as a local path."""
    flag = "H2ProxyRequests on" if where == "server" else ""
    section = "H2ProxyRequests on" if where == "proxy-section" else ""
    srv = make_server(h2_conf=flag, extra=f"""LoadModule proxy_module {MODDIR}/mod_proxy.so
LoadModule proxy_http_module {MODDIR}/mod_proxy_http.so
ProxyRequests On
<Proxy "*">
  Require all granted
  {section}
</Proxy>""").start()
    c = H2Client(srv.port, validate=False)
    st = c.wait_stream(c.request("/1k.bin?x=1", authority=f"127.0.0.1:{origin_server}"))
    by_host = c.wait_stream(c.request("/1k.bin?x=2", authority=False, headers=[("host", f"127.0.0.1:{origin_server}")]))
    if where == "off":
        assert st.status == 200 and len(st.data) == 1024
        assert by_host.status == 200 and len(by_host.data) == 1024
    else:
        assert (st.status, bytes(st.data)) == (200, b"origin saw /1k.bin?x=1")
        assert (by_host.status, bytes(by_host.data)) == (200, b"origin saw /1k.bin?x=2")
    c.close()


def test_h2proxyrequests_forwards_options_asterisk_as_http1_does(make_server, origin_server):
    """OPTIONS with :path "*" through H2ProxyRequests is the absolute form
    without a path (RFC 9112 3.2.4), as an HTTP/1.1 client sends it: both
    reach the origin alike. Before, the "*" was appended to the host
    ("127.0.0.1:PORT*"): 400."""
    srv = make_server(h2_conf="H2ProxyRequests on", extra="""LoadModule proxy_module {MODDIR}/mod_proxy.so
LoadModule proxy_http_module {MODDIR}/mod_proxy_http.so
ProxyRequests On
<Proxy "*">
  Require all granted
</Proxy>""".replace("{MODDIR}", str(MODDIR))).start()
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        s.sendall(f"OPTIONS http://127.0.0.1:{origin_server} HTTP/1.1\r\nHost: 127.0.0.1:{origin_server}\r\n"
                  "Connection: close\r\n\r\n".encode())
        over_http1 = b""
        while chunk := s.recv(65536):
            over_http1 += chunk
    c = H2Client(srv.port, validate=False)
    st = c.wait_stream(c.request("*", method="OPTIONS", authority=f"127.0.0.1:{origin_server}"))
    c.close()
    assert over_http1.startswith(b"HTTP/1.1 200 "), over_http1[:200]
    assert st.status == 200, (st.status, bytes(st.data)[:200])
    assert bytes(st.data) == over_http1.split(b"\r\n\r\n", 1)[1]


def test_a_host_field_other_than_the_authority_is_kept_for_the_environment(make_server):
    """:authority decides the request's Host; a different Host field the
    client sent is kept as H2_ORIGINAL_HOST, as the stock module keeps it
    (for rules that look for domain fronting, for logs)."""
    srv = make_server(extra="""Header always set X-Original-Host "%{H2_ORIGINAL_HOST}e" env=H2_ORIGINAL_HOST
Header always set X-Host "expr=%{req:Host}"
""").start()
    c = H2Client(srv.port, validate=False)
    try:
        other = c.wait_stream(c.request("/1k.bin", headers=[("host", "fronted.example")]))
        same = c.wait_stream(c.request("/1k.bin", headers=[("host", f"127.0.0.1:{srv.port}")]))
        none = c.wait_stream(c.request("/1k.bin"))
        assert (other.status, other.header("x-original-host")) == (200, "fronted.example")
        assert other.header("x-host") == f"127.0.0.1:{srv.port}"
        assert (same.status, same.header("x-original-host")) == (200, None)
        assert (none.status, none.header("x-original-host")) == (200, None)
    finally:
        c.close()


def test_h2proxyrequests_is_refused_in_htaccess(make_server, docroot):
    """In .htaccess the directive would change a running server's setting:
    httpd refuses it there (500, with the directive named in the log)."""
    d = docroot.path / "fwd"
    d.mkdir(exist_ok=True)
    (d / "index.html").write_text("x")
    (d / ".htaccess").write_text("H2ProxyRequests on\n")
    try:
        srv = make_server(extra=f"""<Directory "{d}">
  AllowOverride FileInfo
</Directory>""").start()
        r = curl("--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_code}", srv.url("/fwd/index.html"))
        assert r.stdout == b"500"
        assert "H2ProxyRequests not allowed here" in srv.read_error_log()
    finally:
        shutil.rmtree(d)


def test_connect_without_a_forward_proxy_is_refused(server):
    """A CONNECT that no handler tunnels gets an error response and the
    connection goes on."""
    c = H2Client(server.port)
    sid = c.connect("127.0.0.1:9")
    st = c.wait_stream(sid, timeout=10)
    assert st.status is not None and st.status >= 400, st.status
    assert c.wait_stream(c.request("/1k.bin")).status == 200
    c.close()


def test_a_handler_that_suspends_on_an_mpm_timer_is_ended_cleanly(make_server, docroot):
    """mod_dialup sends a file in pulses: it asks the MPM for a timer, returns
    SUSPENDED, and continues the request from the timer's callback. The MPM
    would run that callback on its own thread with a stream connection that
    may be serving another stream by then, or freed. The timer is refused on
    streams: the request ends at once (cut short: the stream is reset), is
    logged, the error log says why, and the connection's later streams,
    which reuse its stream connections past the moment the timer would have
    fired, are served whole."""
    srv = make_server(extra=f"""LoadModule dialup_module {MODDIR}/mod_dialup.so
Alias /dial "{docroot.path}"
<Location /dial>
  ModemStandard V.92
</Location>""").start()
    c = H2Client(srv.port)
    for _ in range(3):
        st = c.wait_stream(c.request("/dial/100k.bin"), timeout=10)
        assert st.reset == h2.errors.ErrorCodes.INTERNAL_ERROR
        assert len(st.data) < 100 * 1024
        # Past the second after which mod_dialup's callback would run.
        started = time.time()
        sids = [c.request("/cgi/big.cgi?30000"), c.request("/cgi/slow.cgi?1.3"), c.request("/100k.bin")]
        done = [c.wait_stream(s, timeout=20) for s in sids]
        assert time.time() - started >= 1.2
        assert [s.status for s in done] == [200, 200, 200]
        assert bytes(done[0].data) == bytes(30000)
        assert bytes(done[1].data) == b"slow done\n"
        assert sha256(bytes(done[2].data)) == docroot.sha("100k.bin")
    c.close()
    assert len(srv.wait_access_log('"GET /dial/100k.bin HTTP/2.0" 200', count=3)) == 3
    refused = [l for l in srv.read_error_log().splitlines() if "MPM timer callback" in l]
    assert len(refused) == 3 and all("[http2:error]" in l for l in refused), refused


@pytest.mark.parametrize("cgi_status, expect", [
    ("99", 500), ("0", 500), ("1000", 500),       # outside 100-999: 500, as HTTP/1.1's status line
    ("100", 500), ("101", 500), ("103", 500), ("199", 500),  # interim: cannot end a stream
    ("299 Odd", 299), ("600", 600),               # sent as they are, as HTTP/1.1 sends them
])
def test_a_final_status_http2_cannot_send_is_answered_500(srv, docroot, cgi_status, expect):
    """A CGI's `Status:` outside 100-999 goes out as 500, as HTTP/1.1's
    status line gives it (before it was clamped: 99 went out as 100, 1000
    as 999). An interim status as the final one (HTTP/1.1 sends that head
    and the client misreads what follows) would make the body's DATA a
    protocol error for the client: it is answered 500 with an error page,
    and logged."""
    name = f"status-{cgi_status.split()[0]}.cgi"
    script = docroot.path / "cgi" / name
    script.write_text(f"#!/bin/sh\nprintf 'Status: {cgi_status}\\r\\nContent-Type: text/plain\\r\\n\\r\\nbody'\n")
    script.chmod(0o755)
    logged = len(srv.read_error_log())
    c = H2Client(srv.port)
    st = c.wait_stream(c.request(f"/cgi/{name}"))
    assert (st.status, st.reset, st.interim) == (expect, None, [])
    length = st.header("content-length")
    assert length is None or int(length) == len(st.data)
    if 100 <= int(cgi_status.split()[0]) <= 199:
        assert b"500 Internal Server Error" in bytes(st.data)
        assert "interim (1xx) status" in srv.read_error_log()[logged:]
    else:
        assert bytes(st.data) == b"body"
    assert c.wait_stream(c.request("/index.html")).status == 200
    c.close()


def test_a_body_that_does_not_match_its_content_length_is_reset(srv):
    """A handler whose Content-Length (sent with the head before the body
    ends) does not match what it writes: the stream is reset, never ended
    as if whole (RFC 9113 8.1.1: malformed; HTTP/1.1's client sees the
    connection end short of the length). Short of it: RST_STREAM
    INTERNAL_ERROR at its end. Past it: the client sees DATA beyond the
    length (a conforming client refuses the response at once: curl's
    nghttp2 resets the stream) and no END_STREAM. A body that matches its
    length ends as usual."""
    c = H2Client(srv.port)
    st = c.wait_stream(c.request("/length?100000"))
    assert st.reset == h2.errors.ErrorCodes.INTERNAL_ERROR and not st.ended, (st.status, st.reset, len(st.data))
    assert st.header("content-length") == "100000" and len(st.data) <= 50000
    ok = c.wait_stream(c.request("/length?50000"))
    assert (ok.status, ok.reset, len(ok.data)) == (200, None, 50000)
    c.close()
    r = curl("--http2-prior-knowledge", "-s", "-o", "/dev/null", "-w", "%{http_code}", srv.url("/length?1000"))
    assert r.returncode != 0, r
    r = curl("--http2-prior-knowledge", "-s", "-o", "/dev/null", "-w", "%{http_code}", srv.url("/length?50000"))
    assert (r.returncode, r.stdout) == (0, b"200"), r


def test_a_bad_field_in_the_error_response_too_gets_a_bare_500(make_server):
    """A field httpd refuses (a CR, from the decoded path) set on every
    response, the error page's too: HTTP/1.1 answers a bare 500
    (check_headers_recursion); so does HTTP/2, a complete response, not a
    head and a reset."""
    srv = make_server(extra='Header always set X-Path "expr=%{REQUEST_URI}"').start()
    h1 = curl("--http1.1", "-o", "/dev/null", "-w", "%{http_code}", srv.url("/a%0db"))
    assert h1.stdout == b"500"
    c = H2Client(srv.port)
    st = c.wait_stream(c.request("/a%0db"))
    assert (st.status, st.reset) == (500, None), (st.status, st.reset, st.headers)
    assert b"x-path" not in dict(st.headers)
    # The connection goes on.
    assert c.wait_stream(c.request("/index.html")).status == 200
    c.close()


@pytest.mark.parametrize("field, expect", [
    (b"X Space: v", 500),           # a name that is not a token
    (b"X-Ctl: a\x01b", 500),        # a control character in the value
    (b"Status: 500\r\nX-Ctl: a\x01b", 500),  # httpd's page also when the status was 500
    (b"X-Del: a\x7fb", 500),
    (b"X-Tab: a\tb", 200),          # HTAB is allowed
    (b"X-Obs: caf\xc3\xa9", 200),   # so are bytes above 0x7f (obs-text)
    (b"Connection: close\r\nKeep-Alive: timeout=5\r\nTransfer-Encoding: chunked\r\n"
     b"Upgrade: foo\r\nProxy-Connection: x", 200),  # dropped on HTTP/2
])
def test_response_fields_a_cgi_sends_are_checked_as_http1_checks_them(srv, docroot, field, expect):
    """A response field that HTTP/1.1's header filter refuses (check_headers:
    a name that is not a token, a control character in a value) gets the
    same 500 on HTTP/2, instead of a field HTTP/2 clients refuse as
    malformed; the error page's length is right (httpd's own length counts
    the body bytes the handler had sent with the refused head: HTTP/1.1
    sends it wrong, then closes). Connection-specific fields are dropped."""
    name = f"hdr-{abs(hash(field))}.cgi"
    script = docroot.path / "cgi" / name
    printf = "".join(f"\\{b:03o}" for b in field + b"\r\nContent-Type: text/plain\r\n\r\nbody\n")
    script.write_text(f"#!/bin/sh\nprintf '{printf}'\n")
    script.chmod(0o755)
    h1 = curl("--http1.1", "-o", "/dev/null", "-w", "%{http_code}", srv.url(f"/cgi/{name}"))
    assert int(h1.stdout) == expect
    c = H2Client(srv.port)
    st = c.wait_stream(c.request(f"/cgi/{name}"))
    c.close()
    assert st.status == expect and st.reset is None
    length = st.header("content-length")
    assert length is None or int(length) == len(st.data)
    if expect == 200:
        assert bytes(st.data) == b"body\n"
        sent = dict(st.headers)
        for n in (b"connection", b"keep-alive", b"transfer-encoding", b"upgrade", b"proxy-connection"):
            assert n not in sent
        first = field.split(b"\r\n")[0]
        if not first.startswith(b"Connection"):
            n, v = first.split(b": ", 1)
            assert sent[n.lower()] == v
    else:
        assert b"500 Internal Server Error" in bytes(st.data)
