"""A fake WhatsApp Cloud API (Graph API) `/{version}/{phone_number_id}/messages` endpoint.

Speaks Meta's documented shapes: `{"messaging_product", "contacts", "messages": [{"id"}]}` on
success and `{"error": {"message", "type", "code", "fbtrace_id"}}` on failure. Failures can be
scripted per request; the bearer token is checked like Meta does (190 when wrong).
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

TOKEN = "test-access-token"


@dataclass
class FakeGraph:
    token: str = TOKEN
    sent: list[dict[str, Any]] = field(default_factory=list)  # accepted message bodies
    requests: list[dict[str, Any]] = field(default_factory=list)  # every POST body
    # Outcomes of the next requests, in order: (HTTP status, Graph code), or None for success.
    failures: deque[tuple[int, int | None] | None] = field(default_factory=deque)
    fail_all: tuple[int, int | None] | None = None
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def fail_next(self, status: int, code: int | None = None, times: int = 1) -> None:
        self.failures.extend([(status, code)] * times)

    def succeed_next(self, times: int = 1) -> None:
        self.failures.extend([None] * times)

    async def messages(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(body)
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return self._error(401, 190, "Error validating access token: Session has expired")
        failure = self.fail_all or (self.failures.popleft() if self.failures else None)
        if failure is not None:
            status, code = failure
            return self._error(status, code, "scripted failure")
        self.sent.append(body)
        wamid = f"wamid.FAKE{next(self._ids):06d}"
        return web.json_response(
            {
                "messaging_product": "whatsapp",
                "contacts": [{"input": body["to"], "wa_id": body["to"]}],
                "messages": [{"id": wamid}],
            }
        )

    async def phone_number(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return self._error(401, 190, "Error validating access token")
        return web.json_response({"id": request.match_info["phone"]})

    @staticmethod
    def _error(status: int, code: int | None, message: str) -> web.Response:
        error: dict[str, Any] = {
            "message": message,
            "type": "OAuthException",
            "fbtrace_id": "Afake",
        }
        if code is not None:
            error["code"] = code
        return web.json_response({"error": error}, status=status)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/{version}/{phone}/messages", self.messages)
        app.router.add_get("/{version}/{phone}", self.phone_number)
        return app
