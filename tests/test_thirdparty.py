"""Third-party modules that many production servers run, over HTTP/2 and
over HTTP/1.1 on the same server: mod_security2 (a WAF: it reads request
bodies in its input filter, and can block a response body in its output
filter) and mod_wsgi in daemon mode (Python applications, the request body
and the response streamed through a socket to the daemon process).
scripts/setup-deps installs both (Debian's libapache2-mod-security2 and
libapache2-mod-wsgi-py3)."""
import hashlib
import os
import re

import pytest

from conftest import MODDIR, Httpd, h1_request, h2_request, h2c, registered

APP = r'''
import hashlib, time

def application(environ, start_response):
    path = environ.get("PATH_INFO", "")
    if path == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain")])
        def lines():
            for i in range(5):
                yield ("line %d\n" % i).encode()
                time.sleep(0.02)
        return lines()
    if path == "/leak":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"here is a secret-leak\n"]
    if path == "/big":
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return [bytes(range(256)) * 8192]
    body = environ["wsgi.input"].read()
    keys = ["REQUEST_METHOD", "CONTENT_LENGTH", "QUERY_STRING", "HTTP_X_A", "wsgi.url_scheme"]
    out = "".join("%s=%s\n" % (k, environ.get(k)) for k in keys)
    out += "body=%d %s\n" % (len(body), hashlib.sha256(body).hexdigest())
    start_response("200 OK", [("Content-Type", "text/plain"), ("X-App", "wsgi"),
                              ("X-Protocol", environ.get("SERVER_PROTOCOL", ""))])
    return [out.encode()]
'''


@pytest.fixture(scope="module")
def srv(workdir, docroot):
    for so in ("mod_security2.so", "mod_wsgi.so", "mod_unique_id.so"):
        assert os.path.exists(f"{MODDIR}/{so}"), f"{so} is missing: run scripts/setup-deps"
    d = workdir / "thirdparty"
    d.mkdir()
    os.chmod(d, 0o777)
    app = d / "app.wsgi"
    app.write_text(APP)
    os.chmod(app, 0o644)
    extra = f"""LoadModule unique_id_module {MODDIR}/mod_unique_id.so
LoadModule security2_module {MODDIR}/mod_security2.so
LoadModule wsgi_module {MODDIR}/mod_wsgi.so
SecRuleEngine On
SecRequestBodyAccess On
SecResponseBodyAccess On
SecResponseBodyMimeType text/plain text/html
SecRequestBodyLimit 200000
SecRequestBodyNoFilesLimit 100000
SecDataDir "{d}"
SecTmpDir "{d}"
SecAuditEngine Off
SecRule REQUEST_HEADERS:Content-Type "@beginsWith application/octet-stream" \
  "id:1000,phase:1,pass,nolog,ctl:forceRequestBodyVariable=On"
SecRule ARGS "@contains attack" "id:1001,phase:2,deny,status:403,log"
SecRule REQUEST_HEADERS:X-Evil "@streq yes" "id:1002,phase:1,deny,status:406,log"
SecRule RESPONSE_BODY "@contains secret-leak" "id:1003,phase:4,deny,status:502,log"
SecRule REQUEST_BODY "@contains evilbody" "id:1004,phase:2,deny,status:409,log"
WSGIDaemonProcess h2rsapp threads=4
WSGIScriptAlias /wsgi "{app}" process-group=h2rsapp application-group=%{{GLOBAL}}
WSGIChunkedRequest On
<Directory "{d}">
  Require all granted
</Directory>
"""
    h = Httpd(workdir, docroot, name="srv-thirdparty", extra=extra)
    with registered(h):
        yield h


FORM = [("content-type", "application/x-www-form-urlencoded")]
CASES = {
    "get": ("/wsgi/env?x=1", "GET", [("x-a", "b")], None, 200),
    "query blocked (phase 2)": ("/wsgi/env?q=attack", "GET", [], None, 403),
    "header blocked (phase 1)": ("/wsgi/env", "GET", [("x-evil", "yes")], None, 406),
    "form": ("/wsgi/env", "POST", FORM, b"name=joe&q=hello", 200),
    "form blocked": ("/wsgi/env", "POST", FORM, b"name=joe&q=attack", 403),
    "raw body blocked": ("/wsgi/env", "POST", [("content-type", "application/octet-stream")],
                         b"blah evilbody blah", 409),
    "raw body": ("/wsgi/env", "POST", [("content-type", "application/octet-stream")],
                 os.urandom(90_000), 200),
    "static file blocked": ("/index.html?q=attack", "GET", [], None, 403),
    "CGI body blocked": ("/cgi/sum.cgi", "POST", [("content-type", "application/octet-stream")],
                         b"an evilbody here", 409),
    "stream": ("/wsgi/stream", "GET", [], None, 200),
    "large response": ("/wsgi/big", "GET", [], None, 200),
    "response body blocked (phase 4)": ("/wsgi/leak", "GET", [], None, 502),
}


@pytest.mark.parametrize("case", list(CASES))
def test_same_answer_as_http1(srv, case):
    """Each request gets the status and body over HTTP/2 that it gets over
    HTTP/1.1: the WAF's rules fire in every phase (headers, query, form and
    raw bodies read through the stream, the response body), and the WSGI
    daemon gets the body whole."""
    path, method, headers, body, status = CASES[case]
    st = h2_request(srv, path, method, headers, body)
    h1 = h1_request(srv, path, method, headers, body)
    assert h1.status == status
    assert (st.status, bytes(st.data)) == (status, h1.body)
    assert st.ended and st.reset is None
    if status == 200 and path.startswith("/wsgi/env"):
        assert st.header("x-protocol") == "HTTP/2.0"
        sent = body or b""
        assert f"body={len(sent)} {hashlib.sha256(sent).hexdigest()}".encode() in st.data
    if status == 502:
        # One error document, not the blocked body and not a second one.
        assert b"secret-leak" not in st.data and st.data.count(b"<html>") == 1
    srv.new_log_lines()  # the rules log each denial


def test_wsgi_gets_a_body_without_length(srv):
    """A request body without content-length (chunked for httpd) reaches the
    WSGI application whole, as WSGIChunkedRequest allows."""
    body = os.urandom(90_000)  # under SecRequestBodyNoFilesLimit
    c = h2c(srv)
    st = c.wait_stream(c.request("/wsgi/env", method="POST", headers=[("content-type", "application/octet-stream")],
                                 body=body))
    c.close()
    assert st.status == 200
    assert f"body={len(body)} {hashlib.sha256(body).hexdigest()}".encode() in st.data
    assert b"CONTENT_LENGTH=None" in st.data


def test_waf_reads_a_form_without_length(srv):
    """mod_security2 reads a request body without content-length (chunked
    for httpd) through the stream and applies its rules to it."""
    c = h2c(srv)
    blocked = c.request("/wsgi/env", method="POST", headers=FORM, body=b"name=joe&q=attack")
    passed = c.request("/wsgi/env", method="POST", headers=FORM, body=b"name=joe&q=hello")
    c.wait(lambda: c.streams[blocked].done and c.streams[passed].done)
    c.close()
    assert c.streams[blocked].status == 403
    assert c.streams[passed].status == 200 and b"body=16 " in c.streams[passed].data
    srv.new_log_lines()


def test_waf_refuses_a_body_over_its_limit_before_reading_it(srv):
    """SecRequestBodyLimit: a content-length over it is answered 413 at
    once, then the stream is reset with NO_ERROR so that the client stops
    sending (RFC 9113 8.1), without the body ever being sent."""
    c = h2c(srv)
    sid = c.request("/wsgi/env", method="POST", headers=FORM + [("content-length", "300000")], end_stream=False)
    st = c.wait_stream(sid)
    c.wait(lambda: st.reset is not None, timeout=5)
    c.close()
    assert st.status == 413 and st.ended and st.reset == 0, st.reset
    assert re.search(rb"Request Entity Too Large", bytes(st.data))
    assert re.search(r"ModSecurity: Request body \(Content-Length\) is larger than the configured limit",
                     srv.new_log_lines())
