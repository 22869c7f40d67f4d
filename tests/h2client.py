"""A frame-level HTTP/2 client on Python's h2 (hyper-h2), for tests that
need control over frames: SETTINGS/PING acks, resets, malformed requests,
many concurrent streams with checksums."""
import socket
import struct
import time

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
from hyperframe import frame as hf


class Stream:
    def __init__(self, sid):
        self.id = sid
        self.status = None
        self.headers = []
        self.interim = []
        self.data = bytearray()
        self.trailers = []
        self.ended = False
        self.reset = None  # error code of a RST_STREAM

    @property
    def done(self):
        return self.ended or self.reset is not None

    def header(self, name):
        name = name.lower().encode() if isinstance(name, str) else name
        for n, v in self.headers:
            if n == name:
                return v.decode()
        return None


def assert_cut_after_head(st, code=h2.errors.ErrorCodes.INTERNAL_ERROR):
    """The response's head (200) came, then RST_STREAM `code` instead of
    END_STREAM, so the client cannot take the body for complete. Returns
    how many body bytes came before the reset."""
    assert st.status == 200, st.status
    assert st.reset == code and not st.ended, (st.reset, st.ended, len(st.data))
    return len(st.data)


def tls_socket(port, host="127.0.0.1", server_name=None, alpn=("h2",), max_version=None, ciphers=None):
    """A TLS connection (certificates not verified) offering `alpn`."""
    import ssl
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    if max_version:
        ctx.maximum_version = max_version
    if ciphers:
        ctx.set_ciphers(ciphers)
    raw = socket.create_connection((host, port), timeout=10)
    return ctx.wrap_socket(raw, server_hostname=server_name or host)


def upgraded_client(port, path="/1k.bin", **kwargs):
    """An H2Client (`kwargs` for it) on a connection upgraded to h2c by an
    HTTP/1.1 GET of `path`, whose response is stream 1 (`streams[1]`)."""
    from rawh2 import read_http1_head, upgrade_request
    s = upgrade_request(port, path=path)
    head = read_http1_head(s)
    assert head.startswith(b"HTTP/1.1 101"), head[:200]
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_upgrade_connection()
    s.sendall(conn.data_to_send())
    client = H2Client(port, sock=s, conn=conn, **kwargs)
    client.streams[1] = Stream(1)
    for ev in conn.receive_data(head.split(b"\r\n\r\n", 1)[1]):
        client.handle(ev)
    return client


class H2Client:
    def __init__(self, port, validate=True, settings=None, auto_ack_data=True, host="127.0.0.1", sock=None,
                 authority=None, survive_goaway=False, conn=None):
        """`conn`: a python-h2 connection already under way on `sock` (one
        that took over after an h2c Upgrade); else a new one is started."""
        self.sock = sock or socket.create_connection((host, port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.default_authority = authority
        # Stream ids in the order their responses ended.
        self.ended_order = []
        if conn is None:
            cfg = h2.config.H2Configuration(
                client_side=True,
                header_encoding=None,
                validate_outbound_headers=validate,
                normalize_outbound_headers=validate,
                validate_inbound_headers=True,
            )
            conn = h2.connection.H2Connection(config=cfg)
            conn.initiate_connection()
            if settings:
                conn.update_settings(settings)
        self.conn = conn
        self.flush()
        self.port = port
        self.streams = {}
        self.events = []
        self.goaway = None  # (error_code, last_stream_id)
        # python-h2 closes its connection at any GOAWAY and then refuses
        # the frames of streams still in flight, which RFC 9113 6.8 lets
        # the server finish: with `survive_goaway` GOAWAY frames are taken
        # out of the bytes before python-h2 sees them (`self.goaway` still
        # records the last one).
        self.survive_goaway = survive_goaway
        self._unsplit = b""
        self.closed = False
        self.auto_ack_data = auto_ack_data
        self.remote_settings = {}

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def send_raw(self, data):
        self.sock.sendall(data)

    def send_frame(self, frame):
        self.sock.sendall(frame.serialize())

    def connect(self, authority):
        """A plain CONNECT (RFC 9113 8.5: :method and :authority only); the
        stream stays open for the tunnel's bytes."""
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, [(b":method", b"CONNECT"), (b":authority", authority.encode())])
        self.streams[sid] = Stream(sid)
        self.flush()
        return sid

    def request(self, path, method="GET", headers=None, body=None, end_stream=None, authority=None):
        """`authority=False`: no :authority at all."""
        sid = self.conn.get_next_available_stream_id()
        hdrs = [
            (b":method", method.encode()),
            (b":scheme", b"https" if hasattr(self.sock, "cipher") else b"http"),
            (b":authority", (authority or self.default_authority or f"127.0.0.1:{self.port}").encode()),
            (b":path", path.encode()),
        ]
        if authority is False:
            del hdrs[2]
        for n, v in headers or []:
            hdrs.append((n.encode() if isinstance(n, str) else n, v.encode() if isinstance(v, str) else v))
        if end_stream is None:
            end_stream = body is None
        self.conn.send_headers(sid, hdrs, end_stream=end_stream)
        self.streams[sid] = Stream(sid)
        if body is not None:
            self.send_body(sid, body, end_stream=True)
        self.flush()
        return sid

    def send_body(self, sid, body, end_stream=True):
        """Sends body data as flow control allows, reading in between."""
        view = memoryview(body)
        while len(view):
            window = self.conn.local_flow_control_window(sid)
            size = min(window, self.conn.max_outbound_frame_size, len(view))
            if size <= 0:
                self.flush()
                if not self.read_some(timeout=10) and self.closed:
                    raise ConnectionError("connection closed while waiting for flow-control window")
                continue
            self.conn.send_data(sid, bytes(view[:size]))
            view = view[size:]
        if end_stream:
            self.conn.end_stream(sid)
        self.flush()

    def read_some(self, timeout=10):
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(1 << 20)
        except socket.timeout:
            return False
        except (ConnectionResetError, BrokenPipeError):
            data = b""
        except OSError as e:  # TLS alerts and the like
            if "timed out" in str(e):
                return False
            data = b""
        if not data:
            self.closed = True
            return False
        if self.survive_goaway:
            data = self._without_goaway(data)
        for ev in self.conn.receive_data(data):
            self.handle(ev)
        self.flush()
        return True

    def _without_goaway(self, data):
        """`data` without its GOAWAY frames (whole frames only; a partial
        one waits for the rest)."""
        buf = self._unsplit + data
        kept = bytearray()
        at = 0
        while len(buf) - at >= 9:
            end = at + 9 + int.from_bytes(buf[at:at + 3], "big")
            if len(buf) < end:
                break
            if buf[at + 3] == hf.GoAwayFrame.type:
                last_sid, code = struct.unpack_from(">II", buf, at + 9)
                self.goaway = (code, last_sid & 0x7FFFFFFF)
            else:
                kept += buf[at:end]
            at = end
        self._unsplit = buf[at:]
        return bytes(kept)

    def handle(self, ev):
        self.events.append(ev)
        s = self.streams.get(getattr(ev, "stream_id", None))
        if isinstance(ev, h2.events.ResponseReceived):
            s.headers = ev.headers
            s.status = int(dict(ev.headers)[b":status"])
        elif isinstance(ev, h2.events.InformationalResponseReceived):
            s.interim.append(ev.headers)
        elif isinstance(ev, h2.events.DataReceived):
            s.data.extend(ev.data)
            if self.auto_ack_data and ev.flow_controlled_length:
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        elif isinstance(ev, h2.events.TrailersReceived):
            s.trailers = ev.headers
        elif isinstance(ev, h2.events.StreamEnded):
            s.ended = True
            self.ended_order.append(ev.stream_id)
        elif isinstance(ev, h2.events.StreamReset):
            if s is not None:
                s.reset = ev.error_code
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self.goaway = (ev.error_code, ev.last_stream_id)
        elif isinstance(ev, h2.events.RemoteSettingsChanged):
            for k, v in ev.changed_settings.items():
                self.remote_settings[k] = v.new_value

    def wait(self, pred, timeout=20):
        deadline = time.time() + timeout
        while not pred():
            left = deadline - time.time()
            if left <= 0:
                raise TimeoutError("condition not met in time")
            if not self.read_some(timeout=min(left, 5)) and self.closed:
                if pred():
                    return
                raise ConnectionError("connection closed by the server")

    def wait_stream(self, sid, timeout=30):
        self.wait(lambda: self.streams[sid].done, timeout)
        return self.streams[sid]

    def events_of(self, cls):
        return [e for e in self.events if isinstance(e, cls)]

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def raw_preface():
    return b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + hf.SettingsFrame(0).serialize()
