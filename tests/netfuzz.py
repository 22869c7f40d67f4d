"""Network fuzzer: mutated HTTP/2 frame sequences against a running httpd
with the module, for a fixed time; then the server must still be up and
answer a normal request, with no crash or panic in its error log.

Each round opens a connection and sends a sequence built from valid pieces
(preface, SETTINGS, requests with and without bodies, CONTINUATION, PING,
PRIORITY, WINDOW_UPDATE, RST_STREAM, GOAWAY, PRIORITY_UPDATE, unknown
types), then mutated: bytes flipped, frame types, flags, stream ids and
length fields changed, frames duplicated, dropped, swapped, truncated,
random frames inserted. It reads what comes back for a moment (or not at
all, sometimes) and closes. Outcomes (GOAWAY codes, resets, answers) are
counted and printed.

    python tests/netfuzz.py --seconds 600            # starts its own httpd (build/mod_h2rs.so)
    python tests/netfuzz.py --port 8080 --seconds 60 # against a running server on 127.0.0.1
    scripts/netfuzz 600                              # the same as the first, from the repo root

tests/test_attacks.py runs a short fixed-seed round in the test suite."""
import argparse
import collections
import os
import random
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import rawh2  # noqa: E402
from rawh2 import (CONTINUATION, DATA, HEADERS, INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE, PREFACE, continuation,  # noqa: E402
                   data, encode, frame, goaway, headers, ping, priority, request_fields, rst_stream,
                   settings, window_update)


def valid_pieces(rng, port):
    """Frames a well-behaved client could send, as a list of bytes."""
    auth = f"127.0.0.1:{port}"
    # /1m.bin: sent from file mappings on cleartext connections.
    paths = ["/index.html", "/1k.bin", "/16k1.bin", "/1m.bin", "/cgi/env.cgi", "/cgi/sum.cgi", "/nope", "/dir/", "/old",
             "/h2status"]
    out = [settings(*rng.sample([(INITIAL_WINDOW_SIZE, rng.choice([0, 1, 65535, 1 << 20])),
                                 (MAX_FRAME_SIZE, rng.choice([16384, 1 << 20])), (1, rng.choice([0, 4096])),
                                 (3, rng.choice([0, 1, 100])), (8, 1), (9, 1)], rng.randint(0, 3)))]
    sid = 1
    for _ in range(rng.randint(1, 6)):
        method = rng.choice(["GET", "GET", "POST", "HEAD", "CONNECT", "OPTIONS"])
        extra = rng.sample([("accept", "*/*"), ("cookie", "a=1"), ("cookie", "b=2"), ("te", "trailers"),
                            ("priority", "u=1, i"), ("content-length", "5"), ("x-long", "v" * rng.randint(0, 9000)),
                            (":protocol", "websocket"), ("sec-websocket-version", "13")], rng.randint(0, 4))
        block = encode(request_fields(rng.choice(paths), method, "http", auth, extra), huffman=rng.random() < 0.3)
        body = method == "POST"
        if rng.random() < 0.2 and len(block) > 8:
            cut = rng.randint(1, len(block) - 1)
            out.append(headers(sid, block[:cut], end_stream=not body, end_headers=False))
            out.append(continuation(sid, block[cut:]))
        else:
            out.append(headers(sid, block, end_stream=not body, depends_on=sid - 2 if sid > 2 and rng.random() < 0.2
                               else None, pad=rng.choice([None, None, 0, 7])))
        if body:
            out.append(data(sid, b"hello", end_stream=rng.random() < 0.8, pad=rng.choice([None, 3])))
        if rng.random() < 0.2:
            out.append(rst_stream(sid, rng.randint(0, 13)))
        if rng.random() < 0.2:
            out.append(priority(sid, depends_on=rng.choice([0, sid, sid + 2]), weight=rng.randint(1, 256)))
        if rng.random() < 0.2:
            out.append(window_update(rng.choice([0, sid]), rng.choice([0, 1, 65535, 0x7FFFFFFF])))
        sid += 2
    extras = [ping(os.urandom(8)), frame(0x10, 0, 0, struct.pack(">I", 1) + b"u=2"), frame(0xBB, 0, 0, b"ext"),
              goaway(sid, 0), settings(ack=True)]
    out.extend(rng.sample(extras, rng.randint(0, 3)))
    return out


def mutate_frame(rng, f):
    f = bytearray(f)
    if len(f) < 9:
        return bytes(f)
    kind = rng.randrange(8)
    if kind == 0:  # flip bytes anywhere
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(f))
            f[i] ^= 1 << rng.randrange(8)
    elif kind == 1:  # frame type
        f[3] = rng.choice([rng.randrange(10), rng.randrange(256)])
    elif kind == 2:  # flags
        f[4] = rng.randrange(256)
    elif kind == 3:  # stream id (reserved bit too)
        f[5:9] = struct.pack(">I", rng.choice([0, 1, 2, 3, 0x7FFFFFFF, 0x80000001, rng.randrange(1 << 32)]))
    elif kind == 4:  # length field lies
        n = rng.choice([0, 1, len(f) - 9 + 1, len(f) - 9 - 1, 16384, 16385, 0xFFFFFF]) % (1 << 24)
        f[0:3] = struct.pack(">I", max(0, n))[1:]
    elif kind == 5:  # truncate
        f = f[:rng.randrange(len(f))]
    elif kind == 6:  # random payload of the same type
        f = bytearray(frame(f[3], f[4], int.from_bytes(f[5:9], "big") & 0x7FFFFFFF,
                            os.urandom(rng.choice([0, 1, 4, 5, 6, 8, 9, 100]))))
    else:  # append HPACK junk to a header block
        if f[3] in (HEADERS, CONTINUATION):
            f += bytes(rng.randrange(256) for _ in range(rng.randint(1, 20)))
            f[0:3] = struct.pack(">I", len(f) - 9)[1:]
    return bytes(f)


def sequence(rng, port):
    """One round's bytes: valid pieces, some mutated, reordered, repeated."""
    pieces = valid_pieces(rng, port)
    out = []
    for p in pieces:
        r = rng.random()
        if r < 0.25:
            out.append(mutate_frame(rng, p))
        elif r < 0.30:
            continue  # dropped
        elif r < 0.35:
            out.extend([p] * rng.randint(2, 50))  # repeated
        else:
            out.append(p)
        if rng.random() < 0.05:
            out.append(frame(rng.randrange(256), rng.randrange(256), rng.randrange(1 << 31),
                             os.urandom(rng.randint(0, 64))))
    if rng.random() < 0.2 and len(out) > 1:
        i, j = rng.randrange(len(out)), rng.randrange(len(out))
        out[i], out[j] = out[j], out[i]
    preface = PREFACE
    if rng.random() < 0.03:
        preface = bytearray(PREFACE)
        preface[rng.randrange(len(preface))] ^= 0xFF
        preface = bytes(preface)
    return preface + b"".join(out)


def one_round(rng, port, stats, read_time=0.3):
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=2)
    except OSError as e:
        stats[f"connect failed: {e.__class__.__name__}"] += 1
        return
    try:
        payload = sequence(rng, port)
        # Sent in random cuts, so frame boundaries fall anywhere in reads.
        i = 0
        while i < len(payload):
            n = rng.choice([1, 7, 100, 4096, len(payload)])
            s.sendall(payload[i:i + n])
            i += n
        stats["bytes sent"] += len(payload)
        if rng.random() < 0.1:
            stats["closed at once"] += 1
            return
        deadline = time.time() + read_time
        buf = b""
        while time.time() < deadline:
            s.settimeout(max(0.01, deadline - time.time()))
            try:
                d = s.recv(65536)
            except (socket.timeout, TimeoutError):
                break
            if not d:
                break
            buf += d
        outcome = "no answer"
        j = 0
        while j + 9 <= len(buf):
            n = int.from_bytes(buf[j:j + 3], "big")
            ftype = buf[j + 3]
            if ftype == rawh2.GOAWAY and j + 17 <= len(buf):
                outcome = "GOAWAY " + rawh2.code_name(struct.unpack(">I", buf[j + 13:j + 17])[0])
            elif ftype == rawh2.RST_STREAM:
                stats["RST_STREAM"] += 1
            elif ftype == HEADERS:
                stats["HEADERS"] += 1
            elif ftype == DATA:
                stats["DATA"] += 1
            j += 9 + n
        if outcome == "no answer" and buf:
            outcome = "frames, no GOAWAY"
        stats[outcome] += 1
    except OSError:
        stats["reset by server"] += 1
    finally:
        s.close()


def run(port, seconds, seed=None, log=print):
    """Fuzzes 127.0.0.1:port for `seconds`; returns the outcome counts."""
    seed = seed if seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    stats = collections.Counter()
    end = time.time() + seconds
    rounds = 0
    while time.time() < end:
        one_round(rng, port, stats)
        rounds += 1
    stats["rounds"] = rounds
    log(f"netfuzz seed {seed}: {rounds} rounds in {seconds} s: " +
        ", ".join(f"{k} {v}" for k, v in stats.most_common()))
    return stats


def server_answers(port):
    """A normal request on a fresh connection is answered 200."""
    c = rawh2.Conn(port, timeout=10)
    try:
        r = c.expect_ok("/index.html")
        return r.status == 200
    finally:
        c.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, help="fuzz a running server on 127.0.0.1:PORT (default: start one)")
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--seed", type=int)
    a = ap.parse_args()
    if a.port:
        run(a.port, a.seconds, a.seed)
        ok = server_answers(a.port)
        print("server answers a normal request:", ok)
        sys.exit(0 if ok else 1)
    import pathlib
    import shutil
    import tempfile
    import conftest
    wd = pathlib.Path(tempfile.mkdtemp(prefix="h2rs-netfuzz-"))
    os.chmod(wd, 0o755)
    h = conftest.Httpd(wd, conftest.Docroot(wd), name="netfuzz", extra=conftest.H2STATUS_LOCATION)
    h.start()
    ok = False
    try:
        run(h.port, a.seconds, a.seed)
        ok = server_answers(h.port)
        print("server answers a normal request:", ok)
    finally:
        h.stop()
        bad = [l for l in h.read_error_log().splitlines() if conftest.CRASH_RE.search(l)]
        if bad:
            print("crash or panic in the error log:\n" + "\n".join(bad[:10]))
            ok = False
        print(f"error log: {h.error_log}" if not ok else "error log clean")
        if ok:
            shutil.rmtree(wd, ignore_errors=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
