"""Issue 4: TLS (ALPN h2), h2c Upgrade, prior knowledge, per-vhost
protocols and settings, prefork, and the H2* directive set."""
import re
import socket
import ssl
import time

import h2.errors
import h2.events
import h2.settings
import pytest

from conftest import (MODDIR, MODULE, PREFORK_MPM, SSL_MODULES, free_port, curl, h2load, registered, sha256,
                      tls_vhost, wait_for)
from h2client import H2Client, tls_socket, upgraded_client
from rawh2 import read_http1_head, upgrade_request


@pytest.fixture(scope="module")
def tls_server(workdir, docroot, certs):
    from conftest import Httpd
    h = Httpd(workdir, docroot, name="tls-negotiation")
    h.tls_config(certs, free_port())
    with registered(h):
        yield h


def test_alpn_h2_with_curl_and_nghttp(tls_server, docroot, workdir):
    url = f"https://127.0.0.1:{tls_server.tls_port}/1m.bin"
    r = curl("-k", "--http2", "-o", str(workdir / "tls.bin"), "-w", "%{http_version} %{http_code}", url)
    assert r.stdout == b"2 200", r.stderr
    assert sha256((workdir / "tls.bin").read_bytes()) == docroot.sha("1m.bin")
    r = run_nghttp(url)
    assert sha256(r.stdout) == docroot.sha("1m.bin")


def run_nghttp(url):
    import subprocess
    r = subprocess.run(["nghttp", url], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r


def test_alpn_falls_back_to_http11(tls_server):
    url = f"https://127.0.0.1:{tls_server.tls_port}/1k.bin"
    r = curl("-k", "--http1.1", "-o", "/dev/null", "-w", "%{http_version} %{http_code}", url)
    assert r.stdout == b"1.1 200"
    s = tls_socket(tls_server.tls_port, alpn=("http/1.1",))
    assert s.selected_alpn_protocol() == "http/1.1"
    s.close()


def test_h2_over_tls_sees_ssl_variables_and_protocol(tls_server):
    c = H2Client(tls_server.tls_port, sock=tls_socket(tls_server.tls_port))
    sid = c.request("/cgi/env.cgi")
    assert c.wait_stream(sid).data.startswith(b"HTTP2=on SERVER_PROTOCOL=HTTP/2.0")
    # mod_status shows the connection's protocol (ap_get_protocol): h2.
    sid = c.request("/server-status")
    body = c.wait_stream(sid).data.decode()
    assert re.search(r"<td[^>]*>h2</td>", body), body[-2000:]
    c.close()


def test_tls12_with_a_blacklisted_cipher_gets_inadequate_security(make_server, certs):
    tls_port = free_port()
    srv = make_server()
    srv.tls_config(certs, tls_port, extra="SSLProtocol all\nSSLCipherSuite ALL:@SECLEVEL=0")
    srv.start()
    sock = tls_socket(tls_port, max_version=ssl.TLSVersion.TLSv1_2, ciphers="AES128-SHA:@SECLEVEL=0")
    assert sock.cipher()[0] == "AES128-SHA"
    if sock.selected_alpn_protocol() != "h2":
        pytest.fail("ALPN did not select h2 (the check is done by GOAWAY once the cipher is known)")
    c = H2Client(tls_port, sock=sock)
    c.wait(lambda: c.goaway is not None or c.closed)
    assert c.goaway is not None and c.goaway[0] == h2.errors.ErrorCodes.INADEQUATE_SECURITY, c.goaway
    c.close()
    # A modern cipher on the same server is fine.
    ok = tls_socket(tls_port, max_version=ssl.TLSVersion.TLSv1_2, ciphers="ECDHE-RSA-AES128-GCM-SHA256")
    c = H2Client(tls_port, sock=ok)
    assert c.wait_stream(c.request("/1k.bin")).status == 200
    c.close()


@pytest.mark.parametrize("version,error_document", [(ssl.TLSVersion.TLSv1_2, False), (ssl.TLSVersion.TLSv1_3, False),
                                                    (ssl.TLSVersion.TLSv1_3, True)])
def test_a_location_that_needs_a_client_certificate_gets_http_1_1_required(make_server, certs, version,
                                                                            error_document):
    """HTTP/2 forbids TLS renegotiation: mod_ssl answers 403 on a secondary
    connection where a per-directory SSLVerifyClient would need one, with
    a note; the stream is reset with HTTP_1_1_REQUIRED instead, so that the
    client retries over HTTP/1.1 (as the stock module does), also where an
    ErrorDocument answers the 403 (the note is on the first request)."""
    tls_port = free_port()
    srv = make_server(loglevel="warn http2:debug")
    document = "ErrorDocument 403 /1k.bin" if error_document else ""
    srv.tls_config(certs, tls_port, extra=f"""SSLCACertificateFile {certs.main[0]}
  {document}
  <Location "/index.html">
    SSLVerifyClient require
  </Location>""")
    srv.start()
    c = H2Client(tls_port, sock=tls_socket(tls_port, max_version=version))
    st = c.wait_stream(c.request("/index.html"))
    assert st.reset == h2.errors.ErrorCodes.HTTP_1_1_REQUIRED and st.status is None, (st.reset, st.status)
    # The rest of the connection is served as usual.
    assert c.wait_stream(c.request("/1k.bin")).status == 200
    c.close()
    assert "resetting with HTTP_1_1_REQUIRED" in srv.read_error_log()


def test_h2_modern_tls_only_off_allows_old_ciphers(make_server, certs):
    tls_port = free_port()
    srv = make_server(h2_conf="H2ModernTLSOnly off")
    srv.tls_config(certs, tls_port, extra="SSLProtocol all\nSSLCipherSuite ALL:@SECLEVEL=0")
    srv.start()
    sock = tls_socket(tls_port, max_version=ssl.TLSVersion.TLSv1_2, ciphers="AES128-SHA:@SECLEVEL=0")
    c = H2Client(tls_port, sock=sock)
    assert c.wait_stream(c.request("/1k.bin")).status == 200
    c.close()


def test_h2c_upgrade_with_curl(server, docroot, workdir):
    out = workdir / "upgrade.bin"
    r = curl("--http2", "-o", str(out), "-w", "%{http_version} %{http_code}", server.url("/1m.bin"))
    assert r.stdout == b"2 200"
    assert sha256(out.read_bytes()) == docroot.sha("1m.bin")


def test_h2c_upgrade_of_an_absolute_form_request(server, docroot, workdir):
    """A request line in absolute form (RFC 9112 3.2.2) upgrades as its
    origin form: HTTP/2's :path holds no scheme and host (RFC 9113 8.3.1)."""
    out = workdir / "upgrade-absolute.html"
    url = server.url("/index.html?absolute-form")
    r = curl("--http2", "--request-target", url, "-o", str(out), "-w", "%{http_version} %{http_code}", url)
    assert r.stdout == b"2 200"
    assert sha256(out.read_bytes()) == docroot.sha("index.html")
    assert server.wait_access_log('"GET /index.html?absolute-form HTTP/2.0" 200'), server.read_access_log()


def test_upgrade_then_more_streams_on_the_connection(server, docroot):
    client = upgraded_client(server.port)
    st = client.wait_stream(1)
    assert st.status == 200 and sha256(bytes(st.data)) == docroot.sha("1k.bin")
    sid = client.request("/16k1.bin")
    st = client.wait_stream(sid)
    assert st.status == 200 and sha256(bytes(st.data)) == docroot.sha("16k1.bin")
    client.sock.close()


@pytest.mark.parametrize("case", ["body", "garbage-settings", "second-request"])
def test_upgrade_declined_stays_http11(server, case):
    if case == "body":
        s = upgrade_request(server.port, path="/cgi/sum.cgi", method=b"POST", extra=b"Content-Length: 5\r\n",
                            body=b"hello")
        head = read_http1_head(s)
        assert head.startswith(b"HTTP/1.1 200"), head[:100]
        return
    if case == "garbage-settings":
        s = upgrade_request(server.port, settings="!!!not base64!!!")
        head = read_http1_head(s)
        assert head.startswith(b"HTTP/1.1 200"), head[:100]
        return
    s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    s.sendall(b"GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n")
    first = read_http1_head(s)
    assert first.startswith(b"HTTP/1.1 200")
    time.sleep(0.1)
    s.recv(65536) if b"mod_h2rs test" not in first else None
    s.sendall(b"GET /index.html HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
              b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n")
    second = read_http1_head(s)
    assert second.startswith(b"HTTP/1.1 200"), second[:100]
    s.close()


def test_an_error_document_is_not_upgraded(make_server, docroot):
    """A request denied (403) whose ErrorDocument is a local page: httpd
    runs the page as an internal redirect, whose handler phase offers the
    Upgrade again. It was upgraded: the error page went out as a fresh
    200 over HTTP/2 (a 401 lost its challenge that way). Now only the
    client's own request upgrades: 403 over HTTP/1.1, the page as body."""
    (docroot.path / "denied.html").write_text("denied page\n")
    srv = make_server(extra="""ErrorDocument 403 /denied.html
<Location /secret>
  Require all denied
</Location>""").start()
    s = upgrade_request(srv.port, path="/secret/x")
    head = read_http1_head(s)
    s.close()
    assert head.startswith(b"HTTP/1.1 403"), head[:200]
    assert b"denied page" in head.split(b"\r\n\r\n", 1)[1] or b"Content-Length: 12" in head, head[:400]


def test_an_http10_request_is_not_upgraded(server):
    """RFC 9110 7.8: a server ignores Upgrade in an HTTP/1.0 request. httpd
    sends it no 101, and the session's frames came unannounced (the
    client read binary, then nothing until `Timeout`); now it is answered
    as any HTTP/1.0 request."""
    s = upgrade_request(server.port, path="/index.html", version=b"HTTP/1.0")
    head = read_http1_head(s)
    s.close()
    assert head.startswith(b"HTTP/1.1 200"), head[:100]


def test_upgrade_of_a_head_http2_refuses_stays_http11(make_server):
    """Under `HttpProtocolOptions Unsafe` httpd accepts a control byte in a
    field value, which HTTP/2 refuses: such a request is not upgraded (once
    the 101 is out there is no way back) but answered over HTTP/1.1."""
    srv = make_server(extra="HttpProtocolOptions Unsafe").start()
    s = upgrade_request(srv.port, path="/index.html", extra=b"X-A: a\x01b\r\n")
    head = read_http1_head(s)
    assert head.startswith(b"HTTP/1.1 200"), head[:100]
    s.close()


def test_upgrade_then_silence_is_closed_after_timeout(make_server):
    """A client that asks for h2c, gets its 101 and then sends nothing (no
    preface): stream 1 waits for the preface, so the session never goes
    idle and back to the MPM, and would hold an MPM thread for ever. It is
    closed after Timeout, with GOAWAY."""
    srv = make_server(extra="Timeout 2").start()
    s = upgrade_request(srv.port, path="/index.html")
    s.settimeout(30)
    rest = read_http1_head(s)
    assert rest.startswith(b"HTTP/1.1 101"), rest[:100]
    try:
        while True:
            d = s.recv(65536)
            if not d:
                break
            rest += d
    except socket.timeout:
        pytest.fail("the upgraded connection was still open 30 s after its 101 (Timeout 2)")
    finally:
        s.close()
    frames = rest.split(b"\r\n\r\n", 1)[1]
    assert b"\x07\x00\x00\x00\x00\x00" in frames, frames  # a GOAWAY frame's type, flags, stream 0


def test_upgrade_on_tls_is_ignored(tls_server):
    url = f"https://127.0.0.1:{tls_server.tls_port}/1k.bin"
    r = curl("-k", "--http1.1", "-H", "Connection: Upgrade, HTTP2-Settings", "-H", "Upgrade: h2c",
             "-H", "HTTP2-Settings: AAMAAABkAAQAAP__", "-o", "/dev/null", "-w", "%{http_version} %{http_code}", url)
    assert r.stdout == b"1.1 200"


def test_http11_request_that_starts_like_the_preface_is_still_http11(server):
    """With H2Direct a new connection's first bytes are checked for the
    HTTP/2 preface, and a start of it ("P") makes the check wait for more:
    an HTTP/1.1 request written in pieces from there is served as one."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"P")
        time.sleep(0.2)
        s.sendall(b"OST /1k.bin HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 "), reply[:100]


def test_proxy_protocol_header_before_the_preface(make_server):
    """Behind a load balancer that speaks the PROXY protocol (mod_remoteip's
    RemoteIPProxyProtocol): the header, version 1 or 2, comes before the
    HTTP/2 preface; the session starts after mod_remoteip has taken it, and
    the requests carry the client address it named (access log %a)."""
    lb_port = free_port()
    srv = make_server()
    srv.extra = f"""LoadModule remoteip_module {MODDIR}/mod_remoteip.so
LogFormat "%a %H %>s %U" lb
CustomLog "{srv.dir}/lb.log" lb
Listen 127.0.0.1:{lb_port}
<VirtualHost 127.0.0.1:{lb_port}>
  RemoteIPProxyProtocol On
</VirtualHost>
"""
    srv.start()
    v2_signature = b"\r\n\r\n\x00\r\nQUIT\n"
    headers = {
        "1.2.3.4": b"PROXY TCP4 1.2.3.4 127.0.0.1 1111 80\r\n",
        # Version 2, PROXY command, TCP over IPv4, 12 bytes of addresses.
        "5.6.7.8": v2_signature + b"\x21\x11\x00\x0c" + bytes([5, 6, 7, 8, 127, 0, 0, 1])
        + (2222).to_bytes(2, "big") + (80).to_bytes(2, "big"),
    }
    for client, header in headers.items():
        sock = socket.create_connection(("127.0.0.1", lb_port), timeout=10)
        sock.sendall(header)
        c = H2Client(lb_port, sock=sock)
        first = c.wait_stream(c.request("/index.html"))
        second = c.wait_stream(c.request("/1k.bin"))
        c.close()
        assert (first.status, second.status, len(second.data)) == (200, 200, 1024)
        # The log line is written after the response went out.
        log = srv.dir.joinpath("lb.log")
        assert wait_for(lambda: f"{client} HTTP/2.0 200 /1k.bin" in log.read_text().splitlines()), log.read_text()
    # Without the header the connection is refused, as for HTTP/1.1.
    sock = socket.create_connection(("127.0.0.1", lb_port), timeout=10)
    sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    assert sock.recv(100) == b""
    sock.close()
    srv.new_log_lines()  # mod_remoteip logs the refusal


def test_h2upgrade_off_and_h2direct_off(make_server):
    srv = make_server(h2_conf="H2Upgrade off\nH2Direct off").start()
    r = curl("--http2", "-o", "/dev/null", "-w", "%{http_version} %{http_code}", srv.url("/1k.bin"))
    assert r.stdout == b"1.1 200"
    r = curl("--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_version}", srv.url("/1k.bin"), timeout=20)
    assert r.stdout != b"2"


def test_h2direct_is_off_for_tls_by_default(tls_server):
    # Prior knowledge over TLS without ALPN h2: not HTTP/2.
    s = tls_socket(tls_server.tls_port, alpn=None)
    s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
    s.settimeout(5)
    data = b""
    try:
        data = s.recv(1000)
    except (socket.timeout, ssl.SSLError, OSError):
        pass
    assert not data.startswith(b"\x00\x00"), data[:40]
    s.close()


def test_h2direct_on_tls_decides_on_one_look_at_a_preface_in_pieces(make_server, certs):
    """`H2Direct on` over TLS, a client without ALPN h2 that writes the
    preface in two TLS records: mod_ssl shows only what it decrypted so far
    and the socket tells nothing more, so the module decides on what it
    sees, as the stock module does (HTTP/1.1 answers): the connection was
    held for Timeout (30 s here) waiting for bytes already read."""
    srv = make_server(h2_conf="H2Direct on")
    srv.tls_config(certs, free_port())
    srv.start()
    s = tls_socket(srv.tls_port, alpn=None)
    s.sendall(b"PRI * HTTP/2.0\r\n")
    s.sendall(b"\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
    s.settimeout(10)
    try:
        data = s.recv(1000)
    except (socket.timeout, TimeoutError):
        pytest.fail("no answer 10 s after a preface written in two TLS records")
    except (ssl.SSLError, OSError):
        data = b""
    s.close()
    assert not data.startswith(b"\x00\x00"), data[:40]
    srv.new_log_lines()


def test_protocols_and_settings_per_virtual_host(make_server, certs):
    tls_port = free_port()
    vhosts = (tls_vhost(tls_port, certs.main, server_name="a.test", protocols="h2 http/1.1",
                        extra="H2MaxSessionStreams 7") + "\n" +
              tls_vhost(tls_port, certs.main, server_name="b.test", protocols="http/1.1", listen=False))
    srv = make_server(extra=SSL_MODULES + "\n" + vhosts)
    srv.start()
    a = tls_socket(tls_port, server_name="a.test")
    assert a.selected_alpn_protocol() == "h2"
    c = H2Client(tls_port, sock=a, authority="a.test")
    c.wait(lambda: h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS in c.remote_settings)
    assert c.remote_settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] == 7
    c.close()
    b = tls_socket(tls_port, server_name="b.test", alpn=("h2", "http/1.1"))
    assert b.selected_alpn_protocol() == "http/1.1"
    b.close()


def test_misdirected_request_gets_421(make_server, certs):
    tls_port = free_port()
    vhosts = (tls_vhost(tls_port, certs.main, server_name="a.test") + "\n" +
              tls_vhost(tls_port, certs.other, server_name="c.test", listen=False))
    srv = make_server(extra=SSL_MODULES + "\n" + vhosts)
    srv.start()
    c = H2Client(tls_port, sock=tls_socket(tls_port, server_name="a.test"), authority="a.test")
    assert c.wait_stream(c.request("/1k.bin")).status == 200
    st = c.wait_stream(c.request("/1k.bin", authority="c.test"))
    assert st.status == 421, st.status
    c.close()


def test_prefork_does_not_offer_h2_and_says_so_once(make_server):
    srv = make_server(mpm=PREFORK_MPM).start()
    r = curl("--http1.1", "-o", "/dev/null", "-w", "%{http_code}", srv.url("/1k.bin"))
    assert r.stdout == b"200"
    r = curl("--http2", "-o", "/dev/null", "-w", "%{http_version} %{http_code}", srv.url("/1k.bin"))
    assert r.stdout == b"1.1 200"
    r = curl("--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_version}", srv.url("/1k.bin"), timeout=20)
    assert r.stdout != b"2"
    log = srv.read_error_log()
    assert log.count("prefork MPM cannot multiplex HTTP/2") == 1, log


STOCK_DIRECTIVES = """H2Direct on
H2Upgrade on
H2ModernTLSOnly on
H2MaxSessionStreams 100
H2WindowSize 65535
H2MinWorkers 4
H2MaxWorkers 32
H2MaxWorkerIdleSeconds 600
H2StreamMaxMemSize 65536
H2StreamTimeout 60
H2MaxDataFrameLen 0
H2EarlyHints off
H2CopyFiles off
H2OutputBuffering on
H2Padding 0
H2ProxyRequests off
H2WebSockets off
H2Push off
H2PushPriority * after
H2PushPriority text/css before
H2PushPriority image/png 32
H2PushDiarySize 256
H2TLSWarmUpSize 1048576
H2TLSCoolDownSecs 1
H2SerializeHeaders off
H2SessionExtraFiles 5
H2MaxHeaderBlockLen 65536
H2MaxStreamErrors 8
H2EarlyHint Link "</style.css>; rel=preload"
<Location /pushed>
  H2PushResource /style.css critical
  H2PushResource add /a.js
  H2Upgrade off
  H2Push off
  H2CopyFiles on
  H2EarlyHint Link "</a.js>; rel=preload"
  H2ProxyRequests off
</Location>"""


def test_every_stock_directive_is_accepted(make_server):
    srv = make_server(h2_conf=STOCK_DIRECTIVES)
    r = srv.configtest()
    assert r.returncode == 0, r.stderr
    srv.start()
    r = curl("--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_code}", srv.url("/1k.bin"))
    assert r.stdout == b"200"
    # Server push is not provided: one clear warning.
    assert srv.read_error_log().count("server push is not provided") == 1


def test_numbers_above_our_limits_load_lowered(make_server):
    """The stock module takes any number for these: the configuration
    loads, each is lowered to our limit and named in one warning."""
    srv = make_server(h2_conf="H2MaxWorkers 10000\nH2MinWorkers 2\nH2TLSCoolDownSecs 100000\nH2MaxDataFrameLen 99999999\n"
                              "H2PushPriority text/css After 300")
    r = srv.configtest()
    assert r.returncode == 0, r.stderr
    srv.start()
    r = curl("--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_code}", srv.url("/1k.bin"))
    assert r.stdout == b"200"
    warnings = [l for l in srv.read_error_log().splitlines() if "lowered to this module's limit" in l]
    assert len(warnings) == 1, warnings
    for note in ("H2MaxWorkers 10000 (using 4096)", "H2TLSCoolDownSecs 100000 (using 86400)",
                 "H2MaxDataFrameLen 99999999 (using 16777215)", "H2PushPriority 300 (using 256)"):
        assert note in warnings[0], warnings


@pytest.mark.parametrize("conf", [
    "H2StreamTimeout 5min\nH2MaxWorkerIdleSeconds 2hours",
    "H2StreamTimeout 30sec\nH2MaxWorkerIdleSeconds 100msec",
    "H2StreamTimeout 99999999",
    "H2StreamTimeout +5\nH2MaxWorkerIdleSeconds +10",
])
def test_time_values_load_as_httpd_reads_them(make_server, conf):
    """httpd's time syntax (ap_timeout_parameter_parse, as the stock module
    reads these): units by their first letters, no upper bound but
    overflow."""
    r = make_server(h2_conf=conf).configtest()
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("conf,words", [
    ("H2WindowSize abc", ["H2WindowSize", "not a number"]),
    ("H2WindowSize 10", ["H2WindowSize", "out of range", "1024"]),
    ("H2MaxWorkers 0", ["H2MaxWorkers", "out of range"]),
    ("H2MaxSessionStreams -5", ["H2MaxSessionStreams"]),
    ("H2Direct maybe", ["H2Direct", "'on' or 'off'"]),
    ("H2Padding 9", ["H2Padding", "0 to 8"]),
    ("H2StreamTimeout 5x", ["H2StreamTimeout"]),
    ("H2MaxWorkers", ["H2MaxWorkers"]),
    ("<Location /x>\nH2MaxSessionStreams 3\n</Location>", ["H2MaxSessionStreams", "not allowed"]),
    ("H2PushPriority text/css sideways", ["H2PushPriority", "After, Before, Interleaved"]),
])
def test_bad_directive_values_are_refused_by_name(make_server, conf, words):
    srv = make_server(h2_conf=conf)
    r = srv.configtest()
    assert r.returncode != 0
    for w in words:
        assert w in r.stderr, (w, r.stderr)
    assert re.search(r"line \d+", r.stderr), r.stderr


# ---- directives that change behaviour ------------------------------------

def read_frames(sock, until, timeout=10):
    """Reads raw frames from an h2c socket (after our preface) until
    `until(frames)`; returns [(type, flags, stream_id, payload)]."""
    import struct
    sock.settimeout(timeout)
    buf, frames = b"", []
    deadline = time.time() + timeout
    while not until(frames) and time.time() < deadline:
        try:
            d = sock.recv(65536)
        except socket.timeout:
            break
        if not d:
            break
        buf += d
        while len(buf) >= 9:
            length = struct.unpack(">I", b"\0" + buf[:3])[0]
            if len(buf) < 9 + length:
                break
            ftype, flags = buf[3], buf[4]
            sid = struct.unpack(">I", buf[5:9])[0] & 0x7fffffff
            frames.append((ftype, flags, sid, buf[9:9 + length]))
            buf = buf[9 + length:]
    return frames


def raw_get(port, path, extra_settings=b""):
    import hpack
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    block = hpack.Encoder().encode([(":method", "GET"), (":scheme", "http"),
                                    (":authority", "127.0.0.1"), (":path", path)])
    settings = b"\x00\x00" + bytes([len(extra_settings)]) + b"\x04\x00\x00\x00\x00\x00" + extra_settings
    headers = len(block).to_bytes(3, "big") + b"\x01\x05\x00\x00\x00\x01" + block
    s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + settings + headers)
    return s


def test_h2padding_pads_frames(make_server):
    srv = make_server(h2_conf="H2Padding 6").start()
    # Each frame gets 0 to 63 padding bytes at random (a frame already at
    # the maximum payload gets none); with 0 it carries no PADDED flag. One
    # small response is unpadded 1 time in 64; six in a row, 1 in 64^6.
    data = []
    for _ in range(6):
        s = raw_get(srv.port, "/1k.bin")
        frames = read_frames(s, lambda fs: any(f[0] == 0 and f[1] & 1 for f in fs))
        s.close()
        got = [f for f in frames if f[0] == 0 and f[2] == 1]
        assert got, frames[:5]
        data += got
        if any(f[1] & 0x8 for f in got):
            break
    padded = [f for f in data if f[1] & 0x8]
    assert padded, "no DATA frame carries the PADDED flag"
    # Pad length is the first payload byte and below 2^6.
    assert all(f[3][0] < 64 for f in padded)


def test_h2padding_pads_full_size_frames_too(make_server):
    """A large body's frames leave room for the padding: with H2Padding 8
    each DATA frame gets 0 to 255 bytes of it (none 1 time in 256), the
    full-size ones too, which otherwise give the body's length away."""
    srv = make_server(h2_conf="H2Padding 8").start()
    s = raw_get(srv.port, "/100k.bin")
    frames = read_frames(s, lambda fs: len([f for f in fs if f[0] == 0 and f[2] == 1]) >= 4)
    s.close()
    data = [f for f in frames if f[0] == 0 and f[2] == 1][:4]
    assert len(data) == 4, frames[:8]
    assert sum(1 for f in data if f[1] & 0x8) >= 2, [(len(f[3]), f[1]) for f in data]
    assert all(len(f[3]) <= 16384 for f in data)


def test_h2maxheaderblocklen_limits_response_headers(make_server):
    big = "x" * 3000
    srv = make_server(h2_conf="H2MaxHeaderBlockLen 2048",
                      extra=f'<Location /big>\n  Header always set X-Big "{big}"\n</Location>').start()
    c = H2Client(srv.port)
    sid = c.request("/big/")
    st = c.wait_stream(sid)
    assert st.reset is not None and st.status is None, (st.status, st.reset)
    ok = c.wait_stream(c.request("/1k.bin"))
    assert ok.status == 200
    c.close()
    # The admin learns why: over HTTP/1.1 the page works.
    assert wait_for(lambda: f"stream {sid}: the response's header block is larger than H2MaxHeaderBlockLen"
                    in srv.read_error_log()), srv.read_error_log()[-2000:]


def test_flow_control_errors_close_the_connection(make_server):
    """A WINDOW_UPDATE that overflows a stream's send window (RFC 9113
    6.9.1). nghttp2 1.68 treats every flow-control error as a connection
    error, so H2MaxStreamErrors (a count of RST_STREAM(FLOW_CONTROL_ERROR))
    is reached at the first one: GOAWAY FLOW_CONTROL_ERROR."""
    srv = make_server(h2_conf="H2MaxStreamErrors 2").start()
    c = H2Client(srv.port, validate=False)
    from hyperframe import frame as hf
    sid = c.request("/cgi/slow.cgi?3")
    c.send_frame(hf.WindowUpdateFrame(sid, window_increment=2**31 - 1))
    c.wait(lambda: c.streams[sid].reset is not None or c.goaway is not None or c.closed)
    assert c.goaway is not None and c.goaway[0] == h2.errors.ErrorCodes.FLOW_CONTROL_ERROR, c.goaway
    c.close()


def test_h2earlyhints_sends_103(make_server):
    srv = make_server(h2_conf='H2EarlyHints on\nH2EarlyHint Link "</style.css>; rel=preload"').start()
    c = H2Client(srv.port)
    st = c.wait_stream(c.request("/index.html"))
    assert st.status == 200
    assert st.interim, "no interim response"
    hints = dict(st.interim[0])
    assert hints[b":status"] == b"103" and hints[b"link"] == b"</style.css>; rel=preload"
    assert st.header("link") is None
    c.close()
    srv2 = make_server(h2_conf='H2EarlyHint Link "</style.css>; rel=preload"').start()
    c = H2Client(srv2.port)
    st = c.wait_stream(c.request("/index.html"))
    assert st.status == 200 and not st.interim
    c.close()


def test_h2pushresource_is_announced_in_103_early_hints(make_server):
    """The stock module announces every H2PushResource as a preload link in
    a 103 when H2EarlyHints is on, with or without H2Push: configurations
    that moved from push to Early Hints keep their hints. A section's
    resources add to those of the sections around it."""
    conf = """H2EarlyHints on
H2Push off
H2EarlyHint Link "</x.css>; rel=preload"
<Location />
  H2PushResource add /site.css
</Location>
<Location /index.html>
  H2PushResource /style.css critical
  H2PushResource /a.js
</Location>"""
    srv = make_server(h2_conf=conf).start()
    c = H2Client(srv.port)
    st = c.wait_stream(c.request("/index.html"))
    assert st.status == 200 and len(st.interim) == 1, st.interim
    hint = st.interim[0]
    assert hint[0] == (b":status", b"103")
    assert [v for n, v in hint if n == b"link"] == [
        b"</site.css>; rel=preload", b"</style.css>; rel=preload; critical", b"</a.js>; rel=preload",
        b"</x.css>; rel=preload"]
    assert st.header("link") is None
    # Elsewhere only the outer section's resource and the server's H2EarlyHint.
    st = c.wait_stream(c.request("/1k.bin"))
    assert st.status == 200 and [v for n, v in st.interim[0] if n == b"link"] == [
        b"</site.css>; rel=preload", b"</x.css>; rel=preload"]
    c.close()
    srv2 = make_server(h2_conf="<Location /index.html>\n  H2PushResource /style.css\n</Location>").start()
    c = H2Client(srv2.port)
    st = c.wait_stream(c.request("/index.html"))
    assert st.status == 200 and not st.interim, "a 103 without H2EarlyHints on"
    c.close()


def tls_record_lengths_of_a_download(make_server, certs, h2_conf):
    """The lengths of the application-data records a server with `h2_conf`
    sends on a TLS 1.2 connection that downloads /100k.bin."""
    import struct
    tls_port = free_port()
    srv = make_server(h2_conf=h2_conf)
    srv.tls_config(certs, tls_port, extra="SSLProtocol -all +TLSv1.2")
    srv.start()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    raw = socket.create_connection(("127.0.0.1", tls_port), timeout=10)
    records, pending = [], b""

    def pump():
        nonlocal pending
        if outgoing.pending:
            raw.sendall(outgoing.read())
        d = raw.recv(65536)
        if not d:
            raise ConnectionError("closed")
        pending += d
        while len(pending) >= 5:
            ln = struct.unpack(">H", pending[3:5])[0]
            if len(pending) < 5 + ln:
                break
            records.append((pending[0], ln))
            pending = pending[5 + ln:]
        incoming.write(d)

    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            pump()
    raw.sendall(outgoing.read())
    handshake_records = len(records)
    c = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True, header_encoding=None))
    c.initiate_connection()
    c.increment_flow_control_window(1 << 24)
    c.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 24})
    c.send_headers(1, [(":method", "GET"), (":scheme", "https"), (":authority", "127.0.0.1"),
                       (":path", "/100k.bin")], end_stream=True)
    tls.write(c.data_to_send())
    raw.sendall(outgoing.read())
    got = 0
    while got < 100 * 1024:
        pump()
        try:
            while True:
                data = tls.read(65536)
                for ev in c.receive_data(data):
                    if isinstance(ev, h2.events.DataReceived):
                        got += len(ev.data)
                        c.acknowledge_received_data(ev.flow_controlled_length, 1)
        except ssl.SSLWantReadError:
            pass
        tls.write(c.data_to_send()) if c.data_to_send else None
    raw.close()
    return [ln for (t, ln) in records[handshake_records:] if t == 23]


def test_tls_warmup_uses_small_records_first(make_server, certs):
    """H2TLSWarmUpSize with H2TLSCoolDownSecs: the first bytes go in small
    TLS records."""
    app = tls_record_lengths_of_a_download(make_server, certs, "H2TLSWarmUpSize 20000\nH2TLSCoolDownSecs 5")
    assert app[0] <= 1300 + 64, app[:5]
    assert max(app[:10]) <= 1300 + 64, app[:10]
    assert max(app) > 4000, "never left warm-up"
    # Warm-up ends after H2TLSWarmUpSize bytes (plus each record's AEAD
    # overhead), also inside one write of 128 KiB, not after that write.
    first_full = next(i for i, ln in enumerate(app) if ln > 1300 + 64)
    assert 20000 <= sum(app[:first_full]) <= 22000, app[:first_full + 1]


def test_tls_records_are_full_size_from_the_start_by_default(make_server, certs):
    """As the stock module: without H2TLSCoolDownSecs (its default is 0)
    there is no warm-up; the download's first DATA goes in full records."""
    app = tls_record_lengths_of_a_download(make_server, certs, "")
    assert max(app[:10]) > 4000, app[:10]
    assert sum(1 for ln in app if ln <= 1300 + 64) < 10, app[:20]


import h2.config  # noqa: E402
import h2.connection  # noqa: E402
