"""The control server in-process, on a real store and a real unix socket: the protocol's
edges (bad requests, heartbeats, a requester that hangs up) and how an operation is added."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from bridge.control import client, server
from bridge.control.protocol import Args, BadRequest, ControlError, Result, encode_request
from bridge.control.registry import OPERATIONS, ControlContext, Registry, argument
from bridge.control.server import ControlServer
from bridge.records import ConversationDeleted
from bridge.store.durable import DurableStore
from tests.conftest import make_profile
from tests.persistence.support import user


@dataclass
class Channel:
    store: DurableStore
    server: ControlServer

    @property
    def state_dir(self) -> Path:
        return self.store.profile.state_dir

    async def request(self, op: str, args: Args, timeout: float = 5) -> Result:
        return await asyncio.to_thread(client.request, self.state_dir, "default", op, args, timeout)

    async def raw(self, data: bytes, close: bool = False) -> list[bytes]:
        """Send `data` as it is; every line of the answer (heartbeats included)."""

        def exchange() -> list[bytes]:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(5)
                sock.connect(str(self.server.path))
                sock.sendall(data)
                if close:
                    return []
                received = b""
                try:
                    while chunk := sock.recv(65536):
                        received += chunk
                except ConnectionResetError:
                    pass  # the bridge closed with part of a refused request unread
            return received.split(b"\n")[:-1]

        return await asyncio.to_thread(exchange)


async def open_channel(tmp_path: Path, registry: Registry = OPERATIONS) -> Channel:
    store = DurableStore(make_profile(tmp_path))
    await store.open()
    control = ControlServer(ControlContext(store), registry)
    await control.start()
    return Channel(store, control)


@pytest.fixture
async def channel(tmp_path: Path) -> AsyncIterator[Channel]:
    opened = await open_channel(tmp_path)
    yield opened
    await opened.server.stop(5)
    await opened.store.close()


async def test_an_operation_answers_with_its_result(channel: Channel) -> None:
    await channel.store.commit([user("34600000001", 1)])
    result = await channel.request("delete", {"key": "+34 600 000 001"})
    assert result == {
        "key": "34600000001",
        "settings": {"max_messages": 250, "retention_days": 365},
    }
    assert channel.store.state.conversations == {}


async def test_its_failure_is_one_line_with_the_exit_code(channel: Channel) -> None:
    with pytest.raises(ControlError) as failed:
        await channel.request("delete", {"key": "34600000009"})
    assert str(failed.value) == "no conversation '34600000009' in profile 'default'"
    assert not isinstance(failed.value, BadRequest)  # exit 1
    with pytest.raises(BadRequest, match="argument 'key' must be a str"):
        await channel.request("delete", {"key": 34600000009})


async def test_unknown_operations_and_malformed_requests_are_usage_errors(
    channel: Channel,
) -> None:
    with pytest.raises(BadRequest, match=r"no operation 'nope' \(it knows delete, import"):
        await channel.request("nope", {})
    (line,) = await channel.raw(b"not json\n")
    assert orjson.loads(line) == {"ok": False, "error": "bad request: not JSON", "exit": 2}
    (line,) = await channel.raw(b'{"v": 99, "op": "delete"}\n')
    assert orjson.loads(line)["exit"] == 2 and "version 1 request" in orjson.loads(line)["error"]


async def test_a_request_over_the_size_limit_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server, "MAX_REQUEST", 4096)
    channel = await open_channel(tmp_path)
    try:
        (line,) = await channel.raw(b"x" * 10_000 + b"\n")
    finally:
        await channel.server.stop(5)
        await channel.store.close()
    assert orjson.loads(line) == {"ok": False, "error": "request larger than 4096 bytes", "exit": 2}


async def test_a_new_operation_is_one_registered_handler(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """How a later operation (pause, resume, send, ...) joins the channel; a long one keeps
    the requester informed with heartbeats."""
    monkeypatch.setattr(server, "HEARTBEAT", 0.05)
    registry = Registry()

    @registry.operation("forget")
    async def forget(ctx: ControlContext, args: Args) -> Result:
        key = argument(args, "key", str)
        await asyncio.sleep(0.3)
        await ctx.store.commit_decided(lambda state: [ConversationDeleted(key)])
        return {"forgotten": key}

    with pytest.raises(ValueError, match="registered twice"):
        registry.operation("forget")(forget)
    channel = await open_channel(tmp_path, registry)
    try:
        await channel.store.commit([user("k", 1)])
        lines = await channel.raw(encode_request("forget", {"key": "k"}))
    finally:
        await channel.server.stop(5)
        await channel.store.close()
    *heartbeats, answer = lines
    assert len(heartbeats) >= 3 and set(heartbeats) == {b""}
    assert orjson.loads(answer) == {"ok": True, "result": {"forgotten": "k"}}


async def test_a_request_whose_sender_hung_up_is_not_started(tmp_path: Path) -> None:
    registry = Registry()
    release = asyncio.Event()
    ran: list[str] = []

    @registry.operation("block")
    async def block(ctx: ControlContext, args: Args) -> Result:
        await release.wait()
        return {}

    @registry.operation("record")
    async def record(ctx: ControlContext, args: Args) -> Result:
        ran.append("record")
        return {}

    channel = await open_channel(tmp_path, registry)
    try:
        blocking = asyncio.ensure_future(channel.raw(encode_request("block", {})))
        await asyncio.sleep(0.1)  # `block` holds the channel: operations run one at a time
        await channel.raw(encode_request("record", {}), close=True)  # gives up at once
        await asyncio.sleep(0.1)
        release.set()
        assert orjson.loads((await blocking)[-1]) == {"ok": True, "result": {}}
        await asyncio.sleep(0.1)
    finally:
        await channel.server.stop(5)
        await channel.store.close()
    assert ran == []


async def test_without_a_bridge_the_client_says_so(tmp_path: Path) -> None:
    channel = await open_channel(tmp_path)
    await channel.server.stop(5)
    await channel.store.close()
    assert not channel.server.path.exists()
    with pytest.raises(client.NoBridge):
        await channel.request("delete", {"key": "k"})


async def test_a_long_socket_path_is_reached_through_its_directory(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    assert len(str(deep / "profiles" / "default" / "control.sock")) > 108
    channel = await open_channel(deep)
    try:
        await channel.store.commit([user("34600000001", 1)])
        result = await channel.request("delete", {"key": "34600000001"})
    finally:
        await channel.server.stop(5)
        await channel.store.close()
    assert result["key"] == "34600000001"
