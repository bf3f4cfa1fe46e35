"""A keep-alive HTTP/1.1 client for small JSON requests to one origin (the Graph API).

Why not aiohttp's ClientSession: every reply the bridge sends is one such request, and the
session spends about 70 µs of Python on each (request and response objects, the writer, the
response parser, cookie and redirect handling we never use). Here a request is one bytes
object written at once, and the answer is parsed by llhttp in C (`httptools`, the parser
uvicorn uses); what is left in Python is a few callbacks per response.

What a failure means matters more than speed, because the outbox decides from it whether a
message may have reached the user (bridge/outbox.py):
- `Unreachable`: no connection could be made (DNS, refused, TLS handshake, connect timeout).
  Nothing was sent.
- `ConnectionLost`: the request was written, then the connection broke, or the answer was
  malformed or larger than `max_response`. The server may have acted on it.
- `TimeoutError`: the request went out and no complete answer came within `timeout`
  (counted from the call, connecting included). The server may have acted on it.
This client never sends a request twice. A pooled connection is reused only while it is open
and quiet: one the server has closed (its EOF read while idle) is dropped, so a server
closing idle connections never turns a request into a lost one. Left is the race where the
server closes a connection at the moment a request is written on it: that request fails as
`ConnectionLost`, which is the safe reading.

Responses: framed by Content-Length, chunked, or by the connection's close (then never
reused); `Connection: close` honoured; 1xx interim responses skipped. No `Accept-Encoding` is
sent, so bodies come as they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections import deque
from collections.abc import Callable, Mapping
from typing import cast
from urllib.parse import urlsplit

import aiohappyeyeballs
import httptools

from bridge.errors import BridgeError

# An answer of the Graph API is a few hundred bytes; a megabyte is a proxy gone wrong.
MAX_RESPONSE = 1 << 20
# Idle connections older than this are closed instead of reused: servers drop idle connections
# after some seconds (Meta's edge, proxies), and one dropped under a request costs a send its
# certainty. aiohttp's connector keeps them 15 s too.
IDLE_SECONDS = 15.0
MAX_IDLE = 16
# aiohttp's connector limit: a burst (read receipts are not queued) waits for a connection
# rather than open hundreds of TLS connections to Meta.
MAX_CONNECTIONS = 100
# RFC 8305's recommended delay before trying the next address (IPv6 first, then IPv4).
HAPPY_EYEBALLS_DELAY = 0.25


class HttpClientError(BridgeError):
    """A request failed without an HTTP answer."""


class Unreachable(HttpClientError):
    """No connection could be made: nothing was sent."""


class ConnectionLost(HttpClientError):
    """The request went out and no usable answer came back: it may have been acted on."""


class KeepAliveClient:
    """HTTP/1.1 requests to one origin over a few reused connections.

    `headers` go with every request (the bearer token); `ssl_context` replaces the default
    verification (a test's own CA). At most `max_connections` are open (or opening) at once;
    a request beyond them waits for one, within its timeout. Not bound to an event loop
    until the first request.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float,
        headers: Mapping[str, str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        max_response: int = MAX_RESPONSE,
        max_idle: int = MAX_IDLE,
        idle_seconds: float = IDLE_SECONDS,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self._tls = url.scheme == "https"
        self._host = url.hostname
        self._port = url.port or (443 if self._tls else 80)
        default_port = self._port == (443 if self._tls else 80)
        host = f"[{self._host}]" if ":" in self._host else self._host
        authority = host if default_port else f"{host}:{self._port}"
        self.origin = f"{url.scheme}://{authority}"
        self.timeout = timeout
        self._ssl_context = ssl_context
        self._max_response = max_response
        self._max_idle = max_idle
        self._idle_seconds = idle_seconds
        self._max_connections = max_connections
        # Every request's fixed header lines, encoded once. `Connection: keep-alive` is
        # HTTP/1.1's default, said anyway for proxies that still read it the HTTP/1.0 way.
        self._fixed = _header_lines(
            {"Host": authority, **(headers or {}), "Connection": "keep-alive"}
        )
        self._idle: deque[_Connection] = deque()  # newest last: reused first (LIFO)
        self._open: set[_Connection] = set()
        self._connecting = 0
        # Requests waiting for a connection, first come first served; each is woken with a
        # connection handed over, or None: there is room to open one.
        self._waiters: deque[asyncio.Future[_Connection | None]] = deque()
        self._closed = False

    async def request(
        self,
        method: str,
        target: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, bytes]:
        """`method target` (path and query) with `body`; the answer's status and body.

        Raises Unreachable, ConnectionLost or TimeoutError (module docstring).
        """
        if self._closed:
            raise Unreachable("the HTTP client is closed")
        if not target.startswith("/") or not target.isprintable() or " " in target:
            raise ValueError(f"bad request target {target!r}")
        # A method is a token; HEAD's answer has no body however its headers read, which the
        # response parser is not told: it would wait for one until the timeout.
        if not (method.isascii() and method.isalpha() and method.isupper()) or method == "HEAD":
            raise ValueError(f"bad or unsupported method {method!r}")
        # Made before a connection is taken: a request refused here (a header with a line
        # break) must not strand the connection it would have gone out on, still counted.
        parts = [f"{method} {target} HTTP/1.1\r\n".encode("ascii"), self._fixed]
        if headers:
            parts.append(_header_lines(headers))
        if body is not None:
            parts.append(b"Content-Length: %d\r\n\r\n" % len(body))
            parts.append(body)
        else:
            parts.append(b"\r\n")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        conn = self._reusable(loop.time()) or await self._acquire(deadline)
        waiter = conn.send(b"".join(parts))
        timer = loop.call_at(deadline, conn.time_out)
        try:
            status, data = await waiter
        except BaseException:
            conn.abort()  # failed, timed out or cancelled: in an unknown state
            raise
        finally:
            timer.cancel()
        if conn.keep_alive and conn.usable and not self._closed:
            self._release(conn, loop.time())
        else:
            conn.close()
        return status, data

    def _reusable(self, now: float) -> _Connection | None:
        idle = self._idle
        while idle:
            conn = idle.pop()
            if conn.usable and now - conn.idle_since < self._idle_seconds:
                return conn
            conn.close()
        return None

    def _release(self, conn: _Connection, now: float) -> None:
        if self._closed:
            conn.close()
            return
        if self._hand_to_waiter(conn):  # straight to the longest waiting request
            return
        idle = self._idle
        # The oldest are at the left: close those a quiet spell has left too old to trust.
        while idle and now - idle[0].idle_since >= self._idle_seconds:
            idle.popleft().close()
        if len(idle) >= self._max_idle:
            conn.close()
            return
        conn.idle_since = now
        idle.append(conn)

    async def _acquire(self, deadline: float) -> _Connection:
        """A connection when none is idle: a new one, or, at `max_connections`, the first
        one handed back or room for a new one, whichever comes first."""
        loop = asyncio.get_running_loop()
        while len(self._open) + self._connecting >= self._max_connections:
            waiter: asyncio.Future[_Connection | None] = loop.create_future()
            self._waiters.append(waiter)
            try:
                async with asyncio.timeout_at(deadline):
                    handed = await waiter
            except BaseException as exc:
                if waiter.done() and not waiter.cancelled():
                    # Woken, then cancelled or timed out before running: pass it on.
                    handed = waiter.result()
                    if handed is not None:
                        self._release(handed, loop.time())
                    else:
                        self._wake()
                if isinstance(exc, TimeoutError):
                    raise Unreachable(
                        f"no connection to {self.origin} free in time "
                        f"({self._max_connections} busy)"
                    ) from None
                raise
            if handed is not None and handed.usable:
                return handed
            if handed is not None:
                handed.close()  # closed by the server meanwhile; its close makes room
            reused = self._reusable(loop.time())
            if reused is not None:
                return reused
        self._connecting += 1
        try:
            conn = await self._connect(deadline)
        except BaseException:
            self._wake()  # the room this attempt held
            raise
        finally:
            self._connecting -= 1
        if not conn.usable:
            # The server closed it (or wrote) before this request resumed to write on it: the
            # loop ran the connection's callbacks first. Nothing went out, and a write now
            # would be dropped (asyncio: the request would wait out its timeout, uncertain)
            # or raise RuntimeError (uvloop). Its connection_lost makes the room.
            conn.abort()
            raise Unreachable(f"{self.origin} closed the connection before the request")
        return conn

    def _wake(self) -> None:
        """Tell the first waiting request there is room for a connection."""
        self._hand_to_waiter(None)

    def _hand_to_waiter(self, conn: _Connection | None) -> bool:
        """Wake the longest waiting request (one not cancelled meanwhile) with `conn`, or
        with None: room to open one. False if nobody waits."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return True
        return False

    def _lost(self, conn: _Connection) -> None:
        self._open.discard(conn)
        if self._waiters:
            self._wake()

    async def _connect(self, deadline: float) -> _Connection:
        loop = asyncio.get_running_loop()
        context: ssl.SSLContext | None = None
        if self._tls:
            if self._ssl_context is None:
                # Made on first use: loading the system's CA store takes milliseconds.
                self._ssl_context = ssl.create_default_context()
            context = self._ssl_context
        try:
            async with asyncio.timeout_at(deadline):
                infos = await loop.getaddrinfo(
                    self._host, self._port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
                )
                # uvloop's create_connection does not race the addresses itself: a host
                # whose IPv6 route is broken would cost the whole timeout.
                sock = await aiohappyeyeballs.start_connection(
                    infos, happy_eyeballs_delay=HAPPY_EYEBALLS_DELAY, interleave=1
                )
                try:
                    _, conn = await loop.create_connection(
                        lambda: _Connection(self._max_response, self._open.add, self._lost),
                        sock=sock,
                        ssl=context,
                        server_hostname=self._host if context is not None else None,
                    )
                except BaseException:
                    sock.close()
                    raise
        except TimeoutError:
            raise Unreachable(f"connecting to {self.origin} timed out") from None
        except (OSError, RuntimeError, ValueError) as exc:
            # ValueError: no address at all; RuntimeError: uvloop's word for some socket
            # errors (aiohappyeyeballs passes them on).
            raise Unreachable(f"cannot connect to {self.origin}: {exc}") from None
        if self._closed:  # closed while connecting
            conn.abort()
            raise Unreachable("the HTTP client is closed")
        return conn

    async def close(self) -> None:
        """Close every connection (a request still waiting fails as ConnectionLost); later
        requests fail as Unreachable."""
        self._closed = True
        self._idle.clear()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(Unreachable("the HTTP client is closed"))
        conns = list(self._open)
        for conn in conns:
            conn.close()
        if conns:
            # Let the transports finish closing before the loop may go (TLS says goodbye).
            done = asyncio.gather(*(conn.lost for conn in conns))
            try:
                async with asyncio.timeout(1.0):
                    await done
            except TimeoutError:
                for conn in conns:
                    conn.abort()
                await asyncio.sleep(0)


class _FramingProbe:
    """Parser callbacks that note whether the last answer's head frames its body."""

    framed = False

    def on_message_begin(self) -> None:
        self.framed = False  # a 1xx answer came first: the final one counts

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"content-length":
            self.framed = True
        elif name == b"transfer-encoding":
            # Only chunked as the last coding frames a body; any other (gzip, identity) runs
            # to the close (RFC 9112 section 6.3), as llhttp reads it: that close ends a
            # complete answer, not a lost one. The last line's last coding is the last one.
            self.framed = value.rsplit(b",", 1)[-1].strip().lower() == b"chunked"


def _header_lines(headers: Mapping[str, str]) -> bytes:
    lines = []
    for name, value in headers.items():
        line = f"{name}: {value}"
        if "\r" in line or "\n" in line or not line.isascii():
            # A value with a line break would inject headers; the token comes from config.
            raise ValueError(f"header {name!r} has a line break or a non-ASCII character")
        lines.append(line)
    return "".join(f"{line}\r\n" for line in lines).encode("ascii")


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection: one request at a time, its answer parsed by httptools.

    The parser's callbacks (`on_*`) fill in the answer; `send` hands back a future that
    `on_message_complete` resolves, and a failure or the deadline rejects.
    """

    def __init__(
        self,
        max_response: int,
        made: Callable[[_Connection], None],
        lost: Callable[[_Connection], None],
    ) -> None:
        # No `on_header`: with it httptools makes two bytes objects and a call per header
        # (a Graph answer has ~17), 1.4 of the ~14 µs a request costs. The bytes up to the
        # end of the head are kept instead, for the one question headers answer here (`_framed`).
        self._parser = httptools.HttpResponseParser(self)
        self._head: list[bytes] = []
        self._max_response = max_response
        self._made = made
        self._lost = lost
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self._status = 0
        self._body: list[bytes] = []
        self._received = 0
        self._headers_done = False
        self._broken = False  # closed, or in a state no request should find it in
        self.keep_alive = False
        self.idle_since = 0.0
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # -- used by the client ------------------------------------------------------------------

    @property
    def usable(self) -> bool:
        transport = self._transport
        return not self._broken and transport is not None and not transport.is_closing()

    def send(self, request: bytes) -> asyncio.Future[tuple[int, bytes]]:
        assert self._transport is not None and self._waiter is None
        self._waiter = waiter = self.lost.get_loop().create_future()
        self._status = self._received = 0
        self._body = []
        self._headers_done = False
        self._head = []
        self.keep_alive = False
        self._transport.write(request)
        return waiter

    def time_out(self) -> None:
        self._fail(TimeoutError("no complete answer in time"))

    def close(self) -> None:
        self._broken = True
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        self._broken = True
        if self._transport is not None:
            self._transport.abort()

    def _framed(self) -> bool:
        """Whether the answer's end is known from its headers (Content-Length or chunked
        Transfer-Encoding), so an EOF before it is a truncated answer; without either the
        body runs to the connection's close (RFC 9112 section 6.3). Asked only at an EOF in
        the middle of an answer: the head is parsed again, with headers this time."""
        probe = _FramingProbe()
        with contextlib.suppress(httptools.HttpParserError, httptools.HttpParserUpgrade):
            httptools.HttpResponseParser(probe).feed_data(b"".join(self._head))
        return probe.framed

    def _fail(self, exc: BaseException) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        self.abort()

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not derive from asyncio.Transport, but are one.
        self._transport = cast(asyncio.Transport, transport)
        self._made(self)

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:
            # Bytes nobody asked for: the next answer could not be told from them.
            self.abort()
            return
        if not self._headers_done:
            self._head.append(data)
        self._received += len(data)
        if self._received > self._max_response:
            self._fail(ConnectionLost(f"answer larger than {self._max_response} bytes"))
            return
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._fail(ConnectionLost(f"malformed answer: {exc!r}"))

    def eof_received(self) -> bool | None:
        self._ended("the server closed the connection")
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._broken = True
        self._lost(self)
        self._ended(f"connection lost: {exc}" if exc else "the connection closed")
        if not self.lost.done():
            self.lost.set_result(None)

    def _ended(self, why: str) -> None:
        self._broken = True
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if self._headers_done and not self._framed():
            # A body delimited by the connection's close (RFC 9112 section 6.3): complete.
            self._waiter = None
            waiter.set_result((self._status, b"".join(self._body)))
            return
        where = "in the middle of the answer" if self._received else "before answering"
        self._fail(ConnectionLost(f"{why} {where}"))

    # -- httptools callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._waiter is None:
            raise ConnectionLost("an answer nobody asked for")  # after the one awaited

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()
        self._headers_done = True

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        waiter = self._waiter
        if self._status < 200:
            # An interim answer (100 Continue, 103 Early Hints): the real one follows.
            self._body = []
            self._headers_done = False
            return
        if waiter is None or waiter.done():
            return
        self._waiter = None
        self.keep_alive = self._parser.should_keep_alive()
        body = self._body
        waiter.set_result((self._status, body[0] if len(body) == 1 else b"".join(body)))
