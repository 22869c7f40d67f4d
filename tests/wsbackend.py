"""A WebSocket backend for the WebSocket tests, run as its own process:
    python wsbackend.py PORT EVENTS_FILE
Listens on 127.0.0.1 only. Paths:
  /echo      every message back unchanged (text stays text, binary binary)
  /headers   first sends the upgrade request's fields as a JSON text
             message, then echoes
  /close     echoes one message, then closes with code 4000 "bye"
Subprotocol "chat" is accepted when offered. Each connection's end is
appended to EVENTS_FILE as "closed PATH CODE" (1006: no close frame)."""
import asyncio
import json
import sys

import websockets


async def serve(ws, events):
    path = ws.request.path
    try:
        if path.startswith("/headers"):
            await ws.send(json.dumps({k.lower(): v for k, v in ws.request.headers.raw_items()}))
        async for msg in ws:
            await ws.send(msg)
            if path.startswith("/close"):
                await ws.close(4000, "bye")
                break
    except websockets.ConnectionClosed:
        pass
    finally:
        code = ws.close_code if ws.close_code is not None else 1006
        with open(events, "a") as f:
            f.write(f"closed {path} {code}\n")


async def main(port, events):
    async def handler(ws):
        await serve(ws, events)

    def chat_if_offered(_conn, offered):
        return "chat" if "chat" in offered else None

    async with websockets.serve(handler, "127.0.0.1", port, max_size=1 << 24,
                                select_subprotocol=chat_if_offered, ping_interval=None):
        await asyncio.sleep(3600)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
