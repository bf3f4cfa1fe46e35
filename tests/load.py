"""Signed deliveries posted over real HTTP, shared by durability tests and benchmarks."""

from __future__ import annotations

import http.client
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp

from bridge import simulate


async def post_text(
    session: aiohttp.ClientSession, port: int, secret: str, text: str, phone: str
) -> str | None:
    """Post one single-message text delivery; the message id if it got a 200, else None."""
    return await post_message(session, port, secret, simulate.text_message(text, phone))


async def post_message(
    session: aiohttp.ClientSession, port: int, secret: str, message: dict[str, Any]
) -> str | None:
    """Post a delivery of one message (any type); its id if it got a 200, else None (a
    refused or interrupted request was not acknowledged: Meta would redeliver it)."""
    raw = simulate.encode(simulate.delivery(simulate.change_value([message])))
    try:
        async with session.post(
            f"http://127.0.0.1:{port}/webhook",
            data=raw,
            headers=simulate.signed_headers(raw, secret),
        ) as resp:
            return str(message["id"]) if resp.status == 200 else None
    except (aiohttp.ClientError, TimeoutError):
        return None


def post_signed_sync(port: int, raw: bytes, secret: str, timeout: float = 10) -> int:
    """POST `raw` to a bridge's /webhook, signed with `secret`, from plain synchronous code."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/webhook", body=raw, headers=simulate.signed_headers(raw, secret))
        return conn.getresponse().status
    finally:
        conn.close()


def start_bridge_quietly(env: dict[str, str]) -> subprocess.Popen[bytes]:
    """`bridge serve` in a subprocess with its output discarded (benchmarks read the store
    or the fake Graph API, not its logs)."""
    return subprocess.Popen(
        [sys.executable, "-m", "bridge", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def publish(table: str, out: Path | None) -> None:
    """A benchmark's markdown table: printed, and written to `out` when given."""
    print(table)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(table + "\n")
