"""proxy_http2_module: the reverse proxy to HTTP/2 (h2c) backends, against a
real HTTP/2 backend (tests/h2backend.py) started by the tests: multiplexing
on shared backend connections, few workers serving many slow requests,
GOAWAY and reset handling, uploads, trailers, 103, header rules, balancer,
behind HTTP/2 and HTTP/1.1 fronts."""
import contextlib
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
import uuid

import h2.errors
import pytest

from conftest import (MODDIR, MODULE, SSL_MODULES, STOCK_MODULE, Httpd, curl, free_port, h2load, registered,
                      spawn_backend, tcp_server, wait_for)
from h2client import H2Client, Stream
from rawh2 import read_http1_head


@pytest.fixture(scope="module")
def backends(certs):
    """Four backends: two ordinary ones (the balancer's members), one that
    allows only 10 concurrent streams per connection, one over TLS."""
    crt, key = certs.main
    started = [spawn_backend("h2backend.py", 1000), spawn_backend("h2backend.py", 1000),
               spawn_backend("h2backend.py", 10), spawn_backend("h2backend.py", 1000, crt, key)]
    yield [p for p, _ in started]
    for _, proc in started:
        proc.kill()
        proc.wait()


# mod_proxy and ours as its HTTP/2 scheme handler.
PROXY_MODULES = f"""LoadModule proxy_module {MODDIR}/mod_proxy.so
LoadModule proxy_http2_module {MODULE}"""


def proxy_conf(b1, b2, b3, b4):
    return f"""{PROXY_MODULES}
LoadModule proxy_balancer_module {MODDIR}/mod_proxy_balancer.so
LoadModule slotmem_shm_module {MODDIR}/mod_slotmem_shm.so
LoadModule lbmethod_byrequests_module {MODDIR}/mod_lbmethod_byrequests.so
LoadModule lbmethod_bybusyness_module {MODDIR}/mod_lbmethod_bybusyness.so
ProxyTimeout 30
ProxyVia On
ProxyPass /api/ h2c://127.0.0.1:{b1}/
ProxyPassReverse /api/ http://127.0.0.1:{b1}/
ProxyPassReverseCookieDomain 127.0.0.1 front.example
ProxyPassReverseCookiePath / /api/
ProxyPass /short/ h2c://localhost:{b1}/ timeout=1
ProxyPass /narrow/ h2c://127.0.0.1:{b3}/
ProxyPass /narrow1/ h2c://localhost:{b3}/ max=1
ProxyPass /tls/ h2://localhost:{b4}/
ProxyPass /down/ h2c://127.0.0.1:{free_port()}/
ProxyPass /nodns/ h2c://no-such-host.invalid:{b1}/
ProxyPass /pp/ h2c://127.0.0.1:{b1}/
<Location /pp/>
  ProxyPreserveHost On
</Location>
<Proxy balancer://pair>
  BalancerMember h2c://127.0.0.1:{b1}
  BalancerMember h2c://127.0.0.1:{b2}
</Proxy>
ProxyPass /bal/ balancer://pair/
<Proxy balancer://half>
  BalancerMember h2c://127.0.0.1:{free_port()}
  BalancerMember h2c://127.0.0.1:{b2}
</Proxy>
ProxyPass /half/ balancer://half/
<Proxy balancer://busy>
  BalancerMember h2c://127.0.0.1:{b1}
  BalancerMember h2c://127.0.0.1:{b2}
  ProxySet lbmethod=bybusyness
</Proxy>
ProxyPass /busy/ balancer://busy/
ProxyPass /eo/ h2c://127.0.0.1:{b1}/
<Location /eo/>
  ProxyErrorOverride On
</Location>
"""


@pytest.fixture(scope="module")
def proxy(workdir, docroot, backends):
    # H2EarlyHints on: backends' 103 responses pass through to clients.
    h = Httpd(workdir, docroot, name="proxy", h2_conf="H2MinWorkers 1\nH2MaxWorkers 5\nH2EarlyHints on",
              extra=proxy_conf(*backends))
    with registered(h):
        yield h


def stats(port):
    r = curl("--http2-prior-knowledge", f"http://127.0.0.1:{port}/stats")
    return json.loads(r.stdout)


def stats_tls(port):
    r = curl("-k", "--http2", f"https://127.0.0.1:{port}/stats")
    return json.loads(r.stdout)


def get(proxy, path, *args, h1=False):
    proto = ["--http1.1"] if h1 else ["--http2-prior-knowledge"]
    return curl(*proto, "-w", "\n%{http_code}", *args, proxy.url(path))


def split(r):
    body, _, code = r.stdout.rpartition(b"\n")
    return int(code or 0), body


@pytest.mark.parametrize("h1", [False, True], ids=["h2-front", "h1-front"])
def test_simple_get(proxy, h1):
    code, body = split(get(proxy, "/api/delay?s=0&x=%20y", h1=h1))
    assert code == 200
    assert body.startswith(b"ok port=")
    assert b"path=/delay?s=0&x=%20y" in body
    lines = proxy.wait_access_log("/api/delay?s=0&x=%20y")
    assert lines and " 200 " in lines[-1]


def test_multiplexed_on_one_backend_connection(proxy, backends):
    before = stats(backends[0])
    t0 = time.time()
    res = h2load("-n", "60", "-c", "1", "-m", "60", proxy.url("/api/delay?s=1"))
    took = time.time() - t0
    after = stats(backends[0])
    assert res.get("s2xx") == 60, res["output"]
    # One front connection of 60 streams, 5 workers: all answered in about
    # one backend latency, as parallel streams on (nearly) one connection.
    assert took < 5, res["output"]
    assert after["connections"] - before["connections"] <= 2
    assert after["max_streams"] >= 30


def test_few_workers_serve_many_slow_requests(proxy, backends):
    """The 400 x 2 s acceptance case scaled down: 100 requests whose backend
    answers after 1 s, with H2MaxWorkers 5 (holding workers, this takes
    100 / 5 x 1 s = 20 s)."""
    t0 = time.time()
    res = h2load("-n", "100", "-c", "4", "-m", "25", proxy.url("/api/delay?s=1"))
    took = time.time() - t0
    assert res.get("s2xx") == 100, res["output"]
    assert took < 6, f"took {took:.1f}s"


def test_second_connection_beyond_max_concurrent_streams(proxy, backends):
    before = stats(backends[2])
    res = h2load("-n", "30", "-c", "1", "-m", "30", proxy.url("/narrow/delay?s=1"))
    after = stats(backends[2])
    assert res.get("s2xx") == 30, res["output"]
    opened = after["connections"] - before["connections"]
    # The backend allows 10 streams per connection: 3 connections carry 30.
    assert 3 <= opened <= 6, opened
    assert after["max_streams"] <= 10


def test_a_workers_max_bounds_its_backend_connections(proxy, backends):
    """`max=1`: the 30 requests share one connection, ten at a time (the
    backend's limit), instead of opening three (the test before)."""
    before = stats(backends[2])
    res = h2load("-n", "30", "-c", "1", "-m", "30", proxy.url("/narrow1/delay?s=0.5"))
    after = stats(backends[2])
    assert res.get("s2xx") == 30, res["output"]
    # One from the proxy, one the second /stats request came on. (The
    # backend's python-h2 refuses streams past its limit of 10: nghttp2
    # held the others back until streams closed. Its max_streams figure
    # counts closed streams until its next read, so it is no measure here.)
    assert after["connections"] - before["connections"] == 2


def test_request_headers(proxy, backends):
    code, body = split(get(proxy, "/api/headers", "-H", "X-Forwarded-For: 10.1.1.1", "-H", "TE: trailers"))
    assert code == 200
    h = json.loads(body)
    assert h[":authority"] == f"127.0.0.1:{backends[0]}"
    assert h[":scheme"] == "http"
    assert h["x-forwarded-for"] == "10.1.1.1, 127.0.0.1"
    assert h["x-forwarded-host"] == f"127.0.0.1:{proxy.port}"
    assert h["x-forwarded-server"] == "127.0.0.1"
    # As mod_proxy_http writes it: the port, as it is not http's default.
    assert h["via"] == f"2.0 127.0.0.1:{proxy.port}"
    assert h.get("te") == "trailers"
    assert "connection" not in h and "host" not in h


def test_request_headers_h1_front(proxy):
    code, body = split(get(proxy, "/api/headers", "-H", "Connection: X-Hop", "-H", "X-Hop: 1", h1=True))
    assert code == 200
    h = json.loads(body)
    assert "x-hop" not in h
    assert h["via"] == f"1.1 127.0.0.1:{proxy.port}"


def test_response_field_names_reach_http1_clients_camel_cased(proxy):
    """The backend's field names (lower case in HTTP/2) reach an HTTP/1.1
    client as the stock mod_proxy_http2 spells them ("X-Backend-Conn"):
    some HTTP/1.1 clients match names by case. HTTP/2 clients get them in
    lower case still."""
    def names(proto, path):
        r = curl(proto, "-i", proxy.url(path))
        return [line.split(":")[0] for line in r.stdout.decode().split("\r\n\r\n")[0].split("\r\n")[1:]]

    mapped, echoed = names("--http1.1", "/api/mapped"), names("--http1.1", "/api/x/headers")
    for name in ("Location", "Content-Location", "Destination", "Set-Cookie"):
        assert name in mapped, mapped
    assert "X-Backend-Conn" in echoed, echoed
    assert not [n for n in mapped + echoed if n != n.title()], (mapped, echoed)
    assert "x-backend-conn" in names("--http2-prior-knowledge", "/api/x/headers")


@pytest.mark.parametrize("code", ["600", "999", "099"])
def test_backend_status_outside_http_is_a_bad_gateway(proxy, code):
    """A backend status of three digits outside 100 to 599 is not HTTP
    (RFC 9110 15): the client gets 502 and the log says why."""
    start = len(proxy.read_error_log())
    r = curl("--http2-prior-knowledge", "-s", "-o", "/dev/null", "-w", "%{http_code}", proxy.url(f"/api/status?code={code}"))
    assert r.stdout == b"502"
    assert f"status {code}, answering 502" in proxy.read_error_log()[start:]
    ok = curl("--http2-prior-knowledge", "-s", "-o", "/dev/null", "-w", "%{http_code}", proxy.url("/api/status?code=599"))
    assert ok.stdout == b"599"


def test_error_override_answers_locally_and_keeps_a_401s_challenge(make_server, backends):
    """ProxyErrorOverride: the backend's error status gets the local error
    page, and mod_proxy is told it was the backend's answer (the
    `proxy-error-override` note, as mod_proxy_http sets it; without it a
    member that answered 500 was put in error, which a balancer of one
    recovers at once, so the 500s here pass either way). A 401 keeps the
    backend's challenge with the local page; it was lost."""
    srv = make_server(extra=f"""{PROXY_MODULES}
LoadModule proxy_balancer_module {MODDIR}/mod_proxy_balancer.so
LoadModule slotmem_shm_module {MODDIR}/mod_slotmem_shm.so
LoadModule lbmethod_byrequests_module {MODDIR}/mod_lbmethod_byrequests.so
<Proxy balancer://one>
  BalancerMember h2c://127.0.0.1:{backends[0]}
</Proxy>
ProxyPass /one/ balancer://one/
ProxyErrorOverride On""").start()
    for proto in ("--http2-prior-knowledge", "--http1.1"):
        codes = [curl(proto, "-s", "-o", "/dev/null", "-w", "%{http_code}", srv.url("/one/status?code=500")).stdout
                 for _ in range(3)]
        assert codes == [b"500"] * 3, (proto, codes)
        r = curl(proto, "-s", "-D", "-", "-o", "/dev/null", srv.url("/one/status?code=401"))
        assert b" 401" in r.stdout.split(b"\r\n")[0], r.stdout
        assert b'www-authenticate: basic realm="backend"' in r.stdout.lower(), r.stdout
    srv.new_log_lines()


def test_failonstatus_and_failontimeout_put_a_member_in_error(make_server, backends):
    """mod_proxy_balancer's `failonstatus` and `failontimeout` put the
    member in error (the next request: 503, all members in error) also for
    a request the front suspended, whose status was not final when mod_proxy
    ran its checks; and `failontimeout` sees the backend's timeout (the
    `proxy_timedout` note). Over HTTP/1.1 the handler keeps the request."""
    balancers = "\n".join(f"""<Proxy balancer://{name}-{proto}>
  BalancerMember h2c://127.0.0.1:{backends[0]} retry=60 {member}
  ProxySet forcerecovery=Off {param}
</Proxy>
ProxyPass /{name}-{proto}/ balancer://{name}-{proto}/"""
                           for name, member, param in [("fs", "", "failonstatus=500"),
                                                       ("ft", "timeout=1", "failontimeout=On")]
                           for proto in ("h2", "h1"))
    srv = make_server(extra=f"""{PROXY_MODULES}
LoadModule proxy_balancer_module {MODDIR}/mod_proxy_balancer.so
LoadModule slotmem_shm_module {MODDIR}/mod_slotmem_shm.so
LoadModule lbmethod_byrequests_module {MODDIR}/mod_lbmethod_byrequests.so
{balancers}""").start()
    for proto, flag in (("h2", "--http2-prior-knowledge"), ("h1", "--http1.1")):
        def code(path):
            return curl(flag, "-s", "-o", "/dev/null", "-w", "%{http_code}", srv.url(path)).stdout
        # Slow enough to be suspended over HTTP/2.
        assert code(f"/fs-{proto}/status?code=500&s=0.3") == b"500"
        assert code(f"/fs-{proto}/status?code=200") == b"503", proto
        assert code(f"/ft-{proto}/delay?s=3") == b"504"
        assert code(f"/ft-{proto}/status?code=200") == b"503", proto
    log = srv.read_error_log()
    assert log.count("matching 'failonstatus'") == 2 and log.count("'failontimeout' parameter") == 2, log[-3000:]
    srv.new_log_lines()


def test_link_fields_are_mapped_by_proxypassreverse(make_server, backends):
    """ProxyPassReverse maps the URIs of the backend's Link fields, on the
    response and on its 103, as the stock mod_proxy_http2 does: a path as
    if it were on the ProxyPass URL, an http:// URL of the backend as its
    h2c:// one; other links and the parameters are left alone. Not with
    ProxyPreserveHost (the stock module does not map them then either)."""
    b = backends[0]
    srv = make_server(h2_conf="H2EarlyHints on", extra=f"""{PROXY_MODULES}
ProxyPass /shop/ h2c://127.0.0.1:{b}/app/
ProxyPassReverse /shop/ h2c://127.0.0.1:{b}/app/
ProxyPass /kept/ h2c://127.0.0.1:{b}/app/
ProxyPassReverse /kept/ h2c://127.0.0.1:{b}/app/
<Location /kept/>
  ProxyPreserveHost On
</Location>""").start()
    c = H2Client(srv.port)
    st = c.wait_stream(c.request("/shop/links"))
    assert st.status == 200 and bytes(st.data) == b"links", (st.status, bytes(st.data))
    assert dict(st.interim[0]).get(b"link") == b"</shop/style.css>; rel=preload; as=style", st.interim
    assert st.header("link") == (f'</shop/a.css>; rel=preload, <http://127.0.0.1:{srv.port}/shop/b>; rel="next", '
                                 '</else>; rel=x'), st.header("link")
    st = c.wait_stream(c.request("/kept/links"))
    assert st.header("link").startswith("</app/a.css>;"), st.header("link")
    c.close()


def test_encoded_slashes_reach_the_backend_as_mod_proxy_http_sends_them(make_server, backends):
    """AllowEncodedSlashes NoDecode: an encoded slash in the path goes to
    the backend as it came (it was encoded again, %252F); with
    `mapping=encoded` (the proxy-noencode note) the path is not encoded
    again either."""
    srv = make_server(extra=f"""{PROXY_MODULES}
AllowEncodedSlashes NoDecode
ProxyPass /api/ h2c://127.0.0.1:{backends[0]}/
ProxyPass /enc/ h2c://127.0.0.1:{backends[0]}/ mapping=encoded""").start()
    for prefix in ("/api", "/enc"):
        r = curl("--http2-prior-knowledge", "-s", srv.url(f"{prefix}/a%2Fb%20c/headers"))
        assert json.loads(r.stdout)[":path"] == "/a%2Fb%20c/headers", (prefix, r.stdout)
    # A raw byte beyond ASCII in a path taken as it came goes on encoded
    # (a lossy conversion sent U+FFFD's bytes: another path).
    c = H2Client(srv.port, validate=False)
    sid = c.conn.get_next_available_stream_id()
    c.conn.send_headers(sid, [(b":method", b"GET"), (b":scheme", b"http"),
                              (b":authority", f"127.0.0.1:{srv.port}".encode()),
                              (b":path", b"/enc/caf\xe9/headers")], end_stream=True)
    c.streams[sid] = Stream(sid)
    c.flush()
    st = c.wait_stream(sid)
    assert st.status == 200 and json.loads(bytes(st.data))[":path"] == "/caf%E9/headers", bytes(st.data)
    c.close()


def test_proxy_pass_reverse(proxy):
    r = curl("--http2-prior-knowledge", "-D", "-", "-o", "/dev/null", proxy.url("/api/redirect"))
    assert b"302" in r.stdout.split(b"\r\n")[0]
    assert f"location: http://127.0.0.1:{proxy.port}/api/elsewhere".encode() in r.stdout.lower()


def test_reverse_mapping_of_response_fields(proxy):
    """ProxyPassReverse and ProxyPassReverseCookieDomain/-Path apply to the
    fields mod_proxy_http maps: Location, Content-Location, Destination and
    each Set-Cookie (the module before passed Set-Cookie and Destination
    unchanged, so cookies named the backend's host and path)."""
    r = curl("--http2-prior-knowledge", "-D", "-", "-o", "/dev/null", proxy.url("/api/mapped"))
    head = r.stdout.decode().lower().split("\r\n")
    assert head[0].startswith("http/2 201")
    front = f"http://127.0.0.1:{proxy.port}/api"
    assert f"location: {front}/new" in head
    assert f"content-location: {front}/new.json" in head
    assert f"destination: {front}/moved" in head
    assert "set-cookie: a=1; domain=front.example; path=/api/" in head
    assert "set-cookie: b=2; path=/api/" in head


def test_preserve_host(proxy):
    code, body = split(get(proxy, "/pp/headers", "-H", "Host: front.example"))
    assert code == 200
    assert json.loads(body)[":authority"] == "front.example"


def test_preserve_host_without_a_host_field_names_the_server(proxy):
    """An HTTP/1.0 request without Host under ProxyPreserveHost: the
    backend gets the server's name, as mod_proxy_http sends it, not its own
    host and port."""
    code, body = split(curl("--http1.0", "-H", "Host:", "-w", "\n%{http_code}", proxy.url("/pp/headers")))
    assert code == 200
    assert json.loads(body)[":authority"] == "127.0.0.1"


def test_a_remote_proxy_over_an_h2_backend_is_refused_not_bypassed(make_server, backends):
    """`ProxyRemote` covering an h2c/h2 backend URL: this module cannot go
    through a remote proxy, and it does not go around it (the admin's
    egress rule) either: 500, and the error log says why."""
    srv = make_server(extra=f"""{PROXY_MODULES}
ProxyRemote * http://127.0.0.1:9
ProxyPass /b/ h2c://127.0.0.1:{backends[0]}/
""").start()
    assert split(get(srv, "/b/delay?s=0"))[0] == 500
    assert "ProxyRemote 127.0.0.1 covers this h2/h2c backend URL" in srv.read_error_log()


@pytest.mark.parametrize("h1", [False, True], ids=["h2-front", "h1-front"])
def test_upload_byte_exact(proxy, tmp_path, h1):
    data = os.urandom(3 * 1024 * 1024 + 7)
    f = tmp_path / "up.bin"
    f.write_bytes(data)
    code, body = split(get(proxy, "/api/echo", "--data-binary", f"@{f}", h1=h1))
    assert code == 200
    assert body.decode() == f"length={len(data)} sha256={hashlib.sha256(data).hexdigest()}"


def test_upload_chunked_h1_front(proxy, tmp_path):
    data = os.urandom(200 * 1024)
    f = tmp_path / "up2.bin"
    f.write_bytes(data)
    code, body = split(get(proxy, "/api/echo", "-H", "Transfer-Encoding: chunked", "--data-binary", f"@{f}", h1=True))
    assert code == 200
    assert body.decode() == f"length={len(data)} sha256={hashlib.sha256(data).hexdigest()}"


def trickle_h1_chunked(port, path, chunks, pause):
    """POSTs `chunks` over HTTP/1.1 with chunked encoding, `pause` seconds
    apart; returns (status, body)."""
    import socket
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
                  f"Connection: close\r\n\r\n".encode())
        for chunk in chunks:
            time.sleep(pause)
            s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        s.sendall(b"0\r\n\r\n")
        raw = b""
        while data := s.recv(65536):
            raw += data
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


@pytest.mark.parametrize("h1", [False, True], ids=["h2-front", "h1-front"])
def test_a_slow_upload_outlasts_the_proxy_timeout(proxy, h1):
    """ProxyTimeout bounds the wait on the backend, not the client's upload:
    a body that takes 3 s to arrive reaches a backend whose timeout is 1 s
    (/short/) whole, and its answer comes back, as with mod_proxy_http."""
    chunks = [os.urandom(1000) for _ in range(10)]
    data = b"".join(chunks)
    want = f"length={len(data)} sha256={hashlib.sha256(data).hexdigest()}"
    if h1:
        status, body = trickle_h1_chunked(proxy.port, "/short/echo", chunks, 0.3)
        assert (status, body.decode()) == (200, want)
        return
    c = H2Client(proxy.port)
    sid = c.request("/short/echo", method="POST", end_stream=False)
    for i, chunk in enumerate(chunks):
        c.read_some(timeout=0.3)
        c.conn.send_data(sid, chunk, end_stream=i == len(chunks) - 1)
        c.flush()
    st = c.wait_stream(sid, timeout=5)
    assert (st.status, bytes(st.data).decode()) == (200, want)
    c.close()


@pytest.mark.parametrize("end", ["later", "never"])
def test_a_known_length_upload_whose_stream_ends_late_or_never(make_server, backends, end):
    """A body with content-length whose last DATA frame lacks END_STREAM:
    its last bytes wait a moment for the stream's end (and any trailers).
    When the end comes 0.3 s later, or not at all while the client waits
    for the answer, the whole body reaches the backend and its answer
    comes back within the client's 10 s wait: the held bytes are not left
    until the client's H2StreamTimeout of 30 s (the proxy reads the body
    without blocking, and nothing woke it when the wait ran out)."""
    srv = make_server(name=f"proxy-late-end-{end}", h2_conf="H2StreamTimeout 30", extra=f"""{PROXY_MODULES}
ProxyPass /api/ h2c://127.0.0.1:{backends[0]}/
""").start()
    body = os.urandom(5000)
    c = H2Client(srv.port)
    sid = c.request("/api/echo", method="POST", end_stream=False, headers=[("content-length", str(len(body)))])
    c.send_body(sid, body, end_stream=False)
    if end == "later":
        c.read_some(timeout=0.3)
        c.send_body(sid, b"", end_stream=True)
    st = c.wait_stream(sid, timeout=10)
    assert (st.status, bytes(st.data).decode().strip()) == (
        200, f"length={len(body)} sha256={hashlib.sha256(body).hexdigest()}")
    st = c.wait_stream(c.request("/api/delay?s=0"))
    assert st.status == 200
    c.close()


@pytest.mark.parametrize("h1", [False, True], ids=["h2-front", "h1-front"])
def test_a_client_that_stops_sending_its_body_gets_408(make_server, backends, h1):
    """The client's silence mid-body is bounded by the front's timeout
    (H2StreamTimeout on an HTTP/2 front, Timeout on HTTP/1.1), not by the
    backend's, which is not waiting on anyone: 408, the backend's stream
    reset, and the HTTP/2 connection goes on."""
    srv = make_server(name=f"proxy-silent-{h1}", loglevel="warn http2:info proxy:info proxy_http2:info", h2_conf="H2StreamTimeout 2",
                      extra=f"""{PROXY_MODULES}
ProxyTimeout 30
ProxyPass /api/ h2c://127.0.0.1:{backends[0]}/
""" + ("Timeout 2\n" if h1 else "")).start()
    before = stats(backends[0])["resets_received"]
    t0 = time.time()
    if h1:
        import socket
        with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as s:
            s.sendall(b"POST /api/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
            raw = s.recv(65536)
        assert raw.startswith(b"HTTP/1.1 408"), raw[:100]
    else:
        c = H2Client(srv.port)
        sid = c.request("/api/echo", method="POST", end_stream=False)
        c.conn.send_data(sid, b"x" * 10)
        c.flush()
        st = c.wait_stream(sid, timeout=10)
        assert st.status == 408
        assert "no request body from the client within 2s (H2StreamTimeout)" in srv.read_error_log()
    assert 1.5 < time.time() - t0 < 6
    deadline = time.time() + 5
    while stats(backends[0])["resets_received"] == before and time.time() < deadline:
        time.sleep(0.05)
    assert stats(backends[0])["resets_received"] >= before + 1
    if not h1:
        st = c.wait_stream(c.request("/api/delay?s=0"))
        assert st.status == 200
        c.close()


def test_full_duplex_through_an_h2_front(proxy):
    """A bidirectional stream (as gRPC's): the backend answers at once and
    echoes each piece of the body as it comes, and the client sends the
    next piece only after it has the echo of the last. The front passes the
    response on while it still forwards the body; before, it read the whole
    body first, and this exchange hung until the timeout."""
    c = H2Client(proxy.port)
    sid = c.request("/api/duplex", method="POST", end_stream=False)
    c.wait(lambda: c.streams[sid].status is not None, timeout=5)
    assert c.streams[sid].status == 200
    sent = b""
    for i in range(20):
        piece = f"ping {i};".encode()
        sent += piece
        c.conn.send_data(sid, piece)
        c.flush()
        c.wait(lambda: bytes(c.streams[sid].data) == sent, timeout=5)
    c.conn.end_stream(sid)
    c.flush()
    st = c.wait_stream(sid, timeout=5)
    assert st.ended and st.reset is None and bytes(st.data) == sent
    c.close()


def test_a_client_reset_mid_duplex_cancels_the_backend_stream(proxy, backends):
    """The client resets a duplex stream while its handler still forwards
    the body: the backend's stream is reset at once, and the connection
    goes on."""
    import h2.errors
    before = stats(backends[0])["resets_received"]
    c = H2Client(proxy.port)
    sid = c.request("/api/duplex", method="POST", end_stream=False)
    c.conn.send_data(sid, b"ping")
    c.flush()
    c.wait(lambda: bytes(c.streams[sid].data) == b"ping", timeout=5)
    c.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
    c.flush()
    deadline = time.time() + 5
    while stats(backends[0])["resets_received"] == before and time.time() < deadline:
        time.sleep(0.05)
    assert stats(backends[0])["resets_received"] >= before + 1
    st = c.wait_stream(c.request("/api/delay?s=0"))
    assert st.status == 200
    c.close()


def test_100_continue_through_an_h2_front(proxy):
    """The front reads the body without blocking (full duplex), and HTTP_IN
    sends the 100 only on a blocking read: the front sends it, or a client
    that waits for it would wait for ever."""
    c = H2Client(proxy.port)
    sid = c.request("/api/echo", method="POST", headers=[("expect", "100-continue")], end_stream=False)
    c.wait(lambda: c.streams[sid].interim or c.streams[sid].done, timeout=5)
    assert [dict(h)[b":status"] for h in c.streams[sid].interim] == [b"100"]
    c.send_body(sid, b"after continue")
    st = c.wait_stream(sid)
    assert st.status == 200 and bytes(st.data).decode() == f"length=14 sha256={hashlib.sha256(b'after continue').hexdigest()}"
    c.close()


def test_a_trickled_body_through_an_h2_front_ends_at_the_request_read_timeout(make_server, backends):
    """RequestReadTimeout's body stage holds for a proxied body as for one
    a local handler reads: 408 with mod_reqtimeout's log line."""
    srv = make_server(name="proxy-rudy", loglevel="warn reqtimeout:info proxy_http2:info", extra=f"""{PROXY_MODULES}
LoadModule reqtimeout_module {MODDIR}/mod_reqtimeout.so
RequestReadTimeout body=2,MinRate=500
ProxyPass /api/ h2c://127.0.0.1:{backends[0]}/
""").start()
    c = H2Client(srv.port)
    sid = c.request("/api/echo", method="POST", end_stream=False)
    t0 = time.time()
    while not c.streams[sid].done and time.time() - t0 < 10:
        c.conn.send_data(sid, b"x")
        c.flush()
        c.read_some(timeout=0.5)
    assert c.streams[sid].status == 408, (c.streams[sid].status, time.time() - t0)
    assert 1.5 < time.time() - t0 < 5
    assert re.search(r"\[reqtimeout:info\].*AH01382: Request body read timeout \(an HTTP/2 stream; "
                     r"RequestReadTimeout body=2,MinRate=500\)", srv.read_error_log()), srv.read_error_log()[-2000:]
    c.close()


def test_an_early_answer_ends_the_upload(proxy):
    """The backend answers 413 before the body and resets its stream with
    NO_ERROR (RFC 9113 8.1): the client has the answer at once, with its
    own stream reset NO_ERROR, instead of after sending a body nobody reads;
    the connection and the backend connection go on (an upload after it
    passes)."""
    c = H2Client(proxy.port)
    sid = c.request("/api/too-large", method="POST", end_stream=False)
    c.conn.send_data(sid, b"x" * 2000)
    c.flush()
    st = c.wait_stream(sid, timeout=5)
    c.wait(lambda: st.reset is not None, timeout=5)
    assert (st.status, bytes(st.data), st.ended, st.reset) == (413, b"too large\n", True, 0)
    data = os.urandom(400_000)
    st = c.wait_stream(c.request("/api/echo", method="POST", body=data), timeout=20)
    assert st.status == 200 and bytes(st.data).decode() == f"length={len(data)} sha256={hashlib.sha256(data).hexdigest()}"
    c.close()


def test_a_body_cut_short_by_an_early_answer_is_reset_at_the_backend(proxy, backends, tmp_path):
    """The backend answers whole before the request body and does not
    reset its stream: the proxy reads the rest of the client's body and
    drops it, and the backend's stream is then reset, never ended with
    END_STREAM (the backend would take the bytes it got for the whole
    body). Over an HTTP/1.1 front, which reads the body to its end."""
    before = stats(backends[0])
    f = tmp_path / "up.bin"
    f.write_bytes(os.urandom(2 * 1024 * 1024))
    code, body = split(get(proxy, "/api/answer-first", "--data-binary", f"@{f}", h1=True))
    assert (code, body) == (200, b"answered\n")
    assert wait_for(lambda: stats(backends[0])["resets_received"] > before["resets_received"])
    assert stats(backends[0])["bodies_ended"] == before["bodies_ended"]


def test_request_trailers_pass_through(proxy):
    c = H2Client(proxy.port)
    sid = c.request("/api/echo", method="POST", end_stream=False)
    c.send_body(sid, b"abc" * 1000, end_stream=False)
    c.conn.send_headers(sid, [(b"x-checksum", b"42")], end_stream=True)
    c.flush()
    s = c.wait_stream(sid)
    assert s.status == 200
    assert bytes(s.data).startswith(b"length=3000 ")
    assert json.loads(s.header("x-request-trailers")) == {"x-checksum": "42"}
    # Fields that must come before the body (RFC 9110 6.5.1) stay here: a
    # content-length trailer ends an nghttp2 backend's whole connection.
    sid = c.request("/api/echo", method="POST", end_stream=False, headers=[("content-length", "3")])
    c.send_body(sid, b"abc", end_stream=False)
    c.conn.send_headers(sid, [(b"x-checksum", b"43"), (b"content-length", b"3"), (b"cookie", b"a=b")],
                        end_stream=True)
    c.flush()
    s = c.wait_stream(sid)
    assert s.status == 200
    assert json.loads(s.header("x-request-trailers")) == {"x-checksum": "43"}
    c.close()


def test_large_download(proxy):
    n = 20 * 1024 * 1024
    r = curl("--http2-prior-knowledge", proxy.url(f"/api/big?n={n}"))
    pattern = bytes(range(256)) * (n // 256 + 1)
    assert len(r.stdout) == n
    assert hashlib.sha256(r.stdout).digest() == hashlib.sha256(pattern[:n]).digest()


def test_trailers_pass_through(proxy):
    c = H2Client(proxy.port)
    sid = c.request("/api/trailers")
    s = c.wait_stream(sid)
    assert s.status == 200
    assert bytes(s.data) == b"hello"
    assert (b"grpc-status", b"0") in s.trailers
    assert (b"grpc-message", b"fine") in s.trailers
    c.close()


# httpd's output filters that keep state from one brigade to the next, on
# proxied responses: each as `(configuration, what the backend's "hello"
# becomes)`.
STATEFUL_FILTERS = {
    "substitute": ('AddOutputFilterByType SUBSTITUTE text/plain text/event-stream\n  Substitute "s/hello/HELLO/"',
                   b"HELLO"),
    "sed": ('SetOutputFilter Sed\n  OutputSed "s/hello/HeLLo/g"', b"HeLLo\n"),
    "bucketeer": ("SetOutputFilter BUCKETEER", b"hello"),
    "ext_filter": ("SetOutputFilter upper", b"HELLO"),
    "buffer": ("SetOutputFilter BUFFER", b"hello"),
}


@pytest.fixture(scope="module")
def filtered_proxy(workdir, docroot, backends):
    # mod_filter for AddOutputFilterByType.
    load = "\n".join(f"LoadModule {m}_module {MODDIR}/mod_{m}.so" for m in [*STATEFUL_FILTERS, "filter"])
    locations = "".join(f"ProxyPass /{name}/ h2c://127.0.0.1:{backends[0]}/\n<Location /{name}/>\n  {conf}\n</Location>\n"
                        for name, (conf, _) in STATEFUL_FILTERS.items())
    extra = f"""{PROXY_MODULES}
{load}
ExtFilterDefine upper mode=output cmd="/usr/bin/tr a-z A-Z"
{locations}"""
    h = Httpd(workdir, docroot, name="proxy-filters", h2_conf="H2MinWorkers 1\nH2MaxWorkers 5", extra=extra)
    with registered(h):
        yield h


@pytest.mark.parametrize("path", ["trailers", "stream?n=2", "big?n=300000"])
@pytest.mark.parametrize("name", list(STATEFUL_FILTERS))
def test_stateful_filters_on_a_resumed_proxied_response(filtered_proxy, name, path):
    """Over HTTP/2 the request waits for its backend suspended, and each
    arrival is passed through its output filters by a short job on a
    worker, often another thread than the last: mod_ext_filter's child
    process and pipes, mod_sed's line buffer, mod_bucketeer's flushes and
    mod_buffer's collected brigade must carry over. The body is the one
    HTTP/1.1 gets, where one thread stays with the request."""
    h2 = get(filtered_proxy, f"/{name}/{path}")
    h1 = get(filtered_proxy, f"/{name}/{path}", h1=True)
    assert h2.returncode == 0 and h2.stdout.endswith(b"\n200")
    assert h2.stdout == h1.stdout
    if path == "trailers":
        assert h2.stdout == STATEFUL_FILTERS[name][1] + b"\n200"


def test_early_hints_pass_through(proxy):
    c = H2Client(proxy.port)
    sid = c.request("/api/early")
    s = c.wait_stream(sid)
    assert s.status == 200
    assert any((b":status", b"103") in h and (b"link", b"</style.css>; rel=preload; as=style") in h for h in s.interim), s.interim
    c.close()


def test_streamed_response_is_not_held_back(proxy):
    c = H2Client(proxy.port)
    sid = c.request("/api/stream?n=3")
    c.wait(lambda: c.streams[sid].status is not None, timeout=5)
    # The backend sends its head at once and the first event 0.5 s later.
    assert not c.streams[sid].data, "the head waited for the body"
    c.wait(lambda: b"event 0" in c.streams[sid].data, timeout=5)
    assert not c.streams[sid].ended
    s = c.wait_stream(sid)
    assert bytes(s.data) == b"event 0\nevent 1\nevent 2\n"
    c.close()


def test_tls_backend(proxy, backends):
    before = stats_tls(backends[3])
    code, body = split(get(proxy, "/tls/delay?s=0"))
    assert code == 200 and f"port={backends[3]} ".encode() in body
    res = h2load("-n", "40", "-c", "1", "-m", "40", proxy.url("/tls/delay?s=1"))
    assert res.get("s2xx") == 40, res["output"]
    code, body = split(get(proxy, "/tls/headers", h1=True))
    h = json.loads(body)
    assert h[":scheme"] == "https" and h[":authority"] == f"localhost:{backends[3]}"
    assert stats_tls(backends[3])["connections"] - before["connections"] <= 2


@pytest.fixture(scope="module")
def backend_pki(workdir):
    """A CA and certificates for TLS backends (EC keys, quick to make):
    `signed` (issued by the CA, for localhost), `expired` (the same, valid
    in January 2020 only), `revoked` (the same, revoked in `crl.pem`),
    `client` (issued by the CA, CN proxy-client, certificate and key in
    one file, as SSLProxyMachineCertificateFile takes them), `client-int`
    (the same, CN proxy-client-int, issued by `intermediate`, a CA the
    root CA issued), `forged` (for localhost, naming the CA as its issuer
    but signed by another key: a CA of the same name)."""
    d = workdir / "backend-pki"
    d.mkdir()

    def run(cmd):
        subprocess.run(cmd, shell=True, cwd=d, check=True, capture_output=True)

    ec = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes"
    run(f"openssl req -x509 {ec} -subj /CN=Backend-Test-CA -days 2 -keyout ca.key -out ca.pem")
    (d / "names.ext").write_text("subjectAltName=DNS:localhost\n")
    (d / "ca.cnf").write_text("""[ca]
default_ca = d
[d]
dir = .
database = index.txt
new_certs_dir = .
serial = serial
default_md = sha256
policy = p
[p]
commonName = supplied
""")
    (d / "index.txt").write_text("")
    (d / "serial").write_text("01\n")
    for name, cn in [("signed", "signed.test"), ("expired", "expired.test"), ("revoked", "revoked.test"),
                     ("client", "proxy-client")]:
        run(f"openssl req -new {ec} -subj /CN={cn} -keyout {name}.key -out {name}.csr")
    run("openssl x509 -req -in signed.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 "
        "-extfile names.ext -out signed.pem")
    run("openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -out client.crt")
    run("openssl ca -batch -config ca.cnf -cert ca.pem -keyfile ca.key -in expired.csr -out expired.pem "
        "-startdate 20200101000000Z -enddate 20200201000000Z -extfile names.ext -notext")
    run("openssl ca -batch -config ca.cnf -cert ca.pem -keyfile ca.key -in revoked.csr -out revoked.pem "
        "-days 2 -extfile names.ext -notext")
    run("openssl ca -batch -config ca.cnf -cert ca.pem -keyfile ca.key -revoke revoked.pem")
    run("openssl ca -batch -config ca.cnf -cert ca.pem -keyfile ca.key -gencrl -crldays 2 -out crl.pem")
    run(f"openssl req -x509 {ec} -subj /CN=Backend-Test-CA -days 2 -keyout impostor-ca.key -out impostor-ca.pem")
    run(f"openssl req -new {ec} -subj /CN=forged.test -keyout forged.key -out forged.csr")
    # No key identifiers: the chain is built by the issuer's name alone.
    (d / "forged.ext").write_text("subjectAltName=DNS:localhost\nauthorityKeyIdentifier=none\n"
                                  "subjectKeyIdentifier=none\n")
    run("openssl x509 -req -in forged.csr -CA impostor-ca.pem -CAkey impostor-ca.key -CAcreateserial -days 2 "
        "-extfile forged.ext -out forged.pem")
    (d / "client.pem").write_text((d / "client.crt").read_text() + (d / "client.key").read_text())
    (d / "ca.ext").write_text("basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n"
                              "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n")
    run(f"openssl req -new {ec} -subj /CN=Backend-Test-Intermediate -keyout intermediate.key -out intermediate.csr")
    run("openssl x509 -req -in intermediate.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 "
        "-extfile ca.ext -out intermediate.pem")
    run(f"openssl req -new {ec} -subj /CN=proxy-client-int -keyout client-int.key -out client-int.csr")
    run("openssl x509 -req -in client-int.csr -CA intermediate.pem -CAkey intermediate.key -CAcreateserial "
        "-days 2 -out client-int.crt")
    (d / "client-int.pem").write_text((d / "client-int.crt").read_text() + (d / "client-int.key").read_text())
    for f in d.iterdir():
        os.chmod(f, 0o644)
    return d


@pytest.fixture(scope="module")
def tls_backends(certs, backend_pki):
    """TLS backends by the certificate they present: `signed`, `expired` and
    `revoked` and `forged` (backend_pki), `self` (self-signed, for localhost and 127.0.0.1),
    `other` (self-signed, for c.test only), `mtls` (`signed`, and it
    requires a client certificate issued by the CA)."""
    d = backend_pki
    started = {
        "signed": spawn_backend("h2backend.py", 100, d / "signed.pem", d / "signed.key"),
        "expired": spawn_backend("h2backend.py", 100, d / "expired.pem", d / "expired.key"),
        "revoked": spawn_backend("h2backend.py", 100, d / "revoked.pem", d / "revoked.key"),
        "forged": spawn_backend("h2backend.py", 100, d / "forged.pem", d / "forged.key"),
        "self": spawn_backend("h2backend.py", 100, *certs.main),
        "other": spawn_backend("h2backend.py", 100, *certs.other),
        "mtls": spawn_backend("h2backend.py", 100, d / "signed.pem", d / "signed.key", d / "ca.pem"),
    }
    yield {name: port for name, (port, _) in started.items()}
    for _, proc in started.values():
        proc.kill()
        proc.wait()


def tls_check_server(workdir, docroot, tls_backends, directives, name, **httpd):
    routes = "\n".join(f"ProxyPass /{b}/ h2://localhost:{port}/" for b, port in tls_backends.items())
    return Httpd(workdir, docroot, name=name, **httpd, extra=f"""{PROXY_MODULES}
{SSL_MODULES}
ProxyTimeout 10
{routes}
{directives}""")


# mod_ssl's SSLProxy* settings, what each backend gets (503: the backend
# is refused, as mod_ssl refuses it under the stock module; the stock
# module gave the same answers for each of these) and a reason logged.
BACKEND_CHECKS = {
    "mod_ssl's defaults check dates and names": (
        "", {"signed": 200, "self": 200, "other": 503, "expired": 503},
        "certificate does not name localhost (SSLProxyCheckPeerName)"),
    "require verifies the chain against the CA": (
        "SSLProxyVerify require\nSSLProxyCACertificateFile {ca}",
        {"signed": 200, "self": 503, "other": 503, "forged": 503},
        "certificate is not trusted: self-signed certificate (SSLProxyVerify)"),
    "require without CA certificates trusts none": (
        "SSLProxyVerify require", {"signed": 503, "self": 503},
        "certificate is not trusted: unable to get local issuer certificate (SSLProxyVerify)"),
    # (OpenSSL's verification goes on past the unknown issuer, and it
    # finds the expired date first, as mod_ssl's callback lets it.)
    "optional_no_ca accepts unknown issuers": (
        "SSLProxyVerify optional_no_ca", {"signed": 200, "self": 200, "other": 503, "expired": 503},
        "certificate is not trusted: certificate has expired (SSLProxyVerify)"),
    "a chain longer than the depth is refused": (
        "SSLProxyVerify require\nSSLProxyCACertificateFile {ca}\nSSLProxyVerifyDepth 0", {"signed": 503},
        "certificate chain has 2 certificates, more than SSLProxyVerifyDepth 0 allows"),
    "names unchecked": (
        "SSLProxyCheckPeerName off", {"other": 200, "expired": 503},
        "certificate has expired or is not valid yet (SSLProxyCheckPeerExpire)"),
    "the CN alone": (
        "SSLProxyCheckPeerName off\nSSLProxyCheckPeerCN on", {"signed": 503, "self": 503},
        "certificate does not name localhost (SSLProxyCheckPeerCN)"),
    "dates unchecked": (
        "SSLProxyCheckPeerExpire off", {"expired": 200, "other": 503},
        "certificate does not name localhost (SSLProxyCheckPeerName)"),
    "a revoked certificate is refused": (
        "SSLProxyVerify require\nSSLProxyCACertificateFile {ca}\nSSLProxyCARevocationFile {pki}/crl.pem\n"
        "SSLProxyCARevocationCheck leaf", {"signed": 200, "revoked": 503},
        "certificate is not trusted: certificate revoked (SSLProxyVerify)"),
    "revocation checks need a CRL": (
        "SSLProxyVerify require\nSSLProxyCACertificateFile {ca}\nSSLProxyCARevocationCheck chain",
        {"signed": 503}, "certificate is not trusted: unable to get certificate CRL (SSLProxyVerify)"),
    # ... and the chain's signatures are still checked: OpenSSL checks them
    # after revocation, and the module once took its verdict on a missing
    # CRL as the last word (a forged certificate passed).
    "unless told a missing CRL is fine": (
        "SSLProxyVerify require\nSSLProxyCACertificateFile {ca}\n"
        "SSLProxyCARevocationCheck leaf no_crl_for_cert_ok", {"signed": 200, "revoked": 200, "forged": 503},
        "certificate is not trusted: certificate signature failure (SSLProxyVerify)"),
    "optional_no_ca checks signatures too": (
        "SSLProxyVerify optional_no_ca\nSSLProxyCACertificateFile {ca}", {"signed": 200, "self": 200, "forged": 503},
        "certificate is not trusted: certificate signature failure (SSLProxyVerify)"),
}


@pytest.mark.parametrize("case", BACKEND_CHECKS)
def test_tls_backend_certificates_are_checked_as_mod_ssl_checks_them(workdir, docroot, tls_backends,
                                                                      backend_pki, case):
    """proxy_http2_module makes its own TLS connections, so it applies
    mod_ssl's SSLProxy* settings itself: before, SSLProxyVerify require
    had no effect on h2:// backends and neither dates nor names were
    checked."""
    directives, expected, reason = BACKEND_CHECKS[case]
    srv = tls_check_server(workdir, docroot, tls_backends,
                           directives.format(ca=backend_pki / "ca.pem", pki=backend_pki),
                           name="tls-check-" + uuid.uuid4().hex[:8]).start()
    try:
        got = {b: split(get(srv, f"/{b}/headers"))[0] for b in expected}
        assert got == expected
        if reason:
            assert f"the backend's {reason}, answering 503" in srv.read_error_log()
    finally:
        srv.stop()
    srv.check_log()


def test_backend_checks_hold_without_our_http2_module(workdir, docroot, tls_backends, backend_pki):
    """proxy_http2_module loaded alone (an HTTP/1.1 front): the SSLProxy*
    settings hold all the same. They were read by http2_module only, and
    without it every h2:// backend went unchecked: a self-signed one got
    200 under SSLProxyVerify require."""
    directives, expected, reason = BACKEND_CHECKS["require verifies the chain against the CA"]
    srv = tls_check_server(workdir, docroot, tls_backends, directives.format(ca=backend_pki / "ca.pem"),
                           name="tls-check-proxy-only", module=None, protocols="http/1.1").start()
    try:
        got = {b: split(get(srv, f"/{b}/headers", h1=True))[0] for b in expected}
        assert got == expected
        assert f"the backend's {reason}, answering 503" in srv.read_error_log()
    finally:
        srv.stop()
    srv.check_log()


def test_restarts_do_not_pile_up_the_backend_checks_settings(workdir, docroot, backend_pki):
    """The parent keeps every server's SSLProxy* settings for h2://
    backends (a CA file's contents among them) for its children. A restart
    unloads the module and made the settings again without freeing the old
    ones: with a 4 MiB CA file, the parent grew by 4 MiB at every restart."""
    ca = (backend_pki / "ca.pem").read_bytes()
    big = workdir / "big-ca.pem"
    big.write_bytes(ca * (4 * 1024 * 1024 // len(ca) + 1))
    srv = Httpd(workdir, docroot, name="tls-settings-restarts", extra=f"""{PROXY_MODULES}
{SSL_MODULES}
SSLProxyCACertificateFile {big}
ProxyPass /tls/ h2://localhost:{free_port()}/
""").start()

    def parent_rss_kib():
        with open(f"/proc/{srv.pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))

    def restart():
        srv.signal("restart")
        time.sleep(0.5)
        assert wait_for(srv._answers, timeout=20)

    try:
        restart()
        before = parent_rss_kib()
        for _ in range(5):
            restart()
        grown = parent_rss_kib() - before
        assert grown < 6 * 1024, f"the parent grew by {grown} KiB over 5 restarts"
    finally:
        srv.stop()
    srv.check_log()


def test_proxy_sections_and_virtual_hosts_set_their_own_backend_checks(workdir, docroot, tls_backends,
                                                                       backend_pki):
    """SSLProxy* in <Proxy>, <ProxyMatch>, wildcard and balancer sections
    apply to the backend URLs they cover, over the server's; a virtual host's settings
    over the main server's, with the main server's sections still in
    force there."""
    b = tls_backends
    vport = free_port()
    srv = tls_check_server(workdir, docroot, b, f"""
<Proxy "h2://localhost:{b['other']}/">
  SSLProxyCheckPeerName off
</Proxy>
<ProxyMatch "^h2://localhost:{b['expired']}/head">
  SSLProxyCheckPeerExpire off
</ProxyMatch>
<Proxy "h2://localhost:{b['signed']}/*">
  SSLProxyVerify require
</Proxy>
LoadModule proxy_balancer_module {MODDIR}/mod_proxy_balancer.so
LoadModule slotmem_shm_module {MODDIR}/mod_slotmem_shm.so
LoadModule lbmethod_byrequests_module {MODDIR}/mod_lbmethod_byrequests.so
<Proxy balancer://lax>
  BalancerMember h2://localhost:{b['expired']}
  SSLProxyCheckPeerExpire off
</Proxy>
ProxyPass /lax/ balancer://lax/
Listen 127.0.0.1:{vport}
<VirtualHost 127.0.0.1:{vport}>
  SSLProxyCACertificateFile {backend_pki / "ca.pem"}
</VirtualHost>""", name="tls-sections").start()
    try:
        main = {p: split(get(srv, p))[0] for p in ["/other/headers", "/expired/headers", "/expired/delay?s=0",
                                                   "/signed/headers", "/self/headers", "/lax/delay?s=0"]}
        assert main == {"/other/headers": 200, "/expired/headers": 200, "/expired/delay?s=0": 503,
                        "/signed/headers": 503, "/self/headers": 200, "/lax/delay?s=0": 200}
        vhost = {p: split(curl("--http2-prior-knowledge", "-w", "\n%{http_code}",
                               f"http://127.0.0.1:{vport}{p}"))[0]
                 for p in ["/signed/headers", "/other/headers", "/expired/delay?s=0"]}
        assert vhost == {"/signed/headers": 200, "/other/headers": 200, "/expired/delay?s=0": 503}
        assert "the backend's certificate is not trusted" in srv.read_error_log()
    finally:
        srv.stop()
    srv.check_log()


def test_backend_checks_follow_the_sections_as_mod_ssl_applies_them(workdir, docroot, tls_backends):
    """Of the <Proxy> sections that cover a backend URL the last one
    applies, whole, over the server's settings (mod_ssl does not merge one
    section over another), also a section without SSLProxy* directives; a
    section with worker parameters covers its URL; sections are matched
    against the URL as mod_proxy matches them, before it writes the host
    in lower case."""
    b = tls_backends
    srv = tls_check_server(workdir, docroot, b, f"""
SSLProxyVerify require
<Proxy "h2://localhost:{b['self']}/">
  SSLProxyVerify none
</Proxy>
<Proxy "h2://localhost:{b['self']}/admin">
  SSLProxyCheckPeerExpire off
</Proxy>
<Proxy "h2://localhost:{b['self']}/open">
  Require all granted
</Proxy>
<Proxy "h2://localhost:{b['other']}/" timeout=10>
  SSLProxyVerify none
  SSLProxyCheckPeerName off
</Proxy>
ProxyPass /upper/ h2://LocalHost:{b['signed']}/
<Proxy "h2://LocalHost:{b['signed']}/">
  SSLProxyVerify none
</Proxy>""", name="tls-section-match").start()
    try:
        got = {p: split(get(srv, p))[0] for p in ["/self/headers", "/self/admin/headers", "/self/open/headers",
                                                  "/other/headers", "/upper/headers", "/signed/headers"]}
        assert got == {"/self/headers": 200, "/self/admin/headers": 503, "/self/open/headers": 503,
                       "/other/headers": 200, "/upper/headers": 200, "/signed/headers": 503}
    finally:
        srv.stop()
    srv.check_log()


@pytest.mark.parametrize("directives, version, cipher", [
    ("", "TLSv1.3", None),
    ("SSLProxyProtocol -all +TLSv1.2", "TLSv1.2", None),
    ("SSLProxyProtocol TLSv1.2\nSSLProxyCipherSuite ECDHE-ECDSA-CHACHA20-POLY1305",
     "TLSv1.2", "ECDHE-ECDSA-CHACHA20-POLY1305"),
    ("SSLProxyCipherSuite TLSv1.3 TLS_CHACHA20_POLY1305_SHA256", "TLSv1.3", "TLS_CHACHA20_POLY1305_SHA256"),
], ids=["defaults", "protocol", "tls1.2-cipher", "tls1.3-suite"])
def test_tls_backend_protocols_and_ciphers(workdir, docroot, tls_backends, directives, version, cipher):
    """SSLProxyProtocol and SSLProxyCipherSuite choose what the backend
    connection may agree on (the backend reports what it did)."""
    srv = tls_check_server(workdir, docroot, tls_backends, directives,
                           name="tls-proto-" + uuid.uuid4().hex[:8]).start()
    try:
        code, body = split(get(srv, "/signed/headers", "-D", "-"))
        assert code == 200
        assert f"x-tls-version: {version}".encode() in body
        if cipher:
            assert f"x-tls-cipher: {cipher}".encode() in body
    finally:
        srv.stop()
    srv.check_log()


def test_unusable_tls_backend_settings_are_reported_at_start(workdir, docroot, tls_backends, backend_pki):
    """Settings OpenSSL cannot use are named in the error log at start
    (mod_ssl checks its proxy settings only with SSLProxyEngine on, which
    h2:// backends do not need), with the context they stand in; their
    backends are answered 503."""
    srv = tls_check_server(workdir, docroot, tls_backends, f"""
<Proxy "h2://localhost:{tls_backends['signed']}/">
  SSLProxyCipherSuite NO-SUCH-CIPHER
</Proxy>
<Proxy "h2://localhost:{tls_backends['self']}/">
  SSLProxyMachineCertificateFile {backend_pki / "ca.pem"}
</Proxy>""", name="tls-unusable").start()
    try:
        log = srv.read_error_log()
        port = tls_backends["signed"]
        assert (f"the SSLProxy* settings of <Proxy h2://localhost:{port}/> in the main server cannot serve "
                "h2:// backends: SSLProxyCipherSuite NO-SUCH-CIPHER: no cipher OpenSSL knows") in log, log
        assert f"cannot use SSLProxyMachineCertificateFile {backend_pki / 'ca.pem'}" in log
        assert log.count("cannot serve h2:// backends") == 2, log
        assert split(get(srv, "/signed/headers"))[0] == 503
        assert split(get(srv, "/self/headers"))[0] == 503
    finally:
        srv.stop()
    srv.check_log()


def test_preserved_host_is_the_name_a_tls_backend_must_carry(workdir, docroot, tls_backends):
    """With ProxyPreserveHost, mod_proxy hands mod_ssl the request's host
    as the backend's name (and SNI): a.test is among the certificate's
    names, x.test is not (the stock module answered the same)."""
    srv = tls_check_server(workdir, docroot, tls_backends, f"""
ProxyPass /pp/ h2://localhost:{tls_backends['self']}/
<Location /pp/>
  ProxyPreserveHost On
</Location>""", name="tls-preserve-host").start()
    try:
        got = {host: split(get(srv, "/pp/headers", "-H", f"Host: {host}"))[0]
               for host in ("localhost", "a.test", "x.test")}
        assert got == {"localhost": 200, "a.test": 200, "x.test": 503}
        assert "the backend's certificate does not name x.test (SSLProxyCheckPeerName)" in srv.read_error_log()
    finally:
        srv.stop()
    srv.check_log()


def test_backend_connections_stay_bounded_whatever_names_clients_give(make_server, certs):
    """With ProxyPreserveHost each client host is the backend's name (SNI),
    so a connection of its own: a client naming host after host opened one
    backend connection per name, each kept 30 s (descriptors and memory the
    client chose). At most MAX_CONNS_PER_BACKEND (16) to one address are
    kept per proxy loop (2): the idle one unused longest closes, and with
    none idle a request waits for one (it got 503 at once: in a balancer
    that put the member in error)."""
    port, proc = spawn_backend("h2backend.py", 100, *certs.main)
    try:
        srv = make_server(extra=f"""{PROXY_MODULES}
{SSL_MODULES}
SSLProxyEngine on
SSLProxyVerify none
SSLProxyCheckPeerName off
SSLProxyCheckPeerCN off
ProxyPass /many/ h2://localhost:{port}/
<Location /many/>
  ProxyPreserveHost On
</Location>""").start()
        c = H2Client(srv.port)
        for i in range(60):
            st = c.wait_stream(c.request("/many/headers", authority=f"n{i}.test"))
            assert st.status == 200, (i, st.status)
        # 48 names at once, each request busy for 1 s: more than 16 a loop.
        sids = [c.request("/many/delay?s=1", authority=f"busy{i}.test") for i in range(48)]
        c.wait(lambda: all(c.streams[s].done for s in sids), timeout=30)
        assert [c.streams[s].status for s in sids] == [200] * 48, [c.streams[s].status for s in sids]
        c.close()
        def stats():
            return json.loads(curl("-k", "--http2", "-s", f"https://127.0.0.1:{port}/stats").stdout)
        # (+1: the connection that asks; closed ones go as the backend sees them end)
        assert wait_for(lambda: stats()["open"] <= 2 * 16 + 1, timeout=5), stats()
        assert stats()["connections"] >= 60
    finally:
        proc.kill()
        proc.wait()


def test_client_certificate_for_tls_backends(workdir, docroot, tls_backends, backend_pki):
    """SSLProxyMachineCertificateFile: the backend that requires a client
    certificate gets it (its CN reaches the backend); without it the
    backend refuses the connection. The files are read at start, as root,
    as mod_ssl reads its own: a key and a CA file only root may read serve
    the child processes (httpd's User), and read again at a graceful
    restart. A file without the key: 503, and the log says which file and
    why."""
    private, private_ca = backend_pki / "client-root-only.pem", backend_pki / "ca-root-only.pem"
    shutil.copy(backend_pki / "client.pem", private)
    shutil.copy(backend_pki / "ca.pem", private_ca)
    for f in (private, private_ca):
        os.chmod(f, 0o600)
    keyless = backend_pki / "ca.pem"
    srv = tls_check_server(workdir, docroot, tls_backends, f"""
<Proxy "h2://localhost:{tls_backends['mtls']}/headers">
  SSLProxyMachineCertificateFile {backend_pki / "client.pem"}
</Proxy>
<Proxy "h2://localhost:{tls_backends['mtls']}/private/">
  SSLProxyMachineCertificateFile {private}
  SSLProxyVerify require
  SSLProxyCACertificateFile {private_ca}
</Proxy>
<Proxy "h2://localhost:{tls_backends['mtls']}/keyless/">
  SSLProxyMachineCertificateFile {keyless}
</Proxy>
ProxyPass /mtls-private/ h2://localhost:{tls_backends['mtls']}/private/
ProxyPass /mtls-keyless/ h2://localhost:{tls_backends['mtls']}/keyless/
ProxyPass /mtls-none/ h2://localhost:{tls_backends['mtls']}/none/""", name="tls-client-cert").start()
    try:
        r = get(srv, "/mtls/headers", "-D", "-")
        code, body = split(r)
        assert code == 200 and b"x-client-cn: proxy-client" in body
        # The same backend, but a URL outside the section: no certificate,
        # on a connection of its own.
        assert split(get(srv, "/mtls-none/headers"))[0] == 503
        assert re.search(r"backend h2://localhost:\d+: .*TLS", srv.read_error_log())
        # Always with a reason: the alert, the socket error, or the close.
        assert "(SSL error 5)" not in srv.read_error_log()
        code, body = split(get(srv, "/mtls-private/headers", "-D", "-"))
        assert code == 200 and b"x-client-cn: proxy-client" in body, srv.read_error_log()[-2000:]
        assert split(get(srv, "/mtls-keyless/headers"))[0] == 503
        assert f"cannot use SSLProxyMachineCertificateFile {keyless} (it needs the certificate and its key" \
            in srv.read_error_log()
        # A graceful restart reads the files again: the new generation's
        # children use what the file holds now.
        shutil.copy(keyless, private)
        srv.graceful()
        deadline = time.monotonic() + 15
        while split(get(srv, "/mtls-private/headers"))[0] != 503 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert f"cannot use SSLProxyMachineCertificateFile {private} (it needs" in srv.read_error_log()
    finally:
        srv.stop()
    srv.check_log()


def test_client_certificate_chain_for_tls_backends(workdir, docroot, tls_backends, backend_pki):
    """SSLProxyMachineCertificateChainFile: a client certificate issued by
    an intermediate CA reaches a backend that trusts only the root once the
    chain file supplies the intermediate (the file also holds a certificate
    that is no CA, first); without the chain file the backend refuses it.
    A chain file that holds no certificate: 503, and the log names the
    file. A file of two certificate and key pairs, the keys in the other
    order: its first certificate goes with the key that matches it."""
    chain = backend_pki / "chain.pem"
    chain.write_text((backend_pki / "signed.pem").read_text() + (backend_pki / "intermediate.pem").read_text()
                     + (backend_pki / "ca.pem").read_text())
    port = tls_backends["mtls"]
    empty = backend_pki / "client-int.key"
    pairs = backend_pki / "client-pairs.pem"
    pairs.write_text("".join((backend_pki / f).read_text()
                             for f in ("client-int.crt", "client.crt", "client.key", "client-int.key")))
    srv = tls_check_server(workdir, docroot, tls_backends, f"""
<Proxy "h2://localhost:{port}/chain/">
  SSLProxyMachineCertificateFile {backend_pki / "client-int.pem"}
  SSLProxyMachineCertificateChainFile {chain}
</Proxy>
<Proxy "h2://localhost:{port}/nochain/">
  SSLProxyMachineCertificateFile {backend_pki / "client-int.pem"}
</Proxy>
<Proxy "h2://localhost:{port}/pairs/">
  SSLProxyMachineCertificateFile {pairs}
  SSLProxyMachineCertificateChainFile {chain}
</Proxy>
<Proxy "h2://localhost:{port}/empty/">
  SSLProxyMachineCertificateFile {backend_pki / "client-int.pem"}
  SSLProxyMachineCertificateChainFile {empty}
</Proxy>
ProxyPass /mtls-chain/ h2://localhost:{port}/chain/
ProxyPass /mtls-nochain/ h2://localhost:{port}/nochain/
ProxyPass /mtls-pairs/ h2://localhost:{port}/pairs/
ProxyPass /mtls-empty/ h2://localhost:{port}/empty/""", name="tls-client-chain").start()
    try:
        code, body = split(get(srv, "/mtls-chain/headers", "-D", "-"))
        assert code == 200 and b"x-client-cn: proxy-client-int" in body, srv.read_error_log()[-2000:]
        assert split(get(srv, "/mtls-nochain/headers"))[0] == 503
        code, body = split(get(srv, "/mtls-pairs/headers", "-D", "-"))
        assert code == 200 and b"x-client-cn: proxy-client-int" in body, srv.read_error_log()[-2000:]
        assert split(get(srv, "/mtls-empty/headers"))[0] == 503
        assert f"SSLProxyMachineCertificateChainFile {empty} holds no certificate (in PEM)" in srv.read_error_log()
    finally:
        srv.stop()
    srv.check_log()


@contextlib.contextmanager
def s_server(backend_pki, *verify):
    """OpenSSL's s_server as a TLS backend for one connection (-naccept 1),
    with the backend certificate and the intermediate CA's name as the CA
    names it lists, checking client certificates as `verify` says. Yields
    (port, output): output() waits for it to end and returns all it
    printed (the client certificate it got, the bytes after the
    handshake)."""
    port = free_port()
    proc = subprocess.Popen(
        ["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-cert", str(backend_pki / "signed.pem"),
         "-key", str(backend_pki / "signed.key"), "-CAfile", str(backend_pki / "intermediate.pem"),
         *verify, "-alpn", "h2", "-naccept", "1"],
        # stdin open: s_server ends at the end of its input
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    try:
        # It accepts one connection: wait for its word, not for a
        # connection.
        seen = ""
        while "ACCEPT" not in seen:
            line = proc.stdout.readline()
            assert line, f"s_server ended: {seen}"
            seen += line
        yield port, lambda: seen + proc.communicate(timeout=15)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_client_certificate_chosen_by_the_ca_names_the_backend_lists(workdir, docroot, tls_backends, backend_pki):
    """SSLProxyMachineCertificatePath: every file of the directory (a
    symbolic link to one of them read once) gives its pairs. Chosen as
    mod_ssl chooses: a backend that lists no CA names (Python's ssl) gets
    the first pair; one that lists the intermediate CA's name (OpenSSL's
    s_server with that CA file) gets the pair it issued, though second."""
    certdir = backend_pki / "client-dir"
    certdir.mkdir()
    shutil.copy(backend_pki / "client.pem", certdir / "a-by-root.pem")
    shutil.copy(backend_pki / "client-int.pem", certdir / "b-by-intermediate.pem")
    os.symlink("b-by-intermediate.pem", certdir / "c-link.pem")
    mtls = tls_backends["mtls"]
    # -Verify: it asks for a certificate and needs one.
    with s_server(backend_pki, "-Verify", "3") as (named, output):
        srv = tls_check_server(workdir, docroot, tls_backends, f"""
<Proxy "h2://localhost:{mtls}/dir/">
  SSLProxyMachineCertificatePath {certdir}
</Proxy>
<Proxy "h2://localhost:{named}/">
  SSLProxyMachineCertificatePath {certdir}
</Proxy>
ProxyPass /mtls-dir/ h2://localhost:{mtls}/dir/
ProxyPass /named/ h2://localhost:{named}/""", name="tls-client-dir").start()
        try:
            code, body = split(get(srv, "/mtls-dir/headers", "-D", "-"))
            assert code == 200 and b"x-client-cn: proxy-client\r\n" in body, srv.read_error_log()[-2000:]
            # s_server does not speak HTTP/2: the answer is an error; what
            # matters is the certificate it was given.
            get(srv, "/named/x", "--max-time", "3")
            out = output()
            assert re.search(r"subject=.*CN ?= ?proxy-client-int", out), (out[-1500:], srv.read_error_log()[-1500:])
        finally:
            srv.stop()
    srv.check_log()


def test_no_client_certificate_goes_to_a_backend_whose_ca_names_fit_none(workdir, docroot, tls_backends,
                                                                         backend_pki):
    """One pair, issued by the root CA, and a backend (s_server) that asks
    for a certificate of the intermediate CA but accepts none: as mod_ssl,
    the proxy sends none, and the handshake completes. (Sent anyway, the
    certificate failed the backend's verification and the handshake.)"""
    # -verify: it asks for a certificate but takes none; one it cannot
    # verify fails the handshake (-verify_return_error).
    with s_server(backend_pki, "-verify", "3", "-verify_return_error") as (port, output):
        srv = tls_check_server(workdir, docroot, tls_backends, f"""
<Proxy "h2://localhost:{port}/">
  SSLProxyMachineCertificateFile {backend_pki / "client.pem"}
</Proxy>
ProxyPass /optional/ h2://localhost:{port}/""", name="tls-client-unfit").start()
        try:
            # s_server does not speak HTTP/2: what matters is the handshake.
            get(srv, "/optional/x", "--max-time", "3")
            out = output()
            # The handshake completed (the client preface came after it),
            # without a certificate.
            assert "PRI * HTTP/2.0" in out, (out[-1500:], srv.read_error_log()[-1500:])
            assert "proxy-client" not in out and "Client certificate" not in out, out[-1500:]
        finally:
            srv.stop()
    srv.check_log()


def test_backend_reset_before_response_is_502(proxy):
    logged = len(proxy.read_error_log())
    code, _ = split(get(proxy, "/api/reset"))
    assert code == 502
    time.sleep(0.2)
    assert "backend h2c://127.0.0.1:" in proxy.read_error_log()[logged:]


def test_backend_reset_mid_response_resets_the_client_stream(proxy):
    c = H2Client(proxy.port)
    sid = c.request("/api/reset-mid")
    s = c.wait_stream(sid)
    assert s.status == 200
    assert s.reset is not None and not s.ended
    c.close()
    r = curl("--http1.1", proxy.url("/api/reset-mid"))
    assert r.returncode != 0  # the HTTP/1.1 response is cut off


def test_goaway_unprocessed_request_is_retried(proxy):
    code, body = split(get(proxy, f"/api/goaway?t={uuid.uuid4().hex}"))
    assert code == 200
    assert body.startswith(b"retried")


def test_a_backend_protocol_error_ends_that_connection_only(proxy):
    """A backend that breaks the protocol (DATA on stream 0) and keeps its
    socket open: nghttp2 answers with GOAWAY and ends the session, so the
    connection takes no further request. The GET caught on it (no response
    begun) is retried on a new connection, and the requests after it are
    answered there. Before, the request waited for its timeout (504), and
    every later one was given to the ended session, which refused it: 502
    for as long as requests kept the connection from going idle."""
    logged = len(proxy.read_error_log())
    code, body = split(get(proxy, f"/api/protocol-error?t={uuid.uuid4().hex}", "--max-time", "10"))
    assert code == 200 and body.startswith(b"retried"), (code, body)
    for _ in range(3):
        code, body = split(get(proxy, "/api/delay?s=0", "--max-time", "10"))
        assert code == 200, (code, body)
    assert "broke the HTTP/2 protocol (PROTOCOL_ERROR" in proxy.read_error_log()[logged:]


@pytest.mark.parametrize("cl,n,t", [(3, 6, 0), (10, 5, 0), (10, 5, 1)],
                         ids=["longer", "shorter", "shorter-then-trailers"])
def test_a_response_that_breaks_its_length_resets_its_stream_only(proxy, cl, n, t):
    """A backend's body longer or shorter than its content-length is a
    malformed response (RFC 9113 8.1.1): its stream is reset and its
    request answered 502 (here the head was passed on: the client's
    stream is cut), while the other requests on that backend connection
    go on. nghttp2's own checks ended the whole connection: a response
    in progress was cut, a request waiting for its answer failed."""
    logged = len(proxy.read_error_log())
    c = H2Client(proxy.port)
    streaming = c.request("/api/stream?n=4")
    waiting = c.request("/api/delay?s=2", method="POST", body=b"posted", headers=[("content-length", "6")])
    c.wait(lambda: len(c.streams[streaming].data) > 0, timeout=10)
    broken = c.request(f"/api/wrong-length?cl={cl}&n={n}&t={t}")
    c.wait(lambda: all(c.streams[s].done for s in (streaming, waiting, broken)), timeout=20)
    s = c.streams[broken]
    assert s.status == 502 or (s.reset is not None and not s.ended), (s.status, s.reset, bytes(s.data))
    s = c.streams[streaming]
    assert s.ended and s.status == 200 and bytes(s.data) == b"".join(f"event {i}\n".encode() for i in range(4))
    s = c.streams[waiting]
    assert s.ended and s.status == 200 and bytes(s.data).startswith(b"ok port="), (s.status, bytes(s.data))
    c.close()
    log = proxy.read_error_log()[logged:]
    assert "a malformed response (a body" in log and "broke the HTTP/2 protocol" not in log, log[-2000:]
    # Tagged as the stock mod_proxy_http2's lines (`LogLevel proxy_http2:...`).
    assert [l for l in log.splitlines() if "malformed response" in l and "[proxy_http2:error]" in l], log[-2000:]


@pytest.mark.parametrize("h1", [False, True], ids=["h2-front", "h1-front"])
def test_fields_http2_does_not_allow_are_dropped_not_a_502(proxy, h1):
    """A backend's field with a trailing space in its value or an `@` in its
    name (application backends send such) is left out of the response, as
    nghttp2's own checks leave it out; the response is not malformed for
    it."""
    out = subprocess.run(["curl", "-sS", "-i", "--max-time", "10", "--http1.1" if h1 else "--http2-prior-knowledge",
                          f"http://127.0.0.1:{proxy.port}/api/odd-fields"], capture_output=True)
    head, _, body = out.stdout.partition(b"\r\n\r\n")
    assert out.returncode == 0 and head.split(b" ")[1] == b"200" and body == b"odd\n", out
    assert b"x-fine: yes" in head.lower() and b"powered" not in head.lower() and b"x@y" not in head.lower(), head


@pytest.mark.parametrize("h1", [False, True], ids=["h2-front", "h1-front"])
def test_a_response_head_followed_by_a_protocol_error_is_a_502(proxy, h1):
    """The backend's head and its connection error arrive together: the
    client gets 502, not a head and then a broken-off response (the head
    had not reached the client; the request is not retried, the backend
    answered it)."""
    code, body = split(get(proxy, "/api/head-then-protocol-error", "--max-time", "10", h1=h1))
    assert code == 502, (code, body)


def test_a_backend_that_does_not_speak_http2_is_503_at_once(workdir, docroot):
    """`h2c://` to a backend that speaks HTTP/1.1 only (a common slip in a
    ProxyPass line): it answers the HTTP/2 preface with an HTTP/1.1 400 and
    keeps the connection open. The request gets 503 at once, with
    nghttp2's reason in the log, not after ProxyTimeout (30 s here)."""
    import socket
    import threading
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    held = []

    def http1_only():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            held.append(conn)  # open until the test ends
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    threading.Thread(target=http1_only, daemon=True).start()
    h = Httpd(workdir, docroot, name="proxy-h1only", extra=f"""
{PROXY_MODULES}
ProxyTimeout 30
ProxyPass /h1only/ h2c://127.0.0.1:{listener.getsockname()[1]}/
""")
    h.start()
    try:
        t0 = time.time()
        code, _ = split(get(h, "/h1only/x", "--max-time", "20"))
        elapsed = time.time() - t0
    finally:
        h.stop()
        listener.close()
        for c in held:
            c.close()
    assert code == 503 and elapsed < 5, (code, elapsed)
    assert "broke the HTTP/2 protocol (PROTOCOL_ERROR: SETTINGS expected)" in h.read_error_log()
    h.check_log()


def test_goaway_drains_and_replaces_the_connection(proxy):
    code, body = split(get(proxy, "/api/goaway-after"))
    assert code == 200 and body.startswith(b"bye conn=")
    old = body.split(b"conn=")[1].strip()
    time.sleep(0.3)
    code, body = split(get(proxy, "/api/delay?s=0"))
    assert code == 200
    assert f"conn={old.decode()} ".encode() not in body


def test_timeout_is_504(proxy):
    logged = len(proxy.read_error_log())
    code, _ = split(get(proxy, "/short/delay?s=4"))
    assert code == 504
    time.sleep(0.2)
    assert "within 1s, answering 504" in proxy.read_error_log()[logged:]


def test_a_timeout_after_the_head_cuts_the_response_and_says_so(proxy):
    """The backend falls silent after its head: the response is cut, and
    the log says that rather than the 504 the client never got."""
    logged = len(proxy.read_error_log())
    c = H2Client(proxy.port)
    st = c.wait_stream(c.request("/short/stream?n=2&d=3"), timeout=10)
    assert st.status == 200 and st.reset is not None and not st.ended
    c.close()
    time.sleep(0.2)
    log = proxy.read_error_log()[logged:]
    assert "within 1s, response aborted" in log and "answering 504" not in log, log[-2000:]


def test_subrequests_and_internal_redirects_to_a_slow_backend(make_server, docroot, backends):
    """An SSI include of a proxied URL (a subrequest) and an ErrorDocument
    under ProxyPass (an internal redirect) are run to their end by the
    handler, as over HTTP/1.1. Only a stream's own request can be
    suspended: these were suspended too, the include failed ("an error
    occurred") and the page's request was later resumed as if it were the
    proxied one (finished twice, its pool destroyed on a worker)."""
    ssi = docroot.path / "ssi"
    ssi.mkdir(exist_ok=True)
    (ssi / "page.shtml").write_text('<p><!--#include virtual="/api/delay?s=0.3" --></p>\n')
    srv = make_server(extra=f"""{PROXY_MODULES}
LoadModule include_module {MODDIR}/mod_include.so
ProxyPass /api/ h2c://127.0.0.1:{backends[0]}/
<Directory "{ssi}">
  Options +Includes
  AddOutputFilter INCLUDES .shtml
</Directory>
<Location /missing/>
  ErrorDocument 404 /api/delay?s=0.3
</Location>""").start()
    for _ in range(2):
        c = H2Client(srv.port)
        st = c.wait_stream(c.request("/ssi/page.shtml"))
        assert st.status == 200 and st.reset is None and st.ended
        assert b"<p>ok port=" in bytes(st.data) and b"error occurred" not in bytes(st.data), bytes(st.data)
        st = c.wait_stream(c.request("/missing/x"))
        assert st.reset is None and st.ended and b"ok port=" in bytes(st.data), (st.status, bytes(st.data))
        c.close()


def test_request_fields_and_error_statuses_as_mod_proxy_http_makes_them(make_server, docroot, backends):
    """As mod_proxy_http:
    - a body an input filter inflates goes without the client's
      Content-Length (the backend reset the stream for the mismatch: 502);
    - Proxy-Authorization goes on when httpd did not use it;
    - a subrequest (an SSI include) does not send the conditional fields
      it inherits from the page's request (the backend answered 304, and
      the fragment was missing from the page);
    - under ProxyErrorOverride, a proxied ErrorDocument keeps the error's
      status (it was sent as 200)."""
    ssi = docroot.path / "ssi"
    ssi.mkdir(exist_ok=True)
    (ssi / "fields.shtml").write_text('<p><!--#include virtual="/api/headers" --></p>\n')
    srv = make_server(extra=f"""{PROXY_MODULES}
LoadModule include_module {MODDIR}/mod_include.so
LoadModule deflate_module {MODDIR}/mod_deflate.so
ProxyPass /api/ h2c://127.0.0.1:{backends[0]}/
ProxyPass /inflated/ h2c://127.0.0.1:{backends[0]}/
<Location /inflated/>
  SetInputFilter DEFLATE
</Location>
ProxyPass /eo/ h2c://127.0.0.1:{backends[0]}/
<Location /eo/>
  ProxyErrorOverride On
  ErrorDocument 404 /eo/status?code=200
</Location>
<Directory "{ssi}">
  Options +Includes
  AddOutputFilter INCLUDES .shtml
</Directory>""").start()
    c = H2Client(srv.port)
    body = b"inflated " * 1000
    packed = gzip.compress(body)
    st = c.wait_stream(c.request("/inflated/echo", method="POST", body=packed,
                                 headers=[("content-encoding", "gzip"), ("content-length", str(len(packed)))]))
    assert (st.status, bytes(st.data).split()[0]) == (200, f"length={len(body)}".encode()), (st.status, st.data)
    st = c.wait_stream(c.request("/api/headers", headers=[("proxy-authorization", "Basic Zm9vOmJhcg==")]))
    assert json.loads(bytes(st.data)).get("proxy-authorization") == "Basic Zm9vOmJhcg==", bytes(st.data)
    st = c.wait_stream(c.request("/ssi/fields.shtml", headers=[("if-none-match", '"x"'),
                                                               ("if-modified-since", "Sat, 01 Jan 2000 00:00:00 GMT")]))
    assert st.status == 200 and b'"/headers"' in bytes(st.data), (st.status, bytes(st.data))
    assert b"if-none-match" not in bytes(st.data) and b"if-modified-since" not in bytes(st.data), bytes(st.data)
    st = c.wait_stream(c.request("/eo/status?code=404"))
    assert (st.status, bytes(st.data)) == (404, b"as asked\n"), (st.status, bytes(st.data))
    c.close()


def test_unreachable_backend_is_503(proxy):
    """And the reason is logged with the request (the client, in its
    virtual host's error log), not only by the proxy loop in the main
    server's."""
    start = len(proxy.read_error_log())
    code, _ = split(get(proxy, "/down/x"))
    assert code == 503
    assert wait_for(lambda: re.search(r"\[(client|remote) 127\.0\.0\.1:\d+\] h2rs proxy: backend h2c://127\.0\.0\.1:\d+: "
                                      r"cannot connect to .*, answering 503", proxy.read_error_log()[start:])), \
        proxy.read_error_log()[start:]


def test_backend_name_that_does_not_resolve_is_503(proxy):
    """The name is looked up on the request's thread (not on the engine's
    loop, which a slow lookup would stall for every proxied stream); one
    that fails answers 503, as mod_proxy_http's DNS failures do."""
    start = len(proxy.read_error_log())
    code, _ = split(get(proxy, "/nodns/x"))
    assert code == 503
    assert "backend h2c://no-such-host.invalid:" in proxy.read_error_log()[start:]
    assert "cannot resolve no-such-host.invalid:" in proxy.read_error_log()[start:]
    assert split(get(proxy, "/api/delay?s=0"))[0] == 200


def port_of(body):
    return int(body.split(b"port=")[1].split()[0])


def test_balancer_with_two_h2c_members(proxy, backends):
    ports = set()
    for _ in range(10):
        code, body = split(get(proxy, "/bal/delay?s=0"))
        assert code == 200
        ports.add(port_of(body))
    assert ports == {backends[0], backends[1]}


def test_balancer_fails_over_from_a_dead_member(proxy, backends):
    for _ in range(6):
        code, body = split(get(proxy, "/half/delay?s=0"))
        assert code == 200
        assert f"port={backends[1]} ".encode() in body


@pytest.fixture
def black_holes():
    """Addresses whose connects hang (SYNs dropped): listeners whose accept
    queues are full, as a backend host that is down behind a firewall
    looks. Yields three ports (mod_proxy shares a worker among ProxyPass
    URLs that start alike, so each worker needs an address of its own);
    skips where the kernel answers such connects."""
    holes, fillers = [], []
    for _ in range(3):
        hole, filled = black_hole(socket.AF_INET, "127.0.0.1", 0)
        holes.append(hole)
        fillers += filled
    yield [h.getsockname()[1] for h in holes]
    for sock in fillers + holes:
        sock.close()


def black_hole(family, host, port):
    """A listener on (host, port) whose connects hang, and the sockets that
    fill its accept queue (see `black_holes`); skips where the kernel
    answers such connects."""
    hole = socket.socket(family)
    if family == socket.AF_INET6:
        hole.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    hole.bind((host, port))
    hole.listen(0)
    fillers = []
    for _ in range(3):
        f = socket.socket(family)
        f.setblocking(False)
        f.connect_ex(hole.getsockname()[:2])
        fillers.append(f)
    time.sleep(0.3)
    try:
        socket.create_connection(hole.getsockname()[:2], timeout=0.5).close()
    except (socket.timeout, OSError):
        return hole, fillers
    for sock in fillers + [hole]:
        sock.close()
    pytest.skip("connects to a full accept queue are answered here")


def test_connectiontimeout_bounds_the_connect_to_a_backend(workdir, docroot, backends, black_holes):
    """mod_proxy's `connectiontimeout` (ms units too) bounds how long a new
    backend connection may take to open: a backend host that drops SYNs
    gets 503 after it, not after the request's `timeout` (which bounds it
    where connectiontimeout is not set), and a balancer fails over to its
    next member."""
    one, two, three = black_holes
    srv = Httpd(workdir, docroot, name="proxy-connect", h2_conf="H2MinWorkers 1\nH2MaxWorkers 5", extra=f"""
{PROXY_MODULES}
LoadModule proxy_balancer_module {MODDIR}/mod_proxy_balancer.so
LoadModule slotmem_shm_module {MODDIR}/mod_slotmem_shm.so
LoadModule lbmethod_byrequests_module {MODDIR}/mod_lbmethod_byrequests.so
ProxyPass /hole/ h2c://127.0.0.1:{one}/ connectiontimeout=1 timeout=30
ProxyPass /hole-ms/ h2c://127.0.0.1:{two}/ connectiontimeout=700ms timeout=30
ProxyPass /hole-plain/ h2c://127.0.0.1:{three}/ timeout=2
<Proxy balancer://dark>
  BalancerMember h2c://localhost:{one} connectiontimeout=1 timeout=30
  BalancerMember h2c://127.0.0.1:{backends[1]}
  ProxySet lbmethod=byrequests
</Proxy>
ProxyPass /dark/ balancer://dark/
""").start()
    try:
        for path in ("/hole/x", "/hole-ms/x", "/hole-plain/x"):
            t0 = time.monotonic()
            code, _ = split(get(srv, path, "--max-time", "25"))
            assert code == 503, path
            # Well before the 30 s timeout (the plain one: its own 2 s).
            assert time.monotonic() - t0 < 10, path
        assert srv.read_error_log().count("connect timed out") >= 3, srv.read_error_log()[-2000:]
        for _ in range(4):
            code, body = split(get(srv, "/dark/delay?s=0", "--max-time", "25"))
            assert code == 200 and f"port={backends[1]} ".encode() in body
    finally:
        srv.stop()
    srv.check_log()


def test_reset_tunnels_still_connecting_are_bounded_per_connection(make_server, black_holes):
    """Plain CONNECTs (mod_proxy_connect) to a host that drops SYNs, each
    reset by the client at once: their handlers still wait in connect (up
    to ProxyTimeout), a thread each, though nghttp2 no longer counts the
    streams as open. At most H2MaxSessionStreams of them run per
    connection; a tunnel beyond is refused (REFUSED_STREAM) until they end.
    (Each reset tunnel took a thread and a socket, without bound.)"""
    hole = black_holes[0]
    srv = make_server(h2_conf="H2MaxSessionStreams 10", extra=f"""{PROXY_MODULES}
LoadModule proxy_connect_module {MODDIR}/mod_proxy_connect.so
ProxyRequests On
AllowCONNECT {hole}
ProxyTimeout 4
<Proxy "*">
  Require all granted
</Proxy>""").start()

    def tunnel_threads():
        return sum(1 for pid in srv.mpm_children() for t in srv.thread_names(pid) if t.startswith("h2rs-tunnel"))

    c = H2Client(srv.port)
    # As many as may be open, reset once their handlers are connecting.
    first = [c.connect(f"127.0.0.1:{hole}") for _ in range(10)]
    assert wait_for(lambda: tunnel_threads() == 10), f"{tunnel_threads()} tunnel threads"
    time.sleep(0.3)
    for sid in first:
        c.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
    c.flush()
    time.sleep(0.3)
    assert tunnel_threads() == 10, "the reset tunnels' handlers ended at once"
    beyond = c.connect(f"127.0.0.1:{hole}")
    st = c.wait_stream(beyond, timeout=10)
    assert st.reset == h2.errors.ErrorCodes.REFUSED_STREAM, (st.status, st.reset)
    assert c.wait_stream(c.request("/1k.bin")).status == 200
    # Once their connects time out, tunnels are taken again.
    assert wait_for(lambda: tunnel_threads() == 0, timeout=20), f"{tunnel_threads()} tunnel threads left"
    again = c.connect(f"127.0.0.1:{hole}")
    st = c.wait_stream(again, timeout=20)
    assert st.status is not None and st.status >= 500, (st.status, st.reset)
    c.close()
    srv.new_log_lines()  # the connects' timeouts are logged


def test_ttl_and_disablereuse_close_backend_connections_sooner(workdir, docroot, backends):
    """mod_proxy's `ttl`: a backend connection idle for longer is closed
    (the next request opens a new one); `disablereuse=On`: each request
    has a connection of its own, closed after it; without either, an idle
    connection lasts 30 s and is used again."""
    once_port, once_backend = spawn_backend("h2backend.py", 100)
    srv = Httpd(workdir, docroot, name="proxy-ttl", h2_conf="H2MinWorkers 1\nH2MaxWorkers 5", extra=f"""
{PROXY_MODULES}
ProxyPass /ttl/ h2c://localhost:{backends[1]}/ ttl=1
ProxyPass /kept/ h2c://127.0.0.1:{backends[1]}/
ProxyPass /once/ h2c://127.0.0.1:{once_port}/ disablereuse=On
""").start()

    def conn(path):
        code, body = split(get(srv, path))
        assert code == 200, body
        return body.split(b"conn=")[1].split()[0]

    try:
        ttl, kept = conn("/ttl/delay?s=0"), conn("/kept/delay?s=0")
        once = [conn("/once/delay?s=0") for _ in range(3)]
        assert len(set(once)) == 3, once
        time.sleep(2.5)
        assert conn("/ttl/delay?s=0") != ttl
        assert conn("/kept/delay?s=0") == kept
        # The single-use connections are closed: none is left open to
        # their backend (which serves no one else).
        assert tcp_timers_to(once_port) == [], tcp_timers_to(once_port)
    finally:
        srv.stop()
        once_backend.kill()
        once_backend.wait()
    srv.check_log()


def test_disablereuse_connections_stay_within_max(workdir, docroot):
    """`disablereuse=On` with `max=2`: each request has a connection of its
    own, but at most two are open at once (as mod_proxy's pool allows); the
    others wait for one to close and are all answered. With `acquire` a
    request that waits longer is answered 503, as mod_proxy does when its
    pool has no connection free in time."""
    port, backend = spawn_backend("h2backend.py", 100)
    srv = Httpd(workdir, docroot, name="proxy-single-max", h2_conf="", extra=f"""
{PROXY_MODULES}
ProxyPass /capped/ h2c://127.0.0.1:{port}/ disablereuse=On max=2
ProxyPass /brief/ h2c://localhost:{port}/ disablereuse=On max=1 acquire=300
""").start()
    try:
        before = stats(port)
        res = h2load("-n", "6", "-c", "1", "-m", "6", srv.url("/capped/delay?s=0.5"))
        assert res.get("s2xx") == 6, res["output"]
        after = stats(port)
        # Six single-use connections, then the one /stats came on.
        assert after["connections"] - before["connections"] == 7, (before, after)
        assert after["max_delaying_conns"] == 2, after
        res = h2load("-n", "2", "-c", "1", "-m", "2", srv.url("/brief/delay?s=1.5"))
        assert (res.get("s2xx"), res.get("s5xx")) == (1, 1), res["output"]
        assert "no connection free within 300ms (max, disablereuse), answering 503" in srv.read_error_log()
    finally:
        srv.stop()
        backend.kill()
        backend.wait()
    srv.check_log()


def tcp_timers_to(port):
    """The kernel's timer kinds ("tr" in /proc/net/tcp: 0 none, 1
    retransmit, 2 keep-alive) of the established IPv4 connections to
    127.0.0.1:port, sorted."""
    timers = []
    for line in open("/proc/net/tcp").read().splitlines()[1:]:
        f = line.split()
        if f[2] == f"0100007F:{port:04X}" and f[3] == "01":
            timers.append(int(f[5].split(":")[0], 16))
    return sorted(timers)


def test_keepalive_sets_tcp_keepalive_on_backend_connections(workdir, docroot):
    """mod_proxy's `keepalive=On`: the backend connections a worker opens
    send TCP keep-alive probes (SO_KEEPALIVE); others do not."""
    port, backend = spawn_backend("h2backend.py", 100)
    srv = Httpd(workdir, docroot, name="proxy-keepalive", h2_conf="", extra=f"""
{PROXY_MODULES}
ProxyPass /ka/ h2c://127.0.0.1:{port}/ keepalive=On
ProxyPass /plain/ h2c://localhost:{port}/
""").start()
    try:
        assert split(get(srv, "/ka/delay?s=0"))[0] == 200
        assert split(get(srv, "/plain/delay?s=0"))[0] == 200
        deadline = time.monotonic() + 5
        while tcp_timers_to(port) != [0, 2] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert tcp_timers_to(port) == [0, 2]
    finally:
        srv.stop()
        backend.kill()
        backend.wait()
    srv.check_log()


class FreezableRelay:
    """A TCP relay to a backend whose connections can be frozen: the bytes
    stop both ways and the sockets stay open, as a connection looks that a
    NAT or firewall dropped without a word. New connections flow."""

    def __init__(self, target_port):
        self.target = target_port
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.frozen = []  # one Event per connection
        self.sockets = []
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                a, _ = self.listener.accept()
            except OSError:
                return
            b = socket.create_connection(("127.0.0.1", self.target))
            frozen = threading.Event()
            self.frozen.append(frozen)
            self.sockets += [a, b]
            for src, dst in ((a, b), (b, a)):
                threading.Thread(target=self.pump, args=(src, dst, frozen), daemon=True).start()

    @staticmethod
    def pump(src, dst, frozen):
        src.settimeout(0.05)
        while True:
            if frozen.is_set():
                time.sleep(0.05)
                continue
            try:
                data = src.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            if not data or frozen.is_set():
                return
            try:
                dst.sendall(data)
            except OSError:
                return

    def freeze(self):
        for f in self.frozen:
            f.set()

    def close(self):
        self.listener.close()
        for sock in self.sockets:
            sock.close()


def test_ping_checks_a_silent_backend_connection_before_using_it(workdir, docroot, backends):
    """mod_proxy's `ping`: a connection the backend has been silent on for
    longer than it is checked with a PING before a request goes on it; a
    connection that died without a word is closed and the request goes on
    a new one (200), where without `ping` it waits for its timeout (504),
    after which the connection takes no new requests.
    A new connection must bring the backend's SETTINGS within `ping`: a
    server that accepts and says nothing gets 503 then, not after the
    timeout."""
    relay = FreezableRelay(backends[0])
    mute = socket.socket()  # accepts (the kernel does), never answers
    mute.bind(("127.0.0.1", 0))
    mute.listen(16)
    mute_port = mute.getsockname()[1]
    srv = Httpd(workdir, docroot, name="proxy-ping", h2_conf="H2MinWorkers 1\nH2MaxWorkers 5", extra=f"""
{PROXY_MODULES}
ProxyPass /pinged/ h2c://127.0.0.1:{relay.port}/ ping=300ms timeout=20
ProxyPass /plain/ h2c://localhost:{relay.port}/ timeout=2
ProxyPass /mute/ h2c://127.0.0.1:{mute_port}/ ping=500ms timeout=20
""").start()
    try:
        code, first = split(get(srv, "/pinged/delay?s=0"))
        assert code == 200
        # Another worker (another name for the host), another connection.
        assert split(get(srv, "/plain/delay?s=0"))[0] == 200
        relay.freeze()
        time.sleep(0.5)
        t0 = time.monotonic()
        code, body = split(get(srv, "/pinged/delay?s=0", "--max-time", "15"))
        assert code == 200, srv.read_error_log()[-2000:]
        assert time.monotonic() - t0 < 10
        # On a new backend connection.
        assert body.split(b"conn=")[1].split()[0] != first.split(b"conn=")[1].split()[0]
        assert "no answer to a PING within 300ms (ping)" in srv.read_error_log()
        # A live, busy connection is used without a check.
        c = H2Client(srv.port)
        sids = [c.request(f"/pinged/delay?s=0&n={i}") for i in range(20)]
        c.wait(lambda: all(c.streams[s].done for s in sids))
        assert all(c.streams[s].status == 200 for s in sids)
        c.close()
        # Without ping, a frozen connection holds the request until its
        # timeout; having heard nothing on it for as long, the proxy puts
        # no new request on it: the next goes on a new connection.
        code, _ = split(get(srv, "/plain/delay?s=0", "--max-time", "15"))
        assert code == 504, srv.read_error_log()[-3000:]
        assert "nothing received on the connection for 2s (the worker's timeout, or ProxyTimeout), no new requests on it" in srv.read_error_log()
        code, _ = split(get(srv, "/plain/delay?s=0", "--max-time", "15"))
        assert code == 200, srv.read_error_log()[-3000:]
        t0 = time.monotonic()
        code, _ = split(get(srv, "/mute/x", "--max-time", "15"))
        assert code == 503 and time.monotonic() - t0 < 10
        assert "no HTTP/2 SETTINGS from the backend in time" in srv.read_error_log()
    finally:
        srv.stop()
        relay.close()
        mute.close()
    srv.check_log()


def test_a_worker_an_admin_disabled_answers_503(make_server, backends):
    """mod_proxy's worker states: a worker disabled (`status=+D`) or
    stopped (`+S`) answers 503 without a connect, as mod_proxy's
    connection pool does (AH00940); one put in error state by hand (`+E`,
    its error time never set) is past its `retry` and tried again. The
    states were ignored: every request went to the backend."""
    srv = make_server(extra=f"""{PROXY_MODULES}
ProxyPass /off/ h2c://127.0.0.1:{backends[0]}/ status=+D
ProxyPass /stopped/ h2c://localhost:{backends[0]}/ status=+S
ProxyPass /erred/ h2c://127.0.0.1:{backends[1]}/ status=+E
""").start()
    assert split(get(srv, "/off/delay?s=0"))[0] == 503
    assert split(get(srv, "/stopped/delay?s=0"))[0] == 503
    assert f"disabled connection for (127.0.0.1:{backends[0]})" in srv.read_error_log()
    assert split(get(srv, "/erred/delay?s=0"))[0] == 200


def test_a_panic_in_the_proxy_loop_fails_its_requests_and_the_loop_goes_on(make_server, backends):
    """A panic in a proxy engine loop (fault injection) loses the loop's
    state: the requests it held fail at once (502), one in flight on the
    backend included, and the loop starts again: the next requests are
    served. Before, the loop stayed dead: its requests, and every later
    one for its backends, waited for ever, each holding a worker."""
    srv = make_server(env={"H2RS_FAULT_INJECTION": "1"}, extra=f"""{PROXY_MODULES}
ProxyPass /p/ h2c://127.0.0.1:{backends[0]}/ timeout=30""").start()
    srv.allow_panic = True
    pids_before = set(srv.children())
    c = H2Client(srv.port)
    slow = c.request("/p/delay?s=5")
    time.sleep(0.5)
    t0 = time.monotonic()
    boom = c.request("/p/delay?s=0", headers=[("h2rs-test-panic", "proxy-loop")])
    assert c.wait_stream(boom, timeout=10).status == 502
    assert c.wait_stream(slow, timeout=10).status == 502
    assert time.monotonic() - t0 < 4  # failed, not answered by the backend
    assert c.wait_stream(c.request("/p/delay?s=0"), timeout=10).status == 200
    c.close()
    assert set(srv.children()) == pids_before  # caught: no child died
    log = srv.read_error_log()
    assert "recovered from a panic in proxy loop" in log and "failing them" in log


def test_requests_never_sent_are_retried_when_the_connection_dies_without_goaway(make_server):
    """A request nghttp2 held behind the backend's stream limit (one
    stream per connection, `max=1`: one connection) never reached the
    backend: when the connection dies without a GOAWAY, it goes on a new
    one whatever its method (RFC 9113 8.7), here a POST; before, it was
    answered 502. The GET that was sent is retried as idempotent."""
    port, proc = spawn_backend("h2backend.py", 1)
    try:
        srv = make_server(extra=f"""{PROXY_MODULES}
ProxyPass /one/ h2c://127.0.0.1:{port}/ max=1 timeout=20""").start()
        c = H2Client(srv.port)
        dying = c.request("/one/die?t=unsent&s=1")
        time.sleep(0.3)
        post = c.request("/one/echo", method="POST", body=b"x" * 100,
                         headers=[("content-length", "100")])
        st = c.wait_stream(post)
        assert st.status == 200 and bytes(st.data).startswith(b"length=100 "), (st.status, bytes(st.data))
        st = c.wait_stream(dying)
        assert st.status == 200 and bytes(st.data).startswith(b"retried"), (st.status, bytes(st.data))
        c.close()
    finally:
        proc.kill()


def test_a_request_waiting_for_its_backend_connection_ends_when_its_client_resets_it(make_server):
    """A proxied request whose backend connection is not up yet (here the
    backend accepts and never sends its SETTINGS) ends as soon as its
    client resets the stream, not when the connection is given up
    (`timeout=20`): until then its worker's request, and the client
    connection's teardown, waited for it."""
    mute = socket.socket()  # accepts (the kernel does), never answers
    mute.bind(("127.0.0.1", 0))
    mute.listen(16)
    try:
        srv = make_server(extra=f"""{PROXY_MODULES}
ProxyPass /mute/ h2c://127.0.0.1:{mute.getsockname()[1]}/ timeout=20""").start()
        c = H2Client(srv.port)
        sid = c.request("/mute/waits")
        time.sleep(0.5)  # the request waits for the backend's SETTINGS
        c.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
        c.flush()
        assert srv.wait_access_log("/mute/waits", timeout=10), srv.read_error_log()[-2000:]
        # The connection goes on.
        assert c.wait_stream(c.request("/1k.bin")).status == 200
        c.close()
    finally:
        mute.close()


def test_bytraffic_balances_by_the_bytes_each_member_carried(workdir, docroot, backends):
    """lbmethod=bytraffic picks the member that carried the fewest bytes:
    each request's body bytes, both ways, count for its member when it
    ends (before, every member stayed at 0 and the first took every
    request). The balancer manager shows them."""
    srv = Httpd(workdir, docroot, name="proxy-bytraffic", h2_conf="", extra=f"""
{PROXY_MODULES}
LoadModule proxy_balancer_module {MODDIR}/mod_proxy_balancer.so
LoadModule slotmem_shm_module {MODDIR}/mod_slotmem_shm.so
LoadModule lbmethod_bytraffic_module {MODDIR}/mod_lbmethod_bytraffic.so
<Proxy balancer://traffic>
  BalancerMember h2c://127.0.0.1:{backends[0]}
  BalancerMember h2c://127.0.0.1:{backends[1]}
  ProxySet lbmethod=bytraffic
</Proxy>
ProxyPass /traffic/ balancer://traffic/
<Location /balancer-manager>
  SetHandler balancer-manager
</Location>
""").start()
    try:
        # A big response on the first member (both at 0: the first wins),
        # then the small ones go to the second, which carried less.
        assert split(get(srv, "/traffic/big?n=200000"))[0] == 200
        ports = [port_of(split(get(srv, "/traffic/delay?s=0"))[1]) for _ in range(6)]
        assert ports == [backends[1]] * 6, ports
        page = curl("--http1.1", srv.url("/balancer-manager")).stdout.decode()
        assert re.search(r"<td>\d+(\.\d+)?K</td>", page), page
    finally:
        srv.stop()
    srv.check_log()


def test_bybusyness_counts_suspended_requests_until_they_end(proxy, backends):
    """A suspended request keeps counting as busy on its balancer member
    until it ends, and stops counting then: mod_proxy_balancer takes its
    count back in a cleanup of the request pool, which a suspended request
    keeps until its last resume ends it (not when the handler returns)."""
    c = H2Client(proxy.port)
    slow = c.request("/busy/delay?s=2")
    time.sleep(0.5)  # suspended by now: its worker is free
    while_busy = []
    for _ in range(6):
        code, body = split(get(proxy, "/busy/delay?s=0"))
        assert code == 200
        while_busy.append(port_of(body))
    s = c.wait_stream(slow)
    assert s.status == 200
    busy_port = port_of(bytes(s.data))
    c.close()
    # Every request went to the member that was not busy.
    assert busy_port not in while_busy, (busy_port, while_busy)
    # Ended, it no longer counts: bybusyness picks the slow member again
    # (it is due, having been passed over six times).
    after = []
    for _ in range(6):
        code, body = split(get(proxy, "/busy/delay?s=0"))
        assert code == 200
        after.append(port_of(body))
    assert busy_port in after, (busy_port, after)


def test_response_via_and_error_override(proxy):
    r = curl("--http2-prior-knowledge", "-D", "-", proxy.url("/api/delay?s=0"))
    # ProxyVia On: "2.0 name:port", as mod_proxy_http and the stock module
    # write it for an HTTP/2 client. (They name the client's protocol on the
    # response too, "1.1" to an HTTP/1.1 client; here it is the backend's,
    # HTTP/2, the protocol the response was received with, RFC 9110 7.6.3.)
    assert f"\nvia: 2.0 127.0.0.1:{proxy.port}\r\n".encode() in r.stdout.lower()
    code, body = split(get(proxy, "/api/nothing"))
    assert code == 404 and body == b"not here\n"
    code, body = split(get(proxy, "/eo/nothing"))
    assert code == 404 and b"<title>404 Not Found</title>" in body


def test_client_gone_with_parked_requests(proxy):
    c = H2Client(proxy.port)
    for _ in range(10):
        c.request("/api/delay?s=1")
    time.sleep(0.3)
    c.close()
    time.sleep(1.5)
    code, _ = split(get(proxy, "/api/delay?s=0"))
    assert code == 200


def test_client_reset_cancels_the_backend_stream(proxy, backends):
    resets = stats(backends[0])["resets_received"]
    c = H2Client(proxy.port)
    sid = c.request("/api/delay?s=2")
    time.sleep(0.3)
    c.conn.reset_stream(sid)
    c.flush()
    # The backend's stream is reset (one that ran on would end with its
    # answer, unreset).
    assert wait_for(lambda: stats(backends[0])["resets_received"] > resets, timeout=5)
    sid2 = c.request("/api/delay?s=0")
    s = c.wait_stream(sid2)
    assert s.status == 200
    c.close()


@pytest.mark.parametrize("how", ["graceful", "stop"])
def test_restart_with_parked_requests(workdir, docroot, backends, how):
    h = Httpd(workdir, docroot, name=f"proxy-{how}", h2_conf="H2MinWorkers 1\nH2MaxWorkers 5",
              extra=proxy_conf(*backends))
    h.start()
    try:
        load = subprocess.Popen(["h2load", "-n", "20", "-c", "1", "-m", "20", h.url("/api/delay?s=2")],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(0.7)
        if how == "graceful":
            h.graceful()
            out, _ = load.communicate(timeout=30)
            assert "20 succeeded" in out, out
            code, _ = split(get(h, "/api/delay?s=0"))
            assert code == 200
        else:
            t0 = time.time()
            h.stop()
            assert time.time() - t0 < 10
            load.communicate(timeout=30)
    finally:
        h.stop()
        h.check_log()


def test_slow_clients_hold_no_worker_and_no_memory(proxy):
    """Six clients that stop reading 20 MiB responses (flow control window
    exhausted) with H2MaxWorkers 5: the workers stay free (other requests
    are served at once) and the backend is slowed through flow control
    instead of the proxy buffering the responses."""
    before = proxy.rss_kib()
    stalled = []
    for _ in range(6):
        c = H2Client(proxy.port, auto_ack_data=False)
        sid = c.request(f"/api/big?n={20 * 1024 * 1024}")
        c.wait(lambda: len(c.streams[sid].data) > 0, timeout=10)
        stalled.append(c)
    time.sleep(1)
    t0 = time.time()
    res = h2load("-n", "20", "-c", "2", "-m", "10", proxy.url("/api/delay?s=0"), timeout=30)
    assert res.get("s2xx") == 20, res["output"]
    assert time.time() - t0 < 5
    grown_mib = (proxy.rss_kib() - before) / 1024
    assert grown_mib < 40, f"httpd grew by {grown_mib:.0f} MiB"
    for c in stalled:
        c.close()


def test_a_reader_that_pauses_longer_than_the_proxy_timeout_gets_the_whole_response(proxy):
    """ProxyTimeout (timeout=1 on /short/) bounds the backend's silence,
    not a slow reader's: a client that stops reading a 2 MiB response for
    2.5 s (the windows shut, so the backend cannot send) and then reads on
    gets all of it. Before, the proxy took the backend's enforced silence
    for a timeout: a 504 in the log and the response cut."""
    n = 2 * 1024 * 1024
    log_before = len(proxy.read_error_log())
    c = H2Client(proxy.port, auto_ack_data=False)
    sid = c.request(f"/short/big?n={n}")
    c.wait(lambda: len(c.streams[sid].data) > 0, timeout=10)
    deadline = time.time() + 2.5
    while time.time() < deadline:
        c.read_some(timeout=deadline - time.time())
    c.auto_ack_data = True
    c.conn.acknowledge_received_data(len(c.streams[sid].data), sid)
    c.flush()
    st = c.wait_stream(sid, timeout=30)
    assert (st.status, len(st.data), st.reset) == (200, n, None)
    assert "answering 504" not in proxy.read_error_log()[log_before:]
    c.close()


def test_a_client_that_reads_nothing_is_ended_by_the_stream_timeout(make_server, backends):
    """A client that never opens its window on a proxied response: the
    backend's silence is then the proxy's doing and ProxyTimeout (1 s) does
    not end it; the client's stall is bounded by H2StreamTimeout (here
    `Timeout`, 3 s), as a local handler's blocked write is: the stream is
    reset and the backend's stream cancelled, no 504 logged; and, the
    client giving no window at all, the connection ends with
    ENHANCE_YOUR_CALM (a zero-window slow read, CVE-2023-43622)."""
    import rawh2
    srv = make_server(name="proxy-no-reader", loglevel="warn http2:info proxy:info proxy_http2:info", extra=f"""{PROXY_MODULES}
Timeout 3
ProxyPass /api/ h2c://127.0.0.1:{backends[0]}/ timeout=1
""").start()
    before = stats(backends[0])["resets_received"]
    c = rawh2.Conn(srv.port, settings_pairs=[(rawh2.INITIAL_WINDOW_SIZE, 0)], auto_window=False)
    sid = c.request(f"/api/big?n={20 * 1024 * 1024}")
    c.wait(lambda: c.goaway is not None or c.closed, timeout=15, what="the connection's end")
    assert c.goaway is not None and c.goaway.error_code == rawh2.ErrorCodes.ENHANCE_YOUR_CALM, c.log()
    assert wait_for(lambda: stats(backends[0])["resets_received"] > before)
    log = srv.read_error_log()
    assert "answering 504" not in log and "took none of the response within 3s (H2StreamTimeout)" in log
    c.close()


@pytest.mark.parametrize("body", [False, True], ids=["get", "post"])
def test_finished_requests_leave_no_memory(proxy, tmp_path, body):
    """Each proxied request's task and front (which hold each other) are
    freed when it ends: 20,000 more requests leave the server's RSS where
    it was. Until 2026-12-04 the cycle kept ~2.3 KiB per request on an
    HTTP/2 front (46 MiB here)."""
    args = ["-c", "10", "-m", "10"]
    if body:
        f = tmp_path / "small.bin"
        f.write_bytes(os.urandom(200))
        args += ["-d", str(f)]
    url = proxy.url("/api/echo" if body else "/api/delay?s=0")
    res = h2load("-n", "5000", *args, url, timeout=120)
    assert res.get("s2xx") == 5000, res["output"]
    before = proxy.rss_kib()
    res = h2load("-n", "20000", *args, url, timeout=300)
    assert res.get("s2xx") == 20000, res["output"]
    grown_mib = (proxy.rss_kib() - before) / 1024
    assert grown_mib < 12, f"httpd grew by {grown_mib:.1f} MiB over 20,000 requests"


def test_a_cancelled_upload_is_not_ended_at_the_backend(proxy, backends):
    """A client that resets its upload midway: the backend's stream is
    reset, never ended, so the backend cannot take the part it got for the
    whole body (a truncated PUT stored as complete). Before 2026-12-04 the
    engine could send an empty DATA with END_STREAM ahead of its RST."""
    import h2.errors
    before = stats(backends[0])
    c = H2Client(proxy.port)
    sids = []
    for _ in range(30):
        sids.append(c.request("/api/echo", method="POST", end_stream=False))
        c.conn.send_data(sids[-1], b"x" * 100)
    c.flush()
    time.sleep(0.5)
    for sid in sids:
        c.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
    c.flush()
    st = c.wait_stream(c.request("/api/delay?s=0"))
    assert st.status == 200
    deadline = time.time() + 5
    while stats(backends[0])["resets_received"] < before["resets_received"] + 30 and time.time() < deadline:
        time.sleep(0.05)
    after = stats(backends[0])
    assert (after["bodies_ended"] - before["bodies_ended"], after["resets_received"] - before["resets_received"]) == (0, 30)
    c.close()


def test_clients_cancelling_many_requests_do_not_break_the_backend_connection(proxy, backends):
    """600 proxied downloads cancelled by their client (browsers
    navigating away, gRPC deadlines): the backend's frames for them that
    were in flight when our RST_STREAM went out (RFC 9113 5.4.2) are
    expected, not a flood (up to a stream window each). A POST in flight
    on the same backend connection
    is answered, and the connection is not ended. (nghttp2's default
    "glitch" budget, 1,000 such frames, ended it with ENHANCE_YOUR_CALM.)"""
    import h2.errors
    log_before = len(proxy.read_error_log())
    slow = H2Client(proxy.port)
    body = os.urandom(1000)
    post = slow.request("/api/delay?s=2", method="POST", body=body)
    c = H2Client(proxy.port)
    for _ in range(600):
        sid = c.request(f"/api/big?n={1024 * 1024}")
        c.read_some(timeout=0.002)
        c.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
        c.flush()
    st = slow.wait_stream(post, timeout=15)
    assert st.status == 200, (st.status, bytes(st.data)[:200])
    time.sleep(0.5)
    assert "broke the HTTP/2 protocol" not in proxy.read_error_log()[log_before:]
    c.close()
    slow.close()


def test_uploads_reset_by_their_clients_leave_no_memory(proxy):
    """Uploads whose clients reset them right after the first bytes: the
    proxy front may start watching the stream after it closed, and must not
    keep it (and itself) alive through that watch. 9,000 of them leave the
    RSS where it was (before 2026-12-04: +0.5 KiB each, ~4 MiB here)."""
    import h2.errors

    def uploads(n):
        c = None
        for i in range(n):
            if i % 500 == 0:  # under the client RST_STREAM budget
                if c:
                    c.close()
                c = H2Client(proxy.port)
            sid = c.request("/api/echo", method="POST", end_stream=False)
            c.conn.send_data(sid, b"x" * 100)
            c.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
            c.flush()
            if i % 100 == 99:
                assert c.wait_stream(c.request("/api/delay?s=0"), timeout=10).status == 200
        c.close()

    uploads(1500)
    time.sleep(0.5)
    before = proxy.rss_kib()
    uploads(9000)
    time.sleep(0.5)
    grown_mib = (proxy.rss_kib() - before) / 1024
    assert grown_mib < 2, f"httpd grew by {grown_mib:.1f} MiB"


def test_uploads_in_progress_hold_no_worker(proxy):
    """Twenty uploads on ten connections whose clients pause mid-body, with
    H2MaxWorkers 5: they wait parked, not on workers, so a request on
    another connection is served at once; then each upload completes
    byte-exact. (With the handler reading the body on its worker, the
    first five held every worker until their clients went on.)"""
    uploads = []
    for _ in range(10):
        c = H2Client(proxy.port)
        for _ in range(2):
            first = os.urandom(5000)
            sid = c.request("/api/echo", method="POST", end_stream=False)
            c.conn.send_data(sid, first)
            c.flush()
            uploads.append((c, sid, first))
    time.sleep(0.5)
    other = H2Client(proxy.port)
    st = other.wait_stream(other.request("/api/delay?s=0"), timeout=5)
    assert st.status == 200
    other.close()
    for c, sid, first in uploads:
        rest = os.urandom(3000)
        c.conn.send_data(sid, rest, end_stream=True)
        c.flush()
        data = first + rest
        st = c.wait_stream(sid, timeout=10)
        assert (st.status, bytes(st.data).decode()) == (200, f"length={len(data)} sha256={hashlib.sha256(data).hexdigest()}")
    for c in {id(c): c for c, _, _ in uploads}.values():
        c.close()


@pytest.mark.parametrize("front", ["none", "stock"])
def test_proxy_module_without_our_http2_module(workdir, docroot, backends, front):
    """proxy_http2_module alone (HTTP/1.1 front), or next to the stock
    mod_http2: the handler then serves every request on its own thread."""
    module = None if front == "none" else STOCK_MODULE
    h = Httpd(workdir, docroot, name=f"proxy-only-{front}", module=module,
              protocols="h2c http/1.1" if module else "http/1.1", extra=proxy_conf(*backends))
    if module:
        h.h2_conf = "H2Direct on"
    h.start()
    try:
        code, body = split(get(h, "/api/delay?s=0", h1=True))
        assert code == 200 and body.startswith(b"ok port=")
        if module:
            res = h2load("-n", "20", "-c", "1", "-m", "10", h.url("/api/delay?s=0"))
            assert res.get("s2xx") == 20, res["output"]
    finally:
        h.stop()
        h.check_log()


def test_large_request_heads_reach_the_backend(make_server, backends):
    """An HTTP/1.1 front lets in heads larger than nghttp2 sends by default
    (64 KiB): ten 8 KB cookies reach the backend (they were refused, tried
    again and answered 502 as the backend's fault). Beyond the proxy's own
    bound (1 MiB) a head is answered 502 at once, the log saying why."""
    srv = make_server(extra=f"{PROXY_MODULES}\nLimitRequestFieldSize 200000\n"
                            f"ProxyPass /api/ h2c://127.0.0.1:{backends[0]}/").start()
    cookies = [f"Cookie: c{i}={'v' * 8000}" for i in range(10)]
    args = [a for c in cookies for a in ("-H", c)]
    code, body = split(get(srv, "/api/headers", *args, h1=True))
    assert code == 200, body[:300]
    assert body.count(b"v" * 8000) == 10
    # More than curl sends (1 MiB): over a plain socket.
    huge = "".join(f"X-Huge-{i}: {'h' * 95000}\r\n" for i in range(12))
    with socket.create_connection(("127.0.0.1", srv.port), timeout=20) as s:
        s.sendall(f"GET /api/headers HTTP/1.1\r\nHost: 127.0.0.1\r\n{huge}Connection: close\r\n\r\n".encode())
        head = read_http1_head(s)
    assert head.startswith(b"HTTP/1.1 502"), head[:100]
    assert "the request's header block is larger than 1048576 bytes" in srv.read_error_log()
    srv.new_log_lines()


def test_via_full_names_the_httpd_version(make_server, backends):
    """ProxyVia Full: "2.0 name:port (Apache/2.4.x)" to the backend and to
    the client, as mod_proxy_http and the stock module write it for an
    HTTP/2 client (AP_SERVER_BASEVERSION; the module before wrote the
    server banner and no port)."""
    srv = make_server(extra=f"{PROXY_MODULES}\nProxyVia Full\nProxyPass /api/ h2c://127.0.0.1:{backends[0]}/").start()
    r = curl("--http2-prior-knowledge", "-D", "-", srv.url("/api/headers"))
    head, _, body = r.stdout.partition(b"\r\n\r\n")
    want = re.compile(rf"2\.0 127\.0\.0\.1:{srv.port} \(Apache/2\.4\.\d+\)")
    sent = json.loads(body)["via"]
    assert want.fullmatch(sent), sent
    got = [line.split(":", 1)[1].strip() for line in head.decode().split("\r\n") if line.lower().startswith("via:")]
    assert len(got) == 1 and want.fullmatch(got[0]), got


def test_behind_a_tls_h2_front(workdir, docroot, backends, certs):
    h = Httpd(workdir, docroot, name="proxy-tls-front", h2_conf="H2MinWorkers 1\nH2MaxWorkers 5",
              extra=proxy_conf(*backends))
    h.tls_config(certs, free_port())
    h.start()
    try:
        r = curl("-k", "--http2", "-w", "\n%{http_version} %{http_code}",
                 f"https://127.0.0.1:{h.tls_port}/api/delay?s=0")
        body, _, status = r.stdout.rpartition(b"\n")
        assert status == b"2 200" and body.startswith(b"ok port=")
        res = h2load("-n", "50", "-c", "1", "-m", "50", f"https://127.0.0.1:{h.tls_port}/api/delay?s=1")
        assert res.get("s2xx") == 50, res["output"]
    finally:
        h.stop()
        h.check_log()


# Response fields HTTP/2 forbids, or that no response may carry: none of
# them may reach a client, whatever the backend sent.
FORBIDDEN_RESPONSE_FIELDS = {b"connection", b"keep-alive", b"transfer-encoding", b"upgrade", b"proxy-connection",
                             b":path", b":method", b":scheme", b":authority"}


def fuzz_client(port, rng, deadline, outcomes, problems):
    """Requests through the front until `deadline`, a few at a time on one
    connection (GETs and small POSTs); each must end (a status and
    END_STREAM, a reset, or the connection closed) within the backend
    timeout plus slack."""
    import rawh2
    while time.time() < deadline:
        try:
            c = rawh2.Conn(port, timeout=15)
        except OSError as e:
            problems.append(f"front refused a connection: {e}")
            return
        try:
            sids = []
            for n in range(rng.randint(1, 8)):
                if rng.random() < 0.3:
                    sids.append(c.request(f"/f/post{n}", method="POST", body=b"hello"))
                else:
                    sids.append(c.request(f"/f/get{n}"))
            bound = time.time() + 15  # ProxyTimeout 3, the slowest path a few of it
            while not all(c.resp(s).done for s in sids) and not c.closed and time.time() < bound:
                try:
                    c.read_frame(max(0.01, bound - time.time()))
                except TimeoutError:
                    break
                except Exception as e:  # the front sent something our client cannot decode
                    problems.append(f"undecodable frames from the front: {e!r}; {c.log()}")
                    break
            for s in sids:
                r = c.resp(s)
                if r.status is not None:
                    outcomes[f"status {r.status}"] += 1
                    names = {n.lower() for n, _ in r.headers}
                    bad = [n for n in names if n in FORBIDDEN_RESPONSE_FIELDS]
                    bad += [n for n, v in r.headers if n != n.lower() or any(x in v for x in (b"\r", b"\n", b"\0"))]
                    if bad or not 100 <= r.status <= 999:
                        problems.append(f"stream {s}: status {r.status}, fields {r.headers!r}")
                if r.done:
                    outcomes["reset" if r.reset is not None and r.status is None else "ended"] += 1
                elif c.closed:
                    outcomes["connection closed"] += 1
                else:
                    problems.append(f"stream {s} still open after 15 s; {c.log()}")
        finally:
            c.close()


@pytest.mark.parametrize("transport", ["h2c", "tls"])
def test_a_hostile_backend_cannot_hang_or_crash_the_front(make_server, workdir, backends, certs, transport):
    """tests/backendfuzz.py (a backend whose answers are valid pieces,
    mutated) behind the front for 20 s (h2c; 15 s over TLS, where it also
    breaks records and closes without close_notify), fixed seed, with 4 h2
    clients and an HTTP/1.1 one: every request ends within bounds, no
    forbidden field reaches a client, nothing crashes, and the front then
    proxies to a good backend and serves files as before. For a longer run:
    H2RS_BACKENDFUZZ_SECONDS=600 H2RS_BACKENDFUZZ_SEED=N pytest -k hostile."""
    import random
    import threading
    from collections import Counter
    tls = transport == "tls"
    seconds = float(os.environ.get("H2RS_BACKENDFUZZ_SECONDS", "15" if tls else "20"))
    seed = int(os.environ.get("H2RS_BACKENDFUZZ_SEED", "20261203"))
    fuzz_port, fuzz = spawn_backend("backendfuzz.py", seed, *(certs.main if tls else ()))
    scheme = "h2" if tls else "h2c"
    h = make_server(name=f"proxy-fuzz-{transport}", h2_conf="H2MinWorkers 1\nH2MaxWorkers 5", extra=f"""
{PROXY_MODULES}
ProxyTimeout 3
ProxyPass /f/ {scheme}://127.0.0.1:{fuzz_port}/
ProxyPass /api/ h2c://127.0.0.1:{backends[0]}/
""")
    h.start()
    outcomes, problems = Counter(), []
    try:
        deadline = time.time() + seconds
        threads = [threading.Thread(target=fuzz_client, args=(h.port, random.Random(seed + i), deadline, outcomes,
                                                              problems))
                   for i in range(4)]
        for t in threads:
            t.start()
        h1_codes = Counter()
        while time.time() < deadline:
            r = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--http1.1", "--max-time", "15",
                                h.url("/f/h1")], capture_output=True, text=True)
            if r.returncode == 28:
                problems.append("an HTTP/1.1 request through the proxy took more than 15 s")
            h1_codes[r.stdout or f"curl {r.returncode}"] += 1
        for t in threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in threads), "a client hung"
    finally:
        fuzz.kill()
        fuzz.wait()
    print(f"backendfuzz seed {seed}, {seconds:.0f} s: h2", dict(outcomes), "HTTP/1.1", dict(h1_codes))
    assert not problems, "\n".join(problems[:10])
    assert sum(outcomes.values()) > 50, outcomes
    assert outcomes["status 502"] > 0 and outcomes["status 200"] > 0, outcomes
    code, body = split(get(h, "/api/headers"))
    assert code == 200 and json.loads(body)[":path"] == "/headers"
    r = curl("--http2-prior-knowledge", h.url("/1k.bin"))
    assert r.returncode == 0 and len(r.stdout) == 1024


@pytest.mark.parametrize("status,method", [(204, "GET"), (304, "GET"), (200, "HEAD")], ids=["204", "304", "HEAD"])
@pytest.mark.parametrize("h1", [False, True], ids=["h2-front", "h1-front"])
def test_a_head_without_content_is_the_whole_response(proxy, backends, status, method, h1):
    """A backend's head that has no content (RFC 9110 6.4.1) without
    END_STREAM: the client has the whole response at once, and the
    backend's stream is left to end on its own (no reset: what is left of
    a request body still goes out). Held open past the proxy's timeout
    (1 s for /short/), the client still gets the whole response, not an
    empty reply or a reset; the backend's stream is reset then."""
    how = ["-I"] if method == "HEAD" else []
    logged = len(proxy.read_error_log())
    resets = stats(backends[0])["resets_received"]
    r = get(proxy, f"/api/bodiless?status={status}&hold=0.5", *how, h1=h1)
    assert (r.returncode, split(r)[0]) == (0, status), r.stderr
    time.sleep(1)
    assert stats(backends[0])["resets_received"] == resets

    r = get(proxy, f"/short/bodiless?status={status}&hold=3", *how, "-m", "10", h1=h1)
    code, body = split(r)
    assert (r.returncode, code) == (0, status), r.stderr
    assert not body.strip(b"\r\n") or method == "HEAD"
    deadline = time.time() + 10
    while stats(backends[0])["resets_received"] == resets and time.time() < deadline:
        time.sleep(0.1)
    assert stats(backends[0])["resets_received"] == resets + 1
    assert "still open" in proxy.read_error_log()[logged:]


@pytest.fixture
def bomb_backend():
    """A raw HTTP/2 backend on 127.0.0.1 whose answer to every request is
    one hostile header block: `bomb_backend.mode` "hpack" sends a 4 KiB
    field once and then 12,000 one-byte references to it in the same
    HEADERS frame (48 MB decoded from 16 KiB), "interims" sends 40 interim
    103 heads before its final head."""
    import hpack
    import rawh2

    class Backend:
        mode = "hpack"

    def answer(sid):
        enc = hpack.Encoder()
        if Backend.mode == "hpack":
            block = enc.encode([(":status", "200"), ("x-big", "a" * 4000)]) + b"\xbe" * 12000
            return rawh2.headers(sid, block, end_stream=True)
        early = b"".join(rawh2.headers(sid, enc.encode([(":status", "103"), ("link", "</a.css>")]),
                                       end_stream=False) for _ in range(40))
        return early + rawh2.headers(sid, enc.encode([(":status", "200")]), end_stream=True)

    def serve(s):
        buf = b""
        try:
            while len(buf) < len(rawh2.PREFACE):
                buf += s.recv(65536)
            buf = buf[len(rawh2.PREFACE):]
            s.sendall(rawh2.settings())
            while True:
                while len(buf) >= 9:
                    length = int.from_bytes(buf[:3], "big")
                    if len(buf) < 9 + length:
                        break
                    ftype, flags, sid = buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
                    buf = buf[9 + length:]
                    if ftype == rawh2.SETTINGS and not flags & 1:
                        s.sendall(rawh2.settings(ack=True))
                    elif ftype == rawh2.HEADERS:
                        s.sendall(answer(sid))
                data = s.recv(65536)
                if not data:
                    return
                buf += data
        except OSError:
            return

    with tcp_server(serve) as port:
        Backend.port = port
        yield Backend


@pytest.mark.parametrize("mode", ["hpack", "interims"])
def test_a_backend_head_too_large_is_answered_502(make_server, bomb_backend, mode):
    """A backend's header block is bounded when decoded (64 KiB, as a
    client's request head is; HPACK references would expand 16 KiB on the
    wire into 48 MB held in the child), and so are its interim heads (16):
    beyond, 502 and the backend's stream reset, logged with the backend's
    name; the server goes on."""
    bomb_backend.mode = mode
    srv = make_server(name=f"proxy-bomb-{mode}", extra=f"""{PROXY_MODULES}
ProxyPass /bomb/ h2c://127.0.0.1:{bomb_backend.port}/
""").start()
    before = srv.rss_kib()
    for _ in range(5):
        code, _ = split(get(srv, "/bomb/x"))
        assert code == 502
    log = srv.read_error_log()
    want = "a header block over 65536 bytes" if mode == "hpack" else "more than 16 interim responses"
    assert f"backend h2c://127.0.0.1:{bomb_backend.port}: stream 1: {want}, answering 502" in log, log[-2000:]
    assert (srv.rss_kib() - before) / 1024 < 16
    code, _ = split(get(srv, "/1k.bin"))
    assert code == 200


def test_each_address_of_the_backends_name_is_tried_in_turn(make_server, backends):
    """A name with two addresses, ::1 first (as `localhost` on Debian and in
    Docker), and a backend listening on 127.0.0.1 only: the connect to ::1
    is refused and the next address is tried, as mod_proxy does (only the
    first was tried: 503). A name none of whose addresses answers gets
    503. Where the connect to ::1 hangs (a host down behind a firewall),
    the next address is tried after `connectiontimeout`. A failed address
    with another after it is logged at debug level (an error only where
    none is left), as mod_proxy logs it."""
    down = free_port()
    srv = make_server(loglevel="warn http2:debug proxy_http2:debug", hosts="127.0.0.1 localhost\n::1 twoaddr\n127.0.0.1 twoaddr\n", extra=f"""{PROXY_MODULES}
ProxyPass /two/ h2c://twoaddr:{backends[0]}/
ProxyPass /none/ h2c://twoaddr:{down}/
ProxyPass /slow/ h2c://twoaddr:{backends[1]}/ connectiontimeout=1 timeout=30
""").start()
    for _ in range(3):
        code, body = split(get(srv, "/two/delay?s=0"))
        assert code == 200, body
    log = srv.read_error_log()
    assert re.search(rf"\[proxy_http2:debug\].* cannot connect to \[::1\]:{backends[0]}: .*, trying its next address", log), log[-2000:]
    assert split(get(srv, "/none/x"))[0] == 503
    log = srv.new_log_lines()
    assert re.search(rf"\[proxy_http2:debug\].* cannot connect to \[::1\]:{down}: ", log), log[-2000:]
    assert re.search(rf"\[proxy_http2:error\].* cannot connect to 127.0.0.1:{down}: Connection refused \(os error 111\), answering 503", log), log[-2000:]
    hole, fillers = black_hole(socket.AF_INET6, "::1", backends[1])
    try:
        code, body = split(get(srv, "/slow/delay?s=0", "--max-time", "25"))
        assert code == 200, body
    finally:
        for sock in fillers + [hole]:
            sock.close()
    assert re.search(rf"\[proxy_http2:debug\].* connect timed out \(\[::1\]:{backends[1]}\), trying its next address", srv.new_log_lines())


def test_backends_on_a_unix_domain_socket(make_server, workdir):
    """`unix:/path|h2c://host/`: mod_proxy takes the socket's path off the
    URL, and what is left names a TCP host (here a port where nothing
    listens); the request goes to the socket (it went to the TCP host, then
    was refused with 500), with the URL's authority, body both ways, and
    the requests share one connection; also by RewriteRule [P]. A socket
    that is not there: 503,
    the path in the log."""
    sock = workdir / f"h2backend-{uuid.uuid4().hex[:8]}.sock"
    _, proc = spawn_backend("h2backend.py", 1000, env={"H2BACKEND_UNIX": str(sock)})
    try:
        nothing = free_port()
        srv = make_server(extra=f"""{PROXY_MODULES}
ProxyPass /uds/ "unix:{sock}|h2c://localhost:{nothing}/"
ProxyPass /gone/ "unix:{workdir}/no-such-backend.sock|h2c://localhost/"
RewriteEngine on
RewriteRule ^/rw/(.*)$ "unix:{sock}|h2c://localhost:{nothing}/$1" [P]
""").start()
        code, body = split(get(srv, "/uds/stats"))
        assert code == 200, srv.read_error_log()[-2000:]
        conns = json.loads(body)["connections"]
        code, body = split(get(srv, "/uds/headers"))
        assert code == 200 and json.loads(body)[":authority"] == f"localhost:{nothing}", body
        data = os.urandom(300_000)
        upload = workdir / "uds-upload.bin"
        upload.write_bytes(data)
        code, body = split(get(srv, "/uds/echo", "--data-binary", f"@{upload}"))
        assert code == 200 and body.decode().startswith(f"length={len(data)} sha256={hashlib.sha256(data).hexdigest()}")
        for _ in range(3):
            assert split(get(srv, "/uds/delay?s=0"))[0] == 200
        # A RewriteRule's [P]: the path comes in the request's notes.
        assert split(get(srv, "/rw/delay?s=0"))[0] == 200
        assert json.loads(split(get(srv, "/uds/stats"))[1])["connections"] == conns
        assert split(get(srv, "/gone/x"))[0] == 503
        assert f"cannot connect to unix:{workdir}/no-such-backend.sock: No such file or directory" in srv.read_error_log()
        srv.new_log_lines()
    finally:
        proc.kill()
        proc.wait()


def test_the_backend_status_is_noted_for_the_access_log(make_server, backends, workdir):
    """`%{proxy-status}n` logs the backend's status, as with mod_proxy_http
    and the stock module, also where ProxyErrorOverride answers with a
    page of its own; `%{proxy-source-port}n` the local port of the backend
    connection the request went out on (one connection here), also for a
    request the backend reset."""
    log = workdir / "proxy-status.log"
    srv = make_server(extra=f"""{PROXY_MODULES}
ProxyPass /api/ h2c://127.0.0.1:{backends[0]}/
ProxyPass /override/ h2c://127.0.0.1:{backends[0]}/
<Location /override/>
  ProxyErrorOverride On
</Location>
LogFormat "%U %>s %{{proxy-status}}n %{{proxy-source-port}}n" pstatus
CustomLog "{log}" pstatus
""").start()
    assert split(get(srv, "/api/status?code=201"))[0] == 201
    assert split(get(srv, "/override/status?code=503"))[0] == 503
    assert split(get(srv, "/api/reset"))[0] == 502
    wait_for(lambda: len(log.read_text().splitlines()) >= 4, timeout=10)
    # (The first line: the test harness's look whether the server is up.)
    lines = [line.rsplit(" ", 1) for line in log.read_text().splitlines()[1:]]
    assert [l[0] for l in lines] == ["/api/status 201 201", "/override/status 503 503", "/api/reset 502 -"]
    ports = {l[1] for l in lines}
    assert len(ports) == 1 and 1024 <= int(ports.pop()) <= 65535, lines


def test_the_timeout_runs_from_when_the_backend_has_the_request(make_server, backends):
    """`max=1 timeout=2` to a backend of 10 streams a connection, 30
    requests of 1.5 s at once: nghttp2 holds back the HEADERS of the
    second and third ten until streams free up. The second ten wait 1.5 s
    for theirs, then take 1.5 s: answered (the timeout ran from their
    queueing, and they got 504 at 2 s, though the backend had not had them
    for 1 s, with failontimeout's note set). The third ten would wait 3 s,
    longer than the timeout: 503 (no stream free in time), not 504."""
    srv = make_server(extra=f"""{PROXY_MODULES}
ProxyPass /t/ h2c://127.0.0.1:{backends[2]}/ max=1 timeout=2
""").start()
    res = h2load("-n", "30", "-c", "1", "-m", "30", srv.url("/t/delay?s=1.5"))
    assert (res.get("s2xx"), res.get("s5xx")) == (20, 10), res["output"]
    log = srv.read_error_log()
    assert len(re.findall(r"\[(?:client|remote) [^]]+\] h2rs proxy: [^\n]*no stream free on its connections within 2s", log)) == 10 and "answering 504" not in log, log[-2000:]
    srv.new_log_lines()

