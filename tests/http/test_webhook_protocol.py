"""The deliveries' fast path (bridge/http/webhook_protocol.py) on real connections: raw bytes
over TCP to the server as `bridge serve` listens, so each test controls exactly what is on
the wire (pipelining, split bodies, hand-over to aiohttp in the middle of a connection)."""

from __future__ import annotations

import asyncio
import functools
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from bridge import simulate
from bridge.config import Settings
from bridge.http import webhook_protocol
from bridge.http.app import create_app
from bridge.http.guard import GUARD
from bridge.ops.metrics import Metrics
from bridge.runtime import ProfileRuntime
from tests.conftest import APP_SECRET, VERIFY_TOKEN, eventually, make_profile

MAX_BODY = 64 * 1024


@dataclass
class Served:
    port: int
    runtime: ProfileRuntime
    metrics: Metrics
    app: web.Application

    def conversation(self, phone: str) -> list[tuple[str, str]]:
        conv = self.runtime.store.state.conversations.get(phone)
        return [(m.role, m.content) for m in conv.messages] if conv else []

    def answered(self, phone: str) -> bool:
        return [r for r, _ in self.conversation(phone)] == ["user", "assistant"]


@pytest.fixture
async def served(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Served]:
    """The server as `bridge serve` listens; settings overridden by an indirect parameter."""
    profile = make_profile(tmp_path)
    runtime = ProfileRuntime.build(profile)
    metrics = Metrics()
    overrides: dict[str, Any] = getattr(request, "param", {})
    settings = Settings(
        profiles=(profile,),
        var_dir=tmp_path,
        **{"max_body_bytes": MAX_BODY, "body_timeout": 1.0, **overrides},
    )
    app = create_app(settings, [runtime], metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    assert runner.server is not None
    server = await asyncio.get_running_loop().create_server(
        webhook_protocol.protocol_factory(app, runner.server), "127.0.0.1", 0
    )
    try:
        yield Served(server.sockets[0].getsockname()[1], runtime, metrics, app)
    finally:
        server.close()
        await app[webhook_protocol.CONNECTIONS].close(1.0)
        await runner.cleanup()


def delivery(phone: str, text: str) -> bytes:
    return simulate.encode(
        simulate.delivery(simulate.change_value([simulate.text_message(text, phone)]))
    )


def post(
    body: bytes,
    path: str = "/webhook",
    signature: str | None = None,
    extra: bytes = b"",
    version: bytes = b"HTTP/1.1",
) -> bytes:
    sig = (
        signature
        if signature is not None
        else simulate.signed_headers(body, APP_SECRET)["X-Hub-Signature-256"]
    )
    sig_line = f"X-Hub-Signature-256: {sig}\r\n".encode() if sig else b""
    return (
        b"POST %s %s\r\nHost: meta\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n%s%s\r\n%s"
    ) % (path.encode(), version, len(body), sig_line, extra, body)


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


async def read_response(reader: asyncio.StreamReader) -> Response:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", 0))), 5)
    return Response(status, headers, body)


async def connect(served: Served) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", served.port)


async def test_pipelined_deliveries_on_one_connection_are_answered_in_order(
    served: Served,
) -> None:
    reader, writer = await connect(served)
    writer.write(b"".join(post(delivery(f"34600000{i:03d}", f"n{i}")) for i in range(3)))
    answers = [await read_response(reader) for _ in range(3)]
    assert [(a.status, a.json()) for a in answers] == [(200, {"recorded": 1, "duplicates": 0})] * 3
    assert answers[0].headers["content-type"] == "application/json"
    assert "connection" not in answers[0].headers  # kept alive
    for i in range(3):
        assert ("user", f"n{i}") in served.conversation(f"34600000{i:03d}")
        # The echo assistant answered each after its 200.
        await eventually(functools.partial(served.answered, f"34600000{i:03d}"))
    ok = served.metrics.deliveries.labels("ok")._value.get()
    assert ok == 3
    writer.close()


async def test_a_body_split_across_writes_is_recorded_once_it_is_whole(served: Served) -> None:
    reader, writer = await connect(served)
    raw = post(delivery("34600000100", "slow body"))
    for piece in (raw[:40], raw[40:120], raw[120:-7]):
        writer.write(piece)
        await writer.drain()
        await asyncio.sleep(0.05)
    assert served.conversation("34600000100") == []  # nothing before the body is whole
    writer.write(raw[-7:])
    answer = await read_response(reader)
    assert (answer.status, answer.json()) == (200, {"recorded": 1, "duplicates": 0})
    assert ("user", "slow body") in served.conversation("34600000100")
    writer.close()


async def test_a_body_that_stops_coming_gets_a_408_and_the_connection_closed(
    served: Served,
) -> None:
    reader, writer = await connect(served)
    raw = post(delivery("34600000200", "never whole"))
    writer.write(raw[:-10])
    answer = await read_response(reader)  # within the 1 s body_timeout, not the test's 5
    assert answer.status == 408
    assert answer.json() == {"error": "request body not received in time"}
    assert answer.headers["connection"] == "close"
    assert await asyncio.wait_for(reader.read(), 5) == b""
    assert served.conversation("34600000200") == []
    writer.close()


async def test_aiohttp_takes_over_a_connection_at_the_first_request_that_is_not_a_delivery(
    served: Served,
) -> None:
    reader, writer = await connect(served)
    writer.write(post(delivery("34600000300", "first")))
    assert (await read_response(reader)).status == 200
    query = f"hub.mode=subscribe&hub.verify_token={VERIFY_TOKEN}&hub.challenge=4242"
    writer.write(f"GET /webhook?{query} HTTP/1.1\r\nHost: meta\r\n\r\n".encode())
    handshake = await read_response(reader)
    assert (handshake.status, handshake.body) == (200, b"4242")
    # aiohttp serves the rest of the connection: a delivery too, exactly as before.
    writer.write(post(delivery("34600000300", "second")))
    answer = await read_response(reader)
    assert (answer.status, answer.json()) == (200, {"recorded": 1, "duplicates": 0})
    assert "aiohttp" in answer.headers.get("server", "")
    users = [c for r, c in served.conversation("34600000300") if r == "user"]
    assert users == ["first", "second"]
    writer.close()


@pytest.mark.parametrize(
    "extra",
    [
        b"Expect: 100-continue\r\n",
        b"Content-Encoding: identity\r\n",
        b"X-Hub-Signature-256: sha256=00\r\n",  # twice: aiohttp's rules decide
        b"Bad Header : x\r\n",
    ],
)
async def test_heads_the_fast_path_does_not_read_plainly_go_to_aiohttp(
    served: Served, extra: bytes
) -> None:
    reader, writer = await connect(served)
    writer.write(post(delivery("34600000400", "odd head"), extra=extra))
    if extra.startswith(b"Expect"):
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim.startswith(b"HTTP/1.1 100")
    answer = await read_response(reader)
    assert "aiohttp" in answer.headers.get("server", "") or answer.status == 400
    assert answer.status < 500
    writer.close()


async def test_http_1_0_is_answered_by_aiohttp_and_recorded(served: Served) -> None:
    reader, writer = await connect(served)
    writer.write(post(delivery("34600000500", "old client"), version=b"HTTP/1.0"))
    answer = await read_response(reader)
    assert (answer.status, answer.json()) == (200, {"recorded": 1, "duplicates": 0})
    assert ("user", "old client") in served.conversation("34600000500")
    writer.close()


async def test_refusals_keep_the_connection_for_the_next_delivery(served: Served) -> None:
    reader, writer = await connect(served)
    body = delivery("34600000600", "after refusals")
    cases: list[tuple[bytes, int, str | None]] = [
        (post(body, path="/webhook/nosuchprofile"), 404, "unknown profile"),
        (post(body, signature=""), 401, "missing X-Hub-Signature-256"),
        (post(body, signature="sha256=" + "0" * 64), 403, "invalid signature"),
    ]
    bad = b"{not json"
    cases.append((post(bad), 400, None))
    for raw, status, message in cases:
        writer.write(raw)
        answer = await read_response(reader)
        assert answer.status == status
        if message is not None:
            assert answer.json() == {"error": message}
    writer.write(post(body, path="/webhook/default"))
    answer = await read_response(reader)
    assert (answer.status, answer.json()) == (200, {"recorded": 1, "duplicates": 0})
    assert served.metrics.deliveries.labels("bad_signature")._value.get() == 1
    writer.close()


async def test_connection_close_is_answered_then_closed(served: Served) -> None:
    reader, writer = await connect(served)
    writer.write(post(delivery("34600000700", "bye"), extra=b"Connection: close\r\n"))
    answer = await read_response(reader)
    assert answer.status == 200 and answer.headers["connection"] == "close"
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


async def test_a_client_gone_before_its_200_still_gets_its_message_kept_and_answered(
    served: Served,
) -> None:
    _reader, writer = await connect(served)
    writer.write(post(delivery("34600000800", "hung up")))
    writer.close()  # before the answer: Meta would redeliver, a duplicate then
    await eventually(lambda: ("user", "hung up") in served.conversation("34600000800"))
    await eventually(lambda: served.answered("34600000800"))


async def test_a_stop_answers_the_delivery_in_progress_and_closes_idle_connections(
    served: Served,
) -> None:
    idle_reader, idle_writer = await connect(served)
    idle_writer.write(post(delivery("34600000900", "earlier")))
    assert (await read_response(idle_reader)).status == 200
    reader, writer = await connect(served)
    raw = post(delivery("34600000901", "in progress"))
    writer.write(raw[:-5])  # its body not whole yet when the stop begins
    await writer.drain()
    await asyncio.sleep(0.05)
    closing = asyncio.create_task(served.app[webhook_protocol.CONNECTIONS].close(5.0))
    assert await asyncio.wait_for(idle_reader.read(), 5) == b""  # the idle one: closed now
    writer.write(raw[-5:])
    answer = await read_response(reader)
    assert answer.status == 200 and answer.headers["connection"] == "close"
    await asyncio.wait_for(closing, 5)
    assert ("user", "in progress") in served.conversation("34600000901")
    writer.close()
    idle_writer.close()


async def aiohttp_first(served: Served) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection already handed to aiohttp (by a health check), to see what it answers."""
    reader, writer = await connect(served)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: meta\r\n\r\n")
    assert (await read_response(reader)).status == 200
    return reader, writer


@pytest.mark.parametrize(
    "raw",
    [
        b"GET /healthz HTTP/1.1\nHost: meta\n\n",
        post(delivery("34600001000", "bare lf")).replace(b"\r\n", b"\n"),
    ],
    ids=["health check", "delivery"],
)
async def test_a_head_with_bare_line_feeds_gets_aiohttp_s_answer_at_once(
    served: Served, raw: bytes
) -> None:
    # Never a "\r\n\r\n": waiting for one held such a client until the header timeout.
    reader, writer = await connect(served)
    writer.write(raw)
    answer = await read_response(reader)  # well before the 10 s header timeout
    assert answer.status == 400
    assert served.conversation("34600001000") == []
    writer.close()


async def test_a_header_line_aiohttp_refuses_for_its_size_is_refused_even_in_one_segment(
    served: Served,
) -> None:
    extra = b"X-Pad: " + b"a" * 9000 + b"\r\n"  # over aiohttp's 8190 bytes a line
    raw = post(delivery("34600001100", "huge head"), extra=extra)
    reader, writer = await aiohttp_first(served)
    writer.write(raw)
    expected = (await read_response(reader)).status
    assert expected == 400
    writer.close()
    reader, writer = await connect(served)
    writer.write(raw)  # one write: the whole head arrives with its end
    assert (await read_response(reader)).status == expected
    assert served.conversation("34600001100") == []
    writer.close()


@pytest.mark.parametrize("byte", [b"\x01", b"\x08", b"\x0b", b"\x1f", b"\x7f"])
async def test_a_control_character_in_a_header_value_is_refused_as_aiohttp_does(
    served: Served, byte: bytes
) -> None:
    raw = post(delivery("34600001200", "ctl"), extra=b"User-Agent: a" + byte + b"b\r\n")
    reader, writer = await aiohttp_first(served)
    writer.write(raw)
    expected = (await read_response(reader)).status
    assert expected == 400
    writer.close()
    reader, writer = await connect(served)
    writer.write(raw)
    assert (await read_response(reader)).status == expected
    assert served.conversation("34600001200") == []
    writer.close()


@pytest.mark.parametrize(
    "hosts", [b"", b"Host: meta\r\nHost: meta\r\n"], ids=["no Host", "two Hosts"]
)
async def test_a_delivery_without_exactly_one_host_is_refused_as_aiohttp_does(
    served: Served, hosts: bytes
) -> None:
    # RFC 9112 3.2: a server MUST answer 400 to an HTTP/1.1 request without a Host, or two.
    raw = post(delivery("34600001300", "host")).replace(b"Host: meta\r\n", hosts)
    reader, writer = await connect(served)
    writer.write(raw)
    answer = await read_response(reader)
    assert answer.status == 400
    assert b"'Host' header" in answer.body  # aiohttp's words
    assert served.conversation("34600001300") == []
    writer.close()


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (b"Content-Type: application/json\r\n", b"Duplicate 'Content-Type'"),
        (b"User-Agent: a\r\nUser-Agent: b\r\n", b"Duplicate 'User-Agent'"),
        (b"".join(b"X-%d: a\r\n" % i for i in range(125)), b"Too many headers"),
        (b"Sec-WebSocket-Key1: 1\r\n", b"Sec-WebSocket-Key1"),  # an old WebSocket spec
    ],
    ids=["two Content-Types", "two User-Agents", "129 headers", "Sec-WebSocket-Key1"],
)
async def test_a_head_aiohttp_refuses_for_its_headers_is_refused_on_the_fast_path_too(
    served: Served, extra: bytes, words: bytes
) -> None:
    raw = post(delivery("34600001400", "headers"), extra=extra)
    reader, writer = await connect(served)
    writer.write(raw)
    answer = await read_response(reader)
    assert (answer.status, words in answer.body) == (400, True)
    assert served.conversation("34600001400") == []
    writer.close()


async def test_a_client_pipelining_faster_than_it_is_answered_is_held_to_a_bounded_buffer(
    served: Served,
) -> None:
    reader, writer = await connect(served)
    await asyncio.sleep(0.05)
    (protocol,) = served.app[webhook_protocol.CONNECTIONS].live
    unsigned = post(b"{}", signature="")  # a 401 each: no secret needed to send these
    sent = 0
    while sent < 4 * 1024 * 1024:
        chunk = unsigned * 1000
        writer.write(chunk)
        sent += len(chunk)
        try:
            await asyncio.wait_for(writer.drain(), 0.5)
        except TimeoutError:
            break  # the server stopped reading: what a bound looks like from here
    # Read resumed after every request answered, a read (up to 256 KB) each time: the buffer
    # grew by far more than the requests took from it.
    bound = MAX_BODY + webhook_protocol.MAX_HEAD + 256 * 1024
    assert len(protocol._buffer) <= bound
    writer.transport.abort()


async def test_a_pipeline_longer_than_the_buffer_is_answered_whole_and_in_order(
    served: Served,
) -> None:
    reader, writer = await connect(served)
    unsigned = [post(delivery(f"3461{i:07d}", "x"), signature="") for i in range(1000)]
    last = delivery("34610001000", "after the pipeline")
    raw = b"".join(unsigned) + post(last)
    assert len(raw) > 4 * served.app[webhook_protocol.CONNECTIONS].max_buffer  # reading pauses
    writer.write(raw)
    answers = [await read_response(reader) for _ in range(1001)]
    assert {a.status for a in answers[:-1]} == {401}
    assert (answers[-1].status, answers[-1].json()) == (200, {"recorded": 1, "duplicates": 0})
    writer.close()


async def test_a_hand_over_while_reading_is_paused_leaves_aiohttp_reading(served: Served) -> None:
    reader, writer = await connect(served)
    get = b"GET /healthz HTTP/1.1\r\nHost: meta\r\nX-Pad: %s\r\n\r\n" % (b"a" * 8000)
    raw = post(delivery("34610002000", "before")) + get * 60
    assert len(raw) > 4 * served.app[webhook_protocol.CONNECTIONS].max_buffer
    writer.write(raw)
    answers = [await read_response(reader) for _ in range(61)]
    assert [a.status for a in answers] == [200] * 61
    writer.close()


async def test_a_client_that_half_closes_after_a_pipeline_gets_every_answer(
    served: Served,
) -> None:
    reader, writer = await connect(served)
    phones = [f"34610003{i:03d}" for i in range(3)]
    writer.write(b"".join(post(delivery(p, "then EOF")) for p in phones))
    writer.write_eof()  # all sent: `printf ... | nc -N`, a load tester
    answers = [await read_response(reader) for _ in phones]
    assert [a.status for a in answers] == [200] * 3
    assert answers[-1].headers["connection"] == "close"
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


async def test_a_half_close_after_half_a_request_closes_once_the_rest_is_answered(
    served: Served,
) -> None:
    reader, writer = await connect(served)
    whole = post(delivery("34610003100", "whole"))
    writer.write(whole + post(delivery("34610003101", "half"))[:50])
    writer.write_eof()
    assert (await read_response(reader)).status == 200
    assert await asyncio.wait_for(reader.read(), 5) == b""  # not held to the header timeout
    writer.close()


async def test_a_body_that_stops_coming_is_logged_and_counted_as_on_the_aiohttp_route(
    served: Served,
) -> None:
    metrics = served.metrics

    async def stalled(version: bytes) -> tuple[list[dict[str, Any]], tuple[float, ...]]:
        before = (
            metrics.deliveries.labels("body_timeout")._value.get(),
            metrics.connections_dropped.labels("body_timeout")._value.get(),
        )
        reader, writer = await connect(served)
        with capture_logs() as logs:
            writer.write(post(delivery("34610004000", "stalled"), version=version)[:-10])
            assert (await read_response(reader)).status == 408
        writer.close()
        after = (
            metrics.deliveries.labels("body_timeout")._value.get(),
            metrics.connections_dropped.labels("body_timeout")._value.get(),
        )
        lines = [{k: v for k, v in e.items() if k != "request_id"} for e in logs]
        return lines, tuple(b - a for a, b in zip(before, after, strict=True))

    aiohttp_route = await stalled(b"HTTP/1.0")  # HTTP/1.0: aiohttp's to serve
    assert await stalled(b"HTTP/1.1") == aiohttp_route


async def unread_connection(served: Served) -> tuple[asyncio.StreamWriter, asyncio.Transport]:
    """A connection whose answers fill the kernel's buffers at once (tiny on both sides): the
    client's writer, and the server's side of it."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", served.port))
    _reader, writer = await asyncio.open_connection(sock=sock)
    # A StreamReader would read ahead 128 KB. (A read transport, typed a write one.)
    cast(asyncio.Transport, writer.transport).pause_reading()
    await eventually(lambda: len(served.app[webhook_protocol.CONNECTIONS].live) == 1)
    (protocol,) = served.app[webhook_protocol.CONNECTIONS].live
    server_side = protocol.guarded.transport
    assert server_side is not None
    server_side.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    return writer, server_side


async def test_a_stop_is_not_held_by_a_client_that_does_not_read_its_answers(
    served: Served,
) -> None:
    writer, server_side = await unread_connection(served)
    writer.write(post(b"{}", signature="") * 3000)  # 401s it never reads
    await eventually(lambda: server_side.get_write_buffer_size() > 64 * 1024)  # paused
    loop = asyncio.get_running_loop()
    started = loop.time()
    await served.app[webhook_protocol.CONNECTIONS].close(5.0)
    # Idle, its answers unread: closing would wait for them forever, as the guard knows.
    assert loop.time() - started < 1.0
    writer.transport.abort()


@pytest.mark.parametrize("served", [{"header_timeout": 0.5, "body_timeout": 0.3}], indirect=True)
@pytest.mark.parametrize(
    "last",
    [
        post(b"{}", signature="", extra=b"Connection: close\r\n"),
        post(b"{}", signature="")[:-1],  # its body never whole: a 408, and the close
    ],
    ids=["Connection: close", "408"],
)
async def test_a_closing_connection_whose_client_does_not_read_is_dropped_at_the_deadline(
    served: Served, last: bytes
) -> None:
    writer, server_side = await unread_connection(served)
    unsigned = post(b"{}", signature="")
    writer.write(unsigned * 200 + last)  # ~34 KB of 401s: the kernel's buffers are full
    await eventually(server_side.is_closing)  # the last answered: close() waits for the rest
    assert server_side.get_write_buffer_size() > 0
    # As a connection aiohttp serves: idle after its answer, so the header timeout (or the
    # cap's eviction) ends it. It was left busy: a slot held for as long as the client liked.
    guard = served.app[GUARD]
    await eventually(lambda: guard.open == 0, timeout=3)
    writer.transport.abort()


async def test_an_unexpected_exception_is_logged_and_answered_500_then_closed(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*_args: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(served.runtime.ingestor, "ingest", broken)
    reader, writer = await connect(served)
    with capture_logs() as logs:
        writer.write(post(delivery("34610005000", "bug")))
        answer = await read_response(reader)
    assert (answer.status, answer.json()) == (500, {"error": "internal error"})
    assert await asyncio.wait_for(reader.read(), 5) == b""
    assert [(e["event"], e.get("exc_info")) for e in logs] == [("delivery_failed", True)]
    assert served.metrics.deliveries.labels("error")._value.get() == 1
    writer.close()


async def test_a_client_gone_while_its_delivery_is_committed_is_counted_once_without_error(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    ingest, committing = served.runtime.ingestor.ingest, asyncio.Event()

    async def slow(*args: Any) -> Any:
        await committing.wait()
        return await ingest(*args)

    monkeypatch.setattr(served.runtime.ingestor, "ingest", slow)
    _reader, writer = await connect(served)
    with capture_logs() as logs:
        writer.write(post(delivery("34610005100", "gone")))
        await eventually(lambda: served.app[GUARD].open == 1 and not committing.is_set())
        await asyncio.sleep(0.05)
        writer.transport.abort()
        await asyncio.sleep(0.05)  # the server sees the EOF while the commit waits
        committing.set()
        await eventually(lambda: served.answered("34610005100"))
        await eventually(lambda: served.app[GUARD].open == 0)
    assert [e["event"] for e in logs if e["log_level"] in ("warning", "error")] == []
    assert [e["event"] for e in logs].count("delivery_recorded") == 1
    assert served.metrics.deliveries.labels("ok")._value.get() == 1


@pytest.mark.parametrize(("size", "fast"), [(8190, True), (8191, False)])
async def test_a_head_of_up_to_8190_bytes_is_the_fast_path_s_and_a_longer_one_aiohttp_s(
    served: Served, size: int, fast: bool
) -> None:
    body = delivery("34610006000", f"head of {size}")
    bare = post(body, extra=b"X-Pad: \r\n")
    pad = size - (len(bare) - len(body) - 4)
    raw = post(body, extra=b"X-Pad: " + b"a" * pad + b"\r\n")
    assert raw.index(b"\r\n\r\n") == size
    reader, writer = await connect(served)
    writer.write(raw)
    answer = await read_response(reader)
    assert (answer.status, "server" not in answer.headers) == (200, fast)
    writer.close()


async def test_a_stop_past_its_deadline_cancels_the_answer_still_being_made(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit stuck (a hung disk) past the stop's deadline: the connection is aborted,
    the answer's task cancelled before the profiles stop, and the delivery counted."""
    stuck = asyncio.Event()

    async def hung(*_args: Any) -> None:
        stuck.set()
        await asyncio.Event().wait()

    monkeypatch.setattr(served.runtime.ingestor, "ingest", hung)
    reader, writer = await connect(served)
    writer.write(post(delivery("34600001000", "stuck")))
    await asyncio.wait_for(stuck.wait(), 5)
    connections = served.app[webhook_protocol.CONNECTIONS]
    loop = asyncio.get_running_loop()
    began = loop.time()
    await connections.close(0.3)
    assert loop.time() - began < 2
    assert not connections.tasks
    assert await asyncio.wait_for(reader.read(), 5) == b""  # aborted: no answer
    assert served.metrics.deliveries.labels("error")._value.get() == 1
    writer.close()


async def test_the_handling_time_counts_the_wait_for_a_body_that_came_after_its_head(
    served: Served,
) -> None:
    """As on the aiohttp route, whose handler starts before it reads the body."""
    reader, writer = await connect(served)
    raw = post(delivery("34600001100", "late body"))
    writer.write(raw[:-20])
    await writer.drain()
    await asyncio.sleep(0.3)
    writer.write(raw[-20:])
    assert (await read_response(reader)).status == 200
    assert served.metrics.webhook_seconds._sum.get() >= 0.3
    writer.close()
