"""An HTTP/2 (h2c, prior knowledge) backend for the proxy tests, run as its
own process:
    python h2backend.py PORT [MAX_CONCURRENT_STREAMS [CERT KEY [CLIENT_CA]]]
(with CERT and KEY: TLS with ALPN h2; with CLIENT_CA: a client certificate
issued by it is required; with H2BACKEND_UNIX=PATH in the environment,
also on that Unix domain socket)
Paths (query parameters after ?):
  /delay?s=1          -> after s seconds, 200 "ok conn=N stream=M path=..."
  .../headers         -> 200, JSON of the request's fields (pseudo ones too);
                         x-client-cn: the client certificate's CN, if any;
                         x-tls-version, x-tls-cipher: what TLS agreed on
  POST /echo          -> 200 "length=N sha256=HEX" of the request body, its
                         trailers as JSON in x-request-trailers
  /trailers           -> 200 "hello" + trailers grpc-status: 0, grpc-message: fine
  /early              -> 103 (link) then 200 "early"
  /reset              -> RST_STREAM(INTERNAL_ERROR) before any response
  /reset-mid          -> 200, 10000 bytes, then RST_STREAM(INTERNAL_ERROR)
  /goaway?t=TOKEN     -> first time per token: GOAWAY(last stream = 0), close
                         (the request was not processed); then 200 "retried"
  /die?t=TOKEN&s=1    -> first time per token: after s seconds the connection
                         ends without GOAWAY; then 200 "retried"
  /goaway-after       -> 200 "bye" and GOAWAY(last stream = this one): later
                         requests must use a new connection
  /big?n=BYTES        -> n bytes (pattern), flow-controlled
  /stream?n=3         -> 200 at once, then n events 0.5 s apart
  /redirect           -> 302 to http://127.0.0.1:PORT/elsewhere
  /mapped             -> 201 with Location, Content-Location, Destination
                         and two Set-Cookie fields naming this backend
  /.../links          -> 103 and 200 with Link fields naming /app/ paths
  /stats              -> JSON {"connections": N, "open": O, "max_streams": M} (the most
                         streams seen open at once on one connection), and
                         "max_delaying_conns": the most connections with a
                         /delay in progress at once
"""
import asyncio
import hashlib
import os
import ssl
import json
import sys
import urllib.parse

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings

PORT = int(sys.argv[1])
MAX_STREAMS = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
TLS = None
if len(sys.argv) > 4:
    TLS = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    TLS.load_cert_chain(sys.argv[3], sys.argv[4])
    TLS.set_alpn_protocols(["h2"])
    if len(sys.argv) > 5:
        TLS.verify_mode = ssl.CERT_REQUIRED
        TLS.load_verify_locations(sys.argv[5])
STATS = {"connections": 0, "open": 0, "max_streams": 0, "resets_received": 0, "bodies_ended": 0,
         "max_delaying_conns": 0}
# Connection number -> its /delay requests in progress.
DELAYING = {}
SEEN_TOKENS = set()


class Conn:
    def __init__(self, reader, writer, number):
        self.reader, self.writer, self.number = reader, writer, number
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        self.h2.local_settings = h2.settings.Settings(client=False, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_STREAMS})
        # Heads as large as an HTTP/1.1 front lets in (hpack's default
        # bound is 64 KiB).
        self.h2.decoder.max_header_list_size = 1 << 21
        self.bodies = {}
        self.heads = {}
        self.trailers = {}
        self.duplex = set()
        self.open = set()
        self.window = asyncio.Event()
        self.closed = False

    def flush(self):
        data = self.h2.data_to_send()
        if data and not self.closed:
            self.writer.write(data)

    async def send_body(self, sid, data, end=True):
        view = memoryview(data)
        while len(view):
            try:
                window = min(self.h2.local_flow_control_window(sid), self.h2.max_outbound_frame_size)
            except Exception:
                return
            if window <= 0:
                self.window.clear()
                await self.window.wait()
                continue
            self.h2.send_data(sid, bytes(view[:window]))
            view = view[window:]
            self.flush()
            await self.writer.drain()
        if end:
            self.h2.end_stream(sid)
            self.flush()

    async def respond(self, sid, status, body, headers=(), trailers=None):
        hdrs = [(":status", str(status)), ("content-type", "text/plain")] + list(headers)
        if trailers is None:
            hdrs.append(("content-length", str(len(body))))
        self.h2.send_headers(sid, hdrs, end_stream=not body and trailers is None)
        self.flush()
        if body:
            await self.send_body(sid, body, end=trailers is None)
        if trailers is not None:
            self.h2.send_headers(sid, trailers, end_stream=True)
            self.flush()

    async def handle(self, sid):
        head = self.heads[sid]
        body = bytes(self.bodies.get(sid, b""))
        path = head.get(":path", "/")
        url = urllib.parse.urlsplit(path)
        q = dict(urllib.parse.parse_qsl(url.query))
        route = url.path
        try:
            if route == "/delay":
                DELAYING[self.number] = DELAYING.get(self.number, 0) + 1
                STATS["max_delaying_conns"] = max(STATS["max_delaying_conns"], len(DELAYING))
                try:
                    await asyncio.sleep(float(q.get("s", "1")))
                finally:
                    DELAYING[self.number] -= 1
                    if not DELAYING[self.number]:
                        del DELAYING[self.number]
                await self.respond(sid, 200, f"ok port={PORT} conn={self.number} stream={sid} path={path}\n".encode())
            elif route.endswith("/headers"):
                fields = [("x-backend-conn", str(self.number))]
                tls = self.writer.get_extra_info("ssl_object")
                if tls:
                    fields += [("x-tls-version", tls.version()), ("x-tls-cipher", tls.cipher()[0])]
                peer = self.writer.get_extra_info("peercert")
                if peer:
                    cn = [v for rdn in peer.get("subject", ()) for k, v in rdn if k == "commonName"]
                    fields.append(("x-client-cn", ",".join(cn)))
                await self.respond(sid, 200, json.dumps(head).encode(), fields)
            elif route == "/echo":
                trailers = json.dumps(self.trailers.get(sid, {}))
                await self.respond(sid, 200, f"length={len(body)} sha256={hashlib.sha256(body).hexdigest()}".encode(),
                                   [("x-request-trailers", trailers)])
            elif route == "/trailers":
                await self.respond(sid, 200, b"hello", trailers=[("grpc-status", "0"), ("grpc-message", "fine")])
            elif route.endswith("/links"):
                self.h2.send_headers(sid, [(":status", "103"), ("link", "</app/style.css>; rel=preload; as=style")])
                self.flush()
                await self.respond(sid, 200, b"links", [
                    ("link", f'</app/a.css>; rel=preload, <http://127.0.0.1:{PORT}/app/b>; rel="next", </else>; rel=x')])
            elif route == "/early":
                self.h2.send_headers(sid, [(":status", "103"), ("link", "</style.css>; rel=preload; as=style")])
                self.flush()
                await asyncio.sleep(0.2)
                await self.respond(sid, 200, b"early")
            elif route == "/reset":
                self.h2.reset_stream(sid, h2.errors.ErrorCodes.INTERNAL_ERROR)
                self.flush()
            elif route == "/reset-mid":
                self.h2.send_headers(sid, [(":status", "200"), ("content-type", "application/octet-stream")])
                self.flush()
                await self.send_body(sid, b"x" * 10000, end=False)
                await asyncio.sleep(0.3)
                self.h2.reset_stream(sid, h2.errors.ErrorCodes.INTERNAL_ERROR)
                self.flush()
            elif route == "/goaway":
                token = q.get("t", "")
                if token not in SEEN_TOKENS:
                    SEEN_TOKENS.add(token)
                    self.h2.close_connection(error_code=h2.errors.ErrorCodes.NO_ERROR, last_stream_id=0)
                    self.flush()
                    await self.writer.drain()
                    await asyncio.sleep(0.2)
                    self.closed = True
                    self.writer.close()
                    return
                await self.respond(sid, 200, f"retried conn={self.number}\n".encode())
            elif route == "/die":
                # After s seconds, the first time per token: the connection
                # ends at once, without GOAWAY (a backend process killed).
                await asyncio.sleep(float(q.get("s", "1")))
                token = q.get("t", "")
                if token not in SEEN_TOKENS:
                    SEEN_TOKENS.add(token)
                    self.closed = True
                    self.writer.transport.abort()
                    return
                await self.respond(sid, 200, f"retried conn={self.number}\n".encode())
            elif route == "/protocol-error":
                token = q.get("t", "")
                if token not in SEEN_TOKENS:
                    SEEN_TOKENS.add(token)
                    # DATA on stream 0, a connection error (RFC 9113 6.1);
                    # the connection stays open, as a broken backend's may.
                    self.writer.write(b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x")
                    return
                await self.respond(sid, 200, f"retried conn={self.number}\n".encode())
            elif route == "/head-then-protocol-error":
                # A response head, then DATA on stream 0 in the same write:
                # the connection error comes before the front could pass the
                # head on.
                self.h2.send_headers(sid, [(":status", "200"), ("content-type", "text/plain")])
                self.writer.write(self.h2.data_to_send() + b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x")
            elif route == "/goaway-after":
                await self.respond(sid, 200, f"bye conn={self.number}\n".encode())
                self.h2.close_connection(error_code=h2.errors.ErrorCodes.NO_ERROR, last_stream_id=sid)
                self.flush()
            elif route == "/big":
                n = int(q.get("n", "1000000"))
                pattern = bytes(range(256)) * (n // 256 + 1)
                self.h2.send_headers(sid, [(":status", "200"), ("content-length", str(n)),
                                           ("content-type", "application/octet-stream")])
                self.flush()
                await self.send_body(sid, pattern[:n])
            elif route == "/wrong-length":
                # A body that breaks its content-length: `n` bytes where
                # `cl` were declared; with `t=1`, trailers end the stream.
                self.h2.send_headers(sid, [(":status", "200"), ("content-length", q.get("cl", "3"))])
                self.flush()
                trailers = q.get("t") == "1"
                await self.send_body(sid, b"x" * int(q.get("n", "6")), end=not trailers)
                if trailers:
                    self.h2.send_headers(sid, [("grpc-status", "0")], end_stream=True)
                    self.flush()
            elif route == "/odd-fields":
                # Fields HTTP/2 does not allow, as application backends send
                # them: a value with trailing space, a name with `@`.
                self.h2.config.validate_outbound_headers = False
                self.h2.config.normalize_outbound_headers = False
                try:
                    await self.respond(sid, 200, b"odd\n", [("x-powered-by", "PHP "), ("x@y", "1"), ("x-fine", "yes")])
                finally:
                    self.h2.config.validate_outbound_headers = True
                    self.h2.config.normalize_outbound_headers = True
            elif route == "/stream":
                self.h2.send_headers(sid, [(":status", "200"), ("content-type", "text/event-stream")])
                self.flush()
                await self.writer.drain()
                for i in range(int(q.get("n", "3"))):
                    await asyncio.sleep(float(q.get("d", "0.5")))
                    await self.send_body(sid, f"event {i}\n".encode(), end=False)
                self.h2.end_stream(sid)
                self.flush()
            elif route == "/bodiless":
                # A head that has no content by its status (204, 304) or
                # the method (HEAD), without END_STREAM; the stream ends
                # `hold` seconds later.
                self.h2.send_headers(sid, [(":status", q.get("status", "204")), ("x-backend-conn", str(self.number))])
                self.flush()
                await self.writer.drain()
                await asyncio.sleep(float(q.get("hold", "1")))
                self.h2.end_stream(sid)
                self.flush()
            elif route == "/status":
                await asyncio.sleep(float(q.get("s", "0")))
                code = q.get("code", "200")
                challenge = [("www-authenticate", 'Basic realm="backend"')] if code == "401" else []
                await self.respond(sid, code, b"as asked\n", challenge)
            elif route == "/redirect":
                await self.respond(sid, 302, b"", [("location", f"http://127.0.0.1:{PORT}/elsewhere")])
            elif route == "/mapped":
                here = f"http://127.0.0.1:{PORT}"
                await self.respond(sid, 201, b"", [
                    ("location", f"{here}/new"), ("content-location", f"{here}/new.json"),
                    ("destination", f"{here}/moved"),
                    ("set-cookie", "a=1; Domain=127.0.0.1; Path=/"), ("set-cookie", "b=2; Path=/")])
            elif route == "/stats":
                await self.respond(sid, 200, json.dumps(STATS).encode())
            else:
                await self.respond(sid, 404, b"not here\n")
        except Exception:
            pass
        finally:
            if not self.closed:
                try:
                    await self.writer.drain()
                except Exception:
                    pass

    async def run(self):
        self.h2.initiate_connection()
        self.flush()
        while not self.closed:
            try:
                data = await self.reader.read(65536)
            except Exception:
                break
            if not data:
                break
            try:
                events = self.h2.receive_data(data)
            except Exception:
                break
            for ev in events:
                if isinstance(ev, h2.events.RequestReceived):
                    self.heads[ev.stream_id] = {k.decode(): v.decode() for k, v in ev.headers}
                    self.open.add(ev.stream_id)
                    STATS["max_streams"] = max(STATS["max_streams"], len(self.open))
                    if self.heads[ev.stream_id].get(":path") == "/too-large" and not ev.stream_ended:
                        # Answers before the request body and asks the
                        # client to stop sending it (RFC 9113 8.1).
                        self.h2.send_headers(ev.stream_id, [(":status", "413"), ("content-length", "10")])
                        self.h2.send_data(ev.stream_id, b"too large\n", end_stream=True)
                        self.h2.reset_stream(ev.stream_id, h2.errors.ErrorCodes.NO_ERROR)
                        del self.heads[ev.stream_id]
                    elif self.heads[ev.stream_id].get(":path") == "/answer-first" and not ev.stream_ended:
                        # Answers whole before the request body and goes on
                        # reading it (no reset): what it then gets is
                        # counted as usual (bodies_ended, resets_received).
                        self.h2.send_headers(ev.stream_id, [(":status", "200"), ("content-length", "9")])
                        self.h2.send_data(ev.stream_id, b"answered\n", end_stream=True)
                        del self.heads[ev.stream_id]
                    elif self.heads[ev.stream_id].get(":path") == "/duplex" and not ev.stream_ended:
                        # Full duplex: answers at once and echoes each
                        # piece of the request body as it comes.
                        self.h2.send_headers(ev.stream_id, [(":status", "200")])
                        self.duplex.add(ev.stream_id)
                        del self.heads[ev.stream_id]
                elif isinstance(ev, h2.events.DataReceived) and ev.stream_id in self.duplex:
                    self.h2.send_data(ev.stream_id, ev.data)
                    self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.DataReceived):
                    self.bodies.setdefault(ev.stream_id, bytearray()).extend(ev.data)
                    if ev.flow_controlled_length:
                        self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.TrailersReceived):
                    self.trailers[ev.stream_id] = {k.decode(): v.decode() for k, v in ev.headers}
                elif isinstance(ev, h2.events.StreamEnded):
                    if ev.stream_id in self.bodies:
                        STATS["bodies_ended"] += 1
                    if ev.stream_id in self.duplex:
                        self.duplex.discard(ev.stream_id)
                        self.h2.end_stream(ev.stream_id)
                    elif ev.stream_id in self.heads:
                        asyncio.ensure_future(self.handle(ev.stream_id))
                elif isinstance(ev, h2.events.StreamReset):
                    self.open.discard(ev.stream_id)
                    STATS["resets_received"] += 1
                elif isinstance(ev, h2.events.WindowUpdated):
                    self.window.set()
            for sid in list(self.open):
                try:
                    if self.h2.streams.get(sid) is None or self.h2.streams[sid].closed:
                        self.open.discard(sid)
                except Exception:
                    self.open.discard(sid)
            self.flush()
            try:
                await self.writer.drain()
            except Exception:
                break
        self.closed = True
        self.window.set()
        try:
            self.writer.close()
        except Exception:
            pass


async def serve(reader, writer):
    STATS["connections"] += 1
    STATS["open"] += 1
    try:
        await Conn(reader, writer, STATS["connections"]).run()
    finally:
        STATS["open"] -= 1


async def main():
    if os.environ.get("H2BACKEND_UNIX"):
        # The same backend on a Unix domain socket as well (ready before the
        # TCP port, which tells the tests the backend is up).
        await asyncio.start_unix_server(serve, os.environ["H2BACKEND_UNIX"], ssl=TLS)
        # httpd's children (www-data) need write permission to connect.
        os.chmod(os.environ["H2BACKEND_UNIX"], 0o666)
    server = await asyncio.start_server(serve, "127.0.0.1", PORT, ssl=TLS)
    async with server:
        await server.serve_forever()


asyncio.run(main())
