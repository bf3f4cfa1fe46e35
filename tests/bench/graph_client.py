"""CPU per Graph API send in the bridge's process: aiohttp's ClientSession against our
keep-alive client (bridge/http/client.py), on uvloop, rounds interleaved.

A server in another process (pinned to the last core; the client to the first) answers every
`POST /v21.0/{id}/messages` as Meta does: a 200 with Meta's headers (the ones
graph.facebook.com sends: cache, trace ids, usage, HSTS, ...) and body. The client sends
`--requests` typical text messages per round, `--concurrency` at a time (the outbox sends up
to 8 at once), and the process's CPU time (`time.process_time`, user + system, all threads)
is divided by the requests. Both paths do the same work around the HTTP: orjson both ways,
the wamid read out of the answer.
- `aiohttp`: `ClientSession.request(...)` then `resp.read()`, as GraphClient sent until the
  keep-alive client (its media uploads still do).
- `lean`: `GraphClient._post_message`, which goes through the keep-alive client.

Usage: python -m tests.bench.graph_client [--requests 20000] [--rounds 5] [--concurrency 8]
       [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import uvloop

from bridge.whatsapp.graph import GraphClient
from tests.fakes.graph import TOKEN
from tests.load import publish

PHONE = "100000000000001"
BODY: dict[str, Any] = {
    "messaging_product": "whatsapp",
    "recipient_type": "individual",
    "to": "34600000001",
    "type": "text",
    "text": {
        "body": "Gracias por escribirnos. Su pedido 48213 salió esta mañana y llegará mañana "
        "entre las 9 y las 14 h. Puede seguirlo en la web con el número de envío.",
        "preview_url": False,
    },
    "biz_opaque_callback_data": "r0123456789abcdef:0",
}
ANSWER = orjson.dumps(
    {
        "messaging_product": "whatsapp",
        "contacts": [{"input": "34600000001", "wa_id": "34600000001"}],
        "messages": [{"id": "wamid.HBgLMzQ2MDAwMDAwMDEVAgARGBI5QTNDQTVCM0Q0Q0Q2RTY3RTcA"}],
    }
)
# What graph.facebook.com sends with a message's 200 (values shortened, not the names).
HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: application/json; charset=UTF-8\r\n"
    b"Vary: Origin\r\n"
    b"Access-Control-Allow-Origin: *\r\n"
    b'x-business-use-case-usage: {"123456789012345":[{"type":"whatsapp","call_count":1,'
    b'"total_cputime":1,"total_time":1,"estimated_time_to_regain_access":0}]}\r\n'
    b"facebook-api-version: v21.0\r\n"
    b"Strict-Transport-Security: max-age=15552000; preload\r\n"
    b"Pragma: no-cache\r\n"
    b"Cache-Control: private, no-cache, no-store, must-revalidate\r\n"
    b"Expires: Sat, 01 Jan 2000 00:00:00 GMT\r\n"
    b"x-fb-request-id: AQy3l5mFq0pZ1s2t3u4v5w6\r\n"
    b"x-fb-trace-id: FbTrAcE1d2\r\n"
    b"x-fb-rev: 1019283746\r\n"
    b"X-FB-Debug: 3pXvQ0s5YwZ2mZ1k9o8l7k6j5h4g3f2d1s0a9p8o7i6u5y4t3r2e1w0q==\r\n"
    b"Date: Mon, 23 Nov 2026 18:00:00 GMT\r\n"
    b'Alt-Svc: h3=":443"; ma=86400\r\n'
    b"Connection: keep-alive\r\n"
)
RESPONSE = HEAD + b"Content-Length: %d\r\n\r\n" % len(ANSWER) + ANSWER


async def serve(ready: Callable[[int], None]) -> None:
    """Answer every request with RESPONSE, on a keep-alive connection."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                if length:
                    await reader.readexactly(length)
                writer.write(RESPONSE)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=256)
    ready(server.sockets[0].getsockname()[1])
    await server.serve_forever()


def aiohttp_sender(url: str) -> tuple[Callable[[], Awaitable[str]], Callable[[], Awaitable[None]]]:
    session = aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=15), headers={"Authorization": f"Bearer {TOKEN}"}
    )
    target = f"{url}/v21.0/{PHONE}/messages"
    headers = {"Content-Type": "application/json"}

    async def send() -> str:
        async with session.request("POST", target, data=orjson.dumps(BODY), headers=headers) as r:
            data = orjson.loads(await r.read())
            assert r.status < 300 and isinstance(data, dict)
            return str(data["messages"][0]["id"])

    return send, session.close


def lean_sender(url: str) -> tuple[Callable[[], Awaitable[str]], Callable[[], Awaitable[None]]]:
    graph = GraphClient(url, "v21.0", PHONE, TOKEN)

    async def send() -> str:
        return await graph._post_message(dict(BODY))

    return send, graph.close


SENDERS = {"aiohttp": aiohttp_sender, "lean": lean_sender}


async def run(kind: str, url: str, requests: int, concurrency: int) -> float:
    """CPU µs per request of `requests` sends, after a warm-up."""
    send, close = SENDERS[kind](url)
    try:

        async def worker(n: int) -> None:
            for _ in range(n):
                await send()

        await asyncio.gather(*(worker(50) for _ in range(concurrency)))  # connections, caches
        share = requests // concurrency
        cpu = time.process_time()
        await asyncio.gather(*(worker(share) for _ in range(concurrency)))
        return (time.process_time() - cpu) / (share * concurrency) * 1e6
    finally:
        await close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    if args.serve:
        os.sched_setaffinity(0, {cores[-1]})
        uvloop.run(serve(lambda port: print(port, flush=True)))
        return
    server = subprocess.Popen(
        [sys.executable, "-m", "tests.bench.graph_client", "--serve"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        url = f"http://127.0.0.1:{int(server.stdout.readline())}"
        os.sched_setaffinity(0, {cores[0]})
        results: dict[str, list[float]] = {kind: [] for kind in SENDERS}
        for round_ in range(args.rounds):
            # Alternate which goes first, so drift in the machine's load hits both.
            order = list(SENDERS) if round_ % 2 == 0 else list(reversed(SENDERS))
            for kind in order:
                us = uvloop.run(run(kind, url, args.requests, args.concurrency))
                results[kind].append(us)
                print(f"round {round_ + 1} {kind:8} {us:6.1f} µs CPU/request", flush=True)
        lines = [
            f"{args.requests} sends per round, {args.concurrency} at a time, {args.rounds} "
            "rounds interleaved, uvloop; CPU of the client process per send",
            "",
            "| client | CPU µs/send (median) | rounds |",
            "|---|---|---|",
        ]
        for kind, values in results.items():
            runs = ", ".join(f"{v:.1f}" for v in values)
            lines.append(f"| {kind} | {statistics.median(values):.1f} | {runs} |")
        publish("\n".join(lines), args.out)
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
