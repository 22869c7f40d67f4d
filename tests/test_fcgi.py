"""mod_proxy_fcgi over HTTP/2: how PHP-FPM and other FastCGI applications
run behind httpd. A FastCGI responder of our own (tests/fcgi_backend.py)
stands in for the application: request bodies and large responses
byte-exact, the HTTP2 variable in its environment, and responses it
streams reach the client as they are written, as with the stock module
(mod_proxy_fcgi passes them on without a flush)."""
import hashlib
import os
import subprocess
import time

import pytest

from conftest import MODDIR, curl, h2load, registered, spawn_backend
from h2client import H2Client, assert_cut_after_head


@pytest.fixture(scope="module")
def fcgi_port():
    port, proc = spawn_backend("fcgi_backend.py")
    yield port
    proc.kill()
    proc.wait()


def fcgi_conf(port):
    return f"""
LoadModule proxy_module {MODDIR}/mod_proxy.so
LoadModule proxy_fcgi_module {MODDIR}/mod_proxy_fcgi.so
ProxyPass /app/ fcgi://127.0.0.1:{port}/ enablereuse=on
"""


@pytest.fixture(scope="module")
def fcgi_srv(workdir, docroot, fcgi_port):
    from conftest import Httpd
    h = Httpd(workdir, docroot, name="fcgi", h2_conf="H2Direct on", extra=fcgi_conf(fcgi_port))
    with registered(h):
        yield h


def test_request_reaches_the_application_with_the_h2_environment(fcgi_srv):
    r = curl("--http2-prior-knowledge", fcgi_srv.url("/app/echo"))
    assert r.stdout.decode().split()[2:] == ["http2=on", "method=GET"], r.stdout


@pytest.mark.parametrize("with_cl", [True, False])
def test_request_body_reaches_the_application_byte_exact(fcgi_srv, workdir, with_cl):
    body = os.urandom(5 << 20)
    want = f"length={len(body)} sha256={hashlib.sha256(body).hexdigest()} http2=on method=POST"
    if with_cl:
        f = workdir / "fcgi-body"
        f.write_bytes(body)
        r = curl("--http2-prior-knowledge", "--data-binary", f"@{f}", fcgi_srv.url("/app/echo"))
    else:
        # curl streams stdin with -T -: no content-length.
        r = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "-X", "POST", "-T", "-",
                            fcgi_srv.url("/app/echo")], input=body, capture_output=True, timeout=60)
    assert r.stdout.decode().strip() == want


def test_large_response_arrives_whole(fcgi_srv):
    n = 3_000_000
    r = curl("--http2-prior-knowledge", fcgi_srv.url(f"/app/big?n={n}"))
    assert r.stdout == (b"0123456789" * (n // 10))[:n]


def first_and_all_data(srv, path):
    """(seconds to the first body byte, seconds to the end, DATA payload sizes)."""
    c = H2Client(srv.port)
    t0 = time.monotonic()
    sid = c.request(path)
    c.wait(lambda: len(c.streams[sid].data) > 0 or c.streams[sid].done)
    first = time.monotonic() - t0
    st = c.wait_stream(sid)
    total = time.monotonic() - t0
    sizes = [e.flow_controlled_length for e in c.events if getattr(e, "stream_id", None) == sid
             and type(e).__name__ == "DataReceived"]
    c.close()
    assert st.status == 200 and bytes(st.data) == b"line 0\nline 1\nline 2\n"
    return first, total, sizes


@pytest.mark.parametrize("buffering", ["on", "off"])
def test_streamed_response_is_sent_as_written(make_server, fcgi_port, buffering):
    """The application writes three lines 300 ms apart and mod_proxy_fcgi
    passes each on without a flush: the first must arrive long before the
    last is written (before the fix, all came at the end, as over HTTP/1.1
    without `flushpackets=on`)."""
    srv = make_server(h2_conf=f"H2Direct on\nH2OutputBuffering {buffering}", extra=fcgi_conf(fcgi_port))
    srv.start()
    first, total, sizes = first_and_all_data(srv, "/app/stream")
    assert total >= 0.6, "the application writes for 0.6 s"
    assert first < 0.5, f"first line after {first:.2f}s: held until more was written"
    assert sizes[:3] == [7, 7, 7], sizes


def test_many_requests_on_shared_backend_connections(fcgi_srv):
    r = h2load("-n", "1000", "-c", "10", "-m", "10", fcgi_srv.url("/app/echo"))
    assert r.get("succeeded") == 1000, r["output"] + fcgi_srv.read_error_log()[-3000:]


def test_an_application_that_dies_mid_response_gets_its_stream_reset(fcgi_srv):
    """The application closes after half the body it announced: the client
    gets those bytes and RST_STREAM INTERNAL_ERROR at once, and the
    connection serves the next request (HTTP/1.1 closes short of the
    length)."""
    c = H2Client(fcgi_srv.port)
    sid = c.request("/app/broken")
    assert 0 < assert_cut_after_head(c.wait_stream(sid, timeout=10)) <= 50000
    sid = c.request("/app/echo")
    assert c.wait_stream(sid).status == 200
    c.close()
