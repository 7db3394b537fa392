"""WebSocket peers for tests/websocket.rs, on the Python `websockets` library (a real,
independent implementation of RFC 6455).

    ws.py serve                 an echo server on 127.0.0.1, any free port; prints "PORT n"
    ws.py echo URL              100 messages of mixed sizes up to 1 MiB, text and binary, must
                                come back equal; then a ping, then a close handshake
    ws.py hold URL              connects, prints "OPEN", and waits until the connection
                                closes; prints "CLOSED after S s"
"""

import asyncio
import random
import sys
import time

import websockets


async def serve():
    async def echo(ws):
        async for message in ws:
            await ws.send(message)

    async with websockets.serve(echo, "127.0.0.1", 0, max_size=2 << 20) as server:
        port = server.sockets[0].getsockname()[1]
        print(f"PORT {port}", flush=True)
        await asyncio.Future()


async def echo(url):
    rng = random.Random(7)
    sizes = [0, 1, 125, 126, 127, 65535, 65536, 1 << 20]
    async with websockets.connect(url, max_size=2 << 20) as ws:
        for i in range(100):
            size = sizes[i % len(sizes)] if i < 40 else rng.randrange(0, 1 << 20)
            if i % 2:
                message = "".join(rng.choice("abcdefghé€") for _ in range(size // 3))
            else:
                message = rng.randbytes(size)
            await ws.send(message)
            back = await ws.recv()
            assert back == message, f"message {i} ({size} bytes) came back different"
        pong = await ws.ping(b"are you there")
        await asyncio.wait_for(pong, 5)
        await ws.close()
        assert ws.close_code == 1000, f"close code {ws.close_code}"
    print("OK 100 messages, a ping and a close handshake", flush=True)


async def hold(url):
    async with websockets.connect(url) as ws:
        await ws.send("hello")
        assert await ws.recv() == "hello"
        print("OPEN", flush=True)
        start = time.monotonic()
        try:
            await asyncio.wait_for(ws.recv(), 30)
        except websockets.ConnectionClosed:
            pass
        print(f"CLOSED after {time.monotonic() - start:.3f} s", flush=True)


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "serve":
        asyncio.run(serve())
    elif mode == "echo":
        asyncio.run(echo(sys.argv[2]))
    elif mode == "hold":
        asyncio.run(hold(sys.argv[2]))
