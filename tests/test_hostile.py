"""Hostile input against a real server: random, mutated, oversized and malformed deliveries.

Hypothesis drives synchronous HTTP against a bridge served from a background thread, so each
generated example is a real request. Properties: never a 5xx, never a crash, nothing recorded
from an unsigned or wrongly signed body, and the service keeps serving afterwards.
"""

from __future__ import annotations

import asyncio
import copy
import gzip
import http.client
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from bridge import simulate
from bridge.config import Settings
from bridge.errors import PayloadError
from bridge.http import webhook_protocol
from bridge.http.app import create_app
from bridge.ingest import _message_record
from bridge.records import decode, encode
from bridge.runtime import ProfileRuntime
from bridge.state import State
from bridge.whatsapp.parse import parse_delivery
from tests.conftest import APP_SECRET, make_profile

MAX_BODY = 256 * 1024
METRICS_TOKEN = "hostile-metrics-token"
API_TOKEN = "hostile-api-token-0123456789"


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

    def raw(self, request: bytes) -> int:
        """Send `request` byte for byte (no client library cleaning up headers); the status."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            sock.sendall(request)
            response = http.client.HTTPResponse(sock)
            response.begin()  # skips a 100 Continue
            return response.status

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
            Settings(
                profiles=(profile,),
                var_dir=tmp,
                max_body_bytes=MAX_BODY,
                metrics_token=METRICS_TOKEN,
                api_token=API_TOKEN,
            ),
            [runtime],
        )
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        assert runner.server is not None
        # As `bridge serve` listens: every connection through the connection guard.
        server = await asyncio.get_running_loop().create_server(
            webhook_protocol.protocol_factory(app, runner.server), "127.0.0.1", 0
        )
        port = server.sockets[0].getsockname()[1]
        holder.update(runner=runner, server=server, runtime=runtime, port=port)
        ready.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=10)
    ready.wait(10)
    yield LiveBridge(holder["port"], holder["runtime"], loop)
    loop.call_soon_threadsafe(holder["server"].close)
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
# HMAC pads short keys with zero bytes: a secret plus NULs is the same key, not a wrong one.
@given(
    raw=mutated_deliveries(),
    bad_secret=st.text(min_size=1, max_size=20).filter(lambda t: t.strip("\x00")),
)
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


# --- any byte in any header: never a 5xx ------------------------------------------------------


def http_request(
    method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes = b""
) -> bytes:
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: 127.0.0.1"]
    lines += [name + b": " + value for name, value in headers]
    lines += [b"Content-Length: " + str(len(body)).encode(), b"Connection: close"]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def test_a_non_ascii_signature_header_is_403(live: LiveBridge) -> None:
    raw = simulate.encode(_valid_body(1))
    for value in (b"sha256=\xff\xfe", b"sha256=" + "é".encode() * 32, b"\x80" * 71):
        request = http_request(b"POST", b"/webhook", [(b"X-Hub-Signature-256", value)], raw)
        assert live.raw(request) == 403, value


def test_a_non_ascii_bearer_token_on_the_api_is_401(live: LiveBridge) -> None:
    for value in (b"Bearer \xff\xfe", b"\xc3\x28", "Bearer é".encode()):
        assert (
            live.raw(http_request(b"GET", b"/api/v1/profiles", [(b"Authorization", value)])) == 401
        )
    right = f"Bearer {API_TOKEN}".encode()
    assert live.raw(http_request(b"GET", b"/api/v1/profiles", [(b"Authorization", right)])) == 200


def test_a_non_ascii_bearer_token_on_metrics_is_401(live: LiveBridge) -> None:
    for value in (b"Bearer \xff", b"Bearer " + "é".encode(), b"\xc3"):
        assert live.raw(http_request(b"GET", b"/metrics", [(b"Authorization", value)])) == 401
    right = f"Bearer {METRICS_TOKEN}".encode()
    assert live.raw(http_request(b"GET", b"/metrics", [(b"Authorization", right)])) == 200


@pytest.mark.parametrize("encoding", [b"gzip", b"deflate", b"br"])
def test_a_body_its_content_encoding_cannot_decode_is_400(
    live: LiveBridge, encoding: bytes
) -> None:
    raw = simulate.encode(_valid_body(1))
    for body in (raw, b"\x1f\x8b" + b"\x00" * 30, b"\x78\x9c" + raw):
        headers = [
            (b"Content-Encoding", encoding),
            (
                b"X-Hub-Signature-256",
                simulate.signed_headers(body, APP_SECRET)["X-Hub-Signature-256"].encode(),
            ),
        ]
        assert live.raw(http_request(b"POST", b"/webhook", headers, body)) == 400


def test_a_gzip_body_that_decodes_is_verified_on_what_it_decodes_to(live: LiveBridge) -> None:
    raw = simulate.encode(_valid_body(1))
    signature = simulate.signed_headers(raw, APP_SECRET)["X-Hub-Signature-256"].encode()
    headers = [(b"Content-Encoding", b"gzip"), (b"X-Hub-Signature-256", signature)]
    assert live.raw(http_request(b"POST", b"/webhook", headers, gzip.compress(raw))) == 200


def test_an_unprintable_challenge_is_not_echoed(live: LiveBridge) -> None:
    target = b"/webhook?hub.mode=subscribe&hub.verify_token=test-verify-token&hub.challenge=%00"
    assert live.raw(http_request(b"GET", target, [])) == 400


HEADER_NAMES = st.sampled_from(
    [
        b"X-Hub-Signature-256",
        b"Authorization",
        b"Content-Encoding",
        b"Expect",
        b"Content-Type",
        b"Accept-Encoding",
    ]
) | st.from_regex(rb"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,16}", fullmatch=True).filter(
    # We frame the request ourselves: these would make it another request, or an endless one.
    lambda name: name.lower() not in (b"content-length", b"transfer-encoding", b"connection")
)
HEADER_VALUES = st.one_of(
    st.binary(max_size=80),
    st.binary(max_size=70).map(lambda b: b"sha256=" + b),
    st.binary(max_size=40).map(lambda b: b"Bearer " + b),
    st.sampled_from([b"gzip", b"deflate", b"br", b"identity", b"gzip, deflate", b"100-continue"]),
).map(lambda value: value.replace(b"\r", b"").replace(b"\n", b""))
TARGETS = st.one_of(
    st.from_regex(rb"/[A-Za-z0-9._~%/-]{0,20}", fullmatch=True),
    st.sampled_from(
        [b"/webhook", b"/webhook/default", b"/webhook/nope", b"/metrics", b"/healthz", b"/readyz"]
    ),
    st.sampled_from(
        [
            b"/api/v1/profiles",
            b"/api/v1/openapi.json",
            b"/api/v1/profiles/default/conversations?limit=2&cursor=%ff",
            b"/api/v1/profiles/default/conversations/34600000001",
            b"/api/v1/profiles/default/conversations/34600000001/pause",
            b"/api/v1/profiles/default/conversations/34600000001/resume",
            b"/api/v1/profiles/default/conversations/34600000001/messages",
            b"/api/v1/profiles/default/conversations/%ff%fe",
            b"/console",
            b"/console/console.js",
        ]
    ),
    st.binary(max_size=40).map(
        lambda b: (
            b"/webhook?hub.mode=subscribe&hub.verify_token="
            + b.replace(b" ", b"%20").replace(b"\r", b"").replace(b"\n", b"")
            + b"&hub.challenge=1"
        )
    ),
)


@st.composite
def hostile_requests(draw: st.DrawFn) -> bytes:
    body = draw(st.one_of(st.binary(max_size=512), st.just(simulate.encode(_valid_body(1)))))
    headers = draw(st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=6))
    if draw(st.booleans()):  # get past the signature check now and then
        signature = simulate.signed_headers(body, APP_SECRET)["X-Hub-Signature-256"]
        headers.append((b"X-Hub-Signature-256", signature.encode()))
    if draw(st.booleans()):
        token = draw(st.sampled_from([METRICS_TOKEN, API_TOKEN]))
        headers.append((b"Authorization", f"Bearer {token}".encode()))
    method = draw(st.sampled_from([b"GET", b"POST", b"GET", b"POST", b"PUT", b"HEAD", b"DELETE"]))
    return http_request(method, draw(TARGETS), headers, body)


@settings(HYPO, max_examples=400)
@given(request=hostile_requests())
def test_no_byte_sequence_in_headers_or_body_gives_a_5xx(live: LiveBridge, request: bytes) -> None:
    assert live.raw(request) < 500, request


def test_an_unknown_path_is_404_and_a_wrong_method_405(live: LiveBridge) -> None:
    assert live.raw(http_request(b"GET", b"/nowhere", [])) == 404
    assert live.raw(http_request(b"PUT", b"/webhook", [])) == 405
    assert live.raw(http_request(b"POST", b"/healthz", [(b"Expect", b"\xff")])) == 417


def test_expect_100_continue_still_gets_its_100(live: LiveBridge) -> None:
    raw = simulate.encode(_valid_body(1))
    signature = simulate.signed_headers(raw, APP_SECRET)["X-Hub-Signature-256"].encode()
    headers = [(b"Expect", b"100-continue"), (b"X-Hub-Signature-256", signature)]
    head = http_request(b"POST", b"/webhook", headers, raw)[: -len(raw)]
    with socket.create_connection(("127.0.0.1", live.port), timeout=10) as sock:
        sock.sendall(head)  # the body only once the server said to go on
        assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n")
        sock.sendall(raw)
        response = http.client.HTTPResponse(sock)
        response.begin()
        assert response.status == 200


# --- the deliveries' fast path answers a head as aiohttp does ---------------------------------

ODD_BYTES = st.sampled_from(
    [b"\x00", b"\t", b" ", b"\r", b"\n", b"\r\n", b":", b",", b"\x01", b"\x0b", b"\x7f"]
    + [b"\x80", b"\xff", b"a", b"A", b"0", b"+", b"-", b"/", b"?", b"%", b"@"]
)


@st.composite
def mutated_delivery_heads(draw: st.DrawFn) -> bytes:
    """A signed delivery whose head is bent one way or another, its body left whole."""
    body = simulate.encode(_valid_body(1))
    signature = simulate.signed_headers(body, APP_SECRET)["X-Hub-Signature-256"].encode()
    lines = [
        b"POST /webhook HTTP/1.1",
        b"Host: 127.0.0.1",
        b"Content-Type: application/json",
        b"Content-Length: " + str(len(body)).encode(),
        b"X-Hub-Signature-256: " + signature,
        b"User-Agent: facebookexternalua",
        b"Connection: keep-alive",
    ]
    for _ in range(draw(st.integers(1, 3))):
        index = draw(st.integers(0, len(lines) - 1))
        line = lines[index]
        how = draw(st.sampled_from(["insert", "replace", "duplicate", "drop", "case", "lf"]))
        if how in ("insert", "replace") and not line.startswith(b"Content-Length"):
            at = draw(st.integers(0, len(line)))
            odd = draw(ODD_BYTES)
            lines[index] = line[:at] + odd + line[at + (how == "replace") :]
        elif how == "duplicate":
            lines.insert(index, line)
        elif how == "drop" and index:
            del lines[index]
        elif how == "case":
            lines[index] = line.swapcase() if draw(st.booleans()) else line.lower()
        elif how == "lf":
            lines[index] = line + b"\n"  # joined by CRLF: a bare LF, or a LF CRLF ending
    request = b"\r\n".join(lines) + b"\r\n\r\n" + body
    # One request: a head ended early leaves bytes that are a second one, which aiohttp
    # answers with the first (a 400 for both when they come in one segment).
    assume(request.index(b"\r\n\r\n") + 4 + len(body) == len(request))
    return request


def _status_after(port: int, before: bytes, request: bytes) -> int | str:
    """The status `request` gets on a connection that first sent `before` (and read its
    answer); "none" if nothing comes within a second (a head or body still awaited)."""
    with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
        if before:
            sock.sendall(before)
            first = http.client.HTTPResponse(sock)
            first.begin()
            first.read()
        sock.sendall(request)
        try:
            response = http.client.HTTPResponse(sock)
            response.begin()
            return response.status
        except (TimeoutError, http.client.HTTPException, ConnectionError):
            return "none"


@settings(HYPO, max_examples=300)
@given(request=mutated_delivery_heads())
def test_the_fast_path_answers_a_bent_delivery_head_with_aiohttp_s_status(
    live: LiveBridge, request: bytes
) -> None:
    # aiohttp's answer: the same bytes on a connection a health check handed over to it.
    health = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    aiohttp_status = _status_after(live.port, health, request)
    assert _status_after(live.port, b"", request) == aiohttp_status, request


@st.composite
def pipelines_in_pieces(draw: st.DrawFn) -> tuple[list[bytes], int]:
    """Deliveries (and a request for aiohttp) on one connection, cut anywhere into writes."""
    requests = []
    for index in range(draw(st.integers(1, 4))):
        if draw(st.integers(0, 3)) == 0:
            requests.append(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            continue
        body = simulate.encode(_valid_body(1)).replace(b"msg 0", f"piece {index}".encode())
        signature = simulate.signed_headers(body, APP_SECRET)["X-Hub-Signature-256"]
        headers = [(b"X-Hub-Signature-256", signature.encode())]
        requests.append(http_request(b"POST", b"/webhook", headers, body))
    stream = b"".join(requests).replace(b"Connection: close\r\n", b"")
    cuts = sorted(draw(st.sets(st.integers(1, len(stream) - 1), max_size=6)))
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    return pieces, len(requests)


@settings(HYPO, max_examples=100)
@given(case=pipelines_in_pieces())
def test_a_pipeline_cut_anywhere_into_writes_gets_every_answer_in_order(
    live: LiveBridge, case: tuple[list[bytes], int]
) -> None:
    pieces, count = case
    with socket.create_connection(("127.0.0.1", live.port), timeout=5) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for piece in pieces:
            sock.sendall(piece)
            time.sleep(0.002)  # its own segment, read on its own
        statuses = []
        answers = sock.makefile("rb")  # one buffered reader for every answer
        for _ in range(count):
            status_line = answers.readline()
            length = 0
            while (line := answers.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            answers.read(length)
            statuses.append(int(status_line.split()[1]) if status_line else 0)
    assert statuses == [200] * count
