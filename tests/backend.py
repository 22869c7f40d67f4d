"""An HTTP/1.1 backend for the mod_proxy tests, run as its own process:
    python backend.py PORT
Paths:
  POST|PUT /echo      -> 200, "length=N sha256=HEX" of the request body
                         (Content-Length or chunked)
  GET /sse?n=3        -> text/event-stream, n events 300 ms apart (flushed)
  GET /trailers       -> chunked body "hello" with trailers grpc-status: 0
  GET /early          -> 103 Early Hints (Link) then 200
  GET /early-bad      -> the same, the 103 with a field HTTP/2 cannot carry
  GET /big?n=BYTES    -> n bytes
  GET /bigchunked?n=BYTES -> n bytes, chunked (64 KiB chunks)
  GET /headers        -> the request's header lines, as received
  GET /broken?framing=length|chunked -> 200 announcing 100000 bytes (or
                         chunked), 50000 sent, then the connection closes
"""
import hashlib
import socketserver
import sys
import time
from http.server import BaseHTTPRequestHandler, HTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = bytearray()
            while True:
                line = self.rfile.readline()
                size = int(line.split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(body)
                body += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length", "0"))
        return self.rfile.read(n) if n else b""

    def send_plain(self, body, status=200, ctype="text/plain"):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        if self.path.startswith("/echo"):
            body = self.read_body()
            self.send_plain(f"length={len(body)} sha256={hashlib.sha256(body).hexdigest()}\n".encode())
        else:
            self.send_plain(b"no\n", 404)

    do_PUT = do_POST

    def do_GET(self):
        path, _, query = self.path.partition("?")
        if path == "/sse":
            n = int(query.split("=")[1]) if "=" in query else 3
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(n):
                chunk = f"data: event {i}\n\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
                time.sleep(0.3)
            self.wfile.write(b"0\r\n\r\n")
        elif path == "/bigchunked":
            n = int(query.split("=")[1]) if "=" in query else 100000
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                for start in range(0, n, 65536):
                    chunk = bytes(i % 251 for i in range(start, min(n, start + 65536)))
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.write(b"0\r\n\r\n")
            except OSError:
                pass  # the proxy gave up on it
        elif path == "/trailers":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Trailer", "grpc-status")
            self.end_headers()
            self.wfile.write(b"5\r\nhello\r\n0\r\ngrpc-status: 0\r\ngrpc-message: fine\r\n\r\n")
        elif path in ("/early", "/early-bad"):
            bad = b"X-Bad: a\x01b\r\n" if path == "/early-bad" else b""
            self.wfile.write(b"HTTP/1.1 103 Early Hints\r\nLink: </early.css>; rel=preload\r\n" + bad + b"\r\n")
            self.wfile.flush()
            time.sleep(0.2)
            self.send_plain(b"after the hints\n")
        elif path == "/broken":
            chunked = query == "framing=chunked"
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header(*(("Transfer-Encoding", "chunked") if chunked else ("Content-Length", "100000")))
            self.end_headers()
            self.wfile.write(b"c350\r\n" + b"b" * 50000 + b"\r\n" if chunked else b"a" * 50000)
            self.wfile.flush()
            self.close_connection = True
        elif path == "/headers":
            self.send_plain("".join(f"{n}: {v}\n" for n, v in self.headers.items()).encode())
        elif path == "/big":
            n = int(query.split("=")[1]) if "=" in query else 100000
            self.send_plain(bytes(i % 251 for i in range(n)), ctype="application/octet-stream")
        else:
            self.send_plain(b"backend\n")


class Server(socketserver.ThreadingMixIn, HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


if __name__ == "__main__":
    Server(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
