"""Issue 4, conformance: frame-level checks of RFC 9113 sections 3 to 8 and
RFC 7541's decoding errors, over h2c (prior knowledge) and over TLS (ALPN
h2), against one server. Frames are built byte by byte (tests/rawh2.py) so
invalid ones can be sent; every error case asserts the exact error code.

Stream vs connection errors: RFC 9113 5.4.1 lets an endpoint treat a stream
error as a connection error. Where nghttp2 does that, the test accepts the
same code in either form (`expect_error`) and says so. Malformed requests
(section 8) are held to stream errors: the module is designed to reset only
the stream (docs/INTERNALS.md), and each such test proves the connection
still serves a request afterwards.

The server runs with `H2WindowSize 8192` so that overrunning its stream
window takes a single DATA frame (no race with the window it reopens)."""
import hashlib
import struct
import time

import pytest
from h2.errors import ErrorCodes as E

import conftest
from conftest import Httpd, free_port
import rawh2
from rawh2 import (ACK, DATA, END_HEADERS, END_STREAM, ENABLE_PUSH, GOAWAY, HEADER_TABLE_SIZE,
                   HEADERS, INITIAL_WINDOW_SIZE, MAX_CONCURRENT_STREAMS, MAX_FRAME_SIZE, PADDED, PING, PREFACE,
                   PRIORITY, PUSH_PROMISE, RST_STREAM, SETTINGS, WINDOW_UPDATE, Conn, continuation, data, encode,
                   frame, goaway, headers, hpack_int, hpack_str, literal, ping, priority, rst_stream, settings,
                   window_update)

SERVER_WINDOW = 8192


@pytest.fixture(scope="module")
def srv(workdir, docroot, certs):
    h = Httpd(workdir, docroot, name="conformance", h2_conf=f"H2WindowSize {SERVER_WINDOW}")
    with conftest.registered(h.tls_config(certs, free_port())):
        yield h


@pytest.fixture(params=["h2c", "tls"])
def connect(srv, request):
    tls = request.param == "tls"
    conns = []

    def make(**kw):
        c = Conn(srv.tls_port if tls else srv.port, tls=tls, **kw)
        conns.append(c)
        return c

    yield make
    for c in conns:
        c.close()


def sha(b):
    return hashlib.sha256(bytes(b)).hexdigest()


def open_stream(c, path="/nope", method="POST"):
    """HEADERS that open a stream (no END_STREAM), as bytes to send along
    with the frames under test: the server handles both in one read, before
    any response could close the stream."""
    sid = c.new_sid()
    c.resp(sid)
    return sid, headers(sid, encode(c.fields(path, method)), end_stream=False)


def blocked_stream(connect, path="/16k1.bin"):
    """A connection whose client window is 0 and a request on it: the stream
    stays half-closed (remote) with its response waiting for window."""
    c = connect(settings_pairs=[(INITIAL_WINDOW_SIZE, 0)], auto_window=False)
    sid = c.request(path)
    c.wait(lambda: c.resp(sid).status is not None, what="the response HEADERS")
    return c, sid


# ---- 3.4 preface, 6.5 SETTINGS -------------------------------------------------

def test_bad_preface(connect, request):
    """RFC 9113 3.4: an invalid client preface is a connection error
    PROTOCOL_ERROR; the GOAWAY MAY be omitted. Over h2c a preface that is not
    exactly the HTTP/2 one never starts HTTP/2 (the bytes are HTTP/1.x to
    the server), so an HTTP/1.x error answer is also allowed there. In every
    case the server closes the connection and sends no other HTTP/2 frame."""
    c = connect(handshake=False)
    c.send(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n" + settings())
    raw = bytearray()
    deadline = time.time() + 5
    while not c.closed and time.time() < deadline:
        d = c._recv(deadline - time.time())
        if d:
            raw += d
    assert c.closed, f"connection left open after a bad preface; received {bytes(raw[:200])!r}"
    if raw.startswith(b"HTTP/1."):
        assert request.node.callspec.params["connect"] == "h2c", raw[:200]
        status = int(raw.split(b" ", 2)[1])
        assert 400 <= status < 600, raw[:200]
        return
    frames = []
    while len(raw) >= 9:
        n = int.from_bytes(raw[:3], "big")
        frames.append(rawh2.Frame(raw[3], raw[4], int.from_bytes(raw[5:9], "big"), bytes(raw[9:9 + n])))
        del raw[:9 + n]
    for f in frames:
        assert f.type in (SETTINGS, GOAWAY, WINDOW_UPDATE), frames
        if f.type == GOAWAY:
            assert f.error_code == E.PROTOCOL_ERROR, frames


def test_preface_must_be_followed_by_settings(connect):
    """RFC 9113 3.4: the preface MUST be followed by a SETTINGS frame; a PING
    first is a connection error PROTOCOL_ERROR."""
    c = connect(handshake=False)
    c.send(PREFACE + ping())
    c.expect_connection_error(E.PROTOCOL_ERROR)


def test_server_preface_and_settings_ack(connect):
    """RFC 9113 3.4, 6.5.3: the server's first frame is SETTINGS (not an
    ACK); it acknowledges ours, and a later SETTINGS too."""
    c = connect(settings_pairs=[(ENABLE_PUSH, 0), (MAX_CONCURRENT_STREAMS, 10)])
    assert c.frames[0].type == SETTINGS and not c.frames[0].flags & ACK, c.log()
    c.wait(lambda: c.settings_acked >= 1, what="SETTINGS ACK")
    c.send(settings((INITIAL_WINDOW_SIZE, 100000)))
    c.wait(lambda: c.settings_acked >= 2, what="the second SETTINGS ACK")
    c.expect_ok()


def test_frames_split_at_any_byte_are_read_whole(connect, docroot):
    """A client whose bytes arrive a few at a time (every frame header and
    field block split across reads, the preface too) is served like any
    other: each read that comes short is all there is, never the end of
    the frame. Then requests in one write, and one split in two writes."""
    c = connect(handshake=False)
    sid = c.new_sid()
    c.resp(sid)
    stream = PREFACE + settings() + headers(sid, encode(c.fields("/1k.bin")))
    for i in range(0, len(stream), 5):
        c.send(stream[i:i + 5])
        time.sleep(0.002)
    r = c.response(sid)
    assert r.status == 200 and sha(r.body) == docroot.sha("1k.bin"), c.log()
    sids = [c.request("/16k1.bin") for _ in range(3)]
    for sid in sids:
        r = c.response(sid)
        assert r.status == 200 and sha(r.body) == docroot.sha("16k1.bin"), c.log()
    sid = c.new_sid()
    c.resp(sid)
    frame_bytes = headers(sid, encode(c.fields("/1k.bin")))
    c.send(frame_bytes[:4])
    time.sleep(0.05)
    c.send(frame_bytes[4:])
    r = c.response(sid)
    assert r.status == 200 and sha(r.body) == docroot.sha("1k.bin"), c.log()


def test_settings_on_a_stream(connect):
    """RFC 9113 6.5: SETTINGS with a stream id other than 0: connection
    error PROTOCOL_ERROR."""
    c = connect()
    c.send(settings((MAX_CONCURRENT_STREAMS, 100), sid=1))
    c.expect_connection_error(E.PROTOCOL_ERROR)


def test_settings_length_not_a_multiple_of_6(connect):
    """RFC 9113 6.5: a SETTINGS length not a multiple of 6: connection error
    FRAME_SIZE_ERROR."""
    c = connect()
    c.send(frame(SETTINGS, 0, 0, struct.pack(">HI", MAX_CONCURRENT_STREAMS, 100) + b"\0"))
    c.expect_connection_error(E.FRAME_SIZE_ERROR)


def test_settings_ack_with_payload(connect):
    """RFC 9113 6.5: a SETTINGS ACK with a payload: connection error
    FRAME_SIZE_ERROR."""
    c = connect()
    c.send(settings((MAX_CONCURRENT_STREAMS, 100), ack=True))
    c.expect_connection_error(E.FRAME_SIZE_ERROR)


def test_settings_enable_push_invalid(connect):
    """RFC 9113 6.5.2: SETTINGS_ENABLE_PUSH other than 0 or 1: connection
    error PROTOCOL_ERROR."""
    c = connect()
    c.send(settings((ENABLE_PUSH, 2)))
    c.expect_connection_error(E.PROTOCOL_ERROR)


def test_settings_initial_window_size_too_large(connect):
    """RFC 9113 6.5.2: SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1: connection
    error FLOW_CONTROL_ERROR."""
    c = connect()
    c.send(settings((INITIAL_WINDOW_SIZE, 1 << 31)))
    c.expect_connection_error(E.FLOW_CONTROL_ERROR)


@pytest.mark.parametrize("value", [16383, 1 << 24])
def test_settings_max_frame_size_out_of_range(connect, value):
    """RFC 9113 6.5.2: SETTINGS_MAX_FRAME_SIZE outside 2^14..2^24-1:
    connection error PROTOCOL_ERROR."""
    c = connect()
    c.send(settings((MAX_FRAME_SIZE, value)))
    c.expect_connection_error(E.PROTOCOL_ERROR)


def test_settings_unknown_identifier_ignored(connect):
    """RFC 9113 6.5.2, 5.5: unknown settings are ignored; the SETTINGS is
    acknowledged and the connection works. Unknown SETTINGS flags too."""
    c = connect()
    c.send(settings((0x99, 7), (0xfeff, 0xffffffff)))
    c.wait(lambda: c.settings_acked >= 2, what="SETTINGS ACK")
    c.send(frame(SETTINGS, 0xfe, 0, struct.pack(">HI", 0x77, 1)))
    c.wait(lambda: c.settings_acked >= 3, what="SETTINGS ACK")
    c.expect_ok()


def test_extreme_valid_settings_are_honoured(connect, docroot):
    """RFC 9113 6.5.2, RFC 7541 4.2: the largest valid MAX_FRAME_SIZE and
    INITIAL_WINDOW_SIZE, ENABLE_PUSH 0 and HEADER_TABLE_SIZE 0 are accepted;
    with a table size of 0 the server's encoder uses no dynamic table (our
    decoder allows none, so any dynamic reference fails the test)."""
    c = connect(settings_pairs=[(MAX_FRAME_SIZE, (1 << 24) - 1), (INITIAL_WINDOW_SIZE, (1 << 31) - 1),
                                (ENABLE_PUSH, 0), (HEADER_TABLE_SIZE, 0)])
    c.decoder.max_allowed_table_size = 0
    c.wait(lambda: c.settings_acked >= 1, what="SETTINGS ACK")
    for _ in range(2):
        r = c.expect_ok("/100k.bin")
        assert sha(r.body) == docroot.sha("100k.bin")


def test_server_respects_default_max_frame_size(connect, docroot):
    """RFC 9113 4.2: without a larger SETTINGS_MAX_FRAME_SIZE from us, no
    frame from the server is larger than 16384 octets."""
    c = connect()
    r = c.expect_ok("/100k.bin")
    assert sha(r.body) == docroot.sha("100k.bin")
    assert max(len(f.payload) for f in c.frames) <= 16384


# ---- 4.2 frame sizes and fixed-length frames -------------------------------------

def test_headers_larger_than_max_frame_size(connect):
    """RFC 9113 4.2: a frame above SETTINGS_MAX_FRAME_SIZE that carries a
    field block MUST be a connection error FRAME_SIZE_ERROR."""
    c = connect()
    sid = c.new_sid()
    block = encode(c.fields())
    big = literal("x-big", "a" * 16500)
    c.send(headers(sid, block + big))
    c.expect_connection_error(E.FRAME_SIZE_ERROR)


def test_data_larger_than_max_frame_size(connect):
    """RFC 9113 4.2: a DATA frame above SETTINGS_MAX_FRAME_SIZE:
    FRAME_SIZE_ERROR, as a stream error or (nghttp2) a connection error."""
    c = connect()
    sid, opening = open_stream(c)
    c.send(opening + data(sid, b"x" * 16385, end_stream=True))
    c.expect_error(sid, E.FRAME_SIZE_ERROR)


@pytest.mark.parametrize("size", [7, 9])
def test_ping_wrong_length(connect, size):
    """RFC 9113 6.7: a PING whose length is not 8: connection error
    FRAME_SIZE_ERROR."""
    c = connect()
    c.send(ping(b"p" * size))
    c.expect_connection_error(E.FRAME_SIZE_ERROR)


def test_ping_on_a_stream(connect):
    """RFC 9113 6.7: a PING with a stream id other than 0: connection error
    PROTOCOL_ERROR."""
    c = connect()
    c.send(ping(sid=1))
    c.expect_connection_error(E.PROTOCOL_ERROR)


def test_ping_is_answered_and_ping_ack_is_not(connect):
    """RFC 9113 6.7: a PING is answered with an ACK carrying the same
    payload; unknown flags are ignored; a PING ACK from us gets no answer."""
    c = connect()
    c.send(ping(b"ackme!!!", ack=True))
    c.send(ping(b"\x00\x01\x02\x03\xfc\xfd\xfe\xff", flags=0xfe & ~ACK))
    c.wait(lambda: c.pings, what="PING ACK")
    c.expect_alive()
    assert c.pings[0] == b"\x00\x01\x02\x03\xfc\xfd\xfe\xff", c.log()
    assert b"ackme!!!" not in c.pings
    assert all(f.flags & ACK for f in c.frames if f.type == PING), c.log()


@pytest.mark.parametrize("size", [3, 5])
def test_window_update_wrong_length(connect, size):
    """RFC 9113 6.9: a WINDOW_UPDATE whose length is not 4: connection error
    FRAME_SIZE_ERROR."""
    c = connect()
    c.send(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 1000)[:size] if size < 4 else struct.pack(">I", 1000) + b"\0"))
    c.expect_connection_error(E.FRAME_SIZE_ERROR)


@pytest.mark.parametrize("size", [3, 5])
def test_rst_stream_wrong_length(connect, size):
    """RFC 9113 6.4: a RST_STREAM whose length is not 4: connection error
    FRAME_SIZE_ERROR (sent on an open stream)."""
    c = connect()
    sid, opening = open_stream(c)
    payload = struct.pack(">I", E.CANCEL)
    c.send(opening + frame(RST_STREAM, 0, sid, payload[:size] if size < 4 else payload + b"\0"))
    c.expect_connection_error(E.FRAME_SIZE_ERROR)


@pytest.mark.parametrize("size", [4, 6])
def test_priority_wrong_length(connect, size):
    """RFC 9113 6.3: a PRIORITY whose length is not 5 is a stream error
    FRAME_SIZE_ERROR (sent on an open stream); 5.4.1 allows the connection
    error nghttp2 may use instead."""
    c = connect()
    sid, opening = open_stream(c)
    payload = struct.pack(">IB", 0, 15)
    c.send(opening + frame(PRIORITY, 0, sid, payload[:size] if size < 5 else payload + b"\0"))
    if c.expect_error(sid, E.FRAME_SIZE_ERROR) == "stream":
        c.expect_ok()


def test_goaway_on_a_stream(connect):
    """RFC 9113 6.8: a GOAWAY with a stream id other than 0: connection
    error PROTOCOL_ERROR."""
    c = connect()
    c.send(goaway(0, E.NO_ERROR, sid=1))
    c.expect_connection_error(E.PROTOCOL_ERROR)


# ---- 5.1 stream states and identifiers -------------------------------------------

def test_data_on_an_idle_stream(connect):
    """RFC 9113 5.1 (idle): DATA on an idle stream: connection error
    PROTOCOL_ERROR."""
    c = connect()
    c.send(data(1, b"hello", end_stream=True))
    c.expect_connection_error(E.PROTOCOL_ERROR)


def test_data_on_an_idle_stream_above_an_open_one(connect):
    """RFC 9113 5.1 (idle): stream 3 is idle while 1 is open; DATA on it:
    connection error PROTOCOL_ERROR."""
    c = connect()
    sid, opening = open_stream(c)
    c.send(opening + data(sid + 2, b"hello"))
    c.expect_connection_error(E.PROTOCOL_ERROR)


def test_headers_with_an_even_stream_id(connect):
    """RFC 9113 5.1.1: a client stream id MUST be odd; an even one is a
    connection error PROTOCOL_ERROR."""
    c = connect()
    c.send(headers(2, encode(c.fields())))
    c.expect_connection_error(E.PROTOCOL_ERROR)


def test_decreasing_stream_id(connect):
    """RFC 9113 5.1.1: a new stream id MUST be greater than every stream the
    client opened; HEADERS on 3 after 5 is a connection error
    PROTOCOL_ERROR (3 was never used)."""
    c = connect()
    c.response(c.request(sid=5))
    c.send(headers(3, encode(c.fields())))
    c.expect_connection_error(E.PROTOCOL_ERROR)


def test_late_trailers_after_many_other_streams_are_ignored(connect):
    """RFC 9113 5.1: trailers a client sends on a stream the server has
    reset meanwhile (answered before its body came: RST_STREAM NO_ERROR)
    are ignored, however many other streams closed in between (after 256
    closes they were taken for a new stream below the highest, a
    connection error); only a stream id never used is one."""
    c = connect()
    sid = c.request("/index.html", method="POST", end_stream=False, extra=[("content-length", "100")])
    c.wait(lambda: c.resp(sid).done, what="the early answer")
    for _ in range(300):
        c.response(c.request("/1k.bin"))
    c.send(headers(sid, encode([("x-late", "1")]), end_stream=True))
    c.expect_alive()
    c.expect_ok()


def test_data_on_a_half_closed_remote_stream(connect):
    """RFC 9113 5.1 (half-closed remote), 6.1: DATA after the client's
    END_STREAM: stream error STREAM_CLOSED (nghttp2 makes it a connection
    error, which 5.4.1 allows)."""
    c, sid = blocked_stream(connect)
    c.send(data(sid, b"late", end_stream=True))
    if c.expect_error(sid, E.STREAM_CLOSED) == "stream":
        c.send(settings((INITIAL_WINDOW_SIZE, 65535)))
        c.expect_ok()


def test_headers_on_a_half_closed_remote_stream(connect):
    """RFC 9113 5.1 (half-closed remote): HEADERS after the client's
    END_STREAM: stream error STREAM_CLOSED, or as a connection error (5.4.1)."""
    c, sid = blocked_stream(connect)
    c.send(headers(sid, encode(c.fields())))
    c.expect_error(sid, E.STREAM_CLOSED)


def test_rst_stream_on_an_idle_stream(connect):
    """RFC 9113 5.1 (idle), 6.4: RST_STREAM on an idle stream: connection
    error PROTOCOL_ERROR."""
    c = connect()
    c.send(rst_stream(1, E.CANCEL))
    c.expect_connection_error(E.PROTOCOL_ERROR)


def test_window_update_on_an_idle_stream(connect):
    """RFC 9113 5.1 (idle): WINDOW_UPDATE on an idle stream: connection
    error PROTOCOL_ERROR."""
    c = connect()
    c.send(window_update(1, 1000))
    c.expect_connection_error(E.PROTOCOL_ERROR)


def test_priority_on_an_idle_stream_is_allowed(connect):
    """RFC 9113 5.1 (idle), 6.3: PRIORITY may be sent on an idle stream; it
    does not open it, so streams 1, 3 and 5 can still be opened."""
    c = connect()
    c.send(priority(5, depends_on=0))
    for _ in range(3):
        c.expect_ok()


@pytest.mark.parametrize("kind", ["DATA", "HEADERS", "PRIORITY", "RST_STREAM", "CONTINUATION"])
def test_frames_that_need_a_stream_on_stream_0(connect, kind):
    """RFC 9113 6.1, 6.2, 6.3, 6.4, 6.10: DATA, HEADERS, PRIORITY,
    RST_STREAM and CONTINUATION on stream 0: connection error
    PROTOCOL_ERROR."""
    c = connect()
    block = encode(c.fields())
    c.send({
        "DATA": data(0, b"hello"),
        "HEADERS": headers(0, block),
        "PRIORITY": priority(0, depends_on=1),
        "RST_STREAM": rst_stream(0, E.CANCEL),
        "CONTINUATION": continuation(0, block),
    }[kind])
    c.expect_connection_error(E.PROTOCOL_ERROR)


@pytest.mark.parametrize("prioritized", [0, 2], ids=["stream-0", "server-stream"])
def test_a_priority_update_for_a_stream_it_cannot_name(connect, prioritized):
    """RFC 9218 7.1: a PRIORITY_UPDATE whose Prioritized Stream ID is 0, or
    a stream the server would initiate (a push), is a connection error
    PROTOCOL_ERROR."""
    c = connect()
    c.send(frame(0x10, 0, 0, struct.pack(">I", prioritized) + b"u=1"))
    c.expect_connection_error(E.PROTOCOL_ERROR)


def test_more_streams_than_max_concurrent_streams(connect):
    """RFC 9113 5.1.2: a HEADERS that exceeds our SETTINGS_MAX_CONCURRENT_STREAMS
    is a stream error PROTOCOL_ERROR or REFUSED_STREAM; nghttp2 answers a
    connection error PROTOCOL_ERROR (5.4.1 allows it). The streams within the
    limit are unaffected when only the extra one is refused."""
    c = connect(settings_pairs=[(INITIAL_WINDOW_SIZE, 0)])
    limit = c.server_settings.get(MAX_CONCURRENT_STREAMS)
    assert limit and limit <= 200, c.server_settings
    sids = [c.new_sid() for _ in range(limit + 1)]
    c.send(b"".join(headers(s, encode(c.fields())) for s in sids))
    for s in sids:
        c.resp(s)
    extra = sids[-1]
    c.wait(lambda: c.resp(extra).reset is not None or c.goaway is not None or c.closed,
           what="the refusal of the extra stream")
    if c.goaway is not None:
        assert c.goaway.error_code == E.PROTOCOL_ERROR, c.log()
        assert c.wait_closed(), c.log()
        return
    assert c.resp(extra).reset in (E.PROTOCOL_ERROR, E.REFUSED_STREAM), c.log()
    assert all(c.resp(s).reset is None for s in sids[:-1]), c.log()
    c.send(settings((INITIAL_WINDOW_SIZE, 65535)))
    c.wait(lambda: all(c.resp(s).done for s in sids[:-1]), what="every admitted response")
    assert all(c.resp(s).status == 200 and c.resp(s).reset is None for s in sids[:-1]), c.log()


def test_push_promise_from_the_client(connect):
    """RFC 9113 8.4, 6.6: a client cannot push; PUSH_PROMISE from it is a
    connection error PROTOCOL_ERROR."""
    c, sid = blocked_stream(connect)
    c.send(frame(PUSH_PROMISE, END_HEADERS, sid, struct.pack(">I", 2) + encode(c.fields())))
    c.expect_connection_error(E.PROTOCOL_ERROR)


def test_unknown_frame_types_are_ignored(connect):
    """RFC 9113 4.1, 5.5: frames of unknown types are ignored, on stream 0,
    on an idle stream (which stays idle) and between the DATA frames of a
    request body (the body arrives intact)."""
    c = connect()
    c.send(frame(0xfa, 0xff, 0, b"on stream zero"), frame(0xfb, 0, 1, b"on idle stream 1"))
    c.expect_ok()  # stream 1
    body = bytes(range(256)) * 12
    sid, opening = open_stream(c, "/cgi/sum.cgi")
    c.send(opening + data(sid, body[:1000]) + frame(0xfc, 0x1, sid, b"x" * 100) + data(sid, body[1000:], True))
    r = c.response(sid)
    assert r.status == 200 and r.body.decode().strip() == sha(body), (r.status, bytes(r.body))


def test_unknown_flags_are_ignored(connect):
    """RFC 9113 4.1: flags a frame type does not define are ignored
    (HEADERS, DATA, WINDOW_UPDATE)."""
    c = connect()
    sid = c.new_sid()
    c.send(headers(sid, encode(c.fields()), flags=0x2 | 0x10 | 0x40 | 0x80))
    r = c.response(sid)
    assert r.status == 200
    body = b"z" * 300
    sid, opening = open_stream(c, "/cgi/sum.cgi")
    c.send(opening + data(sid, body, end_stream=True, flags=0x2 | 0x4 | 0x20 | 0x80),
           frame(WINDOW_UPDATE, 0xff, 0, struct.pack(">I", 10)))
    r = c.response(sid)
    assert r.status == 200 and r.body.decode().strip() == sha(body)


def test_reserved_bits_are_ignored(connect):
    """RFC 9113 4.1, 6.9: the reserved bit of the stream id and of the
    WINDOW_UPDATE increment MUST be ignored on receipt (an increment read
    with the bit would overflow the window)."""
    c = connect()
    c.send(frame(WINDOW_UPDATE, 0, 0x80000000, struct.pack(">I", 0x80000000 | 1000)))
    c.send(headers(1 | 0x80000000, encode(c.fields())))
    c.resp(1)
    r = c.response(1)
    assert r.status == 200
    c.expect_alive()


def test_client_rst_stream_closes_only_that_stream(connect):
    """RFC 9113 6.4, 5.4.2: after our RST_STREAM the server sends nothing more
    on that stream and never answers it with a RST_STREAM; the connection
    goes on."""
    c, sid = blocked_stream(connect)
    c.send(rst_stream(sid, E.CANCEL))
    c.send(settings((INITIAL_WINDOW_SIZE, 65535)))
    c.wait(lambda: c.settings_acked >= 2, what="SETTINGS ACK")
    r = c.expect_ok()
    assert r.status == 200
    assert not [f for f in c.frames if f.sid == sid and f.type in (DATA, RST_STREAM)], c.log()


@pytest.mark.parametrize("kind", ["PRIORITY", "HEADERS"])
def test_self_dependency(connect, kind):
    """RFC 9113 5.3.2 deprecates RFC 7540 priorities and drops 7540's rule
    that a stream depending on itself is a PROTOCOL_ERROR; 6.3/6.2 keep
    only the frame layout. So a self-dependency (PRIORITY frame on an open
    stream, or HEADERS with the PRIORITY flag) is either ignored (the
    request is served) or still answered with PROTOCOL_ERROR, as a stream or
    connection error (nghttp2 keeps 7540's check for HEADERS); nothing
    else."""
    c = connect()
    if kind == "PRIORITY":
        sid, opening = open_stream(c, "/index.html", "GET")
        c.send(opening + priority(sid, depends_on=sid) + data(sid, b"", end_stream=True))
    else:
        sid = c.new_sid()
        c.resp(sid)
        c.send(headers(sid, encode(c.fields()), depends_on=sid))
    r = c.resp(sid)
    c.wait(lambda: r.done or c.goaway is not None or c.closed, what=f"an answer on stream {sid}")
    if r.ended and r.reset is None:
        assert r.status == 200, c.log()
        c.expect_alive()
    else:
        c.expect_error(sid, E.PROTOCOL_ERROR)


# ---- 6.10 CONTINUATION ------------------------------------------------------------

def test_continuation_without_headers(connect):
    """RFC 9113 6.10: CONTINUATION not preceded by HEADERS/CONTINUATION
    without END_HEADERS: connection error PROTOCOL_ERROR."""
    c = connect()
    c.send(continuation(1, encode(c.fields())))
    c.expect_connection_error(E.PROTOCOL_ERROR)


def test_continuation_after_end_headers(connect):
    """RFC 9113 6.10: a CONTINUATION after a HEADERS that had END_HEADERS:
    connection error PROTOCOL_ERROR."""
    c = connect()
    sid, opening = open_stream(c)
    c.send(opening + continuation(sid, literal("x-more", "1")))
    c.expect_connection_error(E.PROTOCOL_ERROR)


@pytest.mark.parametrize("kind", ["PING", "SETTINGS", "DATA", "HEADERS-other-stream", "PRIORITY", "WINDOW_UPDATE",
                                  "unknown-type"])
def test_frame_interleaved_in_a_header_block(connect, kind):
    """RFC 9113 4.3, 6.2, 6.10: a field block is a contiguous sequence of
    frames; any other frame (any type, any stream, extension frames too) before
    its END_HEADERS is a connection error PROTOCOL_ERROR."""
    c = connect()
    block = encode(c.fields())
    sid = c.new_sid()
    other = {
        "PING": ping(),
        "SETTINGS": settings(),
        "DATA": data(sid, b"x"),
        "HEADERS-other-stream": headers(sid + 2, block),
        "PRIORITY": priority(sid + 2, depends_on=0),
        "WINDOW_UPDATE": window_update(0, 1000),
        "unknown-type": frame(0xfa, 0, 0, b"ext"),
    }[kind]
    c.send(headers(sid, block[:10], end_headers=False) + other + continuation(sid, block[10:]))
    c.expect_connection_error(E.PROTOCOL_ERROR)


def test_continuation_on_another_stream(connect):
    """RFC 9113 6.2, 6.10: the CONTINUATION of a header block on a different
    stream: connection error PROTOCOL_ERROR."""
    c = connect()
    block = encode(c.fields())
    c.send(headers(1, block[:10], end_headers=False) + continuation(3, block[10:]))
    c.expect_connection_error(E.PROTOCOL_ERROR)


def test_header_block_split_over_continuations(connect):
    """RFC 9113 6.10, 4.3: a field block split anywhere (even inside a
    string) across HEADERS and CONTINUATION frames, one of them empty, is
    decoded as one block."""
    c = connect()
    block = encode(c.fields(extra=[("x-long", "v" * 3000)]))
    sid = c.new_sid()
    c.send(headers(sid, block[:7], end_headers=False), continuation(sid, block[7:1500], end_headers=False),
           continuation(sid, b"", end_headers=False), continuation(sid, block[1500:]))
    c.resp(sid)
    assert c.response(sid).status == 200
    c.expect_ok()


# ---- 6.9 flow control ---------------------------------------------------------------

def test_window_update_zero_on_the_connection(connect):
    """RFC 9113 6.9: a WINDOW_UPDATE increment of 0 on the connection:
    connection error PROTOCOL_ERROR."""
    c = connect()
    c.send(window_update(0, 0))
    c.expect_connection_error(E.PROTOCOL_ERROR)


def test_window_update_zero_on_a_stream(connect):
    """RFC 9113 6.9: a WINDOW_UPDATE increment of 0 on a stream: stream error
    PROTOCOL_ERROR (or as a connection error, 5.4.1)."""
    c, sid = blocked_stream(connect)
    c.send(window_update(sid, 0))
    if c.expect_error(sid, E.PROTOCOL_ERROR) == "stream":
        c.send(settings((INITIAL_WINDOW_SIZE, 65535)))
        c.expect_ok()


def test_window_overflow_on_the_connection(connect):
    """RFC 9113 6.9.1: a WINDOW_UPDATE taking the connection window above
    2^31-1: connection error FLOW_CONTROL_ERROR."""
    c = connect()
    c.send(window_update(0, (1 << 31) - 1))
    c.expect_connection_error(E.FLOW_CONTROL_ERROR)


def test_window_overflow_on_a_stream(connect):
    """RFC 9113 6.9.1: a WINDOW_UPDATE taking a stream window above 2^31-1:
    stream error FLOW_CONTROL_ERROR (or as a connection error, 5.4.1)."""
    c = connect(settings_pairs=[(INITIAL_WINDOW_SIZE, 1)], auto_window=False)
    sid = c.request("/16k1.bin")
    c.wait(lambda: c.resp(sid).status is not None, what="the response HEADERS")
    # The stream window is 1 (or 0 once that byte is sent): overflow both ways.
    c.send(window_update(sid, (1 << 31) - 1), window_update(sid, (1 << 31) - 1))
    if c.expect_error(sid, E.FLOW_CONTROL_ERROR) == "stream":
        c.expect_ok()


def test_initial_window_size_change_overflowing_a_stream(connect):
    """RFC 9113 6.9.2: a SETTINGS_INITIAL_WINDOW_SIZE change that takes an
    open stream's window above 2^31-1 (here 65535 + 1000 raised by
    2^31-1 - 65535) is a connection error FLOW_CONTROL_ERROR."""
    c = connect()
    sid = c.new_sid()
    c.resp(sid)
    c.send(headers(sid, encode(c.fields())), window_update(sid, 1000),
           settings((INITIAL_WINDOW_SIZE, (1 << 31) - 1)))
    c.expect_connection_error(E.FLOW_CONTROL_ERROR)


def test_data_beyond_the_server_window(connect):
    """RFC 9113 6.9.1 (a sender MUST NOT exceed the receiver's window), 7
    (FLOW_CONTROL_ERROR: the peer violated flow control): one DATA frame
    beyond the stream window the server advertised (H2WindowSize 8192) is
    answered FLOW_CONTROL_ERROR, as a stream error or a connection error
    (5.4.1)."""
    c = connect()
    window = c.server_settings.get(INITIAL_WINDOW_SIZE, 65535)
    assert window == SERVER_WINDOW, c.server_settings
    sid, opening = open_stream(c)
    c.send(opening + data(sid, b"x" * (window + 1)))
    if c.expect_error(sid, E.FLOW_CONTROL_ERROR) == "stream":
        c.expect_ok()


def test_data_within_the_server_window_is_fine(connect, docroot):
    """RFC 9113 6.9: a body far larger than the server's window goes through
    as the server reopens it (control for the test above)."""
    c = connect()
    body = bytes(range(256)) * 200  # 51200 bytes, window 8192
    sid, opening = open_stream(c, "/cgi/sum.cgi")
    c.send(opening)
    sent, conn_window = 0, 65535
    stream_window = c.server_settings.get(INITIAL_WINDOW_SIZE, 65535)

    def on_update():
        nonlocal conn_window, stream_window
        for f in c.frames[seen[0]:]:
            if f.type == WINDOW_UPDATE:
                inc = struct.unpack(">I", f.payload)[0]
                if f.sid == 0:
                    conn_window += inc
                elif f.sid == sid:
                    stream_window += inc
        seen[0] = len(c.frames)

    seen = [0]
    on_update()
    while sent < len(body):
        n = min(stream_window, conn_window, 16384, len(body) - sent)
        if n <= 0:
            c.read_frame(5)
            on_update()
            continue
        c.send(data(sid, body[sent:sent + n], end_stream=sent + n == len(body)))
        sent += n
        stream_window -= n
        conn_window -= n
    r = c.response(sid)
    assert r.status == 200 and r.body.decode().strip() == sha(body)


@pytest.mark.parametrize("how", ["window_update", "settings"])
def test_zero_window_gets_no_data_until_opened(connect, docroot, how):
    """RFC 9113 6.9, 6.9.2: with our stream window at 0 the server sends the
    response HEADERS but no DATA; a WINDOW_UPDATE of 1000 lets exactly 1000
    octets through, then the rest (or a new SETTINGS_INITIAL_WINDOW_SIZE
    opens the window of the open stream)."""
    c, sid = blocked_stream(connect)
    r = c.resp(sid)
    c.drain(0.3)
    assert len(r.body) == 0 and not r.ended, c.log()
    if how == "window_update":
        c.send(window_update(sid, 1000))
        c.wait(lambda: len(r.body) >= 1000, what="1000 octets")
        c.drain(0.3)
        assert len(r.body) == 1000 and not r.ended, c.log()
        c.send(window_update(sid, 16385 - 1000))
    else:
        c.send(settings((INITIAL_WINDOW_SIZE, 65535)))
    c.wait(lambda: r.done, what="the rest of the body")
    assert r.reset is None and sha(r.body) == docroot.sha("16k1.bin")


def test_connection_window_limits_data(connect, docroot):
    """RFC 9113 6.9.1: with a large stream window the connection window
    (65535) still bounds what the server sends until we update it."""
    c = connect(settings_pairs=[(INITIAL_WINDOW_SIZE, 1 << 20)], auto_window=False)
    sid = c.request("/100k.bin")
    r = c.resp(sid)
    c.wait(lambda: len(r.body) >= 65535 or r.done, what="65535 octets")
    c.drain(0.3)
    assert len(r.body) == 65535 and not r.done, (len(r.body), c.log())
    c.send(window_update(0, 1 << 20))
    c.wait(lambda: r.done, what="the rest of the body")
    assert r.reset is None and sha(r.body) == docroot.sha("100k.bin")


# ---- 6.1, 6.2 padding -------------------------------------------------------------------

def test_data_padding_too_long(connect):
    """RFC 9113 6.1: a DATA Pad Length equal to (or above) the frame payload
    length: connection error PROTOCOL_ERROR."""
    c = connect()
    sid, opening = open_stream(c)
    c.send(opening + frame(DATA, PADDED | END_STREAM, sid, bytes([5]) + b"abcd"))
    c.expect_connection_error(E.PROTOCOL_ERROR)


def test_headers_padding_too_long(connect):
    """RFC 9113 6.2: a HEADERS Pad Length equal to (or above) the frame
    payload length: connection error PROTOCOL_ERROR."""
    c = connect()
    block = encode(c.fields())
    c.send(frame(HEADERS, PADDED | END_HEADERS | END_STREAM, 1, bytes([len(block) + 1]) + block))
    c.expect_connection_error(E.PROTOCOL_ERROR)


def test_valid_padding_is_accepted(connect):
    """RFC 9113 6.1, 6.2: padded HEADERS and DATA (0 to 255 octets of
    padding, a frame of padding only) are accepted; padding is not data."""
    c = connect()
    sid = c.new_sid()
    c.send(headers(sid, encode(c.fields()), pad=200))
    c.resp(sid)
    assert c.response(sid).status == 200
    body = b"padded body " * 50
    sid = c.new_sid()
    c.resp(sid)
    c.send(headers(sid, encode(c.fields("/cgi/sum.cgi", "POST")), end_stream=False, pad=0),
           data(sid, body[:100], pad=0), data(sid, b"", pad=255), data(sid, body[100:], pad=17, end_stream=True))
    r = c.response(sid)
    assert r.status == 200 and r.body.decode().strip() == sha(body)


# ---- 8.1-8.3 malformed requests: stream errors ----------------------------------------

def _drop(fields, name):
    return [f for f in fields if f[0] != name]


def _malformed(c, case):
    base = c.fields()
    m, s, a, p = base
    return {
        "missing-method": _drop(base, ":method"),
        "missing-scheme": _drop(base, ":scheme"),
        "missing-path": _drop(base, ":path"),
        "empty-path": [m, s, a, (":path", "")],
        "pseudo-after-regular": [m, s, a, ("x-a", "1"), p],
        "unknown-pseudo": base + [(":foo", "bar")],
        "response-pseudo": base + [(":status", "200")],
        "duplicate-path": base + [(":path", "/other")],
        "duplicate-method": [m, m, s, a, p],
        "uppercase-name": base + [("X-Upper", "1")],
        "space-in-name": base + [("x a", "1")],
        "colon-in-name": base + [("x:a", "1")],
        "connection": base + [("connection", "keep-alive")],
        "keep-alive": base + [("keep-alive", "timeout=5")],
        "proxy-connection": base + [("proxy-connection", "keep-alive")],
        "transfer-encoding": base + [("transfer-encoding", "chunked")],
        "upgrade": base + [("upgrade", "h2c")],
        "te-gzip": base + [("te", "gzip")],
        "te-trailers-gzip": base + [("te", "trailers, gzip")],
        "value-cr": base + [("x-a", "a\rb")],
        "value-lf": base + [("x-a", "a\nb")],
        "value-nul": base + [("x-a", "a\0b")],
        "value-leading-space": base + [("x-a", " a")],
        "value-trailing-tab": base + [("x-a", "a\t")],
        "value-control": base + [("x-a", "a\x01b")],
        "value-del": base + [("x-a", "a\x7fb")],
        "path-relative": [m, s, a, (":path", "index.html")],
        "path-absolute-uri": [m, s, a, (":path", "http://other.example/index.html")],
        "path-asterisk-get": [m, s, a, (":path", "*")],
        "pseudo-value-lf": [m, s, a, (":path", "/index.html\nx")],
        "path-space": [m, s, a, (":path", "/index.html x")],
        "path-tab": [m, s, a, (":path", "/index.html\tx")],
        "scheme-space": [m, (":scheme", "http x"), a, p],
        "scheme-leading-digit": [m, (":scheme", "1http"), a, p],
        "connect-with-path": [(":method", "CONNECT"), s, a, p],
        "connect-without-authority": [(":method", "CONNECT")],
    }[case]


MALFORMED = ["missing-method", "missing-scheme", "missing-path", "empty-path", "pseudo-after-regular",
             "unknown-pseudo", "response-pseudo", "duplicate-path", "duplicate-method", "uppercase-name",
             "space-in-name", "colon-in-name", "connection", "keep-alive", "proxy-connection",
             "transfer-encoding", "upgrade", "te-gzip", "te-trailers-gzip", "value-cr", "value-lf", "value-nul",
             "value-leading-space", "value-trailing-tab", "value-control", "value-del", "path-relative",
             "path-absolute-uri", "path-asterisk-get", "pseudo-value-lf", "path-space", "path-tab",
             "scheme-space", "scheme-leading-digit", "connect-with-path", "connect-without-authority"]


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_request_is_a_stream_error(connect, case):
    """RFC 9113 8.1.1, 8.2.1 (field name/value validation), 8.2.2
    (connection-specific fields, TE; and no control byte but HTAB in a
    value, RFC 9110 5.5, which httpd's HTTP/1.1 answers with 400), 8.3
    (pseudo-header fields), 8.3.1 (:path an absolute path, or * for
    OPTIONS, without spaces or control bytes; :scheme a URI scheme), 8.5
    (CONNECT): a malformed request is a stream error
    PROTOCOL_ERROR (RST_STREAM; a response MAY come first), and the next
    request on the connection is served."""
    c = connect()
    sid = c.new_sid()
    c.resp(sid)
    c.send(headers(sid, encode(_malformed(c, case))))
    c.expect_stream_error(sid, E.PROTOCOL_ERROR)
    c.expect_ok()


@pytest.mark.parametrize("case", ["fewer", "more", "none", "fewer-then-trailers"])
def test_content_length_mismatch(connect, case):
    """RFC 9113 8.1.1: content-length not equal to the DATA payload sum
    (fewer octets, more octets, no DATA at all, or fewer octets and then
    trailers that end the stream): stream error PROTOCOL_ERROR; the
    connection goes on."""
    c = connect()
    sid = c.new_sid()
    c.resp(sid)
    if case == "none":
        c.send(headers(sid, encode(c.fields(method="GET", extra=[("content-length", "5")]))))
    elif case == "fewer-then-trailers":
        c.send(headers(sid, encode(c.fields("/nope", "POST", extra=[("content-length", "10")])), end_stream=False),
               data(sid, b"hello"), headers(sid, encode([("x-trailer", "1")]), end_stream=True))
    else:
        cl = {"fewer": "10", "more": "3"}[case]
        c.send(headers(sid, encode(c.fields("/nope", "POST", extra=[("content-length", cl)])), end_stream=False),
               data(sid, b"hello", end_stream=True))
    c.expect_stream_error(sid, E.PROTOCOL_ERROR)
    c.expect_ok()


@pytest.mark.parametrize("case", ["pseudo-header", "no-end-stream", "over-the-limits"])
def test_malformed_trailers(connect, case):
    """RFC 9113 8.1: trailers MUST NOT contain pseudo-header fields, and a
    HEADERS after the request head without END_STREAM is malformed: stream
    error PROTOCOL_ERROR; the connection goes on. Trailers over
    LimitRequestFieldSize (8190) are refused the same way: they were
    dropped, and the body handed on as complete without them."""
    c = connect()
    sid, opening = open_stream(c)
    if case == "pseudo-header":
        trailer = headers(sid, encode([(":path", "/x"), ("x-trailer", "1")]), end_stream=True)
    elif case == "over-the-limits":
        trailer = headers(sid, encode([("x-trailer", "1"), ("x-checksum", "c" * 9000)]), end_stream=True)
    else:
        trailer = headers(sid, encode([("x-trailer", "1")]), end_stream=False)
    c.send(opening + data(sid, b"hello") + trailer)
    c.expect_stream_error(sid, E.PROTOCOL_ERROR)
    c.expect_ok()


def test_valid_trailers_te_cookies_and_options_star_are_accepted(connect):
    """RFC 9113 8.1, 8.2.2, 8.2.3, 8.3.1: well-formed trailers, `te:
    trailers`, split cookie fields and `OPTIONS *` are accepted (controls for
    the cases above)."""
    c = connect()
    sid, opening = open_stream(c, "/cgi/sum.cgi")
    c.send(opening + data(sid, b"hello") + headers(sid, encode([("x-trailer", "1")]), end_stream=True))
    r = c.response(sid)
    assert r.status == 200 and r.body.decode().strip() == sha(b"hello")
    sid = c.new_sid()
    c.resp(sid)
    c.send(headers(sid, encode(c.fields(extra=[("te", "trailers"), ("cookie", "a=1"), ("cookie", "b=2")]))))
    assert c.response(sid).status == 200
    sid = c.new_sid()
    c.resp(sid)
    m, s, a, _ = c.fields()
    c.send(headers(sid, encode([(":method", "OPTIONS"), s, a, (":path", "*")])))
    assert c.response(sid).status == 200  # as httpd answers it over HTTP/1.1


# ---- RFC 7541 HPACK decoding errors ----------------------------------------------------

def _hpack_case(c, case):
    good = encode(c.fields())
    first, rest = literal(":method", "GET"), encode(c.fields()[1:])
    return {
        "index-0": good + b"\x80",
        "index-beyond-tables": good + hpack_int(62, 7, 0x80),
        "name-index-beyond-tables": good + hpack_int(70, 4, 0x00) + hpack_str("v"),
        "size-update-above-setting": hpack_int(4097, 5, 0x20) + good,
        "size-update-after-a-field": first + hpack_int(0, 5, 0x20) + rest,
        "huffman-eos": good + b"\x00" + hpack_str("x-h") + b"\x84\xff\xff\xff\xff",
        "huffman-padding-too-long": good + b"\x00" + hpack_str("x-h") + b"\x82\x1f\xff",
        "huffman-padding-not-ones": good + b"\x00" + hpack_str("x-h") + b"\x81\x18",
        "integer-overflow-index": good + b"\xff" + b"\xff" * 9 + b"\x7f",
        "integer-overflow-string-length": good + b"\x00\x7f" + b"\xff" * 9 + b"\x7f",
        "truncated-block": good + b"\x00\x05x-abc\x0aab",
    }[case]


HPACK_ERRORS = ["index-0", "index-beyond-tables", "name-index-beyond-tables", "size-update-above-setting",
                "size-update-after-a-field", "huffman-eos", "huffman-padding-too-long", "huffman-padding-not-ones",
                "integer-overflow-index", "integer-overflow-string-length", "truncated-block"]


@pytest.mark.parametrize("case", HPACK_ERRORS)
def test_hpack_decoding_error(connect, case):
    """RFC 7541 2.3.3/6.1 (index 0 or beyond both tables), 4.2/6.3 (a size
    update above SETTINGS_HEADER_TABLE_SIZE, or not at the start of a
    block), 5.2 (Huffman: EOS, padding over 7 bits or not all ones), 5.1
    (integer overflow), a block ending inside a representation: RFC 9113
    4.3 makes every decoding error a connection error COMPRESSION_ERROR."""
    c = connect()
    assert c.server_settings.get(HEADER_TABLE_SIZE, 4096) == 4096, c.server_settings
    c.send(headers(c.new_sid(), _hpack_case(c, case)))
    c.expect_connection_error(E.COMPRESSION_ERROR)


def test_hpack_valid_representations(connect):
    """RFC 7541: static table references, Huffman strings, a size update at
    the start of a block, and dynamic table insertion then reference (index
    62) all decode: three requests served."""
    c = connect()
    sid = c.new_sid()
    c.resp(sid)
    scheme_idx = 0x87 if c.tls else 0x86
    # :method GET (2), :scheme (6/7), :path / (4); :authority literal with
    # incremental indexing, name index 1 (becomes dynamic entry 62).
    # Two size updates at the start (RFC 7541 4.2): 0 (empties the table)
    # then back to 4096.
    block = hpack_int(0, 5, 0x20) + hpack_int(4096, 5, 0x20) + bytes([0x82, scheme_idx, 0x84]) + \
        hpack_int(1, 6, 0x40) + \
        hpack_str(f"127.0.0.1:{c.port}", huffman=True)
    c.send(headers(sid, block))
    assert c.response(sid).status == 200
    sid = c.new_sid()
    c.resp(sid)
    c.send(headers(sid, bytes([0x82, scheme_idx, 0x84, 0x80 | 62])))
    assert c.response(sid).status == 200
    sid = c.new_sid()
    c.resp(sid)
    c.send(headers(sid, encode(c.fields(), huffman=True)))
    assert c.response(sid).status == 200


# ---- 6.8 GOAWAY from the client --------------------------------------------------------

def test_goaway_from_the_client(connect, docroot):
    """RFC 9113 6.8: after our GOAWAY the server finishes the stream already
    open (here: blocked on flow control until after the GOAWAY) in full,
    without error; the module then closes the idle connection with a
    GOAWAY NO_ERROR of its own that names that stream as the last it
    processed (RFC 9113 6.8: for a request the client sent after its
    GOAWAY, it learns that it was not processed)."""
    c, sid = blocked_stream(connect)
    c.send(goaway(0, E.NO_ERROR), window_update(sid, 16385))
    r = c.resp(sid)
    c.wait(lambda: r.done, what="the open stream's response")
    assert r.reset is None and sha(r.body) == docroot.sha("16k1.bin"), c.log()
    assert c.wait_closed(), f"connection still open after our GOAWAY; {c.log()}"
    assert c.goaway is not None and c.goaway.error_code == E.NO_ERROR and c.goaway.last_sid == sid, c.log()


def test_the_log_says_why_a_connection_ended(make_server):
    """At LogLevel http2:debug, the end of a session names the GOAWAY sent
    and its reason (for a protocol error, nghttp2's), and the client's: an
    admin can tell a misbehaving client from a server problem, as with the
    stock module's log."""
    srv = make_server(loglevel="warn http2:debug").start()
    c = rawh2.Conn(srv.port)
    c.send(data(0, b"x"))  # DATA on stream 0: RFC 9113 6.1
    c.expect_connection_error(E.PROTOCOL_ERROR)
    c.close()
    c = rawh2.Conn(srv.port)
    c.send(goaway(0, E.ENHANCE_YOUR_CALM))
    time.sleep(0.3)
    c.close()
    deadline = time.time() + 10
    want = ['GOAWAY sent: PROTOCOL_ERROR, last stream 0 ("', "GOAWAY received: ENHANCE_YOUR_CALM, last stream 0"]
    while not all(w in srv.read_error_log() for w in want):
        assert time.time() < deadline, srv.read_error_log()[-2000:]
        time.sleep(0.1)
