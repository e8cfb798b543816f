"""Which HTTP server for the router's HTTP front? The candidates that can run inside the
router's own event loop (uvloop, beside grpc.aio), serving the same minimal handler.

Each server runs embedded in a uvloop loop in a process of its own: granian (Rust,
hyper; ``granian.server.embed`` with its RSGI interface), uvicorn (``Server.serve``
in a running loop, httptools parser, a bare ASGI app) and aiohttp (``AppRunner`` +
``TCPSite``). The handler does what the front does around the router's own work:
read the JSON body, decode it, yield to the loop once, and answer JSON, or stream
100 server-sent events. A client process drives each at concurrency 32. Prints
requests/s and the server's CPU per request and per streamed event.

(hypercorn also embeds, but parses HTTP in pure Python with h11: it was 5-6x slower
per request in a one-off run on these machines, so it is not among the rows.)

    .venv/bin/python benchmarks/http_servers.py [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from typing import Any

import aiohttp
from harness import SMOKE_HELP, cpu_seconds, free_port

SERVERS = ("granian", "uvicorn", "aiohttp")
EVENT = b'data: {"choices":[{"index":0,"delta":{"content":" tok"},"finish_reason":null}]}\n\n'
EVENTS_PER_STREAM = 100
REPLY = {"object": "chat.completion", "choices": [{"index": 0, "message": {"content": "ok"}}]}
BODY = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hello"}]}).encode()


def _answer(body: bytes) -> bytes:
    json.loads(body)
    return json.dumps(REPLY).encode()


async def _asgi(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    await asyncio.sleep(0)
    if scope["path"] == "/stream":
        json.loads(body)
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for _ in range(EVENTS_PER_STREAM):
            await asyncio.sleep(0)
            await send({"type": "http.response.body", "body": EVENT, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": _answer(body)})


class _Rsgi:
    async def __call__(self, scope: Any, protocol: Any) -> None:
        body = await protocol()
        await asyncio.sleep(0)
        if scope.path == "/stream":
            json.loads(body)
            transport = protocol.response_stream(200, [("content-type", "text/event-stream")])
            for _ in range(EVENTS_PER_STREAM):
                await asyncio.sleep(0)
                await transport.send_bytes(EVENT)
            return
        protocol.response_bytes(200, [("content-type", "application/json")], _answer(body))


async def _serve(kind: str, port: int) -> None:
    if kind == "granian":
        from granian.constants import Interfaces
        from granian.server.embed import Server

        server = Server(_Rsgi(), port=port, interface=Interfaces.RSGI, log_enabled=False)
        await server.serve()
    elif kind == "uvicorn":
        import uvicorn

        config = uvicorn.Config(
            _asgi, port=port, loop="none", lifespan="off", access_log=False, log_level="warning"
        )
        await uvicorn.Server(config).serve()
    else:
        from aiohttp import web

        async def handle(request: web.Request) -> web.StreamResponse:
            body = await request.read()
            await asyncio.sleep(0)
            if request.path != "/stream":
                return web.Response(body=_answer(body), content_type="application/json")
            json.loads(body)
            response = web.StreamResponse(headers={"content-type": "text/event-stream"})
            await response.prepare(request)
            for _ in range(EVENTS_PER_STREAM):
                await asyncio.sleep(0)
                await response.write(EVENT)
            await response.write_eof()
            return response

        app = web.Application()
        app.router.add_post("/{path:.*}", handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        await asyncio.Event().wait()


async def _load(url: str, seconds: float, stream: bool) -> int:
    """Requests answered at concurrency 32 in ``seconds``."""
    done = 0
    stop_at = time.perf_counter() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < stop_at:
                async with session.post(url + ("/stream" if stream else "/"), data=BODY) as r:
                    await r.read()
                    assert r.status == 200
                done += 1

        await asyncio.gather(*(worker() for _ in range(32)))
    return done


async def _wait_ready(url: str, process: subprocess.Popen[bytes]) -> None:
    """Until 20 requests in a row are answered: a server that just bound its port may
    still drop a connection or two (granian's embedded start does, now and then)."""
    deadline = time.monotonic() + 30
    answered = 0
    async with aiohttp.ClientSession() as session:
        while answered < 20:
            try:
                async with session.post(url + "/", data=BODY) as response:
                    await response.read()
                answered += 1
            except aiohttp.ClientError:
                answered = 0
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                await asyncio.sleep(0.05)


def _start(kind: str) -> tuple[subprocess.Popen[bytes], str]:
    """A process serving with ``kind``, and its URL."""
    port = free_port()
    process = subprocess.Popen([sys.executable, __file__, "--serve", kind, str(port)])
    return process, f"http://127.0.0.1:{port}"


async def _measure(kind: str, seconds: float) -> tuple[float, float, float]:
    """(requests/s, CPU µs per request, CPU µs per streamed event) of one server."""
    process, url = _start(kind)
    try:
        await _wait_ready(url, process)
        await _load(url, seconds / 4, False)  # warm-up
        before = cpu_seconds(process.pid)
        count = await _load(url, seconds, False)
        per_request = (cpu_seconds(process.pid) - before) / count
        before = cpu_seconds(process.pid)
        streams = await _load(url, seconds, True)
        per_event = (cpu_seconds(process.pid) - before) / (streams * EVENTS_PER_STREAM)
    finally:
        process.terminate()
        process.wait(10)
    return count / seconds, per_request * 1e6, per_event * 1e6


async def run(args: argparse.Namespace) -> None:
    seconds = 0.5 if args.smoke else 5.0
    print("| server (embedded in a uvloop loop) | requests/s | CPU µs/request | CPU µs/event |")
    print("|---|---|---|---|")
    for kind in SERVERS:
        rps, per_request, per_event = await _measure(kind, seconds)
        print(f"| {kind} | {rps:.0f} | {per_request:.0f} | {per_event:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    parser.add_argument("--serve", nargs=2, metavar=("KIND", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        import uvloop

        uvloop.run(_serve(args.serve[0], int(args.serve[1])))
        return
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
