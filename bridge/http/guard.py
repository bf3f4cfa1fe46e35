"""HTTP against hostile or slow clients: no byte gives a 5xx, no slow client holds a socket.

The bridge faces the internet (behind a TLS proxy at most), so any byte may arrive in any
header. aiohttp decodes header bytes that are not UTF-8 to surrogates; a handler that
encodes such a value again, or echoes it into a response, fails with a 500.

aiohttp has no deadline for reading a request head or body, and no limit on connections:
clients that send half a head, or trickle a body, were held for minutes, and a few hundred of
them used up the process's file descriptors (deliveries refused, /healthz down, snapshots
failing). `ConnectionGuard` sits between the listening socket and each connection's
protocol (the deliveries' short path, bridge/http/webhook_protocol.py, or aiohttp's):

- a connection has `header_timeout` seconds, from when it opens or its last response was
  handed over, to complete its next request head (so it is the keep-alive idle time too);
- a body must arrive within `body_timeout` of its head (`read_body`, or the short path's
  own timer; 408 otherwise);
- at most `limit` connections are open. One more evicts the connection idle longest (waiting
  for a head, or for its body): those are what a flood of slow clients looks like, and a
  real request (Meta, a health check) sends its head at once. Only when every connection is
  handling a request is the new one refused.
"""

from __future__ import annotations

import asyncio
import resource
import time
from collections.abc import Callable
from enum import Enum
from typing import cast

from aiohttp import hdrs, web
from aiohttp.http import HttpVersion11
from aiohttp.typedefs import Handler

from bridge.ops.logs import get_logger

# File descriptors left for everything but client connections: journal, snapshot, lock and
# key files, the Graph API and assistant connections, logs.
FD_RESERVE = 128
MIN_CONNECTIONS = 16


async def expect_continue(request: web.Request) -> web.StreamResponse | None:
    """`Expect:` handling for every route: "100-continue" is answered as aiohttp would;
    anything else is a 417. (aiohttp's own handler puts the header's value into its error
    text, which fails to encode, a 500, when the value holds a byte that is not UTF-8.)"""
    if request.version != HttpVersion11:
        return None
    if request.headers.get(hdrs.EXPECT, "").lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the response proper has not started
        return None
    return web.json_response({"error": "unsupported Expect header"}, status=417)


def add_fallback_route(app: web.Application) -> None:
    """Answer paths and methods no route takes (404, 405) through a route of our own, so they
    too get `expect_continue`. Add it after every other route."""

    async def fallback(request: web.Request) -> web.StreamResponse:
        allowed: set[str] = set()
        for other in request.app.router.resources():
            if other is fallback_resource:
                continue
            _match, methods = await other.resolve(request)
            allowed |= methods
        if allowed:
            raise web.HTTPMethodNotAllowed(request.method, allowed)
        raise web.HTTPNotFound()

    fallback_resource = app.router.add_resource("/{path:.*}")
    fallback_resource.add_route(hdrs.METH_ANY, fallback, expect_handler=expect_continue)


def connection_limit(configured: int) -> int:
    """`configured`, lowered if the open-files limit (RLIMIT_NOFILE) would run out first."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return configured
    return min(configured, max(MIN_CONNECTIONS, soft - FD_RESERVE))


def close_or_abort(transport: asyncio.Transport) -> None:
    """Close `transport`, or abort it when answers are still unsent: a client that does not
    read them would hold a close until it does."""
    if transport.get_write_buffer_size():
        transport.abort()
    else:
        transport.close()


class _State(Enum):
    IDLE = "idle"  # waiting for a request head (new, or kept alive after a response)
    BODY = "body"  # a handler waits for the request body
    BUSY = "busy"  # a handler is working on a complete request


class GuardedConnection(asyncio.Protocol):
    """Wraps the protocol of one connection (aiohttp's, or bridge.http.webhook_protocol's):
    forwards every event, keeps its state."""

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol) -> None:
        self.guard = guard
        self.inner = inner
        # Made by the server's loop, in it. Kept: on Python 3.11 every get_running_loop()
        # is a getpid() system call (a fork check), and a request would cost two of them.
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.state = _State.IDLE
        self.since = 0.0  # loop time the current IDLE or BODY wait began
        self.admitted = False
        self.fresh = True  # accepted, no request started yet (its head may be on the way)
        # One timer per connection, re-armed lazily: a request costs no timer churn, the timer
        # checks on firing whether the connection has been idle for the whole deadline.
        self._deadline = 0.0  # loop time by which an IDLE connection must have a request head
        self._timer: asyncio.TimerHandle | None = None

    # asyncio's protocol interface, forwarded once admitted
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport, though not always an asyncio.Transport subclass (uvloop's).
        self.transport = transport = cast(asyncio.Transport, transport)
        if not self.guard._admit(self):
            transport.abort()
            return
        self.admitted = True
        self.inner.connection_made(transport)
        self.idle()

    def data_received(self, data: bytes) -> None:
        if self.admitted:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.admitted else None

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        if self.admitted:
            self.guard._forget(self)
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.admitted:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.admitted:
            self.inner.resume_writing()

    def replace_inner(self, inner: asyncio.Protocol) -> None:
        """From now on forward to `inner` (the webhook protocol handing a connection over to
        aiohttp); the caller starts it with `connection_made`."""
        self.guard._connections.pop(self.inner, None)
        self.inner = inner
        self.guard._connections[inner] = self

    # state, driven by the guard's middleware and read_body (or the webhook protocol)
    def idle(self) -> None:
        self.state = _State.IDLE
        loop = self.loop
        self.since = now = loop.time()
        self._deadline = now + self.guard.header_timeout
        if self._timer is None:
            self._timer = loop.call_at(self._deadline, self._expire)

    def reading_body(self) -> None:
        self.fresh = False
        self.state = _State.BODY  # bounded by read_body's own deadline
        self.since = self.loop.time()

    def busy(self) -> None:
        self.fresh = False
        self.state = _State.BUSY

    def _expire(self) -> None:
        self._timer = None
        if self.state is not _State.IDLE:
            return  # idle() arms it again
        loop = self.loop
        if loop.time() < self._deadline:  # a request came and went meanwhile
            self._timer = loop.call_at(self._deadline, self._expire)
        else:
            self.drop("header_timeout")

    def drop(self, reason: str) -> None:
        """Close this connection now (it is idle or stuck; nothing of value is in flight)."""
        self.guard._forget(self)
        self.guard.dropped(reason)
        transport = self.transport
        if transport is not None and not transport.is_closing():
            close_or_abort(transport)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class UnreadableBody(Exception):
    """The request body did not arrive, or cannot be decoded: answer `status` with `reason`."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


GUARD: web.AppKey[ConnectionGuard] = web.AppKey("connection_guard")


class ConnectionGuard:
    """Deadlines and a cap for the connections of one server (see the module docstring).

    Wrap each connection's protocol (`wrap`; bridge/http/webhook_protocol.py does),
    `middleware` in the application, and `read_body` instead of `request.read()`. Requests
    on connections the guard did not make (aiohttp's test client) only get `read_body`'s
    deadline.
    """

    def __init__(
        self,
        limit: int,
        header_timeout: float,
        body_timeout: float,
        on_drop: Callable[[str], None] | None = None,
    ) -> None:
        self.limit = limit
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self._on_drop = on_drop
        self._connections: dict[object, GuardedConnection] = {}  # by the inner protocol
        self._log = get_logger()
        self._warned_at = -float("inf")
        self._unreported: dict[str, int] = {}

    @property
    def open(self) -> int:
        return len(self._connections)

    async def serve_accepted(self, timeout: float) -> None:
        """After the listener closed: give connections already accepted but whose request
        has not started (its head still on the wire) up to `timeout` to start it, so a stop
        does not reset them. With socket activation the next process serves what arrives
        from now on; without it, new connections are refused anyway."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        # Connections the listener accepted just before it closed are made by tasks that
        # may not have run yet: let them, or they would be closed unread at exit (a reset).
        await asyncio.sleep(0.1)
        while loop.time() < deadline and any(
            c.fresh and c.state is _State.IDLE for c in self._connections.values()
        ):
            await asyncio.sleep(0.01)

    def wrap(self, inner: asyncio.Protocol) -> GuardedConnection:
        """One connection's protocol, guarded."""
        return GuardedConnection(self, inner)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """A request head is complete: the connection is busy until its handler returns."""
        connection = self._connections.get(request.protocol)
        if connection is None:
            return await handler(request)
        connection.busy()
        try:
            return await handler(request)
        finally:
            if request.protocol in self._connections:
                connection.idle()

    async def read_body(self, request: web.Request) -> bytes:
        """The whole body within `body_timeout`, or UnreadableBody (408, 413 or 400)."""
        connection = self._connections.get(request.protocol)
        if connection is not None:
            connection.reading_body()
        try:
            if request.content.is_eof():
                # The whole body came with the head (Meta's deliveries almost always do):
                # nothing to wait for, so no deadline to arm and cancel.
                return await request.read()
            async with asyncio.timeout(self.body_timeout):
                return await request.read()
        except TimeoutError:
            self.dropped("body_timeout")
            raise UnreadableBody(408, "request body not received in time") from None
        except web.HTTPRequestEntityTooLarge:
            raise UnreadableBody(413, "body too large") from None
        except web.RequestPayloadError:
            # Not what its Content-Encoding says (not gzip, a broken deflate stream), or broken
            # chunked framing: the client's fault, never ours.
            raise UnreadableBody(400, "body could not be decoded") from None
        except ConnectionError:
            raise UnreadableBody(400, "connection lost while reading the body") from None
        finally:
            if connection is not None and connection.state is _State.BODY:
                connection.busy()

    def _admit(self, connection: GuardedConnection) -> bool:
        if len(self._connections) >= self.limit:
            waiting = (c for c in self._connections.values() if c.state is not _State.BUSY)
            victim = min(waiting, key=lambda c: c.since, default=None)
            if victim is None:
                self.dropped("refused")
                return False
            victim.drop("evicted")
        self._connections[connection.inner] = connection
        return True

    def _forget(self, connection: GuardedConnection) -> None:
        self._connections.pop(connection.inner, None)

    def dropped(self, reason: str) -> None:
        """Count (and now and then log) a connection cut off for `reason`."""
        if self._on_drop is not None:
            self._on_drop(reason)
        if reason in ("evicted", "refused"):
            # Under a flood this happens per connection: one line a minute says how often.
            self._unreported[reason] = self._unreported.get(reason, 0) + 1
            now = time.monotonic()
            if now - self._warned_at >= 60:
                self._warned_at = now
                self._log.warning(
                    "connection_limit_reached",
                    limit=self.limit,
                    open=len(self._connections),
                    **self._unreported,
                )
                self._unreported = {}
