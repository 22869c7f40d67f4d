"""httpd's own filters and handlers over HTTP/2 and over HTTP/1.1 on the
same server: each request must get the same status and body both ways.
These modules split, hold back, reorder or replace the buckets of a
response or of a request body (mod_bucketeer flushes in the middle of a
file, mod_ext_filter pipes the body through another process, mod_buffer
collects a streamed one), serve files from descriptors and mappings that
mod_file_cache shares between requests and threads, or answer with a
status and fields of their own (mod_asis, mod_allowmethods,
mod_auth_digest)."""
import hashlib
import os
import re

import pytest

from conftest import MODDIR, Httpd, h1_request, h2_request, h2c, registered

MODULES = ("substitute", "brotli", "sed", "bucketeer", "case_filter", "case_filter_in", "ext_filter", "buffer",
           "data", "asis", "file_cache", "allowmethods", "auth_digest", "authn_file", "authn_core",
           "authz_user")

PAGE = "<html><body>a test page, test test</body></html>\n" * 60
# Control bytes make mod_bucketeer split the file (0x02), flush (0x06) and
# pass what it has (0x10), all in the middle of one response; it drops them.
CONTROLS = b"abc\x02def\x06ghi\x10jkl\n" * 40
ECHO_CGI = "#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\n'\ncat\n"
STREAM_CGI = ("#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\n'\n"
              "for i in 1 2 3 4 5; do echo line $i; sleep 0.05; done\n")
ASIS = "Status: 299 Odd\nX-Asis: yes\nContent-Type: text/plain\n\nsent as is\n"


@pytest.fixture(scope="module")
def srv(workdir, docroot):
    d = workdir / "httpd-modules"
    d.mkdir()
    files = {"page.html": PAGE.encode(), "controls.txt": CONTROLS, "echo.cgi": ECHO_CGI.encode(),
             "stream.cgi": STREAM_CGI.encode(), "x.asis": ASIS.encode(), "random.bin": os.urandom(100_000)}
    for name, data in files.items():
        (d / name).write_bytes(data)
        os.chmod(d / name, 0o755)
    os.chmod(d, 0o755)
    ha1 = hashlib.md5(b"user:realm:secret").hexdigest()
    (d / "digest.pw").write_text(f"user:realm:{ha1}\n")
    load = "\n".join(f"LoadModule {m}_module {MODDIR}/mod_{m}.so" for m in MODULES)
    extra = f"""{load}
Alias /m/ "{d}/"
<Directory "{d}">
  Options +ExecCGI
  AddHandler cgi-script .cgi
  AddHandler send-as-is asis
  Require all granted
</Directory>
<Location /m/page.html>
  AddOutputFilter SUBSTITUTE;BROTLI_COMPRESS .html
  Substitute "s/test/T3ST/n"
</Location>
Alias /sed/ "{d}/"
<Location /sed/>
  AddOutputFilter Sed html
  OutputSed "s/page/PAGE/g"
  SetInputFilter Sed
  InputSed "s/a/Z/g"
</Location>
Alias /bucketeer/ "{d}/"
<Location /bucketeer/>
  SetOutputFilter BUCKETEER
</Location>
Alias /case/ "{d}/"
<Location /case/>
  SetOutputFilter CaseFilter
  SetInputFilter CaseFilterIn
</Location>
ExtFilterDefine upper mode=output cmd="/usr/bin/tr a-z A-Z"
ExtFilterDefine upperin mode=input cmd="/usr/bin/tr a-z A-Z"
Alias /ext/ "{d}/"
<Location /ext/>
  SetOutputFilter upper
  SetInputFilter upperin
</Location>
Alias /buffer/ "{d}/"
<Location /buffer/>
  SetOutputFilter BUFFER
</Location>
Alias /data/ "{d}/"
<Location /data/>
  SetOutputFilter DATA
</Location>
MMapFile {d}/page.html
CacheFile {d}/random.bin
Alias /getonly/ "{d}/"
<Location /getonly/>
  AllowMethods GET
</Location>
Alias /digest/ "{d}/"
<Location /digest/>
  AuthType Digest
  AuthName realm
  AuthDigestProvider file
  AuthUserFile "{d}/digest.pw"
  Require valid-user
</Location>
"""
    h = Httpd(workdir, docroot, name="srv-httpd-modules", extra=extra)
    with registered(h):
        yield h


LINES = b"line 1\nline 2\nline 3\nline 4\nline 5\n"
TEXT = [("content-type", "text/plain")]
# name: (path, method, request fields, body, status, what the body must be
# or hold); each is also compared with HTTP/1.1's answer.
CASES = {
    "substitute": ("/m/page.html", "GET", [], None, 200, PAGE.replace("test", "T3ST").encode()),
    "substitute, then brotli": ("/m/page.html", "GET", [("accept-encoding", "br")], None, 200, None),
    "sed on the response": ("/sed/page.html", "GET", [], None, 200, PAGE.replace("page", "PAGE").encode()),
    # sed ends its last line with a newline.
    "sed on the request body": ("/sed/echo.cgi", "POST", TEXT, b"aaaa bbb aaa", 200, b"ZZZZ bbb ZZZ\n"),
    "bucketeer splits and flushes": ("/bucketeer/controls.txt", "GET", [], None, 200,
                                     re.sub(b"[\x02\x06\x10]", b"", CONTROLS)),
    "case filter on the response": ("/case/page.html", "GET", [], None, 200, PAGE.upper().encode()),
    "case filter on the request body": ("/case/echo.cgi", "POST", TEXT, b"hello world", 200, b"HELLO WORLD"),
    "external filter on the response": ("/ext/page.html", "GET", [], None, 200, PAGE.upper().encode()),
    "external filter on 100 KB": ("/ext/random.bin", "GET", [], None, 200, None),
    "external filter on the request body": ("/ext/echo.cgi", "POST", TEXT, b"hello world", 200, b"HELLO WORLD"),
    "buffer holds a streamed response": ("/buffer/stream.cgi", "GET", [], None, 200, LINES),
    "data URL": ("/data/page.html", "GET", [], None, 200, None),
    "as is": ("/m/x.asis", "GET", [], None, 299, b"sent as is\n"),
    "mapped by mod_file_cache": ("/m/page.html", "GET", [("accept-encoding", "identity")], None, 200, None),
    "opened by mod_file_cache": ("/m/random.bin", "GET", [], None, 200, None),
    "a range of a file mod_file_cache opened": ("/m/random.bin", "GET", [("range", "bytes=100-4099")], None, 206,
                                                None),
    "method not allowed": ("/getonly/page.html", "POST", TEXT, b"x", 405, None),
    "digest challenge": ("/digest/page.html", "GET", [], None, 401, None),
}


@pytest.mark.parametrize("case", list(CASES))
def test_same_answer_as_http1(srv, workdir, case):
    path, method, headers, body, status, expected = CASES[case]
    st = h2_request(srv, path, method, headers, body)
    h1 = h1_request(srv, path, method, headers, body)
    assert h1.status == status
    assert (st.status, bytes(st.data)) == (status, h1.body)
    assert st.ended and st.reset is None
    if expected is not None:
        assert bytes(st.data) == expected
    if case == "substitute, then brotli":
        assert st.header("content-encoding") == "br" == h1.headers["content-encoding"]
    if case == "as is":
        assert st.header("x-asis") == "yes"
    if case == "data URL":
        assert st.data.startswith(b"data:text/html;base64,")
    if case == "external filter on 100 KB":
        random = (workdir / "httpd-modules" / "random.bin").read_bytes()
        assert len(st.data) == 100_000 and bytes(st.data) == random.translate(bytes.maketrans(
            b"abcdefghijklmnopqrstuvwxyz", b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"))
    srv.new_log_lines()  # mod_allowmethods logs its refusal


def test_a_multipart_range_of_a_file_mod_file_cache_opened(srv, workdir):
    """Two ranges of a file served from mod_file_cache's shared descriptor:
    each part holds its bytes of the file."""
    data = (workdir / "httpd-modules" / "random.bin").read_bytes()
    st = h2_request(srv, "/m/random.bin", headers=[("range", "bytes=0-10,5000-5999")])
    assert st.status == 206
    boundary = re.match(r"multipart/byteranges; boundary=(\S+)", st.header("content-type"))[1].encode()
    parts = [p for p in bytes(st.data).split(b"--" + boundary) if b"Content-range" in p]
    bodies = [p.split(b"\r\n\r\n", 1)[1][:-2] for p in parts]
    assert bodies == [data[0:11], data[5000:6000]]


def test_input_filters_see_a_body_without_length(srv):
    """A request body without content-length (chunked for httpd) passes
    through mod_sed's and mod_ext_filter's input filters whole."""
    for path, body, expected in (("/sed/echo.cgi", b"aaaa bbb aaa" * 1000, b"ZZZZ bbb ZZZ" * 1000 + b"\n"),
                                 ("/ext/echo.cgi", b"hello world " * 1000, b"HELLO WORLD " * 1000)):
        st = h2_request(srv, path, "POST", TEXT, body, length=False)
        assert (st.status, bytes(st.data)) == (200, expected)


def test_digest_authentication_on_one_connection(srv):
    """RFC 7616 digest authentication: the challenge, then the answer with
    its nonce on the same connection; a wrong password is refused."""
    c = h2c(srv)
    path = "/digest/page.html"
    st = c.wait_stream(c.request(path))
    assert st.status == 401
    nonce = re.search(r'nonce="([^"]+)"', st.header("www-authenticate"))[1]
    ha2 = hashlib.md5(f"GET:{path}".encode()).hexdigest()
    for count, (password, status) in enumerate((("secret", 200), ("wrong", 401)), start=1):
        ha1 = hashlib.md5(f"user:realm:{password}".encode()).hexdigest()
        nc = f"{count:08x}"
        response = hashlib.md5(f"{ha1}:{nonce}:{nc}:c0ffee:auth:{ha2}".encode()).hexdigest()
        auth = (f'Digest username="user", realm="realm", nonce="{nonce}", uri="{path}", algorithm=MD5, '
                f'response="{response}", qop=auth, nc={nc}, cnonce="c0ffee"')
        st = c.wait_stream(c.request(path, headers=[("authorization", auth)]))
        assert st.status == status
        if status == 200:
            assert bytes(st.data) == PAGE.encode()
            assert st.header("authentication-info")
    c.close()
    assert "password mismatch" in srv.new_log_lines()
