"""A fake WhatsApp Cloud API (Graph API): `/{version}/{phone_number_id}/messages`, the number,
the app, and the app's webhook subscriptions to business accounts (WABAs).

Speaks Meta's documented shapes: `{"messaging_product", "contacts", "messages": [{"id"}]}` on
success and `{"error": {"message", "type", "code", "error_subcode", "error_data": {"details"},
"fbtrace_id"}}` on failure, with Meta's own wording for the codes the bridge handles. Records
every request (method, path, headers, JSON); failures can be scripted per request, globally or
per recipient; the bearer token is checked like Meta does (190 with HTTP 401 when wrong), and
a body the real API would reject (missing fields, text over 4096 chars) gets error 100.

Like Meta, it can report back: with `report_to(webhook_url, app_secret)`, every accepted
message is followed by a signed `sent` status webhook carrying the message's
`biz_opaque_callback_data`, retried until the bridge answers 200 (Meta retries for days).
And it can lose its answer after taking a message (`lose_answers`), as a dropped
connection does.

For `bridge doctor`: `GET /{phone_number_id}?fields=display_phone_number,verified_name,
quality_rating` answers the number's fields (any id, unless `numbers` lists the known ones:
then another id gets Meta's error 100, subcode 33, "does not exist"); `GET /app` names the
app the token belongs to; `GET /{waba_id}/subscribed_apps` lists the apps subscribed to a
WABA in `subscriptions` (unknown WABA: error 100/33) and `POST` subscribes the token's app,
answering `{"success": true}`.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from bridge import simulate

TOKEN = "test-access-token"
MAX_TEXT = 4096
APP_ID = "987654321098765"
NUMBER_FIELDS = {
    "display_phone_number": "+34 600 00 00 00",
    "verified_name": "Tienda de Prueba",
    "quality_rating": "GREEN",
}

# Meta's messages (and details, where it sends some) for the codes the bridge treats specially,
# from the Cloud API "Error codes" reference.
META_ERRORS: dict[int, tuple[str, str | None]] = {
    2: ("Service temporarily unavailable", None),
    100: ("(#100) Invalid parameter", None),
    190: ("Error validating access token: Session has expired.", None),
    130429: ("(#130429) Rate limit hit", "Cloud API message throughput has been reached."),
    131000: ("Something went wrong", "Message failed to send due to an unknown error."),
    131016: ("Service unavailable", "A service is temporarily unavailable."),
    131047: (
        "Re-engagement message",
        "Message failed to send because more than 24 hours have passed since the customer "
        "last replied to this number.",
    ),
    131056: (
        "(Business Account, Consumer Account) pair rate limit hit",
        "Too many messages sent from the sender phone number to the same recipient phone "
        "number in a short period of time.",
    ),
}

# Code 100 with subcode 33: an id that does not exist or that the token may not read.
NOT_FOUND = (
    "Unsupported get request. Object with ID '{id}' does not exist, cannot be loaded due to "
    "missing permissions, or does not support this operation. Please read the Graph API "
    "documentation at https://developers.facebook.com/docs/graph-api"
)

Outcome = tuple[int, int | None] | None  # (HTTP status, Graph code), or None for success


@dataclass(frozen=True)
class Received:
    """One request as the fake saw it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    json: Any


@dataclass
class FakeGraph:
    token: str = TOKEN
    received: list[Received] = field(default_factory=list)  # every request, in order
    requests: list[dict[str, Any]] = field(default_factory=list)  # every message POST body
    sent: list[dict[str, Any]] = field(default_factory=list)  # accepted message bodies
    # Outcomes of the next message POSTs, in order; per recipient ones are used first.
    failures: deque[Outcome] = field(default_factory=deque)
    failures_to: dict[str, deque[Outcome]] = field(default_factory=dict)
    fail_all: tuple[int, int | None] | None = None  # every POST fails this way while set
    delay: float = 0.0  # seconds to wait before answering (timeouts, in-flight sends)
    lose_answers: int = 0  # the next N accepted messages: taken, then the connection dropped
    reported: list[str] = field(default_factory=list)  # wamids whose status webhook got a 200
    # The numbers the token can read, with their fields; None: any id, with NUMBER_FIELDS.
    numbers: dict[str, dict[str, str]] | None = None
    app_id: str = APP_ID
    app_name: str = "Bridge test app"
    # WABA id -> ids of the apps subscribed to its webhooks.
    subscriptions: dict[str, list[str]] = field(default_factory=dict)
    _report: tuple[str, str] | None = None  # (webhook url, app secret)
    _reporters: set[asyncio.Task[None]] = field(default_factory=set)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def report_to(self, webhook_url: str, app_secret: str) -> None:
        """Send a status webhook for every message accepted from now on, as Meta does."""
        self._report = (webhook_url, app_secret)

    async def _report_sent(self, body: dict[str, Any], wamid: str) -> None:
        assert self._report is not None
        url, secret = self._report
        status = simulate.status(
            wamid, "sent", body["to"], callback_data=body.get("biz_opaque_callback_data")
        )
        raw = simulate.encode(simulate.delivery(simulate.change_value(statuses=[status])))
        headers = simulate.signed_headers(raw, secret)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        async with aiohttp.ClientSession() as session:
            while loop.time() < deadline:
                try:
                    async with session.post(url, data=raw, headers=headers) as resp:
                        if resp.status == 200:
                            self.reported.append(wamid)
                            return
                except aiohttp.ClientError:
                    pass  # the bridge is down (restarting): Meta retries later
                await asyncio.sleep(0.1)

    def fail_next(
        self, status: int, code: int | None = None, times: int = 1, to: str | None = None
    ) -> None:
        """The next `times` sends (to `to` only, if given) fail with this status and code."""
        queue = self.failures if to is None else self.failures_to.setdefault(to, deque())
        queue.extend([(status, code)] * times)

    def succeed_next(self, times: int = 1, to: str | None = None) -> None:
        queue = self.failures if to is None else self.failures_to.setdefault(to, deque())
        queue.extend([None] * times)

    def bodies(self, to: str | None = None) -> list[str]:
        """Texts of the accepted messages (to `to` only, if given), in order."""
        return [m["text"]["body"] for m in self.sent if to is None or m["to"] == to]

    async def _receive(self, request: web.Request) -> Any:
        body = await request.json() if request.can_read_body else None
        self.received.append(
            Received(request.method, request.path, dict(request.query), dict(request.headers), body)
        )
        if self.delay:
            await asyncio.sleep(self.delay)
        return body

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.token}"

    def _next_outcome(self, to: Any) -> Outcome:
        if self.fail_all is not None:
            return self.fail_all
        own = self.failures_to.get(to) if isinstance(to, str) else None
        if own:
            return own.popleft()
        return self.failures.popleft() if self.failures else None

    async def messages(self, request: web.Request) -> web.Response:
        body = await self._receive(request)
        self.requests.append(body)
        if not self._authorized(request):
            return self._error(401, 190)
        if not _valid_text_message(body):
            return self._error(400, 100)
        outcome = self._next_outcome(body["to"])
        if outcome is not None:
            return self._error(*outcome)
        self.sent.append(body)
        wamid = f"wamid.FAKE{next(self._ids):06d}"
        if self._report is not None:
            task = asyncio.get_running_loop().create_task(self._report_sent(body, wamid))
            self._reporters.add(task)
            task.add_done_callback(self._reporters.discard)
        if self.lose_answers:
            # Taken and delivered, but the answer never reaches the sender.
            self.lose_answers -= 1
            assert request.transport is not None
            request.transport.abort()
            return web.Response()
        return web.json_response(
            {
                "messaging_product": "whatsapp",
                "contacts": [{"input": body["to"], "wa_id": body["to"]}],
                "messages": [{"id": wamid}],
            }
        )

    async def phone_number(self, request: web.Request) -> web.Response:
        await self._receive(request)
        if not self._authorized(request):
            return self._error(401, 190)
        phone = request.match_info["phone"]
        known = NUMBER_FIELDS if self.numbers is None else self.numbers.get(phone)
        if known is None:
            return self._missing(phone)
        wanted = request.query.get("fields", "id").split(",")
        data = {"id": phone, **known}
        return web.json_response({k: data[k] for k in wanted if k in data} | {"id": phone})

    async def app_info(self, request: web.Request) -> web.Response:
        await self._receive(request)
        if not self._authorized(request):
            return self._error(401, 190)
        return web.json_response({"id": self.app_id, "name": self.app_name})

    async def subscribed_apps(self, request: web.Request) -> web.Response:
        await self._receive(request)
        if not self._authorized(request):
            return self._error(401, 190)
        waba = request.match_info["waba"]
        if waba not in self.subscriptions:
            return self._missing(waba)
        if request.method == "POST":
            if self.app_id not in self.subscriptions[waba]:
                self.subscriptions[waba].append(self.app_id)
            return web.json_response({"success": True})
        apps = [
            {
                "whatsapp_business_api_data": {
                    "id": app,
                    "name": self.app_name if app == self.app_id else f"app {app}",
                    "link": f"https://www.facebook.com/games/?app_id={app}",
                }
            }
            for app in self.subscriptions[waba]
        ]
        return web.json_response({"data": apps})

    @staticmethod
    def _missing(object_id: str) -> web.Response:
        """Meta's answer for an id the token cannot read: error 100, subcode 33."""
        message = NOT_FOUND.format(id=object_id)
        error = {
            "message": message,
            "type": "GraphMethodException",
            "code": 100,
            "error_subcode": 33,
            "fbtrace_id": "AFakeTraceId",
        }
        return web.json_response({"error": error}, status=400)

    @staticmethod
    def _error(status: int, code: int | None) -> web.Response:
        if code is None:  # what a load balancer in front of the Graph API answers
            return web.Response(status=status, text="<html>Server Error</html>")
        message, details = META_ERRORS.get(code, ("scripted failure", None))
        error: dict[str, Any] = {
            "message": message,
            "type": "OAuthException",
            "code": code,
            "fbtrace_id": "AFakeTraceId",
        }
        if code == 190:
            error["error_subcode"] = 463  # "session has expired"
        if details is not None:
            error["error_data"] = {"messaging_product": "whatsapp", "details": details}
        return web.json_response({"error": error}, status=status)

    async def _stop_reporting(self, app: web.Application) -> None:
        for task in list(self._reporters):
            task.cancel()
        await asyncio.gather(*self._reporters, return_exceptions=True)

    def app(self) -> web.Application:
        app = web.Application()
        app.on_cleanup.append(self._stop_reporting)
        app.router.add_post("/{version}/{phone}/messages", self.messages)
        app.router.add_get("/{version}/app", self.app_info)
        app.router.add_route("*", "/{version}/{waba}/subscribed_apps", self.subscribed_apps)
        app.router.add_get("/{version}/{phone}", self.phone_number)
        return app


def _valid_text_message(body: Any) -> bool:
    """What the real endpoint requires of a text message (it answers 100 otherwise)."""
    if not isinstance(body, dict):
        return False
    text = body.get("text")
    return (
        body.get("messaging_product") == "whatsapp"
        and body.get("type") == "text"
        and isinstance(body.get("to"), str)
        and bool(body["to"])
        and isinstance(text, dict)
        and isinstance(text.get("body"), str)
        and 0 < len(text["body"]) <= MAX_TEXT
    )
