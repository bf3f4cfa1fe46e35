"""Hostile input against a real server: random, mutated, oversized and malformed deliveries.

Hypothesis drives synchronous HTTP against a bridge served from a background thread, so each
generated example is a real request. Properties: never a 5xx, never a crash, nothing recorded
from an unsigned or wrongly signed body, and the service keeps serving afterwards.
"""

from __future__ import annotations

import asyncio
import copy
import http.client
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge import simulate
from bridge.app import create_app
from bridge.config import Settings
from bridge.errors import PayloadError
from bridge.ingest import _message_record
from bridge.records import decode, encode
from bridge.runtime import ProfileRuntime
from bridge.state import State
from bridge.whatsapp.parse import parse_delivery
from tests.conftest import APP_SECRET, make_profile

MAX_BODY = 256 * 1024


@dataclass
class LiveBridge:
    port: int
    runtime: ProfileRuntime
    loop: asyncio.AbstractEventLoop

    def post(self, raw: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("POST", "/webhook", body=raw, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def post_signed(self, raw: bytes, content_type: str = "application/json") -> tuple[int, bytes]:
        headers = simulate.signed_headers(raw, APP_SECRET)
        headers["Content-Type"] = content_type
        return self.post(raw, headers)

    def message_count(self) -> int:
        state: State = self.runtime.store.state
        return sum(1 for c in state.conversations.values() for m in c.messages if m.role == "user")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveBridge]:
    tmp: Path = tmp_path_factory.mktemp("hostile")
    profile = make_profile(tmp)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: dict[str, Any] = {}

    async def start() -> None:
        runtime = ProfileRuntime.build(profile)
        app = create_app(
            Settings(profiles=(profile,), var_dir=tmp, max_body_bytes=MAX_BODY), [runtime]
        )
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        holder.update(runner=runner, runtime=runtime, port=runner.addresses[0][1])
        ready.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=10)
    ready.wait(10)
    yield LiveBridge(holder["port"], holder["runtime"], loop)
    asyncio.run_coroutine_threadsafe(holder["runner"].cleanup(), loop).result(timeout=10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


HYPO = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


def _valid_body(n: int = 2) -> dict[str, Any]:
    messages = [simulate.text_message(f"msg {i}", f"3460000{i:04d}") for i in range(n)]
    return simulate.delivery(simulate.change_value(messages))


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


CORPUS = [
    orjson.loads(p.read_bytes())["delivery"]
    for p in sorted((Path(__file__).parent / "whatsapp" / "corpus").glob("*.json"))
]


@st.composite
def mutated_corpus(draw: st.DrawFn) -> Any:
    """A corpus delivery (every message type) with a few nodes deleted or replaced."""
    body = copy.deepcopy(draw(st.sampled_from(CORPUS)))
    return _mutate(draw, body)


@st.composite
def mutated_deliveries(draw: st.DrawFn) -> bytes:
    """A valid delivery with a few nodes deleted or replaced by arbitrary JSON."""
    return orjson.dumps(_mutate(draw, _valid_body()))


def _mutate(draw: st.DrawFn, body: Any) -> Any:
    for _ in range(draw(st.integers(1, 4))):
        paths = [p for p in _paths(body) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = body
        for step in path[:-1]:
            parent = parent[step]
        if draw(st.booleans()):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(json_values)
    return body


@HYPO
@given(raw=st.binary(max_size=2048))
def test_random_signed_bytes_never_5xx(live: LiveBridge, raw: bytes) -> None:
    status, _ = live.post_signed(raw)
    assert status in (200, 400)


@HYPO
@given(raw=mutated_deliveries())
def test_mutated_signed_deliveries_are_recorded_or_400(live: LiveBridge, raw: bytes) -> None:
    status, body = live.post_signed(raw)
    assert status in (200, 400), body
    if status == 400:
        assert "error" in orjson.loads(body)


@HYPO
@given(body=mutated_corpus())
def test_mutated_corpus_parses_to_records_that_always_serialize(body: Any) -> None:
    """Parse never raises but PayloadError (a 400), on any shape of any message type; what it
    keeps always becomes a journal record (a record that cannot be encoded would be a 503
    for every redelivery: a poison message)."""
    try:
        # Through bytes, as a body arrives: JSON has no infinity (orjson refuses it on input).
        delivery = parse_delivery(orjson.loads(orjson.dumps(body)))
    except PayloadError:
        return
    for change in delivery.changes:
        for message in change.messages:
            record = _message_record(message, 1_700_000_000_000)
            assert decode(encode(1, record)) == (1, record)


@HYPO
@given(body=mutated_corpus())
def test_mutated_corpus_deliveries_are_recorded_or_400(live: LiveBridge, body: Any) -> None:
    status, answer = live.post_signed(orjson.dumps(body))
    assert status in (200, 400), answer


@HYPO
@given(raw=mutated_deliveries(), bad_secret=st.text(min_size=1, max_size=20))
def test_unsigned_or_wrongly_signed_bodies_are_never_recorded(
    live: LiveBridge, raw: bytes, bad_secret: str
) -> None:
    before = live.message_count()
    unsigned, _ = live.post(raw, {"Content-Type": "application/json"})
    wrong, _ = live.post(raw, simulate.signed_headers(raw, APP_SECRET + bad_secret))
    garbage, _ = live.post(raw, {"X-Hub-Signature-256": "sha256=" + "0" * 64})
    assert (unsigned, wrong, garbage) == (401, 403, 403)
    assert live.message_count() == before


def test_deep_nesting_is_400(live: LiveBridge) -> None:
    raw = (
        b'{"object": "whatsapp_business_account", "entry": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    )
    status, _ = live.post_signed(raw)
    assert status in (400, 413)


def test_oversized_body_is_413(live: LiveBridge) -> None:
    status, _ = live.post_signed(b"x" * (MAX_BODY + 1))
    assert status == 413


def test_many_messages_in_one_delivery_are_all_recorded(live: LiveBridge) -> None:
    before = live.message_count()
    messages = [simulate.text_message(f"bulk {i}", f"3479{i:07d}") for i in range(1000)]
    status, body = live.post_signed(
        simulate.encode(simulate.delivery(simulate.change_value(messages)))
    )
    assert status == 200, body
    assert orjson.loads(body)["recorded"] == 1000
    assert live.message_count() == before + 1000


def test_non_utf8_text_is_400(live: LiveBridge) -> None:
    raw = simulate.encode(_valid_body(1)).replace(b"msg 0", b"msg \xff\xfe")
    status, _ = live.post_signed(raw)
    assert status == 400


def test_wrong_content_type_with_valid_delivery_is_still_recorded(live: LiveBridge) -> None:
    raw = simulate.encode(_valid_body(1))
    status, body = live.post_signed(raw, content_type="text/plain")
    assert status == 200, body


@pytest.mark.parametrize(
    "path",
    [
        ("object",),
        ("entry",),
        ("entry", 0, "changes"),
        ("entry", 0, "changes", 0, "value"),
        ("entry", 0, "changes", 0, "value", "metadata"),
        ("entry", 0, "changes", 0, "value", "messages", 0, "id"),
        ("entry", 0, "changes", 0, "value", "messages", 0, "from"),
    ],
)
def test_each_missing_required_field_is_a_clear_400(
    live: LiveBridge, path: tuple[Any, ...]
) -> None:
    body = copy.deepcopy(_valid_body(1))
    parent: Any = body
    for step in path[:-1]:
        parent = parent[step]
    del parent[path[-1]]
    status, answer = live.post_signed(orjson.dumps(body))
    assert status == 400
    assert orjson.loads(answer)["error"]


def test_service_keeps_serving_after_the_onslaught(live: LiveBridge) -> None:
    status, body = live.post_signed(simulate.encode(_valid_body(1)).replace(b"msg 0", b"after"))
    assert status == 200, body
