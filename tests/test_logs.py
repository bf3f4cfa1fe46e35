"""Log output: JSON lines a log shipper can parse, on binary and text streams alike."""

from __future__ import annotations

import io
import json

import pytest

from bridge import logs


@pytest.fixture(autouse=True)
def restore_test_logging() -> object:
    yield None
    logs.configure("console", "info")  # as tests/conftest.py sets it up


@pytest.mark.parametrize("cache", [False, True])
def test_json_lines_on_a_binary_backed_stream(cache: bool) -> None:
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="utf-8")
    logs.configure("json", "info", stream, cache=cache)
    log = logs.get_logger(profile="shop")
    log.info("reply_sent", to=logs.mask("34600000001"), parts=1)
    log.debug("hidden_at_info")
    lines = [json.loads(line) for line in raw.getvalue().decode().splitlines()]
    assert len(lines) == 1
    line = lines[0]
    assert line["event"] == "reply_sent" and line["level"] == "info"
    assert line["profile"] == "shop" and line["to"] == "346*****001" and line["parts"] == 1
    assert line["timestamp"].endswith("Z")


def test_json_lines_on_a_text_only_stream() -> None:
    stream = io.StringIO()
    logs.configure("json", "warning", stream)
    logs.get_logger().warning("disk_low", free_mb=12, path=io)  # not JSON-native: repr'd
    line = json.loads(stream.getvalue())
    assert line["event"] == "disk_low" and line["free_mb"] == 12
    assert "module 'io'" in line["path"]


def test_a_stream_given_only_inline_is_kept_open() -> None:
    raw = io.BytesIO()
    logs.configure("json", "info", io.TextIOWrapper(raw, encoding="utf-8"))
    logs.get_logger().info("still_writable")  # the wrapper above was not kept by the caller
    assert b"still_writable" in raw.getvalue()
