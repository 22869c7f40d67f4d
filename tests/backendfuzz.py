"""A hostile HTTP/2 backend for the reverse proxy (proxy_http2_module): it
answers every request with a response built from valid pieces and then
mutated, the way tests/netfuzz.py treats the front. A backend can be buggy
or compromised; whatever it sends, the front must answer its client (a
status, a reset or a closed connection), never hang past its timeout,
never pass on a response field HTTP forbids, and never crash.

Per request, the backend picks one behaviour: a response (a 1xx first, or
not; any status, also invalid ones; fields such as `connection`,
`transfer-encoding`, upper-case names, CR/LF/NUL in values, request
pseudo-headers, a `content-length` that lies, a 70 KiB field; the header
block split over CONTINUATION frames; DATA beyond the window, padded, or
without END_STREAM; trailers), stray frames (RST_STREAM with any code,
GOAWAY, PING, WINDOW_UPDATE of 0 or 2^31-1, PUSH_PROMISE, PRIORITY,
SETTINGS with invalid values, frames on streams never opened, unknown
types), each frame mutated with some chance (`netfuzz.mutate_frame`), the
bytes written in random cuts; or no answer at all; or the connection
closed at once. Over TLS the cuts are TLS records, and some connections
end in bytes that are no TLS record (written past the TLS layer), or in a
close without close_notify.

    python tests/backendfuzz.py PORT [SEED]   # serves until killed
    python tests/backendfuzz.py PORT SEED CERT KEY   # over TLS (ALPN h2)
    BACKENDFUZZ_LOG=1 ...                     # prints each stream's frames to stderr

tests/test_proxy.py runs it behind a front for a fixed time and seed."""
import os
import random
import socket
import ssl
import struct
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from netfuzz import mutate_frame  # noqa: E402
from rawh2 import (ACK, CONTINUATION, DATA, END_HEADERS, HEADERS, PING, PREFACE, SETTINGS, continuation,  # noqa: E402
                   data, encode, frame, goaway, headers, ping, priority, rst_stream, settings, window_update)

PUSH_PROMISE = 5

STATUSES = ["200", "200", "200", "204", "304", "404", "500", "100", "101", "103", "999", "099", "abc", "", "2000"]

FIELDS = [
    ("content-type", "text/plain"),
    ("content-length", "5"),
    ("content-length", "100000"),
    ("content-length", "-1"),
    ("connection", "close"),
    ("keep-alive", "timeout=5"),
    ("transfer-encoding", "chunked"),
    ("upgrade", "h2c"),
    ("te", "trailers"),
    ("Upper-Case", "x"),
    ("x-crlf", "a\r\nb"),
    ("x-nul", "a\x00b"),
    ("x-space", " padded "),
    (":path", "/nope"),
    (":status", "200"),
    ("set-cookie", "a=1"),
    ("location", "/elsewhere"),
    ("x-empty", ""),
    ("", "no name"),
    ("x-bad name", "v"),
]


def response_pieces(rng, sid):
    """The frames of one response to stream `sid`, before mutation."""
    out = []
    if rng.random() < 0.15:
        out.append(headers(sid, encode([(":status", rng.choice(["100", "103"])), ("link", "</a>; rel=preload")]),
                           end_stream=False))
    fields = [(":status", rng.choice(STATUSES))] if rng.random() < 0.95 else []
    fields += rng.sample(FIELDS, rng.randint(0, 4))
    if rng.random() < 0.05:
        fields.append(("x-long", "v" * rng.choice([5000, 70000])))
    if rng.random() < 0.1:
        rng.shuffle(fields)
    block = encode(fields, huffman=rng.random() < 0.3)
    body_frames = rng.choice([0, 1, 1, 2, 5])
    end_with_headers = body_frames == 0 and rng.random() < 0.8
    if rng.random() < 0.2 and len(block) > 4:
        cut = rng.randint(1, len(block) - 1)
        out.append(headers(sid, block[:cut], end_stream=end_with_headers, end_headers=False))
        rest = block[cut:]
        while len(rest) > 16 and rng.random() < 0.5:
            out.append(continuation(sid, rest[:16], end_headers=False))
            rest = rest[16:]
        out.append(continuation(sid, rest))
    else:
        out.append(headers(sid, block, end_stream=end_with_headers, pad=rng.choice([None, None, 0, 9])))
    for i in range(body_frames):
        last = i == body_frames - 1
        size = rng.choice([0, 1, 100, 4096, 16384, 70000])
        out.append(data(sid, os.urandom(size) if size < 16384 else b"x" * size,
                        end_stream=last and rng.random() < 0.85, pad=rng.choice([None, None, 0, 200])))
    if body_frames and rng.random() < 0.1:
        out.append(headers(sid, encode([("x-trailer", "1")] + rng.sample(FIELDS, rng.randint(0, 2))),
                           end_stream=True))
    return out


def stray_frames(rng, sid):
    """Frames a hostile backend may add around a response."""
    pool = [
        lambda: rst_stream(sid, rng.randrange(14)),
        lambda: goaway(rng.choice([0, sid, sid - 2 if sid > 2 else 0, 0x7FFFFFFF]), rng.randrange(14)),
        lambda: ping(os.urandom(8)),
        lambda: ping(os.urandom(8), ack=True),
        lambda: window_update(rng.choice([0, sid]), rng.choice([0, 1, 0x7FFFFFFF])),
        lambda: frame(PUSH_PROMISE, END_HEADERS, sid, struct.pack(">I", 2) + encode([(":method", "GET")])),
        lambda: priority(sid, depends_on=rng.choice([0, sid]), weight=rng.randint(1, 256)),
        lambda: settings((rng.choice([1, 2, 3, 4, 5, 6, 8, 0x99]), rng.choice([0, 1, 100, 1 << 31, 0xFFFFFFFF]))),
        lambda: settings(ack=True),
        lambda: headers(sid + 2 * rng.randint(1, 3), encode([(":status", "200")])),
        lambda: data(rng.choice([0, sid + 2]), b"stray"),
        lambda: frame(0xBB, 0, rng.choice([0, sid]), b"unknown"),
    ]
    return [rng.choice(pool)() for _ in range(rng.choice([0, 0, 0, 1, 2, 4]))]


def answer(rng, sock, sid):
    """Sends one response (or none) for stream `sid`; False when the
    connection was closed on purpose."""
    how = rng.random()
    if how < 0.04:
        sock.close()  # over TLS: no close_notify
        return False
    if how < 0.05 and isinstance(sock, ssl.SSLSocket):
        # A record the front's TLS layer cannot decrypt (a broken or
        # hijacked connection): written to the socket under TLS.
        os.write(sock.fileno(), b"\x17\x03\x03\x00\x20" + rng.randbytes(32))
        sock.close()
        return False
    if how < 0.08:
        return True  # no answer: the front's timeout ends the request
    pieces = response_pieces(rng, sid)
    strays = stray_frames(rng, sid)
    for f in strays:
        pieces.insert(rng.randint(0, len(pieces)), f)
    out = []
    for p in pieces:
        r = rng.random()
        if r < 0.15:
            out.append(mutate_frame(rng, p))
        elif r < 0.18:
            continue
        else:
            out.append(p)
    payload = b"".join(out)
    if os.environ.get("BACKENDFUZZ_LOG"):
        print(f"backendfuzz: stream {sid}: {describe(payload)}", file=sys.stderr, flush=True)
    i = 0
    while i < len(payload):
        n = rng.choice([1, 9, 100, 4096, len(payload)])
        sock.sendall(payload[i:i + n])
        i += n
    return True


def describe(payload):
    """The frames in `payload`, for the log: type, flags, stream, length."""
    names = {0: "DATA", 1: "HEADERS", 2: "PRIORITY", 3: "RST_STREAM", 4: "SETTINGS", 5: "PUSH_PROMISE", 6: "PING",
             7: "GOAWAY", 8: "WINDOW_UPDATE", 9: "CONTINUATION"}
    out, i = [], 0
    while i + 9 <= len(payload):
        n = int.from_bytes(payload[i:i + 3], "big")
        t, f, sid = payload[i + 3], payload[i + 4], int.from_bytes(payload[i + 5:i + 9], "big")
        out.append(f"{names.get(t, hex(t))}(s{sid} f{f:#x} n{n} {payload[i + 9:i + 9 + min(n, 12)].hex()})")
        i += 9 + n
    return " ".join(out) + (f" +{len(payload) - i} bytes" if i != len(payload) else "")


def serve(sock, seed, tls=None):
    rng = random.Random(seed)
    buf = bytearray()
    try:
        if tls is not None:
            sock.settimeout(10)
            sock = tls.wrap_socket(sock, server_side=True)
            sock.settimeout(None)
        while len(buf) < len(PREFACE):
            d = sock.recv(65536)
            if not d:
                return
            buf += d
        if bytes(buf[:len(PREFACE)]) != PREFACE:
            return
        del buf[:len(PREFACE)]
        server_settings = [(3, rng.choice([1, 10, 100])), (4, rng.choice([65535, 1 << 20]))]
        sock.sendall(settings(*rng.sample(server_settings, rng.randint(0, 2))))
        while True:
            while len(buf) >= 9 and len(buf) >= 9 + int.from_bytes(buf[:3], "big"):
                n = int.from_bytes(buf[:3], "big")
                ftype, flags = buf[3], buf[4]
                sid = int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
                del buf[:9 + n]
                if ftype == SETTINGS and not flags & ACK and rng.random() < 0.95:
                    sock.sendall(settings(ack=True))
                elif ftype == PING and not flags & ACK:
                    sock.sendall(ping(b"\0" * 8, ack=True))
                elif ftype in (HEADERS, CONTINUATION) and flags & END_HEADERS and sid:
                    if not answer(rng, sock, sid):
                        return
                elif ftype == DATA and n and rng.random() < 0.5:
                    sock.sendall(window_update(0, n))
            d = sock.recv(65536)
            if not d:
                return
            buf += d
    except (OSError, ValueError):  # ValueError: a socket closed on purpose
        pass
    finally:
        try:
            sock.close()
        except OSError:
            pass


def main():
    port = int(sys.argv[1])
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else random.randrange(1 << 30)
    tls = None
    if len(sys.argv) > 4:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(sys.argv[3], sys.argv[4])
        tls.set_alpn_protocols(["h2"])
    rng = random.Random(seed)
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", port))
    lsock.listen(128)
    while True:
        sock, _ = lsock.accept()
        threading.Thread(target=serve, args=(sock, rng.randrange(1 << 30), tls), daemon=True).start()


if __name__ == "__main__":
    main()
