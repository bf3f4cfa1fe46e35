"""The keep-alive HTTP client against real local servers: aiohttp's where it behaves, raw
asyncio servers where a server has to misbehave (close, stall, lie about framing), TLS with a
certificate made for the test. Every test runs on asyncio's loop and on uvloop (conftest)."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import random
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pytest_aiohttp import AiohttpServer

from bridge.http.client import ConnectionLost, KeepAliveClient, Unreachable
from bridge.whatsapp.graph import GraphClient
from bridge.whatsapp.sender import SendError
from tests.fakes.graph import TOKEN, FakeGraph
from tests.test_cli import free_port

OK = b'{"ok":true}'
ROUNDS = 5


# -- servers ---------------------------------------------------------------------------------


@dataclass
class RawServer:
    """An asyncio server that reads one request head (and its Content-Length body) at a time
    and answers it with `answer`; counts connections and requests."""

    answer: Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[bool]]
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)
    closed: int = 0  # connections whose client went away
    url: str = ""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    self.closed += 1
                    return
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                self.requests.append(head + await reader.readexactly(length))
                if not await self.answer(reader, writer, len(self.requests)):
                    return
        finally:
            writer.close()


@pytest.fixture
async def raw() -> AsyncIterator[Callable[..., Awaitable[RawServer]]]:
    servers: list[asyncio.Server] = []

    async def start(
        answer: Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[bool]],
    ) -> RawServer:
        state = RawServer(answer)
        server = await asyncio.start_server(state.handle, "127.0.0.1", 0)
        servers.append(server)
        state.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        return state

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


def reply(raw_response: bytes, keep_open: bool = True) -> Callable[..., Awaitable[bool]]:
    """An answer that writes `raw_response` and keeps the connection (or closes it)."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(raw_response)
        await writer.drain()
        return keep_open

    return answer


def json_response(body: bytes = OK, extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        + extra
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
    )


@dataclass
class Counting:
    """An aiohttp app answering every request with JSON; counts connections (peer ports)."""

    peers: set[object] = field(default_factory=set)
    bodies: list[bytes] = field(default_factory=list)
    gate: asyncio.Event | None = None  # while set to an unset event, requests wait on it

    async def handle(self, request: web.Request) -> web.Response:
        assert request.transport is not None
        self.peers.add(request.transport.get_extra_info("peername"))
        self.bodies.append(await request.read())
        if self.gate is not None:
            await self.gate.wait()
        return web.json_response({"n": len(self.bodies), "auth": request.headers["Authorization"]})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app


def client(url: str, timeout: float = 2.0, **kwargs: object) -> KeepAliveClient:
    return KeepAliveClient(url, timeout=timeout, headers={"Authorization": "Bearer t"}, **kwargs)  # type: ignore[arg-type]


# -- keep-alive ------------------------------------------------------------------------------


async def test_sequential_requests_share_one_connection(aiohttp_server: AiohttpServer) -> None:
    app = Counting()
    server = await aiohttp_server(app.app())
    http = client(str(server.make_url("")))
    for i in range(50):
        status, body = await http.request("POST", "/v1/x?a=b", b'{"i":%d}' % i, {"X-Y": "z"})
        assert status == 200 and orjson.loads(body) == {"n": i + 1, "auth": "Bearer t"}
    await http.close()
    assert len(app.peers) == 1
    assert app.bodies == [b'{"i":%d}' % i for i in range(50)]


async def test_a_get_has_no_body(aiohttp_server: AiohttpServer) -> None:
    app = Counting()
    server = await aiohttp_server(app.app())
    http = client(str(server.make_url("")))
    status, _ = await http.request("GET", "/v1/x?fields=id")
    await http.close()
    assert status == 200 and app.bodies == [b""]


async def test_server_closing_an_idle_connection_is_not_an_error(
    aiohttp_server: AiohttpServer,
) -> None:
    app = Counting()
    # The server drops connections idle for 0.1 s, as Meta's edge and proxies do.
    server = await aiohttp_server(app.app(), keepalive_timeout=0.1)
    http = client(str(server.make_url("")))
    await http.request("POST", "/m", b"{}")
    await asyncio.sleep(0.4)
    status, _ = await http.request("POST", "/m", b"{}")
    await http.close()
    assert status == 200 and len(app.peers) == 2


async def test_connection_close_answer_is_not_reused(
    raw: Callable[..., Awaitable[RawServer]],
) -> None:
    # The server says close but leaves the socket open and reads no more: a client that
    # reused it would wait for an answer that never comes.
    server = await raw(reply(json_response(extra=b"Connection: close\r\n")))
    http = client(server.url, timeout=1.0)
    for _ in range(3):
        assert await http.request("POST", "/m", b"{}") == (200, OK)
    await http.close()
    assert server.connections == 3


async def test_idle_connections_older_than_idle_seconds_are_not_reused(
    aiohttp_server: AiohttpServer,
) -> None:
    app = Counting()
    server = await aiohttp_server(app.app())
    http = client(str(server.make_url("")), idle_seconds=0.1)
    await http.request("GET", "/")
    await asyncio.sleep(0.2)
    await http.request("GET", "/")
    await http.close()
    assert len(app.peers) == 2


async def test_concurrent_requests_use_separate_connections_then_reuse_them(
    aiohttp_server: AiohttpServer,
) -> None:
    app = Counting(gate=asyncio.Event())
    server = await aiohttp_server(app.app())
    http = client(str(server.make_url("")))
    calls = [asyncio.ensure_future(http.request("POST", "/m", b"%d" % i)) for i in range(10)]
    while len(app.bodies) < 10:  # all ten are in the server at once
        await asyncio.sleep(0.01)
    assert app.gate is not None
    app.gate.set()
    answers = await asyncio.gather(*calls)
    assert [status for status, _ in answers] == [200] * 10
    assert len(app.peers) == 10
    await asyncio.gather(*(http.request("POST", "/m", b"again") for _ in range(10)))
    await http.close()
    assert len(app.peers) == 10  # the second round found them idle


def slow(seconds: float, extra: bytes = b"") -> Callable[..., Awaitable[bool]]:
    """An answer after `seconds`; with `extra` (a `Connection: close`), the server closes."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        await asyncio.sleep(seconds)
        writer.write(json_response(extra=extra))
        return not extra

    return answer


async def test_requests_beyond_max_connections_wait_for_one(
    raw: Callable[..., Awaitable[RawServer]],
) -> None:
    server = await raw(slow(0.03))
    http = client(server.url, max_connections=2)
    answers = await asyncio.gather(*(http.request("GET", "/") for _ in range(8)))
    await http.close()
    assert answers == [(200, OK)] * 8
    assert server.connections == 2  # the two were handed from request to request


async def test_a_closed_connection_makes_room_for_a_waiting_request(
    raw: Callable[..., Awaitable[RawServer]],
) -> None:
    server = await raw(slow(0.03, extra=b"Connection: close\r\n"))
    http = client(server.url, max_connections=1)
    answers = await asyncio.gather(*(http.request("GET", "/") for _ in range(3)))
    await http.close()
    assert answers == [(200, OK)] * 3 and server.connections == 3


async def test_no_free_connection_in_time_is_unreachable_and_nothing_is_sent(
    raw: Callable[..., Awaitable[RawServer]],
) -> None:
    server = await raw(slow(0.5))
    http = client(server.url, max_connections=1)
    first = asyncio.ensure_future(http.request("POST", "/m", b"1"))
    while not server.requests:
        await asyncio.sleep(0.01)
    http.timeout = 0.1
    with pytest.raises(Unreachable, match="no connection .* free in time"):
        await http.request("POST", "/m", b"2")
    http.timeout = 2
    assert await first == (200, OK)
    assert await http.request("POST", "/m", b"3") == (200, OK)  # no room was lost
    await http.close()
    assert [r[-1:] for r in server.requests] == [b"1", b"3"] and server.connections == 1


async def test_a_cancelled_waiting_request_takes_no_room_with_it(
    raw: Callable[..., Awaitable[RawServer]],
) -> None:
    server = await raw(slow(0.1))
    http = client(server.url, max_connections=1)
    first = asyncio.ensure_future(http.request("GET", "/"))
    while not server.requests:
        await asyncio.sleep(0.01)
    waiting = asyncio.ensure_future(http.request("GET", "/"))
    await asyncio.sleep(0.02)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert await first == (200, OK)
    assert await http.request("GET", "/") == (200, OK)
    await http.close()
    assert server.connections == 1


async def test_cancellations_at_random_moments_lose_no_room(
    raw: Callable[..., Awaitable[RawServer]],
) -> None:
    # Requests cancelled while connecting, waiting, handed a connection or on the wire: none
    # may take a connection's room with it, or the client would starve.
    server = await raw(slow(0.002))
    http = client(server.url, max_connections=2)
    rng = random.Random(7)
    loop = asyncio.get_running_loop()
    for _ in range(ROUNDS):
        calls = [asyncio.ensure_future(http.request("GET", "/")) for _ in range(60)]
        for call in calls:
            if rng.random() < 0.5:
                loop.call_later(rng.random() * 0.05, call.cancel)
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert all(r == (200, OK) or isinstance(r, asyncio.CancelledError) for r in results)
    http.timeout = 1.0
    answers = await asyncio.gather(*(http.request("GET", "/") for _ in range(20)))
    assert answers == [(200, OK)] * 20
    await http.close()


class CancelOnWake(KeepAliveClient):
    """Cancels `victim` right after the client woke the first waiting request, before that
    request runs: the moment a cancellation would strand what it was handed."""

    victim: asyncio.Task[tuple[int, bytes]] | None = None

    def _release(self, conn: Any, now: float) -> None:
        super()._release(conn, now)
        self._strike()

    def _wake(self) -> None:
        super()._wake()
        self._strike()

    def _strike(self) -> None:
        if self.victim is not None:
            self.victim.cancel()
            self.victim = None


@pytest.mark.parametrize("closing", [False, True], ids=["handed-a-connection", "handed-room"])
async def test_a_request_cancelled_as_it_is_woken_passes_its_turn_on(
    raw: Callable[..., Awaitable[RawServer]], closing: bool
) -> None:
    server = await raw(slow(0.05, extra=b"Connection: close\r\n" if closing else b""))
    http = CancelOnWake(server.url, timeout=1.0, max_connections=1)
    first = asyncio.ensure_future(http.request("GET", "/"))
    while not server.requests:
        await asyncio.sleep(0.01)
    second = asyncio.ensure_future(http.request("GET", "/"))
    await asyncio.sleep(0.01)
    third = asyncio.ensure_future(http.request("GET", "/"))
    await asyncio.sleep(0.01)
    http.victim = second
    assert await first == (200, OK)
    with pytest.raises(asyncio.CancelledError):
        await second
    assert await third == (200, OK)  # not left waiting for its timeout
    await http.close()
    assert server.connections == (2 if closing else 1)


async def test_a_failed_connect_makes_room_for_a_waiting_request() -> None:
    http = client(f"http://127.0.0.1:{free_port()}", timeout=1.0, max_connections=1)
    loop = asyncio.get_running_loop()
    started = loop.time()
    failures = await asyncio.gather(
        http.request("GET", "/"), http.request("GET", "/"), return_exceptions=True
    )
    assert loop.time() - started < 0.5  # the second did not wait out its timeout
    for failure in failures:
        assert isinstance(failure, Unreachable) and "cannot connect" in str(failure)
    await http.close()


async def test_close_fails_waiting_requests(raw: Callable[..., Awaitable[RawServer]]) -> None:
    server = await raw(slow(0.3))
    http = client(server.url, max_connections=1)
    first = asyncio.ensure_future(http.request("GET", "/"))
    while not server.requests:
        await asyncio.sleep(0.01)
    waiting = asyncio.ensure_future(http.request("GET", "/"))
    await asyncio.sleep(0.02)
    await http.close()
    with pytest.raises(Unreachable, match="closed"):
        await waiting
    with pytest.raises(ConnectionLost):
        await first


# -- framing ---------------------------------------------------------------------------------


async def test_chunked_answer_in_pieces(raw: Callable[..., Awaitable[RawServer]]) -> None:
    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for piece in (b'{"a":', b'"' + b"x" * 5000 + b'"', b"}"):
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
            await asyncio.sleep(0.01)
        writer.write(b"0\r\n\r\n")
        return True

    server = await raw(chunked)
    http = client(server.url)
    for _ in range(2):
        status, body = await http.request("POST", "/m", b"{}")
        assert status == 200 and orjson.loads(body) == {"a": "x" * 5000}
    await http.close()
    assert server.connections == 1  # a chunked answer keeps the connection


def in_pieces(*pieces: bytes, keep_open: bool = False) -> Callable[..., Awaitable[bool]]:
    """An answer written in `pieces`, 20 ms apart (so read in as many reads)."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.02)
        return keep_open

    return answer


@pytest.mark.parametrize(
    "pieces",
    [
        [b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil eof"],
        [b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n", b"\r\nuntil", b" eof"],
        [
            b"HTTP/1.1 100 Continue\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.0 200 OK\r\n\r\n",
            b"until eof",
        ],
        # RFC 9112 section 6.3: a transfer coding other than chunked last runs to the close.
        [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", b"until eof"],
        [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, identity\r\n\r\nuntil eof"],
    ],
    ids=["one-read", "several-reads", "after-100", "not-chunked", "chunked-not-last"],
)
async def test_answer_delimited_by_close(
    raw: Callable[..., Awaitable[RawServer]], pieces: list[bytes]
) -> None:
    server = await raw(in_pieces(*pieces))
    http = client(server.url)
    assert await http.request("GET", "/") == (200, b"until eof")
    assert await http.request("GET", "/") == (200, b"until eof")
    await http.close()
    assert server.connections == 2


@pytest.mark.parametrize(
    "pieces",
    [
        [b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\nConnection: close\r\n\r\n{"messages'],
        [b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n", b"\r\n", b'{"messages'],
        [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b'a\r\n{"messages\r\n'],
        [b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", b"{}"],
    ],
    ids=["content-length", "head-in-pieces", "chunked", "after-100"],
)
async def test_answer_cut_short_of_its_framing_is_lost(
    raw: Callable[..., Awaitable[RawServer]], pieces: list[bytes]
) -> None:
    server = await raw(in_pieces(*pieces))
    http = client(server.url)
    with pytest.raises(ConnectionLost, match="middle of the answer"):
        await http.request("POST", "/m", b"{}")
    await http.close()


async def test_interim_100_continue_is_skipped(raw: Callable[..., Awaitable[RawServer]]) -> None:
    server = await raw(reply(b"HTTP/1.1 100 Continue\r\n\r\n" + json_response()))
    http = client(server.url)
    assert await http.request("POST", "/m", b"{}") == (200, OK)
    assert await http.request("POST", "/m", b"{}") == (200, OK)
    await http.close()
    assert server.connections == 1


@pytest.mark.parametrize("later", [False, True])
async def test_bytes_sent_while_idle_retire_the_connection(
    raw: Callable[..., Awaitable[RawServer]], later: bool
) -> None:
    # An answer followed by bytes nobody asked for, in the same packet or while the connection
    # is idle: the next answer on it could not be told from them.
    async def stray(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(json_response())
        if later:
            await writer.drain()
            await asyncio.sleep(0.02)
        writer.write(b"HTTP/1.1 200 OK\r\n")
        return True

    server = await raw(stray)
    http = client(server.url)
    assert await http.request("POST", "/m", b"{}") == (200, OK)
    await asyncio.sleep(0.1)
    assert await http.request("POST", "/m", b"{}") == (200, OK)
    await http.close()
    assert server.connections == 2


async def test_malformed_answer_is_lost(raw: Callable[..., Awaitable[RawServer]]) -> None:
    server = await raw(reply(b"SMTP ready\r\n\r\n"))
    http = client(server.url)
    with pytest.raises(ConnectionLost, match="malformed"):
        await http.request("POST", "/m", b"{}")
    await http.close()


@pytest.mark.parametrize("chunked", [False, True])
async def test_oversized_answer_is_refused(
    raw: Callable[..., Awaitable[RawServer]], chunked: bool
) -> None:
    body = b"x" * (2 << 20)
    if chunked:
        head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        payload = head + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    else:
        payload = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    server = await raw(reply(payload))
    http = client(server.url)  # the default limit, 1 MiB
    with pytest.raises(ConnectionLost, match="larger than 1048576 bytes"):
        await http.request("POST", "/m", b"{}")
    await http.close()


async def test_answer_within_a_smaller_limit_passes(
    raw: Callable[..., Awaitable[RawServer]],
) -> None:
    server = await raw(reply(json_response(b"y" * 900)))
    http = client(server.url, max_response=1000)
    assert await http.request("GET", "/") == (200, b"y" * 900)
    await http.close()
    http = client(server.url, max_response=900)
    with pytest.raises(ConnectionLost):
        await http.request("GET", "/")
    await http.close()


# -- failures and what they mean -------------------------------------------------------------


async def test_refused_port_is_unreachable() -> None:
    http = client(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(Unreachable, match="cannot connect"):
        await http.request("POST", "/m", b"{}")
    await http.close()


async def test_unknown_host_is_unreachable() -> None:
    http = client("http://no-such-host.invalid")
    with pytest.raises(Unreachable):
        await http.request("GET", "/")
    await http.close()


async def test_server_closing_without_an_answer_is_lost(
    raw: Callable[..., Awaitable[RawServer]],
) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        return False

    server = await raw(hang_up)
    http = client(server.url)
    with pytest.raises(ConnectionLost, match="before answering"):
        await http.request("POST", "/m", b"{}")
    await http.close()
    assert len(server.requests) == 1  # and it was not sent again


async def test_reused_connection_reset_before_the_answer_is_lost_not_resent(
    raw: Callable[..., Awaitable[RawServer]],
) -> None:
    async def once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        if n == 1:
            writer.write(json_response())
            return True
        writer.transport.abort()  # reset under the second request
        return False

    server = await raw(once)
    http = client(server.url)
    assert await http.request("POST", "/m", b"{}") == (200, OK)
    with pytest.raises(ConnectionLost):
        await http.request("POST", "/m", b"{}")
    await http.close()
    assert len(server.requests) == 2 and server.connections == 1


class LateToResume(KeepAliveClient):
    """Hands a new connection to its request only once the server's close of it has been
    read: the loop ran the connection's callbacks before the request that opened it resumed,
    as it may when the server closes at once."""

    async def _connect(self, deadline: float) -> Any:
        conn = await super()._connect(deadline)
        await asyncio.wait_for(asyncio.shield(conn.lost), 1.0)
        return conn


async def test_a_new_connection_closed_before_the_request_went_out_is_unreachable() -> None:
    accepted = 0

    def close_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        writer.close()

    server = await asyncio.start_server(close_at_once, "127.0.0.1", 0)
    http = LateToResume(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", timeout=2.0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        # Nothing was written: the outbox may send it again, and need not wait for it.
        with pytest.raises(Unreachable, match="closed the connection"):
            await http.request("POST", "/m", b"{}")
        assert loop.time() - started < 1.0 and accepted == 1
    finally:
        await http.close()
        server.close()
        await server.wait_closed()


async def test_server_that_never_answers_times_out_and_the_connection_is_dropped(
    raw: Callable[..., Awaitable[RawServer]],
) -> None:
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        if n == 1:
            await asyncio.sleep(0.5)
            return True
        writer.write(json_response())
        return True

    server = await raw(stall)
    http = client(server.url, timeout=0.2)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        await http.request("POST", "/m", b"{}")
    assert loop.time() - started < 0.4
    assert await http.request("POST", "/m", b"{}") == (200, OK)
    await http.close()
    assert server.connections == 2


async def test_cancelled_request_closes_its_connection(
    raw: Callable[..., Awaitable[RawServer]],
) -> None:
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        if n == 1:
            await asyncio.sleep(0.3)
        writer.write(json_response())
        return True

    server = await raw(stall)
    http = client(server.url)
    call = asyncio.ensure_future(http.request("POST", "/m", b"{}"))
    while not server.requests:
        await asyncio.sleep(0.01)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert await http.request("POST", "/m", b"{}") == (200, OK)
    assert server.connections == 2
    await asyncio.sleep(0.4)  # the first connection's handler is done stalling
    assert server.closed == 1  # closed by the client, not left open
    await http.close()


async def opened_at_once(
    raw: Callable[..., Awaitable[RawServer]], n: int, **options: float
) -> tuple[RawServer, KeepAliveClient]:
    """`n` requests made together, each on a connection of its own (the server answers
    none until all are open), all answered: the client then holds `n` idle connections."""
    gate = asyncio.Event()

    async def together(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _n: int) -> bool:
        await gate.wait()
        writer.write(json_response())
        return True

    server = await raw(together)
    http = client(server.url, **options)
    calls = [asyncio.ensure_future(http.request("GET", "/")) for _ in range(n)]
    while server.connections < n:
        await asyncio.sleep(0.01)
    gate.set()
    await asyncio.gather(*calls)
    return server, http


async def test_idle_connections_left_unused_are_closed_while_another_is_busy(
    raw: Callable[..., Awaitable[RawServer]],
) -> None:
    server, http = await opened_at_once(raw, 3, idle_seconds=0.15)
    for _ in range(8):  # the newest keeps working; the two below it age out
        await http.request("GET", "/")
        await asyncio.sleep(0.05)
    assert server.closed == 2
    await http.close()
    assert server.connections == 3


async def test_idle_connections_beyond_max_idle_are_closed(
    raw: Callable[..., Awaitable[RawServer]],
) -> None:
    server, http = await opened_at_once(raw, 5, max_idle=2)
    for _ in range(50):
        if server.closed == 3:
            break
        await asyncio.sleep(0.01)
    assert server.closed == 3
    await asyncio.gather(*(http.request("GET", "/") for _ in range(2)))
    assert server.connections == 5  # the two kept were reused
    await http.close()


async def test_close_closes_idle_connections_and_refuses_new_requests(
    raw: Callable[..., Awaitable[RawServer]],
) -> None:
    server = await raw(reply(json_response()))
    http = client(server.url)
    await asyncio.gather(*(http.request("GET", "/") for _ in range(3)))
    await http.close()
    for _ in range(50):
        if server.closed == 3:
            break
        await asyncio.sleep(0.01)
    assert server.closed == 3
    with pytest.raises(Unreachable, match="closed"):
        await http.request("GET", "/")


async def test_a_refused_request_header_takes_no_connection_with_it(
    raw: Callable[..., Awaitable[RawServer]],
) -> None:
    # The request is refused before anything is written: the connection it would have gone
    # out on must not stay counted, or with `max_connections` reached the client starves.
    server = await raw(reply(json_response()))
    http = client(server.url, timeout=0.5, max_connections=1)
    for _ in range(2):
        with pytest.raises(ValueError, match="line break"):
            await http.request("POST", "/m", b"{}", {"X-Y": "a\r\nX-Z: b"})
    assert await http.request("POST", "/m", b"{}") == (200, OK)
    await http.close()
    assert len(server.requests) == 1


def test_a_header_value_with_a_line_break_is_refused() -> None:
    with pytest.raises(ValueError, match="line break"):
        KeepAliveClient("http://x", timeout=1, headers={"Authorization": "Bearer a\r\nX: y"})


async def test_a_target_with_a_space_is_refused() -> None:
    with pytest.raises(ValueError, match="bad request target"):
        await client("http://127.0.0.1:9").request("GET", "/a b")


@pytest.mark.parametrize("method", ["POST\r\nX-Injected: 1", "GÉT", "post", "", "HEAD"])
async def test_a_bad_or_unsupported_method_is_refused(method: str) -> None:
    with pytest.raises(ValueError, match="bad or unsupported method"):
        await client("http://127.0.0.1:9").request(method, "/a")


# -- TLS -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Certs:
    server: ssl.SSLContext
    trusting: ssl.SSLContext  # a client context that trusts the test CA


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """A CA and a certificate for 127.0.0.1 and localhost it signed, made for this test."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bridge test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .sign(ca_key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    trusting = ssl.create_default_context()
    trusting.load_verify_locations(cadata=ca.public_bytes(serialization.Encoding.PEM).decode())
    return Certs(server, trusting)


async def test_tls_with_a_trusted_certificate_keeps_one_connection(
    aiohttp_server: AiohttpServer, certs: Certs
) -> None:
    app = Counting()
    server = await aiohttp_server(app.app(), ssl=certs.server)
    url = str(server.make_url(""))
    assert url.startswith("https://127.0.0.1:")
    http = client(url, ssl_context=certs.trusting)
    for i in range(5):
        status, body = await http.request("POST", "/m", b"%d" % i)
        assert status == 200 and orjson.loads(body)["n"] == i + 1
    await http.close()
    assert len(app.peers) == 1


async def test_tls_connection_closed_by_the_server_while_idle_is_replaced(
    aiohttp_server: AiohttpServer, certs: Certs
) -> None:
    app = Counting()
    server = await aiohttp_server(app.app(), ssl=certs.server, keepalive_timeout=0.1)
    http = client(str(server.make_url("")), ssl_context=certs.trusting)
    for _ in range(3):
        assert (await http.request("POST", "/m", b"{}"))[0] == 200
        await asyncio.sleep(0.3)
    await http.close()
    assert len(app.peers) == 3


async def test_tls_with_an_unknown_certificate_is_unreachable(
    aiohttp_server: AiohttpServer, certs: Certs
) -> None:
    app = Counting()
    server = await aiohttp_server(app.app(), ssl=certs.server)
    http = client(str(server.make_url("")))  # the system's CAs do not know the test CA
    with pytest.raises(Unreachable, match="CERTIFICATE_VERIFY_FAILED"):
        await http.request("POST", "/m", b"{}")
    await http.close()
    assert app.bodies == []


# -- through GraphClient: what the outbox sees -----------------------------------------------

PHONE = "1234"


async def test_graph_sends_over_one_connection_and_survives_idle_closes(
    aiohttp_server: AiohttpServer,
) -> None:
    fake = FakeGraph()
    server = await aiohttp_server(fake.app(), keepalive_timeout=0.1)
    graph = GraphClient(str(server.make_url("")), "v21.0", PHONE, TOKEN, timeout=2)
    for i in range(6):
        # Any error here fails the test, an uncertain one included.
        await graph.send_text(f"3460000000{i}", f"hola {i}")  # unpaced: one each
        if i % 2:
            await asyncio.sleep(0.3)  # the fake's server closes the idle connection
    await graph.close()
    assert fake.bodies() == [f"hola {i}" for i in range(6)]


async def test_graph_over_tls(aiohttp_server: AiohttpServer, certs: Certs) -> None:
    fake = FakeGraph()
    server = await aiohttp_server(fake.app(), ssl=certs.server)
    graph = GraphClient(
        str(server.make_url("")), "v21.0", PHONE, TOKEN, timeout=2, ssl_context=certs.trusting
    )
    assert await graph.send_text("34600000001", "hola") == ["wamid.FAKE000001"]
    await graph.mark_read("wamid.IN")
    await graph.check()
    await graph.close()
    assert fake.bodies() == ["hola"] and len(fake.read_receipts) == 1


async def test_graph_refused_is_retryable_and_certain() -> None:
    graph = GraphClient(f"http://127.0.0.1:{free_port()}", "v21.0", PHONE, TOKEN, timeout=2)
    with pytest.raises(SendError) as caught:
        await graph.send_text("1", "x")
    await graph.close()
    assert caught.value.retryable and not caught.value.uncertain
    assert "unreachable" in str(caught.value)


async def test_graph_hang_up_after_the_request_is_uncertain(
    raw: Callable[..., Awaitable[RawServer]],
) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        return False

    server = await raw(hang_up)
    graph = GraphClient(server.url, "v21.0", PHONE, TOKEN, timeout=2)
    with pytest.raises(SendError) as caught:
        await graph.send_text("1", "x")
    await graph.close()
    assert caught.value.retryable and caught.value.uncertain
    assert "connection lost" in str(caught.value) and TOKEN not in str(caught.value)
    (request,) = server.requests
    assert request.startswith(b"POST /v21.0/1234/messages HTTP/1.1\r\n")
    head, body = request.split(b"\r\n\r\n")
    assert head.split(b"\r\n")[1:] == [
        b"Host: 127.0.0.1:%d" % int(server.url.rsplit(":", 1)[1]),
        b"Authorization: Bearer " + TOKEN.encode(),
        b"User-Agent: whatsapp-bridge",
        b"Connection: keep-alive",
        b"Content-Type: application/json",
        b"Content-Length: %d" % len(body),
    ]  # no Accept-Encoding: answers come as they are
    assert orjson.loads(body)["text"] == {"body": "x", "preview_url": False}


async def test_graph_lost_answer_from_the_fake_is_uncertain(
    aiohttp_server: AiohttpServer,
) -> None:
    fake = FakeGraph(lose_answers=1)
    server = await aiohttp_server(fake.app())
    graph = GraphClient(str(server.make_url("")), "v21.0", PHONE, TOKEN, timeout=2)
    with pytest.raises(SendError) as caught:
        await graph.send_text("1", "x")
    assert caught.value.uncertain
    assert await graph.send_text("1", "y") == ["wamid.FAKE000002"]  # a fresh connection
    await graph.close()


async def test_graph_timeout_is_uncertain(raw: Callable[..., Awaitable[RawServer]]) -> None:
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        await asyncio.sleep(1)
        return False

    server = await raw(stall)
    graph = GraphClient(server.url, "v21.0", PHONE, TOKEN, timeout=0.2)
    with pytest.raises(SendError, match="timed out") as caught:
        await graph.send_text("1", "x")
    await graph.close()
    assert caught.value.retryable and caught.value.uncertain


async def test_graph_html_error_page_is_judged_by_status(
    raw: Callable[..., Awaitable[RawServer]],
) -> None:
    page = b"<html>Bad Gateway</html>"
    head = b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/html\r\nContent-Length: %d\r\n\r\n"
    server = await raw(reply(head % len(page) + page))
    graph = GraphClient(server.url, "v21.0", PHONE, TOKEN, timeout=2)
    with pytest.raises(SendError) as caught:
        await graph.send_text("1", "x")
    await graph.close()
    assert str(caught.value) == "Graph API HTTP 502"
    assert caught.value.retryable and not caught.value.uncertain
