"""Tell the team a user asked for a person: a small signed JSON POST to the profile's
`notify_url` (Slack and Mattermost incoming webhooks show its `text`; n8n, Zapier or a script
can use the fields and check the signature).

Body: `{"event": "handoff_requested", "profile", "key", "name", "message", "at" (ms),
"text"}`. With `notify_secret` set, the header `X-Bridge-Signature-256: sha256=<hex
HMAC-SHA256 of the raw body>` signs it, as Meta signs its webhooks. Best effort, after the
user's message is durable and acknowledged: a few attempts within a minute, each failure
logged; a notification is not kept across a restart (the handoff itself is: the conversation
stays paused, and the log line and metric are there).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from typing import Any

import aiohttp
import orjson

from bridge.ops.logs import get_logger, mask

SIGNATURE_HEADER = "X-Bridge-Signature-256"
ATTEMPTS = 3
TIMEOUT = 10.0


def sign(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class Notifier:
    """POSTs handoff notifications of one profile in the background."""

    def __init__(self, url: str, secret: str | None, profile: str, retry_delay: float = 2.0):
        self._url = url
        self._secret = secret
        self._profile = profile
        self._retry_delay = retry_delay
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._log = get_logger(profile=profile)

    def handoff(self, key: str, name: str | None, message: str, at_ms: int) -> None:
        who = f"{name} ({mask(key)})" if name else mask(key)
        payload: dict[str, Any] = {
            "event": "handoff_requested",
            "profile": self._profile,
            "key": key,
            "name": name,
            "message": message,
            "at": at_ms,
            "text": f"{who} asked for a person on WhatsApp ({self._profile}): {message}",
        }
        task = asyncio.get_running_loop().create_task(self._post(key, orjson.dumps(payload)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post(self, key: str, body: bytes) -> None:
        headers = {"Content-Type": "application/json"}
        if self._secret:
            headers[SIGNATURE_HEADER] = sign(body, self._secret)
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT))
        error = ""
        for attempt in range(1, ATTEMPTS + 1):
            try:
                async with self._session.post(self._url, data=body, headers=headers) as resp:
                    if resp.status < 300:
                        self._log.info("handoff_notified", key=mask(key), attempt=attempt)
                        return
                    error = f"HTTP {resp.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                error = str(exc) or type(exc).__name__
            if attempt < ATTEMPTS:
                await asyncio.sleep(self._retry_delay * attempt)
        self._log.warning("handoff_notify_failed", key=mask(key), attempts=ATTEMPTS, error=error)

    async def close(self) -> None:
        """Give notifications under way a moment, then stop."""
        if self._tasks:
            _done, pending = await asyncio.wait(list(self._tasks), timeout=2.0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None
