"""A FastCGI responder for the mod_proxy_fcgi tests (the way PHP-FPM sits
behind httpd), run as its own process:
    python fcgi_backend.py PORT
Paths (the request's SCRIPT_NAME or REQUEST_URI):
  .../echo     -> "length=N sha256=HEX http2=ENV method=M" of the request body
  .../stream   -> three lines 300 ms apart, each in its own FCGI_STDOUT record
  .../big?n=N  -> N bytes (repeated "0123456789")
  .../broken   -> a head announcing 100000 bytes, 50000 of them, then the
                  connection closes without FCGI_END_REQUEST
One request per connection or several (FCGI_KEEP_CONN), one at a time.
"""
import hashlib
import socketserver
import struct
import sys
import time

BEGIN_REQUEST, END_REQUEST, PARAMS, STDIN, STDOUT = 1, 3, 4, 5, 6
KEEP_CONN = 1


def read_exact(f, n):
    data = f.read(n)
    if len(data) != n:
        raise EOFError
    return data


def read_record(f):
    version, rtype, rid, clen, plen, _ = struct.unpack("!BBHHBB", read_exact(f, 8))
    content = read_exact(f, clen)
    read_exact(f, plen)
    return rtype, rid, content


def record(rtype, rid, content=b""):
    return struct.pack("!BBHHBB", 1, rtype, rid, len(content), 0, 0) + content


def stdout_records(rid, data):
    out = bytearray()
    for i in range(0, len(data), 65535):
        out += record(STDOUT, rid, data[i:i + 65535])
    return bytes(out)


def parse_params(data):
    params, i = {}, 0

    def length():
        nonlocal i
        if data[i] & 0x80:
            n = struct.unpack("!I", data[i:i + 4])[0] & 0x7FFFFFFF
            i += 4
        else:
            n = data[i]
            i += 1
        return n

    while i < len(data):
        nlen = length()
        vlen = length()
        name = data[i:i + nlen].decode("latin-1")
        i += nlen
        params[name] = data[i:i + vlen].decode("latin-1")
        i += vlen
    return params


class Handler(socketserver.StreamRequestHandler):
    def handle(self):
        try:
            while self.one_request():
                pass
        except (EOFError, ConnectionError):
            pass

    def one_request(self):
        rtype, rid, content = read_record(self.rfile)
        if rtype != BEGIN_REQUEST:
            return False
        keep = content[2] & KEEP_CONN
        params_bytes, body = bytearray(), bytearray()
        while True:
            rtype, _, content = read_record(self.rfile)
            if rtype == PARAMS:
                params_bytes += content
            elif rtype == STDIN:
                if not content:
                    break
                body += content
        params = parse_params(bytes(params_bytes))
        path = params.get("REQUEST_URI", "")
        w = self.wfile
        if "/stream" in path:
            w.write(record(STDOUT, rid, b"Status: 200 OK\r\nContent-Type: text/plain\r\n\r\n"))
            w.flush()
            for i in range(3):
                w.write(record(STDOUT, rid, f"line {i}\n".encode()))
                w.flush()
                time.sleep(0.3)
        elif "/broken" in path:
            head = b"Status: 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 100000\r\n\r\n"
            w.write(stdout_records(rid, head + b"b" * 50000))
            w.flush()
            return False
        elif "/big" in path:
            n = int(path.split("n=")[1]) if "n=" in path else 1 << 20
            data = (b"0123456789" * (n // 10 + 1))[:n]
            head = f"Status: 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {n}\r\n\r\n"
            w.write(stdout_records(rid, head.encode() + data))
        else:
            text = (f"length={len(body)} sha256={hashlib.sha256(body).hexdigest()} "
                    f"http2={params.get('HTTP2', '-')} method={params.get('REQUEST_METHOD')}\n")
            w.write(stdout_records(rid, b"Status: 200 OK\r\nContent-Type: text/plain\r\n\r\n" + text.encode()))
        w.write(record(STDOUT, rid) + record(END_REQUEST, rid, struct.pack("!IB3x", 0, 0)))
        w.flush()
        return bool(keep)


class Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True
    # httpd opens a connection per concurrent request (socketserver's
    # default backlog of 5 reset some under load).
    request_queue_size = 256


if __name__ == "__main__":
    Server(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
