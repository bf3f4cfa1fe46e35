"""`bridge serve`'s connections: Meta's deliveries answered without aiohttp, the rest by it.

Nearly every request the bridge gets is one shape: `POST /webhook` (or `/webhook/<profile>`),
HTTP/1.1, a Content-Length body of a few KB, a signature header. aiohttp's server spends
about as much CPU on such a request as the whole delivery path does on a status (its
protocol, the request and response objects, the router and the middleware chain): the
`make bench` floor, a bare aiohttp handler, costs ~31 µs a request before any work is done.

`WebhookProtocol` reads that one shape itself: it finds the head's end, checks the request
line and the headers it needs, waits for the body, and answers through the same
`bridge.http.webhook.answer_delivery` the aiohttp route uses. Anything else (another path or
method, HTTP/1.0, `Expect`, `Transfer-Encoding`, `Content-Encoding`, `Upgrade`, a body over
the limit, a header it cannot read plainly) is handed over, at that request's first byte,
to aiohttp's own protocol for the rest of the connection: aiohttp then answers it exactly
as before (the handshake, the API, the console, the 4xx of odd requests). The fast path
takes only what it understands completely, so it never parses a request differently from
aiohttp; it does not have to know HTTP's corners, only to recognise them. That includes
what aiohttp refuses with a 400: a line over 8190 bytes, a control character, a bare LF, no
Host, two of a singleton header, over 128 headers (tests/test_hostile.py compares the two).

Guarantees kept from the aiohttp route: the 200 is written before any reply work starts
(`acknowledge` runs after the write), requests on a connection are answered in order, one
at a time, a body has `body_timeout` after its head (408), the connection guard's deadlines
and cap hold (the protocol drives its states), and a stop lets requests in progress finish.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus

from aiohttp import web
from aiohttp.http_parser import SINGLETON_HEADERS

from bridge.http.guard import GUARD, GuardedConnection, close_or_abort
from bridge.http.webhook import (
    Answer,
    acknowledge,
    answer_delivery,
    begin,
    candidates_for,
    finish,
    refusal,
)
from bridge.ops.logs import get_logger
from bridge.ops.metrics import Metrics
from bridge.runtime import ProfileRuntime

log = get_logger()

# aiohttp refuses a head line over 8190 bytes (its max_line_size, max_field_size). Meta's
# heads are a few hundred bytes: a head longer than that line limit goes to aiohttp whole,
# which answers it by its own rules, so no line the fast path reads is one aiohttp refuses.
MAX_HEAD = 8190
# Profile slugs are 1-32 of a-z, 0-9 and '-' (config.SLUG_RE); anything else, and any
# percent-encoding, goes to aiohttp's router.
_PATH = re.compile(rb"/webhook(?:/([a-z0-9][a-z0-9-]{0,31}))?\Z")
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
# Bytes aiohttp (llhttp) refuses in a header value with a 400: control characters but HTAB.
_CTL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# aiohttp answers 400 to a head with two of one of these, or more than 128 header lines
# (RequestHandler's max_headers): such a head is its to answer.
_SINGLETONS = frozenset(name.encode() for name in SINGLETON_HEADERS)
MAX_HEADERS = 128
# Headers that change how a body is framed or read, or that aiohttp refuses outright
# (Sec-WebSocket-Key1, of a WebSocket draft): aiohttp's to handle.
_NOT_OURS = frozenset(
    {b"transfer-encoding", b"content-encoding", b"expect", b"upgrade", b"sec-websocket-key1"}
)
_REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}


@dataclass(slots=True)
class _Head:
    slug: str | None
    signature: str | None
    length: int
    start: int  # where the body starts in the buffer
    keep_alive: bool
    # When the head came, if its body did not come with it: `webhook_seconds` counts the wait
    # for the body too, as on the aiohttp route (whose handler starts before the body is read).
    since: float | None = None


def _parse_head(head: bytes, max_body: int) -> _Head | None:
    """The request, if it is a plain delivery; None hands it to aiohttp."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or parts[0] != b"POST" or parts[2] != b"HTTP/1.1":
        return None
    path = _PATH.match(parts[1])
    if path is None:
        return None
    if len(lines) > MAX_HEADERS + 1:
        return None
    length: int | None = None
    signature: str | None = None
    keep_alive = True
    singletons: set[bytes] = set()
    for line in lines[1:]:
        name, colon, raw = line.partition(b":")
        if not colon or _TOKEN.match(name) is None:
            return None
        value = raw.strip(b" \t")
        if _CTL.search(value) is not None:
            return None
        name = name.lower()
        if name in _SINGLETONS:
            if name in singletons:
                return None
            singletons.add(name)
        if name == b"content-length":
            if not value.isdigit() or len(value) > 15:
                return None
            length = int(value)
        elif name == b"x-hub-signature-256":
            if signature is not None:
                return None
            # As aiohttp decodes header values: any byte survives, as a surrogate.
            signature = value.decode("utf-8", "surrogateescape")
        elif name in _NOT_OURS:
            return None
        elif name == b"connection":
            options = {o.strip() for o in value.lower().split(b",")}
            if b"upgrade" in options:
                return None
            keep_alive = b"close" not in options
    # No Host: aiohttp's 400 (RFC 9112 3.2 requires it).
    if length is None or length > max_body or b"host" not in singletons:
        return None
    slug = path.group(1)
    return _Head(slug.decode() if slug else None, signature, length, len(head) + 4, keep_alive)


_date_second = -1
_date_value = b""


def _date() -> bytes:
    """The Date header's value, formatted once a second."""
    global _date_second, _date_value
    now = int(time.time())
    if now != _date_second:
        _date_second, _date_value = now, formatdate(now, usegmt=True).encode()
    return _date_value


def _response(answer: Answer, close: bool) -> bytes:
    head = b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n" % (
        answer.status,
        _REASONS.get(answer.status, b"Error"),
        len(answer.body),
    )
    tail = b"Connection: close\r\n\r\n" if close else b"\r\n"
    return b"%sDate: %s\r\n%s%s" % (head, _date(), tail, answer.body)


class WebhookConnections:
    """The connections the fast path is serving, so that a stop can let them finish."""

    def __init__(
        self,
        runtimes: Mapping[str, ProfileRuntime],
        metrics: Metrics,
        max_body: int,
    ) -> None:
        self.runtimes = runtimes
        self.metrics = metrics
        self.max_body = max_body
        # What a connection holds unanswered: one whole request. Reading pauses beyond it.
        self.max_buffer = max_body + MAX_HEAD + 4
        self.live: set[WebhookProtocol] = set()
        self.tasks: set[asyncio.Task[None]] = set()  # answers being made
        self.stopping = False

    async def close(self, timeout: float) -> None:
        """Close idle connections now; let each request in progress get its answer (then
        close its connection), waiting at most `timeout`; abort what is left, and cancel
        the answers still being made, before the profiles stop (as aiohttp's shutdown
        cancels its handlers). A cancelled commit is still written and applied (Journal)."""
        self.stopping = True
        for protocol in list(self.live):
            if not protocol.in_request:
                protocol.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (self.live or self.tasks) and loop.time() < deadline:
            await asyncio.sleep(0.01)
        for protocol in list(self.live):
            protocol.abort()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


class WebhookProtocol(asyncio.Protocol):
    """One connection: deliveries answered here, the connection handed to aiohttp's
    protocol (`make_aiohttp`) at the first request that is anything else."""

    def __init__(
        self,
        connections: WebhookConnections,
        make_aiohttp: Callable[[], asyncio.Protocol],
    ) -> None:
        self._connections = connections
        self.guarded: GuardedConnection  # set by protocol_factory, before connection_made
        self._make_aiohttp = make_aiohttp
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._head: _Head | None = None  # parsed, its body not all here yet
        self._body_timer: asyncio.TimerHandle | None = None
        self.busy = False  # a request is being answered: later bytes wait in the buffer
        self._eof = False
        self._reading_paused = False
        self._writing_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # a stream transport
        self._loop = self.guarded.loop
        self._connections.live.add(self)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self.busy:
            self._take()
        if len(self._buffer) > self._connections.max_buffer:
            # A client pipelining faster than it is answered (or not reading its answers)
            # waits in the kernel's buffers, not in ours.
            self._pause_reading()

    def eof_received(self) -> bool | None:
        self._eof = True
        if self.busy:
            return True  # keep the transport open for the answer; closed after it
        if self._head is not None:
            # Half a body, and no more will come: nothing to answer.
            self._cancel_body_timer()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_body_timer()
        self._connections.live.discard(self)
        self._transport = None

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        if not self.busy:
            self._take()

    @property
    def in_request(self) -> bool:
        """Its head is here: the request is answered, even during a stop."""
        return self.busy or self._head is not None

    def close(self) -> None:
        """Close now: abort if answers are still unsent, as the connection guard does (a
        client that does not read them would hold a close until the stop's deadline)."""
        if self._transport is not None:
            close_or_abort(self._transport)

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _take(self) -> None:
        """Start answering the next request in the buffer, once it is all there."""
        transport = self._transport
        if transport is None or transport.is_closing() or self._writing_paused:
            return
        if self._reading_paused and len(self._buffer) <= self._connections.max_buffer:
            self._resume_reading(transport)
        head = self._head
        buffer = self._buffer
        if head is None:
            # Only a head's end within MAX_HEAD counts (it may arrive in one segment with a
            # longer head before it).
            end = buffer.find(b"\r\n\r\n", 0, MAX_HEAD + 4)
            if end < 0:
                # A client ending its lines with a bare LF never sends "\r\n\r\n": waiting
                # for it held the client until the header timeout; aiohttp answers it (400).
                if len(buffer) >= MAX_HEAD + 4 or buffer.count(b"\n") != buffer.count(b"\r\n"):
                    self._hand_over()
                elif self._eof:
                    transport.close()  # half a head, and no more will come
                return
            head = _parse_head(bytes(buffer[:end]), self._connections.max_body)
            if head is None:
                self._hand_over()
                return
        need = head.start + head.length
        if len(buffer) < need:
            if self._eof:
                transport.close()  # half a body, and no more will come
                return
            if self._head is None:
                self._head = head
                head.since = time.monotonic()
                self.guarded.reading_body()
                self._body_timer = self._loop.call_later(
                    self.guarded.guard.body_timeout, self._body_late
                )
            return
        self._head = None
        self._cancel_body_timer()
        body = bytes(buffer[head.start : need])
        del buffer[:need]
        self.busy = True
        self.guarded.busy()
        task = self._loop.create_task(self._answer(head, body))
        tasks = self._connections.tasks
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def _answer(self, head: _Head, body: bytes) -> None:
        connections = self._connections
        runtimes, metrics = connections.runtimes, connections.metrics
        started, token = begin(head.since)
        status = 500
        try:
            try:
                answer = await self._delivery(head, body)
            except Exception:
                log.exception("delivery_failed")
                answer = refusal(500, "internal error", close=True)
            status = answer.status
            # A client that half-closed gets an answer to each request it sent, and the close
            # with the last (`_take` closes if what is left is not a whole request).
            close = answer.close or not head.keep_alive or connections.stopping
            close = close or (self._eof and not self._buffer)
            transport = self._transport
            if transport is not None and not transport.is_closing():
                transport.write(_response(answer, close))
                if close:
                    transport.close()
            # Durable either way: a client gone before its 200 redelivers a duplicate,
            # and the reply must not wait for that.
            if answer.results is not None:
                acknowledge(runtimes, metrics, answer.results, started)
        finally:
            # Cancelled too (a stop past its deadline): counted, and the slot given back.
            finish(metrics, status, started, token)
            self._done()

    async def _delivery(self, head: _Head, body: bytes) -> Answer:
        runtimes = self._connections.runtimes
        candidates = candidates_for(runtimes, head.slug)
        if not candidates:
            return refusal(404, "unknown profile")
        return await answer_delivery(
            runtimes,
            self._connections.metrics,
            candidates,
            body,
            head.signature,
            "/webhook" if head.slug is None else f"/webhook/{head.slug}",
            explicit=head.slug is not None,
        )

    def _done(self) -> None:
        self.busy = False
        transport = self._transport
        if transport is None:
            return
        # Idle even when closing, as after aiohttp's answers: a close waits for the answer
        # to be read, and a client that never reads it is the guard's to drop (header
        # timeout, eviction), not a busy slot for good.
        self.guarded.idle()
        if not transport.is_closing():
            self._take()  # the next request, or resume reading

    def _body_late(self) -> None:
        """The body did not follow its head in time: a 408, and the connection closed."""
        self._body_timer = None
        head, self._head = self._head, None
        started, token = begin(head.since if head is not None else None)
        length = head.length if head is not None else None
        log.warning(
            "delivery_unreadable", reason="request body not received in time", length=length
        )
        self.guarded.guard.dropped("body_timeout")
        answer = refusal(408, "request body not received in time", close=True)
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(_response(answer, close=True))
            self._transport.close()
            self.guarded.idle()  # as in _done
        finish(self._connections.metrics, 408, started, token)

    def _cancel_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _pause_reading(self) -> None:
        if not self._reading_paused and self._transport is not None:
            self._reading_paused = True
            self._transport.pause_reading()

    def _resume_reading(self, transport: asyncio.Transport) -> None:
        self._reading_paused = False
        transport.resume_reading()

    def _hand_over(self) -> None:
        """aiohttp's protocol takes the connection from this request's first byte on."""
        transport = self._transport
        assert transport is not None
        if self._reading_paused:
            self._resume_reading(transport)  # aiohttp's protocol does its own flow control
        self._connections.live.discard(self)
        inner = self._make_aiohttp()
        self.guarded.replace_inner(inner)
        inner.connection_made(transport)
        data = bytes(self._buffer)
        self._buffer.clear()
        if data:
            inner.data_received(data)
        if self._eof:
            inner.eof_received()


CONNECTIONS: web.AppKey[WebhookConnections] = web.AppKey("webhook_connections")


def protocol_factory(
    app: web.Application, make_aiohttp: Callable[[], asyncio.Protocol]
) -> Callable[[], asyncio.Protocol]:
    """For `loop.create_server`: each connection guarded (`app[GUARD]`), deliveries on the
    fast path, anything else on `make_aiohttp`'s protocol (aiohttp's `runner.server`)."""
    guard, connections = app[GUARD], app[CONNECTIONS]

    def make() -> asyncio.Protocol:
        protocol = WebhookProtocol(connections, make_aiohttp)
        protocol.guarded = guarded = guard.wrap(protocol)
        return guarded

    return make
