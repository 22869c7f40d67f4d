"""Issue 6, hostile clients: every known HTTP/2 attack against a real httpd
with the module, each proving its defence with numbers.

Every test runs its attack through `Attack`, which
- measures the server's resident memory (VmRSS summed over the httpd
  processes, from /proc) before, at its peak during, and after the attack,
  and asserts the growth stays below the test's stated bound and returns
  near the baseline;
- runs a well-behaved client on its own connection that keeps asking for a
  small file during the attack: every request must be answered 200, and
  its latencies are printed (`-s` shows them; the summary at the end of the
  module lists every attack);
- checks the access log recorded the legitimate requests (and whatever the
  attack itself got answered), and that the error log shows no crash,
  panic or stuck worker.

The attacking connection must end with the right GOAWAY code or get its
streams reset within a bounded time. Malformed frames that
tests/test_conformance.py already checks one by one are not repeated here;
this file adds the remaining cases and the floods. The limits behind each
defence are listed in docs/limits.md (code: src/limits.rs)."""
import base64
import collections
import os
import select
import socket
import statistics
import struct
import threading
import time

import pytest
from h2.errors import ErrorCodes as E

import conftest
from conftest import Httpd, free_port
import rawh2
from rawh2 import (CONTINUATION, DATA, END_HEADERS, GOAWAY, HEADER_TABLE_SIZE, HEADERS, INITIAL_WINDOW_SIZE,
                   MAX_FRAME_SIZE, PADDED, PING, PRIORITY, PRIORITY_FLAG, SETTINGS, WINDOW_UPDATE, Conn,
                   continuation, data, encode, frame, headers, hpack_int, hpack_str, literal, ping, priority,
                   rst_stream, settings, window_update)

MIB = 1024
# Worker pool of the attacked server: small, so pinning it is cheap to try.
MAX_WORKERS = 16
RESULTS = []


# ---- the server, memory, the legitimate client ---------------------------------------

@pytest.fixture(scope="module")
def srv(workdir, docroot, certs):
    # H2RS_LOGLEVEL / H2RS_HTTPD_ENV ("MALLOC_ARENA_MAX=2 ...") for experiments.
    env = dict(e.split("=", 1) for e in os.environ.get("H2RS_HTTPD_ENV", "").split() if "=" in e)
    h = Httpd(workdir, docroot, name="attacks", loglevel=os.environ.get("H2RS_LOGLEVEL", "warn"), env=env,
              h2_conf=f"H2MinWorkers 4\nH2MaxWorkers {MAX_WORKERS}\nH2StreamTimeout 5\n",
              extra="LimitRequestFields 100\nLimitRequestFieldSize 8190\nTimeout 10\n" + conftest.H2STATUS_LOCATION)
    with conftest.registered(h.tls_config(certs, free_port())):
        yield h
    if RESULTS:
        print("\n\nattack                                ended                     "
              "RSS base/peak/after MiB   bound  legit n  p50 ms  max ms")
        for r in RESULTS:
            print(r)


class Legit:
    """A well-behaved client: one request at a time on its own connection,
    a pause between requests. Records latencies and failures."""

    def __init__(self, h, path="/1k.bin", pause=0.05):
        self.h, self.path, self.pause = h, path, pause
        self.lat, self.failures, self.when = [], [], []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.n = 0

    def run(self):
        conn = None
        while not self.stop.is_set():
            t0 = time.time()
            try:
                if conn is None or conn.closed or conn.goaway is not None:
                    conn = Conn(self.h.port, timeout=15)
                self.n += 1
                r = conn.response(conn.request(f"{self.path}?legit={self.n}"), timeout=15)
                if r.status != 200:
                    self.failures.append(f"status {r.status}")
                else:
                    self.lat.append(time.time() - t0)
                    self.when.append(t0)
            except Exception as e:  # noqa: BLE001 - recorded, asserted later
                self.failures.append(repr(e)[:200])
                conn = None
            self.stop.wait(self.pause)
        if conn:
            conn.close()

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(30)


class Attack:
    """Context for one attack: baseline, memory sampler, legitimate client.
    `bound_mib` is the stated bound on RSS growth during the attack."""

    def __init__(self, h, name, bound_mib, settle_mib=None, legit_path="/1k.bin"):
        self.h, self.name, self.bound = h, name, bound_mib
        self.settle = settle_mib if settle_mib is not None else max(8, bound_mib // 2)
        self.legit = Legit(h, legit_path)
        self.ended = "?"
        self.peak = 0
        self._stop = threading.Event()

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.h.rss_kib())
            self._stop.wait(0.05)

    def __enter__(self):
        h = self.h
        h.check_log()
        # Warm up: every child has its workers and caches before the baseline.
        c = Conn(h.port)
        for _ in range(3):
            c.expect_ok("/1k.bin")
        c.close()
        time.sleep(0.2)
        self.base = h.rss_kib()
        self.peak = self.base
        self.access_before = len(h.read_access_log())
        self.errlog_before = len(h.read_error_log())
        self.sampler = threading.Thread(target=self._sample, daemon=True)
        self.sampler.start()
        self.legit.__enter__()
        time.sleep(0.2)  # a few legit requests before the attack starts
        self.t0 = time.time()
        return self

    def __exit__(self, exc_type, exc, tb):
        self.duration = time.time() - self.t0
        time.sleep(0.3)  # a few legit requests after it
        self.legit.__exit__()
        self._stop.set()
        self.sampler.join()
        if exc_type is not None:
            return False
        # Back near the baseline once the attack is over.
        deadline = time.time() + 10
        while True:
            self.after = self.h.rss_kib()
            if self.after - self.base < self.settle * MIB or time.time() > deadline:
                break
            time.sleep(0.25)
        lat = sorted(self.legit.lat)
        p50 = statistics.median(lat) * 1000 if lat else float("nan")
        worst = lat[-1] * 1000 if lat else float("nan")
        growth = (self.peak - self.base) / MIB
        line = (f"{self.name:37s} {self.ended[:25]:25s} {self.base / MIB:6.1f}/{self.peak / MIB:6.1f}/"
                f"{self.after / MIB:6.1f} (+{growth:5.1f})  <{self.bound:3d}  {len(lat):6d}  {p50:6.1f}  {worst:6.1f}")
        print("\n" + line)
        slow = [(round(w - self.t0, 2), round(l, 3)) for w, l in zip(self.legit.when, self.legit.lat) if l > 0.5]
        if slow:
            print(f"  slow legit requests (start after attack start s, latency s): {slow[:10]}")
        RESULTS.append(line)
        assert not self.legit.failures, f"legitimate client failed during {self.name}: {self.legit.failures[:5]}"
        assert len(lat) >= 3, f"legitimate client got only {len(lat)} answers during {self.name}"
        assert growth < self.bound, f"{self.name}: RSS grew by {growth:.1f} MiB (bound {self.bound} MiB)"
        assert (self.after - self.base) / MIB < self.settle, \
            f"{self.name}: RSS {self.after / MIB:.1f} MiB after the attack, baseline {self.base / MIB:.1f} MiB"
        # The access log has a line per legitimate answer.
        deadline = time.time() + 5
        while True:
            lines = self.h.read_access_log()[self.access_before:]
            logged = sum(1 for l in lines if "legit=" in l and '" 200 ' in l and "HTTP/2.0" in l)
            if logged >= len(lat) or time.time() > deadline:
                break
            time.sleep(0.1)
        assert logged >= len(lat), f"access log has {logged} legit lines, {len(lat)} answered"
        self.access_lines = lines
        # No stuck worker: c1 warns when a stream's worker does not finish
        # after its connection ended ("still waiting after N s for M stream(s)").
        errors = self.h.read_error_log()[self.errlog_before:]
        stuck = [l for l in errors.splitlines() if "h2rs: still waiting after" in l]
        assert not stuck, f"{self.name}: stuck workers: {stuck[:3]}"
        self.h.check_log()
        return False

    def logged(self, needle):
        return [l for l in self.access_lines if needle in l]


def ended(c, timeout=10):
    """How the attacking connection ended: 'GOAWAY <code>', 'closed', 'open'."""
    c.wait_closed(timeout)
    if c.goaway is not None:
        return f"GOAWAY {rawh2.code_name(c.goaway.error_code)}"
    return "closed" if c.closed else "open"


def expect_goaway(a, c, code, within):
    """The attacking connection gets GOAWAY `code` and is closed within `within` s."""
    how = ended(c, within)
    a.ended = how
    assert how == f"GOAWAY {rawh2.code_name(code)}", f"{a.name}: ended {how}; {c.log()}"
    assert time.time() - a.t0 < within + 1, f"{a.name}: took {time.time() - a.t0:.1f} s"


class Sender:
    """Sends a stream of frames on a raw connection as fast as the server
    reads them, while reading what it sends back (so our receive buffer
    never stops the server), until the server closes or `deadline`."""

    def __init__(self, c):
        self.c = c
        self.sent = 0
        self.error = None

    def blast(self, chunks, seconds):
        c = self.c
        deadline = time.time() + seconds
        c.sock.setblocking(False)
        try:
            for chunk in chunks:
                view = memoryview(chunk)
                while view and time.time() < deadline and not c.closed:
                    try:
                        n = c.sock.send(view)
                        view = view[n:]
                        self.sent += n
                    except BlockingIOError:
                        self._read(0.01)
                    except OSError as e:
                        self.error = e
                        return
                    self._read(0)
                if c.closed or time.time() >= deadline or self.error:
                    return
        finally:
            c.sock.setblocking(True)

    def _read(self, wait):
        c = self.c
        r, _, _ = select.select([c.sock], [], [], wait)
        if not r:
            return
        try:
            d = c.sock.recv(1 << 16)
        except BlockingIOError:
            return
        except OSError:
            d = b""
        if not d:
            c.closed = True
            return
        c.buf.extend(d)
        # Parse complete frames (GOAWAY, RST) without blocking.
        while len(c.buf) >= 9 and len(c.buf) >= 9 + int.from_bytes(c.buf[:3], "big"):
            n = int.from_bytes(c.buf[:3], "big")
            f = rawh2.Frame(c.buf[3], c.buf[4], int.from_bytes(c.buf[5:9], "big") & 0x7FFFFFFF,
                            bytes(c.buf[9:9 + n]))
            del c.buf[:9 + n]
            c.frames.append(f)
            if f.type in (HEADERS, CONTINUATION):
                continue  # not decoded: the attack does not follow the server's HPACK state
            if f.type == SETTINGS and not f.flags & 1:
                continue
            c._handle(f)
        if len(c.frames) > 2000:
            del c.frames[:1000]


def repeat(chunk, total):
    """`total` bytes of `chunk` repeated, in ~256 KiB pieces."""
    per = max(1, (256 << 10) // max(1, len(chunk)))
    piece = chunk * per
    n = 0
    while n < total:
        yield piece
        n += len(piece)


def req_block(c, path="/1k.bin", extra=()):
    return encode(c.fields(path, extra=extra))


# ---- rapid reset (CVE-2023-44487) -------------------------------------------------------

def test_rapid_reset(srv):
    """HEADERS followed at once by RST_STREAM, 30,000 streams on one
    connection: the budget of resets that cancel open streams
    (limits::RST_RATE, burst 800, 33/s) ends the connection with
    ENHANCE_YOUR_CALM; the streams that reached workers
    shrink the connection's active-stream limit."""
    with Attack(srv, "rapid reset 30k streams", bound_mib=24) as a:
        c = Conn(srv.port)
        block = req_block(c, "/cgi/slow.cgi?1")
        chunks = []
        for i in range(30):
            chunks.append(b"".join(headers(sid, block, end_stream=True) + rst_stream(sid, E.CANCEL)
                                   for sid in range(1 + 2000 * i, 2001 + 2000 * i, 2)))
        Sender(c).blast(chunks, 15)
        expect_goaway(a, c, E.ENHANCE_YOUR_CALM, 15)
        c.close()


# ---- MadeYouReset (CVE-2025-8671) -------------------------------------------------------------

# A frame that makes the server reset a stream whose request it has whole
# and may be running: the server's own RST_STREAM spends no client budget
# and frees the stream's slot in SETTINGS_MAX_CONCURRENT_STREAMS, so a
# server that kept the handlers running could be made to run any number.
MADE_YOU_RESET = {
    # name: (frame after the request's HEADERS, expected GOAWAY code)
    "data-after-end-stream": (lambda sid: data(sid, b"x"), E.STREAM_CLOSED),
    "trailers-after-end-stream": (lambda sid: headers(sid, encode([(b"x-t", b"1")])), E.STREAM_CLOSED),
    "window-update-zero": (lambda sid: window_update(sid, 0), E.PROTOCOL_ERROR),
    "window-overflow": (lambda sid: window_update(sid, 0x7FFFFFFF) + window_update(sid, 0x7FFFFFFF),
                        E.FLOW_CONTROL_ERROR),
    "priority-too-short": (lambda sid: frame(PRIORITY, 0, sid, b"\0\0\0"), E.FRAME_SIZE_ERROR),
}


@pytest.mark.parametrize("case", sorted(MADE_YOU_RESET))
def test_made_you_reset(srv, case):
    """2,000 requests for a slow CGI, each followed by a frame that is a
    stream error on its stream (RFC 9113 5.1, 6.9, 6.3): nghttp2 1.68
    makes each one a connection error, so the first ends the connection
    and no second handler starts."""
    bad, code = MADE_YOU_RESET[case]
    with Attack(srv, f"MadeYouReset {case}", bound_mib=16) as a:
        c = Conn(srv.port)
        block = req_block(c, "/cgi/slow.cgi?1")
        chunks = [b"".join(headers(sid, block) + bad(sid) for sid in range(1 + 400 * i, 401 + 400 * i, 2))
                  for i in range(10)]
        Sender(c).blast(chunks, 10)
        expect_goaway(a, c, code, 10)
        assert c.goaway.last_sid <= 1, f"the server took {c.goaway.last_sid} streams"
        c.close()


def test_connect_flood_without_a_forward_proxy(srv):
    """Plain CONNECT streams (RFC 9113 8.5) are tunnels, each on a thread
    of its own. Where no handler tunnels them (no mod_proxy_connect here)
    each is refused at once and its thread ends: 1,000 of them, 100 at a
    time on a connection, are all answered and leave no thread behind."""
    from h2client import H2Client
    for _ in range(10):
        c = H2Client(srv.port)
        sids = [c.connect("127.0.0.1:9") for _ in range(100)]
        for sid in sids:
            st = c.wait_stream(sid, timeout=20)
            assert st.status is not None and st.status >= 400, (st.status, st.reset)
        c.close()
    deadline = time.time() + 5
    while True:
        left = [t for pid in srv.mpm_children() for t in srv.thread_names(pid) if t.startswith("h2rs-tunnel")]
        if not left or time.time() > deadline:
            break
        time.sleep(0.1)
    assert not left, f"{len(left)} tunnel threads left"
    c = H2Client(srv.port)
    assert c.wait_stream(c.request("/1k.bin")).status == 200
    c.close()


def test_rapid_reset_across_connections(srv):
    """The same on 20 connections one after another (1,000 reset streams
    each, past the glitch budget's burst): each connection ends with
    ENHANCE_YOUR_CALM (or, were it under the budget, answers its PING),
    none hangs, no worker stays busy, memory flat."""
    with Attack(srv, "rapid reset 20 conns x 1000", bound_mib=24) as a:
        outcomes = []
        for _ in range(20):
            c = Conn(srv.port)
            block = req_block(c, "/index.html")
            Sender(c).blast([b"".join(headers(sid, block) + rst_stream(sid, E.CANCEL)
                                      for sid in range(1, 2001, 2))], 5)
            c.send(ping(b"rrdone!!"))
            c.wait(lambda: b"rrdone!!" in c.pings or c.goaway is not None or c.closed, timeout=10)
            outcomes.append("alive" if b"rrdone!!" in c.pings and c.goaway is None else ended(c, 5))
            c.close()
        a.ended = ", ".join(f"{outcomes.count(o)} {o}" for o in sorted(set(outcomes)))
        assert set(outcomes) <= {"alive", "GOAWAY ENHANCE_YOUR_CALM"}, a.ended


# ---- CONTINUATION flood (CVE-2024-27316) -------------------------------------------------

@pytest.mark.parametrize("field", ["tiny", "large"])
@pytest.mark.parametrize("end", ["never-ends", "ends-late"])
def test_continuation_flood(srv, field, end):
    """HEADERS without END_HEADERS, then CONTINUATION frames without end
    (or ending after 1,000 frames), each with tiny (1-byte) or large (16 KiB)
    pieces: nghttp2 stops at 8 CONTINUATION frames per header block
    (limits::MAX_CONTINUATIONS) and the connection ends with
    ENHANCE_YOUR_CALM or the header block is refused before it is stored."""
    with Attack(srv, f"CONTINUATION flood {field} {end}", bound_mib=16) as a:
        c = Conn(srv.port)
        first = req_block(c)
        if field == "tiny":
            piece = literal("x-a", "b")
        else:
            piece = b"\x00" + hpack_str("x-big") + hpack_int(1 << 24, 7) + b"v" * 16000
        chunks = [headers(1, first, end_stream=True, end_headers=False)]
        n = 1000 if end == "ends-late" else 200000
        body = b"v" * 16000 if field == "large" else piece
        if field == "large":
            chunks.append(continuation(1, piece, end_headers=False))
        frames = continuation(1, body, end_headers=False) * max(1, min(n, (256 << 10) // (len(body) + 9)))
        total = n * (len(body) + 9)
        chunks.extend(repeat(frames, total))
        if end == "ends-late":
            chunks.append(continuation(1, b"", end_headers=True))
        Sender(c).blast(chunks, 10)
        how = ended(c, 10)
        a.ended = how
        # Large: the 16 MiB field is beyond what the HPACK decoder accepts
        # (COMPRESSION_ERROR) before the CONTINUATION limit is reached.
        expect = "GOAWAY ENHANCE_YOUR_CALM" if field == "tiny" else "GOAWAY COMPRESSION_ERROR"
        assert how == expect, f"ended {how}; {c.log()}"
        c.close()


# ---- HPACK bomb, dynamic table abuse ------------------------------------------------------

def test_hpack_bomb(srv):
    """A 4 KiB field enters the dynamic table once, then every header block
    references it 1,000 times (1 byte each): 4 MiB of fields per 1 KiB block.
    LimitRequestFields stops storing at 100 fields (431) and resets the
    stream with ENHANCE_YOUR_CALM at 200, so nothing accumulates; 200 such
    streams in a row."""
    with Attack(srv, "HPACK bomb 200 x 4 MiB", bound_mib=24) as a:
        c = Conn(srv.port)
        big = b"\x40" + hpack_str("x-bomb") + hpack_str("B" * 4000)  # literal with incremental indexing
        # Index 62 is the newest dynamic entry: our x-bomb field.
        bomb = b"\xbe" * 1000
        sids = []
        c.send(headers(1, req_block(c, "/1k.bin?bomb") + big, end_stream=True))
        sids.append(1)
        for i in range(1, 200):
            sid = 1 + 2 * i
            c.send(headers(sid, req_block(c, "/1k.bin?bomb") + bomb))
            sids.append(sid)
            # One at a time: the client respects MAX_CONCURRENT_STREAMS.
            c.wait(lambda: c.resp(sid).done or c.goaway is not None, timeout=10, what=f"stream {sid} reset")
        outcomes = {}
        for s in sids:
            r = c.resp(s)
            k = f"RST {rawh2.code_name(r.reset)}" if r.reset is not None else str(r.status)
            outcomes[k] = outcomes.get(k, 0) + 1
        a.ended = " ".join(f"{k}x{v}" for k, v in sorted(outcomes.items())) + \
            (f" GOAWAY {rawh2.code_name(c.goaway.error_code)}" if c.goaway else "")
        assert set(outcomes) <= {"431", "RST ENHANCE_YOUR_CALM", "200"}, (a.ended, c.log())
        assert outcomes.get("200", 0) <= 1, outcomes  # only the first block (1 big field) is fine
        c.close()


def test_hpack_bomb_held(srv):
    """HPACK amplification held in memory: 4 connections each open 100
    streams of a slow CGI (so the requests wait in the session) whose heads
    repeat a 4 KiB table entry 99 times (1 byte each on the wire, 400 KiB
    decoded, within LimitRequestFields). Each head may decode to at most
    limits::MAX_REQUEST_HEAD_BYTES (431 beyond, nothing more kept), so the
    40 MiB per connection the bomb asks for never materialise."""
    with Attack(srv, "HPACK bomb held 4 x 100 streams", bound_mib=32) as a:
        conns = []
        for _ in range(4):
            c = Conn(srv.port, timeout=10)
            big = b"\x40" + hpack_str("x-bomb") + hpack_str("B" * 4000)
            first = headers(1, req_block(c, "/cgi/slow.cgi?3") + big)
            rest = b"".join(headers(1 + 2 * i, req_block(c, "/cgi/slow.cgi?3") + b"\xbe" * 99) for i in range(1, 100))
            c.send(first + rest)
            conns.append(c)
        time.sleep(2)
        outcomes = collections.Counter()
        for c in conns:
            c.drain(0.2)
            for r in c.responses.values():
                outcomes[str(r.status) if r.status else f"RST {rawh2.code_name(r.reset)}" if r.reset else "waiting"] += 1
            c.close()
        a.ended = " ".join(f"{k}x{v}" for k, v in sorted(outcomes.items()))
        assert set(outcomes) <= {"431", "waiting", "RST REFUSED_STREAM"}, outcomes


def test_dynamic_table_size_abuse(srv):
    """The client announces a 4 GiB HEADER_TABLE_SIZE (our encoder keeps
    4 KiB: limits::MAX_DEFLATE_TABLE), then sends blocks made of nothing
    but table size updates and large indexed insertions that evict each
    other: responses stay decodable, memory flat."""
    with Attack(srv, "dynamic table size abuse", bound_mib=16) as a:
        c = Conn(srv.port, settings_pairs=[(HEADER_TABLE_SIZE, 0xFFFFFFFF)])
        for i in range(300):
            sid = 1 + 2 * i
            updates = hpack_int(0, 5, 0x20) + hpack_int(4096, 5, 0x20)
            fill = b"".join(b"\x40" + hpack_str(f"x-f{j}") + hpack_str("F" * 1500) for j in range(3))
            c.send(headers(sid, updates + req_block(c, f"/1k.bin?t={i}") + fill))
            if i % 30 == 29:
                c.wait(lambda: c.resp(sid).done, timeout=10, what="responses")
        # Streams run on several workers: the last may end before others.
        c.wait(lambda: all(c.resp(1 + 2 * i).done for i in range(300)), timeout=10, what="every response")
        st = collections.Counter(c.resp(1 + 2 * i).status or rawh2.code_name(c.resp(1 + 2 * i).reset)
                                 for i in range(300))
        assert set(st) == {200}, (st, c.log())
        # Size update above our SETTINGS_HEADER_TABLE_SIZE is COMPRESSION_ERROR
        # (test_conformance.py); two updates at the start of a block are fine.
        c.expect_alive()
        a.ended = "alive, 300 x 200"
        c.close()


# ---- floods (CVE-2019-9511..9518) -----------------------------------------------------------

def _unread_flood(a, c, chunk, total, within=15):
    """Sends `total` bytes of `chunk` without reading answers: frames the
    server must answer (PING, SETTINGS) pile up, nghttp2's outbound ACK
    queue limit ends the connection."""
    c.sock.settimeout(1)
    sent = 0
    deadline = time.time() + within
    data_ = chunk * max(1, (64 << 10) // len(chunk))
    while sent < total and time.time() < deadline:
        try:
            c.sock.sendall(data_)
            sent += len(data_)
        except (socket.timeout, TimeoutError):
            break  # the server stopped reading: it has closed or is about to
        except OSError:
            break
    a.ended = ended(c, within)
    return sent


@pytest.mark.parametrize("kind", ["PING", "SETTINGS"])
def test_ack_flood_not_read(srv, kind):
    """PING / SETTINGS flood whose ACKs the client never reads
    (CVE-2019-9512, 9515): at most limits::MAX_OUTBOUND_ACK queued ACKs,
    then GOAWAY ENHANCE_YOUR_CALM and close."""
    with Attack(srv, f"{kind} flood (ACKs unread)", bound_mib=16) as a:
        c = Conn(srv.port)
        chunk = ping(b"floodpng") if kind == "PING" else settings((INITIAL_WINDOW_SIZE, 65535))
        _unread_flood(a, c, chunk, 64 << 20)
        assert a.ended in ("GOAWAY ENHANCE_YOUR_CALM", "closed"), f"ended {a.ended}; {c.log()}"
        c.close()


@pytest.mark.parametrize("kind", ["PING", "SETTINGS"])
def test_ack_flood_read(srv, kind):
    """The same flood from a client that reads every ACK: the per-second
    budget of control frames (limits::CONTROL_FRAMES_PER_SEC) still ends it
    with ENHANCE_YOUR_CALM."""
    with Attack(srv, f"{kind} flood (ACKs read)", bound_mib=16) as a:
        c = Conn(srv.port)
        chunk = ping(b"floodpng") if kind == "PING" else settings((INITIAL_WINDOW_SIZE, 65535))
        Sender(c).blast(repeat(chunk, 32 << 20), 12)
        expect_goaway(a, c, E.ENHANCE_YOUR_CALM, 12)
        c.close()


@pytest.mark.parametrize("kind", ["empty-DATA", "PRIORITY", "WINDOW_UPDATE-0", "RST-closed", "PRIORITY_UPDATE",
                                  "unknown-type"])
def test_frame_flood(srv, kind):
    """Floods of frames that cost the server work but no answer
    (CVE-2019-9518 empty frames, 9516 0-length headers, priority churn,
    WINDOW_UPDATE 0 (a stream error each: H2MaxStreamErrors), RST_STREAM
    on closed streams, unknown frame types (ignored, but not for free)):
    ENHANCE_YOUR_CALM within seconds. WINDOW_UPDATE 0 on a stream ends the
    connection at the first one (PROTOCOL_ERROR: nghttp2 escalates the
    stream error, RFC 9113 5.4.1)."""
    with Attack(srv, f"{kind} flood", bound_mib=16) as a:
        c = Conn(srv.port)
        if kind == "empty-DATA":
            # A POST whose body arrives in empty frames.
            c.send(headers(1, encode(c.fields("/cgi/sum.cgi", "POST")), end_stream=False))
            chunks = repeat(data(1, b""), 64 << 20)
            expect = [E.ENHANCE_YOUR_CALM]
        elif kind == "PRIORITY":
            chunks = repeat(b"".join(priority(sid, depends_on=sid + 2) for sid in range(1, 2001, 2)), 64 << 20)
            expect = [E.ENHANCE_YOUR_CALM]
        elif kind == "WINDOW_UPDATE-0":
            block = req_block(c, "/cgi/slow.cgi?2")
            chunks = [b"".join(headers(sid, block) + window_update(sid, 0) for sid in range(1, 40001, 2))]
            expect = [E.PROTOCOL_ERROR]
        elif kind == "RST-closed":
            c.expect_ok()
            chunks = repeat(rst_stream(1, E.CANCEL), 64 << 20)
            expect = [E.ENHANCE_YOUR_CALM]
        elif kind == "PRIORITY_UPDATE":
            chunks = repeat(b"".join(frame(0x10, 0, 0, struct.pack(">I", sid % 100) + b"u=1, i")
                                     for sid in range(1, 2001, 2)), 64 << 20)
            expect = [E.ENHANCE_YOUR_CALM]
        else:
            chunks = repeat(frame(0xFA, 0, 0, b"u" * 100), 256 << 20)
            expect = [E.ENHANCE_YOUR_CALM]
        Sender(c).blast(chunks, 12)
        a.ended = ended(c, 12)
        assert a.ended in [f"GOAWAY {rawh2.code_name(e)}" for e in expect], f"{kind}: ended {a.ended}; {c.log()}"
        c.close()


def test_priority_updates_for_idle_streams_from_a_client_that_never_acks(srv):
    """PRIORITY_UPDATEs naming ever new idle streams, from a client that
    never acknowledges our SETTINGS: nghttp2 keeps an object per idle
    stream for the session's life, and bounds them by
    SETTINGS_MAX_CONCURRENT_STREAMS only once the client acknowledged it
    (below the glitch budget, a client could have it keep one per frame
    for as long as the connection lasts). RFC 9218 7.1: past the limit,
    PROTOCOL_ERROR."""
    with Attack(srv, "PRIORITY_UPDATE idle, no ACK", bound_mib=16) as a:
        c = Conn(srv.port, handshake=False)
        c.send(rawh2.PREFACE + settings())
        c.send(b"".join(frame(0x10, 0, 0, struct.pack(">I", sid) + b"u=1") for sid in range(1001, 1301, 2)))
        expect_goaway(a, c, E.PROTOCOL_ERROR, 5)
        c.close()


def test_resets_of_closed_streams_from_a_noisy_client_keep_the_connection(srv):
    """A client that answers each DATA frame arriving after its own
    RST_STREAM with another RST_STREAM (python-h2 does, RFC 9113 5.4.2 lets
    such frames arrive): 100 downloads cancelled, then 3,000 resets of
    streams already closed, more than the rapid-reset budget. They cancel
    nothing, so the connection goes on (they have a budget of their own,
    limits::CLOSED_RST_RATE; the flood above still ends)."""
    from h2client import H2Client
    c = H2Client(srv.port)
    sids = [c.request("/1m.bin") for _ in range(100)]
    for sid in sids:
        c.conn.reset_stream(sid, E.CANCEL)
    c.flush()
    late = b"".join(rst_stream(sids[i % len(sids)], E.STREAM_CLOSED) for i in range(3000))
    for i in range(0, len(late), 13 * 500):
        c.send_raw(late[i:i + 13 * 500])
    st = c.wait_stream(c.request("/1k.bin"), timeout=10)
    assert st.status == 200 and len(st.data) == 1024
    assert c.goaway is None
    c.close()


# Requests the server resets as malformed (RFC 9113 8.1.1), sent at will:
# name: the frames of stream `sid`.
BAD_REQUESTS = {
    # An upper-case field name.
    "malformed heads": lambda c, sid: headers(sid, encode(c.fields("/index.html", extra=[("X-Upper", "1")]))),
    # A well-formed head whose DATA overruns its content-length: a request
    # the server had started and then resets itself (MadeYouReset's shape).
    "content-length overruns": lambda c, sid: (
        headers(sid, encode(c.fields("/index.html", "POST", extra=[("content-length", "1")])), end_stream=False)
        + data(sid, b"xy", end_stream=True)),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_malformed_request_flood(srv, case):
    """Malformed requests, 50 at a time (within MAX_CONCURRENT_STREAMS):
    each is reset PROTOCOL_ERROR, and after the budget
    (limits::BAD_REQUEST_RATE, 200 burst) the connection ends with
    ENHANCE_YOUR_CALM, whether the head was malformed or its body broke
    its content-length."""
    with Attack(srv, f"{case} flood", bound_mib=16) as a:
        c = Conn(srv.port)
        sid = 1
        while c.goaway is None and not c.closed and sid < 4000:
            batch = list(range(sid, sid + 100, 2))
            c.send(b"".join(BAD_REQUESTS[case](c, i) for i in batch))
            sid += 100
            c.wait(lambda: all(c.resp(i).done for i in batch) or c.goaway is not None or c.closed,
                   timeout=5, what="the batch reset")
        resets = sum(1 for r in c.responses.values() if r.reset == E.PROTOCOL_ERROR)
        expect_goaway(a, c, E.ENHANCE_YOUR_CALM, 10)
        a.ended += f" after {resets} resets"
        assert 150 <= resets <= 300, resets
        c.close()


def test_priority_loops(srv):
    """RFC 7540 priority trees made of cycles (A on B, B on A, exclusive
    re-parenting of whole chains) on many streams: the server uses RFC 9218
    priorities (SETTINGS_NO_RFC7540_PRIORITIES) and ignores the tree, so
    nothing loops; the requests are still answered."""
    with Attack(srv, "priority loops", bound_mib=16) as a:
        c = Conn(srv.port)
        n = 60
        frames = []
        for i in range(n):
            sid = 1 + 2 * i
            frames.append(headers(sid, req_block(c, f"/1k.bin?p={i}"), depends_on=sid + 2 if i < n - 1 else 1))
        for _ in range(10):
            for i in range(n):
                sid = 1 + 2 * i
                frames.append(priority(sid, depends_on=1 + 2 * ((i + 1) % n), exclusive=True))
        c.send(b"".join(frames))
        c.wait(lambda: all(c.resp(1 + 2 * i).done for i in range(n)) or c.goaway is not None, timeout=15,
               what="every prioritised request")
        st = [c.resp(1 + 2 * i).status for i in range(n)]
        assert c.goaway is None and st == [200] * n, (st, c.log())
        c.close()
        # Endless re-parenting: the glitch budget (limits::GLITCH_RATE) ends it.
        c = Conn(srv.port)
        loop = b"".join(priority(1 + 2 * i, depends_on=1 + 2 * ((i + 1) % n), exclusive=True) for i in range(n))
        Sender(c).blast(repeat(loop, 64 << 20), 10)
        a.ended = f"{n} x 200, then {ended(c, 5)}"
        assert a.ended.endswith("GOAWAY ENHANCE_YOUR_CALM"), (a.ended, c.log())
        c.close()


def test_data_dribble(srv):
    """Window of 1 byte (SETTINGS_INITIAL_WINDOW_SIZE 1), 50 streams asking
    for 1 MiB each, then WINDOW_UPDATEs of 1 byte (CVE-2019-9511,
    9517): each stream buffers at most H2StreamMaxMemSize, workers wait
    with backpressure and give up after H2StreamTimeout; the connection
    window of 1-byte frames costs the client more than the server."""
    with Attack(srv, "data dribble (1-byte windows)", bound_mib=32) as a:
        c = Conn(srv.port, settings_pairs=[(INITIAL_WINDOW_SIZE, 1)], auto_window=False)
        n = 50
        c.send(b"".join(headers(1 + 2 * i, req_block(c, "/1m.bin")) for i in range(n)))
        deadline = time.time() + 8
        got = 0
        while time.time() < deadline and not c.closed:
            c.send(b"".join(window_update(1 + 2 * i, 1) for i in range(n)))
            try:
                while True:
                    f = c.read_frame(0.01)
                    if f is None:
                        break
                    if f.type == DATA:
                        got += len(f.payload)
            except TimeoutError:
                pass
        a.ended = f"{ended(c, 0.1)}, {got} B dribbled"
        c.close()


# ---- zero-window slow read (CVE-2023-43622) ----------------------------------------------------

@pytest.mark.parametrize("kind,window", [("static", 0), ("cgi", 0), ("cgi", 1)])
def test_zero_window_slow_read(srv, kind, window):
    """INITIAL_WINDOW_SIZE 0 (or 1, a byte per stream) and never opened,
    100 streams per connection asking for 1 MiB each, on 4 connections:
    static files are queued by reference (no worker waits, no copy) and
    other responses buffer at most H2StreamMaxMemSize; a connection whose
    client never opens its window runs one stream on a worker at a time
    (limits::ZERO_WINDOW_ACTIVE_STREAMS), so a legitimate client is still
    served; when that handler gives up (H2StreamTimeout) the connection
    ends with ENHANCE_YOUR_CALM; with only static files it is closed after
    Timeout. (A window of 1 byte ran 6 streams at a time, and at each
    handler's end the next 6, while the connection lasted.)"""
    # big.cgi takes its size from the whole query string.
    path = (lambda i: f"/1m.bin?zw={i}") if kind == "static" else (lambda i: "/cgi/big.cgi?1000000")
    with Attack(srv, f"window-{window} slow read 4 x 100 {kind}", bound_mib=48) as a:
        conns = []
        for _ in range(4):
            c = Conn(srv.port, settings_pairs=[(INITIAL_WINDOW_SIZE, window)], auto_window=False)
            c.send(b"".join(headers(1 + 2 * i, req_block(c, path(i))) for i in range(100)))
            conns.append(c)
        # Longer than H2StreamTimeout 5; up to twice that with a 1-byte
        # window (the first byte out is progress: the wait starts over).
        deadline = time.time() + (6 if kind == "static" else 8 if window == 0 else 16)
        while time.time() < deadline:
            time.sleep(0.5)
            if kind == "cgi":
                for c in conns:
                    c.drain(0.05)
                if all(c.goaway is not None for c in conns):
                    break
        outcomes = collections.Counter()
        for c in conns:
            c.drain(0.2)
            outcomes[f"{sum(1 for r in c.responses.values() if r.reset is not None)}rst "
                     f"{ended(c, 0.1)}"] += 1
        a.ended = " ".join(f"{v}x[{k}]" for k, v in outcomes.items())
        if kind == "cgi":
            # The first handler gave up on the client (H2StreamTimeout):
            # the connection is ended rather than handed the next worker.
            assert all(k.endswith("GOAWAY ENHANCE_YOUR_CALM") for k in outcomes), outcomes
        for c in conns:
            c.close()


def test_zero_window_slow_read_kept_alive_with_pings(make_server):
    """The zero-window slow read of static files, with a PING every second:
    the client's frames are no progress of its streams, so the connection
    still ends after Timeout (3 s here) without a HEADERS or DATA frame
    either way, as HTTP/1.1 gives up on a client that reads nothing.
    Before, each PING started the wait over, and the connection held its
    responses, its MPM thread and a graceful stop for ever."""
    srv = make_server(extra="Timeout 3", loglevel="warn http2:debug").start()
    c = Conn(srv.port, settings_pairs=[(INITIAL_WINDOW_SIZE, 0)], auto_window=False)
    c.send(b"".join(headers(1 + 2 * i, req_block(c, "/1m.bin")) for i in range(10)))
    deadline = time.time() + 15
    while time.time() < deadline and not c.closed and c.goaway is None:
        c.send(ping(b"stillup!"))
        c.drain(1)
    assert c.goaway is not None and c.goaway.error_code == E.NO_ERROR, (ended(c, 1), c.log())
    assert ended(c, 5) == "GOAWAY NO_ERROR"
    c.close()
    assert "open streams moved neither way for Timeout" in srv.read_error_log()


def open_descriptors(h):
    """Descriptors open in the server's connection-serving children."""
    total = 0
    for pid in h.mpm_children():
        try:
            total += len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            pass
    return total


def test_multi_range_zero_window(srv):
    """INITIAL_WINDOW_SIZE 0 and never opened, 2 connections x 50 streams
    each asking for 200 ranges of 16 KiB apart (MaxRanges' default) of a
    20 MiB file: each range was queued by reference with a descriptor of
    its own, the worker free at once, 20,000 descriptors held until the
    child ran out. A stream now queues a few regions and copies the rest
    under its memory limit, waiting for the client like any output."""
    ranges = "bytes=" + ",".join(f"{i * 32768}-{i * 32768 + 16383}" for i in range(200))
    with Attack(srv, "multi-range zero window 2 x 50 x 200", bound_mib=48) as a:
        before = open_descriptors(srv)
        peak = before
        conns = []
        for _ in range(2):
            c = Conn(srv.port, settings_pairs=[(INITIAL_WINDOW_SIZE, 0)], auto_window=False)
            c.send(b"".join(headers(1 + 2 * i, req_block(c, f"/20m.bin?mr={i}", extra=[("range", ranges)]))
                            for i in range(50)))
            conns.append(c)
        deadline = time.time() + 6  # longer than H2StreamTimeout 5
        while time.time() < deadline:
            peak = max(peak, open_descriptors(srv))
            for c in conns:
                c.drain(0.05)
        a.ended = " ".join(ended(c, 0.1) for c in conns)
        for c in conns:
            c.close()
    assert peak - before < 400, f"descriptors: {before} before, {peak} at the peak"


def test_small_windows_on_a_learned_url_keep_within_the_descriptor_budget(make_server):
    """A static file c1 has learned to run itself, asked for 99 times on
    each of 6 connections whose streams have a window of 1 KiB (which
    counts as open) and whose connection window is wide open: each stream
    run on c1 queued its file by reference (a descriptor, and the
    request's own) and held it until the client took it, without the
    child's budget of queued regions (a quarter of its descriptors) that
    streams on workers keep to; the children ran out of descriptors. Now
    c1 runs a stream itself only within that budget; beyond it, workers
    copy under their memory limit, and give up after H2StreamTimeout."""
    srv = make_server(descriptors=512, h2_conf=f"H2MinWorkers 4\nH2MaxWorkers {MAX_WORKERS}\nH2StreamTimeout 5\n",
                      extra="Timeout 10\n").start()
    path = "/100k.bin?descriptor-budget"
    conns = []
    for _ in range(6):
        c = Conn(srv.port, settings_pairs=[(INITIAL_WINDOW_SIZE, 1024)], auto_window=False)
        c.send(window_update(0, 1 << 30), headers(1, req_block(c, path)))
        c.drain(0.5)  # its run on a worker teaches c1 the URL
        c.send(b"".join(headers(3 + 2 * i, req_block(c, path)) for i in range(99)))
        conns.append(c)
    peak = {}
    failures = []
    deadline = time.time() + 4
    while time.time() < deadline:
        for pid in srv.mpm_children():
            try:
                peak[pid] = max(peak.get(pid, 0), len(os.listdir(f"/proc/{pid}/fd")))
            except OSError:
                pass
        for c in conns:
            c.drain(0.05)
        r = conftest.curl("--http2-prior-knowledge", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                          "--max-time", "5", srv.url("/1k.bin"))
        if r.stdout != b"200":
            failures.append(r.stdout)
    for c in conns:
        c.close()
    assert not failures, failures[:5]
    assert peak and max(peak.values()) < 450, f"descriptors of the children at the peak: {peak} (limit 512)"


def test_request_bodies_held(srv):
    """3 connections x 100 POST streams to a CGI that never reads its body,
    each sending a full window (64 KiB) of body and never ending it (slow
    POST): the server buffers at most H2WindowSize per stream (6.4 MiB per
    connection with the defaults), the streams waiting for a worker take
    none. Two rounds: nothing accumulates, and once the sessions end their
    memory goes back to the system (glibc keeps freed memory per thread
    arena: c1 trims it, at most once a second, c1::release_freed_memory)."""
    with Attack(srv, "request bodies held 2 x 3 x 100 x 64 KiB", bound_mib=40) as a:
        for i in range(2):
            _held_bodies(a, srv)
            if i == 0:
                time.sleep(4)  # the CGIs (3 s) end, the sessions with them


def _held_bodies(a, srv):
    """One round of test_request_bodies_held."""
    conns = []
    body = b"b" * 16384
    for _ in range(3):
        c = Conn(srv.port, timeout=10)
        out = []
        for i in range(100):
            sid = 1 + 2 * i
            out.append(headers(sid, encode(c.fields("/cgi/slow.cgi?3", "POST")), end_stream=False))
            out.extend(data(sid, body[:16383] if k == 3 else body) for k in range(4))
        Sender(c).blast([b"".join(out)], 10)
        conns.append(c)
    time.sleep(2)
    for c in conns:
        c.drain(0.1)
    a.ended = f"{sum(1 for c in conns if c.goaway is None and not c.closed)} conns open"
    for c in conns:
        c.close()


# ---- slow request bodies (R.U.D.Y.) ---------------------------------------------------------

def _trickle(c, sids, seconds, interval=0.5):
    """Sends one body byte every `interval` on each stream of `sids` still
    open, for `seconds` or until all are done; returns {sid: seconds until
    it was done}."""
    import h2.exceptions
    t0 = time.time()
    done = {}
    while time.time() - t0 < seconds and len(done) < len(sids):
        for sid in sids:
            if c.streams[sid].done:
                done.setdefault(sid, time.time() - t0)
                continue
            try:
                c.conn.send_data(sid, b"x")
            except h2.exceptions.StreamClosedError:
                done.setdefault(sid, time.time() - t0)
        c.flush()
        until = time.time() + interval
        while time.time() < until and not c.closed:
            c.read_some(timeout=max(0.01, until - time.time()))
    return done


def test_slow_bodies_spin_no_cpu_with_mod_reqtimeout_loaded_first(make_server):
    """mod_reqtimeout loaded before this module (its process_connection
    hook and ours are both FIRST: the load order decides): it must not put
    its filters on the streams' secondary connections. There a blocking
    read of a body without content-length (chunked, as HTTP/1.1 reads it)
    became its loop of non-blocking reads and polls of the secondary
    connection's socket, which is no client socket and polls ready: a core
    spun while the client paused. The stream still ends at the module's
    own body timeout (408)."""
    from h2client import H2Client
    srv = make_server(name="reqtimeout-first",
                      mpm=conftest.EVENT_MPM + f"\nLoadModule reqtimeout_module {conftest.MODDIR}/mod_reqtimeout.so",
                      extra="RequestReadTimeout header=20-40,MinRate=500 body=4,MinRate=500\n").start()
    c = H2Client(srv.port)
    sid = c.request("/cgi/sum.cgi", method="POST", end_stream=False)
    c.send_body(sid, b"x", end_stream=False)
    time.sleep(0.5)  # the CGI reads, and waits for the rest
    kids = srv.mpm_children()
    before = conftest.cpu_seconds(kids)
    time.sleep(2)
    used = conftest.cpu_seconds(kids) - before
    assert used < 0.5, f"{used:.2f} s of CPU in 2 s while a stream waited for its body"
    st = c.wait_stream(sid, timeout=15)
    assert st.status == 408, (st.status, st.reset)
    c.close()
    srv.new_log_lines()  # the body timeout is logged


def test_slow_request_bodies_end_at_the_request_read_timeout(make_server):
    """R.U.D.Y.: streams that send their request body a byte every half
    second, each holding a worker in a CGI that reads it. mod_reqtimeout's
    `RequestReadTimeout body=3,MinRate=500` holds for HTTP/2 bodies as for
    HTTP/1.1 ones (mod_reqtimeout cannot see a stream; the module reads
    its directives): every stream is answered 408 after about 3 s, the
    workers are free again, and the connection goes on. A steady upload
    (20 KiB/s) passes the first 3 s, extended by its rate; a virtual host
    that turns the stage off (`body=0`) lets a trickle finish."""
    from h2client import H2Client
    import hashlib
    off_port = free_port()
    srv = make_server(name="rudy", h2_conf="H2MaxWorkers 8", loglevel="warn http2:info reqtimeout:info", extra=f"""
LoadModule reqtimeout_module {conftest.MODDIR}/mod_reqtimeout.so
RequestReadTimeout header=20-40,MinRate=500 body=3,MinRate=500
Listen 127.0.0.1:{off_port}
<VirtualHost 127.0.0.1:{off_port}>
  RequestReadTimeout body=0
</VirtualHost>
""")
    srv.start()
    c = H2Client(srv.port)
    slow = [c.request("/cgi/sum.cgi", method="POST", headers=[("content-length", "1000")], end_stream=False)
            for _ in range(10)]
    done = _trickle(c, slow, 12)
    print("408 after", sorted(round(v, 1) for v in done.values()))
    assert len(done) == 10, f"{10 - len(done)} streams still open after 12 s"
    assert all(c.streams[s].status == 408 for s in slow), [c.streams[s].status for s in slow]
    # 3 s after each one's handler began to read: a connection runs at
    # most 6 of the 8 workers (its fair share), the last 4 streams after
    # the first 6 ended.
    assert 2.5 <= min(done.values()) and max(done.values()) < 9, done
    # The connection and the workers serve on.
    st = c.wait_stream(c.request("/cgi/env.cgi"))
    assert st.status == 200 and b"HTTP2=on" in st.data
    # Answered, so the clients are asked to stop sending (RFC 9113 8.1).
    assert all(c.streams[s].reset == 0 for s in slow), [c.streams[s].reset for s in slow]
    # mod_reqtimeout's line (AH01382) and tag, as over HTTP/1.1.
    lines = [l for l in srv.read_error_log().splitlines() if "[reqtimeout:info]" in l and
             "AH01382: Request body read timeout (an HTTP/2 stream; RequestReadTimeout body=3,MinRate=500)" in l]
    assert len(lines) == 10, srv.read_error_log()[-2000:]

    # A steady upload: 100 KiB at ~20 KiB/s, 5 s, past the first 3.
    body = bytes(range(256)) * 400
    sid = c.request("/cgi/sum.cgi", method="POST", headers=[("content-length", str(len(body)))], end_stream=False)
    for i in range(0, len(body), 4096):
        c.send_body(sid, body[i:i + 4096], end_stream=i + 4096 >= len(body))
        time.sleep(0.2)
    st = c.wait_stream(sid)
    assert st.status == 200 and st.data.strip() == hashlib.sha256(body).hexdigest().encode(), (st.status, st.data)
    c.close()

    # Off in a virtual host: a trickle of 10 bytes over 5 s finishes.
    c = H2Client(off_port)
    sid = c.request("/cgi/sum.cgi", method="POST", headers=[("content-length", "10")], end_stream=False)
    for i in range(10):
        c.send_body(sid, b"x", end_stream=i == 9)
        time.sleep(0.5)
    st = c.wait_stream(sid)
    assert st.status == 200 and st.data.strip() == hashlib.sha256(b"x" * 10).hexdigest().encode()
    c.close()


# ---- stream concurrency abuse ---------------------------------------------------------------

def test_more_streams_than_max_session_streams(srv):
    """1,000 HEADERS on one connection that allows 100 concurrent streams
    (H2MaxSessionStreams): nghttp2 refuses the excess (RST REFUSED_STREAM
    or PROTOCOL_ERROR) and the connection ends (the client ignored
    SETTINGS_MAX_CONCURRENT_STREAMS) or survives having served only 100."""
    with Attack(srv, "1000 streams > H2MaxSessionStreams", bound_mib=32) as a:
        c = Conn(srv.port)
        assert c.server_settings.get(rawh2.MAX_CONCURRENT_STREAMS) == 100
        block = req_block(c, "/cgi/slow.cgi?1")
        c.send(b"".join(headers(1 + 2 * i, block) for i in range(1000)))
        c.drain(3)
        how = ended(c, 5)
        refused = sum(1 for r in c.responses.values() if r.reset is not None)
        answered = sum(1 for r in c.responses.values() if r.status == 200)
        a.ended = f"{how} {answered}x200 {refused}rst"
        assert answered <= 100, a.ended
        assert how.startswith("GOAWAY") or refused >= 900, a.ended
        c.close()


def test_slow_handlers_pin_workers(srv):
    """6 connections each opening 100 streams of a CGI that sleeps 2 s
    (CVE-2016-1546): each connection gets at most its fair share of the
    worker pool (limits::fair_share) and takes more only while workers
    beyond a reserve are free (limits::worker_reserve), so no queue builds
    up and a legitimate client's request finds a worker."""
    with Attack(srv, "slow CGI 6 conns x 100 streams", bound_mib=64, legit_path="/index.html") as a:
        conns = []
        for _ in range(6):
            c = Conn(srv.port, timeout=30)
            block = req_block(c, "/cgi/slow.cgi?2")
            c.send(b"".join(headers(1 + 2 * i, block) for i in range(100)))
            conns.append(c)
        time.sleep(6)
        done = 0
        for c in conns:
            c.drain(0.1)
            done += sum(1 for r in c.responses.values() if r.status == 200 and r.ended)
        a.ended = f"{done} slow answers in 6 s"
        for c in conns:
            c.close()
    # Connections that have nothing running always get one worker (so do
    # the attackers' new connections): in the first burst a legitimate
    # request may wait for one handler to finish (2 s), never longer, and
    # is served at once afterwards (limits::worker_reserve).
    lat = sorted(a.legit.lat)
    assert lat[-1] < 3.0, f"legitimate request took {lat[-1]:.1f} s while workers were pinned"


# ---- malformed frames not in test_conformance.py --------------------------------------------------

MALFORMED = {
    # name: (bytes after the handshake (c -> bytes), expected GOAWAY code)
    "headers-priority-flag-too-short": (lambda c: frame(HEADERS, END_HEADERS | PRIORITY_FLAG, 1, b"\0\0"),
                                       E.FRAME_SIZE_ERROR),
    # No room for the Pad Length field: nghttp2 calls it a padding error
    # (PROTOCOL_ERROR, RFC 9113 6.1); FRAME_SIZE_ERROR (4.2) would do too.
    "headers-padded-empty": (lambda c: frame(HEADERS, END_HEADERS | PADDED, 1, b""),
                             (E.PROTOCOL_ERROR, E.FRAME_SIZE_ERROR)),
    "data-padded-empty": (lambda c: headers(1, req_block(c), end_stream=False) + frame(DATA, PADDED, 1, b""),
                          (E.PROTOCOL_ERROR, E.FRAME_SIZE_ERROR)),
    "goaway-too-short": (lambda c: frame(GOAWAY, 0, 0, b"\0\0\0\0"), E.FRAME_SIZE_ERROR),
    "settings-ack-on-stream": (lambda c: frame(SETTINGS, 1, 3, b""), E.PROTOCOL_ERROR),
    "window-update-too-long": (lambda c: frame(WINDOW_UPDATE, 0, 0, b"\0\0\0\1\0"), E.FRAME_SIZE_ERROR),
    "oversized-unknown-type": (lambda c: frame(0xEE, 0, 0, b"u" * 20000), E.FRAME_SIZE_ERROR),
    "oversized-ping": (lambda c: frame(PING, 0, 0, b"p" * 20000), E.FRAME_SIZE_ERROR),
    "oversized-settings": (lambda c: frame(SETTINGS, 0, 0, b"\0\4\0\0\0\1" * 3000), E.FRAME_SIZE_ERROR),
    "oversized-continuation": (lambda c: headers(1, req_block(c), end_headers=False)
                               + continuation(1, literal("x-a", "b") * 2500), E.FRAME_SIZE_ERROR),
    "length-lies-beyond-max": (lambda c: frame(DATA, 0, 1, b"", length=0xFFFFFF), E.FRAME_SIZE_ERROR),
    "priority-update-on-stream": (lambda c: frame(0x10, 0, 1, struct.pack(">I", 1) + b"u=1"),
                                  E.PROTOCOL_ERROR),
    "headers-depends-on-itself-flood": (lambda c: b"".join(headers(sid, req_block(c), depends_on=sid)
                                                           for sid in range(1, 21, 2)), E.PROTOCOL_ERROR),
    "window-update-reserved-bit": (lambda c: frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 0x80000000)),
                                   E.PROTOCOL_ERROR),
    "rst-stream-idle-high": (lambda c: rst_stream(0x7FFFFFFF, 0), E.PROTOCOL_ERROR),
    "headers-max-stream-id-then-more": (lambda c: headers(0x7FFFFFFF, req_block(c)) + headers(1, req_block(c)),
                                        E.PROTOCOL_ERROR),
    "garbage-after-preface": (lambda c: b"\xff" * 9 + b"garbage!" * 100, E.FRAME_SIZE_ERROR),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_frames(srv, case):
    """Malformed frames that test_conformance.py does not cover: each ends
    the connection with the error code RFC 9113 names (or, where 5.4.1
    allows it, a stream error of that code), within 2 s; 30 attacking
    connections in a row for memory."""
    make, code = MALFORMED[case]
    with Attack(srv, f"malformed: {case}", bound_mib=16) as a:
        hows = set()
        for _ in range(30):
            c = Conn(srv.port, timeout=2)
            c.send(make(c))
            c.wait(lambda: c.goaway is not None or c.closed or any(r.reset for r in c.responses.values()),
                   timeout=2, what="the error")
            if c.goaway is not None:
                hows.add(f"GOAWAY {rawh2.code_name(c.goaway.error_code)}")
            else:
                hows.add(f"RST {rawh2.code_name(next(r.reset for r in c.responses.values() if r.reset))}")
            c.close()
        a.ended = ",".join(sorted(hows))
        codes = code if isinstance(code, tuple) else (code,)
        allowed = {f"{kind} {rawh2.code_name(k)}" for k in codes for kind in ("GOAWAY", "RST")}
        assert hows <= allowed, f"{case}: got {hows}, expected one of {allowed}"


# ---- upgrade abuse ----------------------------------------------------------------------------------

def _http1(port, raw, tls=False, heads=1):
    """Sends `raw`, returns what came back until `heads` response heads
    (bodies must not contain a blank line) or 5 s."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    if tls:
        import ssl
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_alpn_protocols(["http/1.1"])
        s = ctx.wrap_socket(s, server_hostname="127.0.0.1")
    s.sendall(raw)
    out = b""
    deadline = time.time() + 5
    while time.time() < deadline:
        try:
            d = s.recv(65536)
        except OSError:
            break
        if not d:
            break
        out += d
        if out.count(b"\r\n\r\n") >= heads:
            break
    s.close()
    return out


def _upgrade(settings_value, path="/1k.bin", extra=b""):
    return (b"GET " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade, HTTP2-Settings\r\n"
            b"Upgrade: h2c\r\nHTTP2-Settings: " + settings_value + b"\r\n" + extra + b"\r\n")


def _b64(pairs):
    return base64.urlsafe_b64encode(b"".join(struct.pack(">HI", k, v) for k, v in pairs)).rstrip(b"=")


UPGRADE_SETTINGS = {
    "empty": b"",  # zero settings: a valid (if odd) upgrade
    "not-base64": b"!!!@@@###",
    "not-multiple-of-6": _b64([(3, 100)])[:-2],
    "huge": b"A" * 60000,
    "thousand-settings": _b64([(4, 65535)] * 1000),
    "window-too-large": _b64([(INITIAL_WINDOW_SIZE, 0x80000000)]),
    "frame-size-too-small": _b64([(MAX_FRAME_SIZE, 1)]),
    "enable-push-2": _b64([(2, 2)]),
    "two-headers": _b64([(3, 100)]) + b"\r\nHTTP2-Settings: " + _b64([(4, 0)]),
}


def test_upgrade_abuse(srv):
    """h2c Upgrade abuse (CVE-2019-0197 and friends), 3 rounds of each:
    garbage or invalid HTTP2-Settings (no upgrade, the request is served
    over HTTP/1.1 or refused with 400), an Upgrade on the second request of
    a connection (served over HTTP/1.1, no switch mid-connection), an
    Upgrade over TLS (ignored)."""
    with Attack(srv, "h2c upgrade abuse", bound_mib=16) as a:
        seen = {}
        for _ in range(3):
            for name, value in UPGRADE_SETTINGS.items():
                head = _http1(srv.port, _upgrade(value)).split(b"\r\n", 1)[0]
                seen.setdefault(name, set()).add(head.decode(errors="replace"))
            # Not pipelined: httpd itself (with or without this module, and
            # with the stock mod_http2) leaves a pipelined request carrying
            # Upgrade unanswered until Timeout.
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
            s.sendall(b"GET /index.html HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            out = b""
            while b"</html>" not in out:
                out += s.recv(65536)
            s.sendall(_upgrade(_b64([(3, 100)]), path="/index.html"))
            second = b""
            while b"\r\n\r\n" not in second:
                second += s.recv(65536)
            s.close()
            seen.setdefault("second-request", set()).add(second.split(b"\r\n", 1)[0].decode())
            head = _http1(srv.tls_port, _upgrade(_b64([(3, 100)])), tls=True).split(b"\r\n", 1)[0]
            seen.setdefault("tls", set()).add(head.decode(errors="replace"))
        for name, heads in seen.items():
            assert not any("101" in h for h in heads) or name == "empty", (name, heads)
            assert all(h.startswith("HTTP/1.1") for h in heads), (name, heads)
        a.ended = "no upgrade for garbage"
    print({k: sorted(v) for k, v in seen.items()})


@pytest.mark.parametrize("case", ["window-too-large", "frame-size-too-small", "enable-push-2"])
def test_upgrade_invalid_values(srv, case):
    """Valid base64 carrying SETTINGS values RFC 9113 6.5.2 forbids: not
    upgraded, the request is served over HTTP/1.1."""
    s = rawh2.upgrade_request(srv.port, settings=UPGRADE_SETTINGS[case])
    out = rawh2.read_http1_head(s)
    s.close()
    assert out.startswith(b"HTTP/1.1 200") or out.startswith(b"HTTP/1.1 400"), out[:200]


# ---- header abuse ------------------------------------------------------------------------------------

HEADER_ABUSE = {
    # name: (extra fields, expected per-stream outcomes)
    "5000-fields": ([(f"x-f{i}", "v") for i in range(5000)], {"RST ENHANCE_YOUR_CALM", "431"}),
    # Above 64 KiB nghttp2's HPACK decoder refuses the field: the HPACK
    # state is lost, so the connection ends (COMPRESSION_ERROR).
    "huge-field": ([("x-huge", "h" * 100000)], {"GOAWAY COMPRESSION_ERROR"}),
    "large-field": ([("x-large", "h" * 60000)], {"431"}),
    "repeated-names": ([("x-same", "v" * 20)] * 2000, {"RST ENHANCE_YOUR_CALM", "431"}),
    "repeated-cookie": ([("cookie", "c=" + "v" * 100)] * 90, {"431"}),
    "invalid-name-chars": ([("x bad\x01", "v")], {"RST PROTOCOL_ERROR"}),
    "invalid-value-chars": ([("x-bad", "a\r\nInjected: 1")], {"RST PROTOCOL_ERROR"}),
    "nul-in-value": ([("x-bad", "a\0b")], {"RST PROTOCOL_ERROR"}),
    "uppercase-name": ([("X-Upper", "v")], {"RST PROTOCOL_ERROR"}),
}


@pytest.mark.parametrize("case", sorted(HEADER_ABUSE))
def test_header_abuse(srv, case):
    """Header abuse, 100 streams of it on one connection (CVE-2025-53020:
    repeated names must not merge into ever larger values): LimitRequestFields
    and LimitRequestFieldSize answer 431 and keep nothing (far beyond:
    RST ENHANCE_YOUR_CALM), invalid characters reset the stream
    (PROTOCOL_ERROR, RFC 9113 8.2.1). Header blocks are split into
    CONTINUATION frames as needed (at most 8 of them are allowed)."""
    extra, allowed = HEADER_ABUSE[case]
    with Attack(srv, f"headers: {case}", bound_mib=32) as a:
        c = Conn(srv.port, timeout=10)
        block = b"".join(literal(n, v) for n, v in c.fields("/1k.bin?abuse") + extra)
        max_frame = 16384
        outcomes = {}
        streams = 100
        for i in range(streams):
            sid = 1 + 2 * i
            pieces = [block[j:j + max_frame] for j in range(0, len(block), max_frame)]
            out = [headers(sid, pieces[0], end_headers=len(pieces) == 1)]
            for k, p in enumerate(pieces[1:]):
                out.append(continuation(sid, p, end_headers=k == len(pieces) - 2))
            c.send(b"".join(out))
            c.wait(lambda: c.resp(sid).done or c.goaway is not None or c.closed, timeout=10,
                   what=f"stream {sid}'s answer")
            if c.goaway is not None or c.closed:
                k = f"GOAWAY {rawh2.code_name(c.goaway.error_code)}" if c.goaway else "closed"
                outcomes[k] = outcomes.get(k, 0) + 1
                break
            r = c.resp(sid)
            k = f"RST {rawh2.code_name(r.reset)}" if r.reset is not None else str(r.status)
            outcomes[k] = outcomes.get(k, 0) + 1
        a.ended = " ".join(f"{k}x{v}" for k, v in sorted(outcomes.items()))
        assert set(outcomes) <= allowed, f"{case}: {outcomes}, allowed {allowed}; {c.log()}"
        c.close()
    if "431" in outcomes:
        assert a.logged('" 431 '), "the 431 answers are not in the access log"


# ---- network fuzzing ----------------------------------------------------------------------------------

def test_netfuzz_short(srv):
    """tests/netfuzz.py for 15 s with a fixed seed (mutated frame sequences,
    a connection each): the server stays up, answers a normal request
    afterwards, memory stays bounded, nothing crashes. `scripts/netfuzz
    SECONDS` runs it longer with a random seed."""
    import netfuzz
    with Attack(srv, "netfuzz 15 s", bound_mib=32) as a:
        stats = netfuzz.run(srv.port, 15, seed=20261130)
        a.ended = f"{stats['rounds']} rounds"
        assert stats["rounds"] > 100, stats
        assert not any(k.startswith("connect failed") for k in stats), stats
    assert netfuzz.server_answers(srv.port)


def test_a_request_head_sent_a_byte_at_a_time_ends_the_connection(make_server):
    """A header block begun and then sent a byte a second (a CONTINUATION
    that never ends): the connection is closed once the block has taken
    `limits::HEADER_BLOCK_WAIT` or `Timeout` (3 s here), as HTTP/1.1's
    header stage ends a slow request head. Before, each byte started
    `Timeout` over: the thread was held for as long as the bytes came.
    The GOAWAY names the last request served (stream 1), not the one whose
    head never ended: the client may send that one again."""
    srv = make_server(name="head-drip", extra="Timeout 3").start()
    c = Conn(srv.port)
    block = req_block(c, "/1k.bin")
    c.send(headers(1, block, end_stream=True))
    c.drain(1.0)
    c.send(headers(3, block[:4], end_headers=False)
           + frame(rawh2.CONTINUATION, 0, 3, length=1000))
    t0 = time.monotonic()
    for _ in range(15):
        c.send(b"x")
        c.drain(1.0)
        if c.goaway is not None or c.closed:
            break
    took = time.monotonic() - t0
    assert c.goaway is not None, f"no GOAWAY after {took:.0f} s of a byte a second (closed: {c.closed})"
    assert b"request head timeout" in c.goaway.payload[8:]
    assert int.from_bytes(c.goaway.payload[:4], "big") & 0x7FFFFFFF == 1, c.goaway
    c.close()


def test_a_preface_sent_a_byte_at_a_time_is_given_to_http1_and_its_timeouts(make_server):
    """A client that sends the start of the HTTP/2 preface and then a byte
    a second: the module waits a few seconds in all for the rest (a byte
    each `Timeout` before, 24 of them, which kept mod_reqtimeout's header
    stage from ever starting), then the connection is HTTP/1.1's and
    `RequestReadTimeout header=2` ends it, as it ends a slow HTTP/1.1
    request line."""
    srv = make_server(name="preface-drip", extra=f"""
LoadModule reqtimeout_module {conftest.MODDIR}/mod_reqtimeout.so
RequestReadTimeout header=2
""").start()
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    t0 = time.monotonic()
    got = b""
    try:
        for b in preface:
            s.sendall(bytes([b]))
            r, _, _ = select.select([s], [], [], 1.0)
            if r:
                got = s.recv(4096)
                break
    except OSError:
        got = b"(reset)"
    finally:
        s.close()
    took = time.monotonic() - t0
    # Ended (a 408, a close) long before the 24 bytes, not an HTTP/2 session.
    assert got[:1] != b"\x00", f"an HTTP/2 session began after {took:.1f} s"
    assert took < 15, f"still open after {took:.1f} s"
