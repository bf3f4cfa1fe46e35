"""The Graph media client's decisions: digests in either notation, where the token may go."""

from __future__ import annotations

import base64
import hashlib
import os
import time

import pytest
from pytest_aiohttp import AiohttpServer

from bridge.whatsapp import media
from bridge.whatsapp.media import MediaClient, MediaError, parse_digest
from tests.fakes.graph import TOKEN, FakeGraph

DIGEST = hashlib.sha256(b"photo").digest()


@pytest.mark.parametrize(
    "given",
    [
        DIGEST.hex(),
        DIGEST.hex().upper(),
        base64.b64encode(DIGEST).decode(),
        base64.b64encode(DIGEST).decode().rstrip("="),
        base64.urlsafe_b64encode(DIGEST).decode(),
    ],
)
def test_a_digest_is_compared_as_bytes_in_any_notation(given: str) -> None:
    assert parse_digest(given) == DIGEST


@pytest.mark.parametrize("given", ["", "3b1d", "not base64 at all!", None, 42, "00" * 31])
def test_what_is_no_digest_is_none(given: object) -> None:
    assert parse_digest(given) is None


@pytest.mark.parametrize(
    ("url", "trusted"),
    [
        ("https://lookaside.fbsbx.com/whatsapp_business/attachments/?mid=1", True),
        ("https://scontent.whatsapp.net/v/t1", True),
        ("http://lookaside.fbsbx.com/x", False),  # not over TLS
        ("https://fbsbx.com.evil.example/x", False),
        ("https://evil.example/x?fbsbx.com", False),
        ("http://127.0.0.1:9999/whatsapp_business/attachments/", True),  # the Graph URL's own
        ("http://127.0.0.1:9998/x", False),
        ("not a url", False),
    ],
)
def test_the_token_goes_only_to_meta_or_the_graph_url(url: str, trusted: bool) -> None:
    assert MediaClient("http://127.0.0.1:9999", "v21.0", "t").trusted(url) is trusted


async def test_a_download_that_keeps_dripping_is_cut_off(
    aiohttp_server: AiohttpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A body that never pauses as long as the read timeout but never ends either (a byte
    now and then) must not hold a download slot for ever: past the grace plus the limit's
    time at the minimum rate it fails as a retryable timeout."""
    monkeypatch.setattr(media, "DOWNLOAD_GRACE", 0.5, raising=False)
    monkeypatch.setattr(media, "MIN_RATE", 1024 * 1024, raising=False)
    graph = FakeGraph()
    graph.add_media("media-drip", os.urandom(1024 * 1024))
    graph.trickle = 0.25  # 64 KiB every 0.25 s: 16 pieces, 4 s, never a 2 s pause
    base = str((await aiohttp_server(graph.app())).make_url("")).rstrip("/")
    client = MediaClient(base, "v21.0", TOKEN, read_timeout=2.0)
    received = bytearray()

    async def sink(data: bytes) -> None:
        received.extend(data)

    try:
        info = await client.lookup("media-drip")
        started = time.monotonic()
        with pytest.raises(MediaError) as caught:
            await client.download(info.url, sink, 1024 * 1024)  # 0.5 + 1 s allowed
        assert time.monotonic() - started < 3.0
        assert caught.value.reason == "timeout" and caught.value.retryable
        assert len(received) < 1024 * 1024
    finally:
        await client.close()
