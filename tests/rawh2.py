"""Raw HTTP/2 frames for conformance tests: build any frame byte by byte
(including invalid ones), a stateless HPACK encoder that writes exactly what
it is given, and a connection that reads frames and records what the server
sent (GOAWAY, RST_STREAM, responses) so a test can assert the exact error.

Only server HEADERS are decoded with `hpack` (the server's dynamic table must
be followed); everything the client sends is built here."""
import socket
import ssl
import struct
import time

import hpack
from h2.errors import ErrorCodes
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types (RFC 9113 6).
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
TYPE_NAMES = {DATA: "DATA", HEADERS: "HEADERS", PRIORITY: "PRIORITY", RST_STREAM: "RST_STREAM",
              SETTINGS: "SETTINGS", PUSH_PROMISE: "PUSH_PROMISE", PING: "PING", GOAWAY: "GOAWAY",
              WINDOW_UPDATE: "WINDOW_UPDATE", CONTINUATION: "CONTINUATION"}

# Flags.
END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20

# Settings (RFC 9113 6.5.2).
HEADER_TABLE_SIZE, ENABLE_PUSH, MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE, \
    MAX_HEADER_LIST_SIZE = range(1, 7)


def code_name(code):
    if code is None:
        return "nothing"
    try:
        return ErrorCodes(code).name
    except ValueError:
        return f"0x{code:x}"


# ---- frames -------------------------------------------------------------------

def frame(ftype, flags, sid, payload=b"", length=None):
    """Any frame; `length` overrides the length field (to lie about it)."""
    n = len(payload) if length is None else length
    return struct.pack(">I", n)[1:] + bytes([ftype, flags]) + struct.pack(">I", sid) + payload


def settings(*pairs, ack=False, sid=0):
    return frame(SETTINGS, ACK if ack else 0, sid, b"".join(struct.pack(">HI", k, v) for k, v in pairs))


def ping(payload=b"h2rsconf", ack=False, sid=0, flags=0):
    return frame(PING, (ACK if ack else 0) | flags, sid, payload)


def window_update(sid, increment):
    return frame(WINDOW_UPDATE, 0, sid, struct.pack(">I", increment))


def rst_stream(sid, code):
    return frame(RST_STREAM, 0, sid, struct.pack(">I", code))


def goaway(last_sid, code, debug=b"", sid=0):
    return frame(GOAWAY, 0, sid, struct.pack(">II", last_sid, code) + debug)


def priority(sid, depends_on=0, weight=16, exclusive=False):
    return frame(PRIORITY, 0, sid, struct.pack(">IB", depends_on | (0x80000000 if exclusive else 0), weight - 1))


def padded(payload, pad_length, declared=None):
    """PADDED payload: Pad Length byte (or `declared`), payload, zeros."""
    return bytes([pad_length if declared is None else declared]) + payload + b"\0" * pad_length


def data(sid, payload, end_stream=False, pad=None, flags=0):
    f = flags | (END_STREAM if end_stream else 0)
    if pad is not None:
        payload, f = padded(payload, pad), f | PADDED
    return frame(DATA, f, sid, payload)


def headers(sid, block, end_stream=True, end_headers=True, pad=None, depends_on=None, flags=0):
    f = flags | (END_STREAM if end_stream else 0) | (END_HEADERS if end_headers else 0)
    if depends_on is not None:
        block = struct.pack(">IB", depends_on, 15) + block
        f |= PRIORITY_FLAG
    if pad is not None:
        block, f = padded(block, pad), f | PADDED
    return frame(HEADERS, f, sid, block)


def continuation(sid, block, end_headers=True):
    return frame(CONTINUATION, END_HEADERS if end_headers else 0, sid, block)


# ---- HPACK (RFC 7541), written by hand -----------------------------------------

def hpack_int(value, prefix_bits, first=0):
    """An HPACK integer with an N-bit prefix; `first` holds the pattern bits."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = [first | limit]
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_huffman = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)


def hpack_str(s, huffman=False):
    s = s.encode() if isinstance(s, str) else s
    if huffman:
        s = _huffman.encode(s)
        return hpack_int(len(s), 7, 0x80) + s
    return hpack_int(len(s), 7) + s


def literal(name, value, huffman=False):
    """Literal field line without indexing, new name (RFC 7541 6.2.2):
    touches no table, so a block can be malformed without desynchronising
    the server's decoder."""
    return b"\x00" + hpack_str(name, huffman) + hpack_str(value, huffman)


def encode(fields, huffman=False):
    return b"".join(literal(n, v, huffman) for n, v in fields)


def request_fields(path="/index.html", method="GET", scheme="http", authority="127.0.0.1", extra=()):
    fields = [(":method", method), (":scheme", scheme), (":authority", authority), (":path", path)]
    return fields + list(extra)


# ---- h2c Upgrade (HTTP/1.1) ---------------------------------------------------------

def upgrade_request(port, path="/1k.bin", settings="AAMAAABkAAQAAP__", extra=b"", method=b"GET", body=b"",
                    version=b"HTTP/1.1"):
    """Sends a request asking for h2c (HTTP/1.1 unless `version`); returns
    the socket."""
    settings = settings.encode() if isinstance(settings, str) else settings
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(method + b" " + path.encode() + b" " + version + b"\r\nHost: 127.0.0.1\r\n"
              b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
              b"HTTP2-Settings: " + settings + b"\r\n" + extra + b"\r\n" + body)
    return s


def read_http1_head(s):
    """Reads until the end of a response head (or EOF)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = s.recv(65536)
        if not d:
            break
        buf += d
    return buf


# ---- received frames -------------------------------------------------------------

class Frame:
    def __init__(self, ftype, flags, sid, payload):
        self.type, self.flags, self.sid, self.payload = ftype, flags, sid, payload

    @property
    def error_code(self):
        if self.type == RST_STREAM:
            return struct.unpack(">I", self.payload[:4])[0]
        if self.type == GOAWAY:
            return struct.unpack(">I", self.payload[4:8])[0]
        return None

    @property
    def last_sid(self):
        return struct.unpack(">I", self.payload[:4])[0] & 0x7FFFFFFF

    def settings(self):
        return [struct.unpack(">HI", self.payload[i:i + 6]) for i in range(0, len(self.payload) - 5, 6)]

    def __repr__(self):
        name = TYPE_NAMES.get(self.type, f"type{self.type:#x}")
        extra = ""
        if self.type == GOAWAY:
            extra = f" last={self.last_sid} {code_name(self.error_code)} {self.payload[8:][:80]!r}"
        elif self.type == RST_STREAM:
            extra = f" {code_name(self.error_code)}"
        elif self.type == SETTINGS:
            extra = " ACK" if self.flags & ACK else f" {self.settings()}"
        elif self.type == WINDOW_UPDATE:
            extra = f" +{struct.unpack('>I', self.payload)[0]}"
        elif self.type == DATA:
            extra = f" len={len(self.payload)}" + (" END_STREAM" if self.flags & END_STREAM else "")
        elif self.type == HEADERS:
            extra = (" END_STREAM" if self.flags & END_STREAM else "")
        elif self.type == PING:
            extra = (" ACK " if self.flags & ACK else " ") + repr(self.payload)
        return f"{name}({self.sid}{extra})"


class Response:
    def __init__(self, sid):
        self.sid = sid
        self.status = None
        self.headers = []
        self.body = bytearray()
        self.ended = False
        self.reset = None  # RST_STREAM error code
        self.data_frames = []  # sizes

    @property
    def done(self):
        return self.ended or self.reset is not None


class ProtocolFailure(AssertionError):
    pass


class Conn:
    """One client connection. With `handshake`, sends the preface and SETTINGS
    (`settings` pairs), waits for the server's SETTINGS and acknowledges it
    at once, so the server's own settings apply to everything that follows.
    Received frames are kept in `frames` (for messages); `auto_window`
    returns the window for every DATA frame received."""

    def __init__(self, port, tls=False, settings_pairs=(), handshake=True, timeout=5, auto_window=True,
                 scheme=None):
        self.tls = tls
        self.scheme = scheme or ("https" if tls else "http")
        self.port = port
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            ctx.set_alpn_protocols(["h2"])
            self.sock = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
            assert self.sock.selected_alpn_protocol() == "h2"
        else:
            self.sock = raw
        self.timeout = timeout
        self.buf = bytearray()
        self.frames = []
        self.closed = False
        self.goaway = None
        self.server_settings = {}
        self.settings_acked = 0
        self.pings = []
        self.responses = {}
        self.decoder = hpack.Decoder()
        self.decoder.max_header_list_size = 1 << 20
        self._block = None  # (sid, flags, bytes) of a header block being received
        self.auto_window = auto_window
        self.next_sid = 1
        self.server_settings_seen = False
        if handshake:
            self.send(PREFACE + settings(*settings_pairs))
            self.wait(lambda: self.server_settings_seen, what="the server's SETTINGS")

    # -- I/O --
    def send(self, *chunks):
        try:
            self.sock.sendall(b"".join(chunks))
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
            # The server may already have closed after an error: what it sent
            # before is still readable.
            pass

    def _recv(self, timeout):
        self.sock.settimeout(max(timeout, 0.001))
        try:
            d = self.sock.recv(1 << 16)
        except (socket.timeout, TimeoutError):
            return None
        except ssl.SSLWantReadError:
            return None
        except (ConnectionResetError, BrokenPipeError, ssl.SSLError, OSError) as e:
            if "timed out" in str(e):
                return None
            d = b""
        if not d:
            self.closed = True
        return d

    def read_frame(self, timeout=None):
        """The next frame, None at EOF; raises TimeoutError."""
        deadline = time.time() + (self.timeout if timeout is None else timeout)
        while True:
            if len(self.buf) >= 9:
                n = int.from_bytes(self.buf[:3], "big")
                if len(self.buf) >= 9 + n:
                    f = Frame(self.buf[3], self.buf[4], int.from_bytes(self.buf[5:9], "big") & 0x7FFFFFFF,
                              bytes(self.buf[9:9 + n]))
                    del self.buf[:9 + n]
                    self.frames.append(f)
                    self._handle(f)
                    return f
            if self.closed:
                return None
            left = deadline - time.time()
            if left <= 0:
                raise TimeoutError
            d = self._recv(left)
            if d:
                self.buf.extend(d)

    def _handle(self, f):
        if f.type == SETTINGS and not f.flags & ACK:
            self.server_settings.update(dict(f.settings()))
            self.server_settings_seen = True
            self.send(settings(ack=True))
        elif f.type == SETTINGS:
            self.settings_acked += 1
        elif f.type == PING and f.flags & ACK:
            self.pings.append(f.payload)
        elif f.type == GOAWAY:
            self.goaway = f
        elif f.type == RST_STREAM:
            self.resp(f.sid).reset = f.error_code
        elif f.type in (HEADERS, CONTINUATION):
            if f.type == HEADERS:
                p = f.payload
                if f.flags & PADDED:
                    p = p[1:len(p) - p[0]]
                if f.flags & PRIORITY_FLAG:
                    p = p[5:]
                self._block = (f.sid, f.flags, bytearray(p))
            elif self._block:
                self._block[2].extend(f.payload)
            if self._block and f.flags & END_HEADERS:
                sid, flags, block = self._block
                self._block = None
                fields = self.decoder.decode(bytes(block), raw=True)
                r = self.resp(sid)
                status = dict(fields).get(b":status")
                if status and not status.startswith(b"1"):
                    r.status = int(status)
                    r.headers = fields
                if flags & END_STREAM:
                    r.ended = True
        elif f.type == DATA:
            r = self.resp(f.sid)
            p = f.payload
            if f.flags & PADDED:
                p = p[1:len(p) - p[0]]
            r.body.extend(p)
            r.data_frames.append(len(f.payload))
            if f.flags & END_STREAM:
                r.ended = True
            if self.auto_window and f.payload:
                self.send(window_update(0, len(f.payload)),
                          b"" if r.ended else window_update(f.sid, len(f.payload)))

    def resp(self, sid):
        if sid not in self.responses:
            self.responses[sid] = Response(sid)
        return self.responses[sid]

    def log(self):
        tail = self.frames[-12:]
        return f"frames received: {tail}" + (" then EOF" if self.closed else "")

    def wait(self, pred, timeout=None, what="the expected frames"):
        """Reads frames until pred() holds; fails at EOF or timeout."""
        deadline = time.time() + (self.timeout if timeout is None else timeout)
        while not pred():
            left = deadline - time.time()
            try:
                if left <= 0:
                    raise TimeoutError
                f = self.read_frame(left)
            except TimeoutError:
                raise ProtocolFailure(f"timed out waiting for {what}; {self.log()}") from None
            if f is None and not pred():
                raise ProtocolFailure(f"connection closed before {what}; {self.log()}")

    def drain(self, timeout):
        """Reads whatever arrives for `timeout` seconds (or until EOF)."""
        deadline = time.time() + timeout
        while not self.closed:
            left = deadline - time.time()
            if left <= 0:
                return
            try:
                self.read_frame(left)
            except TimeoutError:
                return

    def wait_closed(self, timeout=None):
        """Reads until EOF; returns False if the server kept it open."""
        deadline = time.time() + (self.timeout if timeout is None else timeout)
        while not self.closed:
            left = deadline - time.time()
            if left <= 0:
                return False
            try:
                self.read_frame(left)
            except TimeoutError:
                return False
        return True

    # -- assertions --
    def expect_connection_error(self, code):
        """RFC 9113 5.4.1: GOAWAY with `code`, then the server closes."""
        self.wait(lambda: self.goaway is not None or self.closed, what="GOAWAY")
        assert self.goaway is not None, f"expected GOAWAY {code_name(code)}, got none; {self.log()}"
        assert self.goaway.error_code == code, \
            f"expected GOAWAY {code_name(code)}, got {self.goaway!r}; {self.log()}"
        assert self.wait_closed(), f"the server did not close the connection after GOAWAY; {self.log()}"
        return self.goaway

    def expect_stream_error(self, sid, code):
        """RFC 9113 5.4.2: RST_STREAM on `sid` with `code`, no GOAWAY."""
        self.wait(lambda: self.resp(sid).done or self.goaway is not None or self.closed,
                  what=f"RST_STREAM on stream {sid}")
        if self.resp(sid).reset is None and self.goaway is None and not self.closed:
            # A response may come first (RFC 9113 8.1.1): the reset can follow.
            deadline = time.time() + 0.5
            while self.resp(sid).reset is None and self.goaway is None and not self.closed \
                    and time.time() < deadline:
                try:
                    self.read_frame(deadline - time.time())
                except TimeoutError:
                    break
        assert self.goaway is None, \
            f"expected RST_STREAM({sid}) {code_name(code)}, got a connection error {self.goaway!r}; {self.log()}"
        got = self.resp(sid).reset
        assert got == code, f"expected RST_STREAM({sid}) {code_name(code)}, got {code_name(got)}; {self.log()}"

    def expect_error(self, sid, code):
        """A stream error on `sid` with `code`, or the same code as a
        connection error (RFC 9113 5.4.1: an endpoint MAY treat a stream error
        as a connection error). Returns "stream" or "connection"."""
        self.wait(lambda: self.resp(sid).done or self.goaway is not None or self.closed,
                  what=f"RST_STREAM on stream {sid} or GOAWAY")
        if self.resp(sid).reset is not None and (self.goaway is None or self.goaway.error_code == 0):
            got = self.resp(sid).reset
            assert got == code, f"expected {code_name(code)} on stream {sid}, got RST_STREAM {code_name(got)}; " \
                                f"{self.log()}"
            return "stream"
        assert self.goaway is not None, f"expected {code_name(code)}, the connection closed without it; {self.log()}"
        assert self.goaway.error_code == code, \
            f"expected {code_name(code)} (stream or connection), got {self.goaway!r}; {self.log()}"
        assert self.wait_closed(), f"the server did not close the connection after GOAWAY; {self.log()}"
        return "connection"

    def expect_alive(self):
        """A PING is answered: the connection works and no error came."""
        payload = b"alive%03d" % (len(self.pings) % 1000)
        payload = payload[:8].ljust(8, b"_")
        self.send(ping(payload))
        self.wait(lambda: payload in self.pings or self.goaway is not None, what="the PING ACK")
        assert self.goaway is None, f"unexpected {self.goaway!r}; {self.log()}"

    # -- requests --
    def new_sid(self):
        sid = self.next_sid
        self.next_sid += 2
        return sid

    def fields(self, path="/index.html", method="GET", extra=()):
        return request_fields(path, method, self.scheme, f"127.0.0.1:{self.port}", extra)

    def request(self, path="/index.html", method="GET", extra=(), end_stream=True, sid=None, body=None):
        sid = sid or self.new_sid()
        self.send(headers(sid, encode(self.fields(path, method, extra)), end_stream=end_stream and body is None),
                  data(sid, body, end_stream=end_stream) if body is not None else b"")
        self.resp(sid)
        return sid

    def response(self, sid, timeout=None):
        r = self.resp(sid)
        self.wait(lambda: r.done, timeout=timeout, what=f"the response on stream {sid}")
        assert r.reset is None, f"stream {sid} was reset with {code_name(r.reset)}; {self.log()}"
        return r

    def expect_ok(self, path="/index.html"):
        """A fresh request on this connection is answered 200."""
        r = self.response(self.request(path))
        assert r.status == 200, (r.status, self.log())
        return r

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass
