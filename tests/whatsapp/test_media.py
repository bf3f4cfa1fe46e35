"""The Graph media client's decisions: digests in either notation, where the token may go."""

from __future__ import annotations

import base64
import hashlib

import pytest

from bridge.whatsapp.media import MediaClient, parse_digest

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
