"""WebSocket (RFC 6455) framing over HTTP/2 streams (RFC 8441), on top of
tests/h2client.py: a tunnel is an extended CONNECT stream whose DATA frames
carry WebSocket frames."""
import os
import struct
import time

TEXT, BINARY, CLOSE, PING, PONG = 0x1, 0x2, 0x8, 0x9, 0xA


def frame(opcode, payload, fin=True, masked=True):
    """One WebSocket frame; clients mask their frames (RFC 6455 5.3)."""
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    mask_bit = 0x80 if masked else 0
    if n < 126:
        head += bytes([mask_bit | n])
    elif n < 1 << 16:
        head += bytes([mask_bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", n)
    if not masked:
        return head + payload
    key = os.urandom(4)
    body = bytes(b ^ key[i % 4] for i, b in enumerate(payload)) if n < 4096 else _mask_fast(payload, key)
    return head + key + body


def _mask_fast(payload, key):
    k = int.from_bytes(key * ((len(payload) + 3) // 4), "big") >> (8 * ((4 - len(payload) % 4) % 4))
    return (int.from_bytes(payload, "big") ^ k).to_bytes(len(payload), "big")


def parse(buf):
    """Complete frames at the start of `buf`: ([(fin, opcode, payload)], used)."""
    frames, off = [], 0
    while len(buf) - off >= 2:
        b0, b1 = buf[off], buf[off + 1]
        n, p = b1 & 0x7F, off + 2
        if n == 126:
            if len(buf) - p < 2:
                break
            n, p = struct.unpack("!H", buf[p:p + 2])[0], p + 2
        elif n == 127:
            if len(buf) - p < 8:
                break
            n, p = struct.unpack("!Q", buf[p:p + 8])[0], p + 8
        key = None
        if b1 & 0x80:
            if len(buf) - p < 4:
                break
            key, p = buf[p:p + 4], p + 4
        if len(buf) - p < n:
            break
        payload = bytes(buf[p:p + n])
        if key:
            payload = _mask_fast(payload, bytes(key))
        frames.append((bool(b0 & 0x80), b0 & 0x0F, payload))
        off = p + n
    return frames, off


class Tunnel:
    """One WebSocket over an extended CONNECT stream of `client`."""

    def __init__(self, client, path, headers=(), protocol="websocket"):
        self.client = client
        hdrs = [(":protocol", protocol), ("sec-websocket-version", "13"), *headers]
        self.sid = client.request(path, method="CONNECT", headers=hdrs, end_stream=False)
        self.stream = client.streams[self.sid]
        self.taken = 0
        self.messages = []

    def wait_open(self, timeout=20):
        self.client.wait(lambda: self.stream.status is not None or self.stream.done, timeout)
        return self.stream.status

    def send(self, opcode, payload):
        self.client.send_body(self.sid, frame(opcode, payload), end_stream=False)

    def _collect(self):
        frames, used = parse(self.stream.data[self.taken:])
        self.taken += used
        self.messages.extend((op, payload) for fin, op, payload in frames)

    def recv(self, timeout=20):
        """The next frame: (opcode, payload)."""
        deadline = time.time() + timeout
        while True:
            self._collect()
            if self.messages:
                return self.messages.pop(0)
            if self.stream.done:
                raise ConnectionError(f"stream ended (reset={self.stream.reset})")
            left = deadline - time.time()
            if left <= 0:
                raise TimeoutError("no WebSocket frame in time")
            self.client.read_some(timeout=min(left, 2))

    def wait_end(self, timeout=10):
        self.client.wait(lambda: self.stream.done, timeout)
        self._collect()
        return self.stream
