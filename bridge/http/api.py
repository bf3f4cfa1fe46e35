"""The operators' HTTP API, `/api/v1`: list and read conversations, pause, resume, write as a
person, erase. JSON in and out; errors are `{"error": "..."}`.

Enabled by an API token (`BRIDGE_API_TOKEN`, `api_token` / `api_token_file` in the TOML file,
or the credential `api_token`); every request carries `Authorization: Bearer <token>`,
compared in constant time (401 otherwise, on every route). Without a token configured,
everything under `/api/` is 404, as if it did not exist. Bodies are small (`BODY_LIMIT`).

The actions go through `bridge.operators` (the same code `sessions-admin` runs), on the
running bridge's own store: one writer per store. Requests pass the connection guard like
any other (deadlines, the connection cap): the app's middleware.
"""

from __future__ import annotations

import base64
import heapq
import hmac
import math
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import hdrs, web

from bridge.conversations import MODES, Conversation
from bridge.errors import BridgeError, StorageError
from bridge.http.guard import GUARD, UnreadableBody, expect_continue
from bridge.http.webhook import RUNTIMES
from bridge.identities import is_phone
from bridge.modes import OPERATOR, current_mode
from bridge.operators import (
    ModeConflict,
    NoSuchConversation,
    OperatorError,
    WindowClosed,
    mode_json,
    now_ms,
    window_closes_at,
)
from bridge.ops.logs import get_logger, mask
from bridge.runtime import ProfileRuntime
from bridge.whatsapp.template import TemplateError, template_from_json

PREFIX = "/api/v1"
API_TOKEN: web.AppKey[str | None] = web.AppKey("api_token")
# Operator requests are a few hundred bytes; a long message is 16 KiB of text at most.
BODY_LIMIT = 64 * 1024
DEFAULT_LIMIT = 50
MAX_LIMIT = 200
PREVIEW_CHARS = 140
SEND_FIELDS = frozenset({"text", "template", "operator"})
MAX_REQUEST_KEY = 255  # an Idempotency-Key (clients send UUIDs)

log = get_logger()

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def error(status: int, message: str) -> web.Response:
    response = web.json_response({"error": message}, status=status)
    if status == 401:
        response.headers[hdrs.WWW_AUTHENTICATE] = 'Bearer realm="whatsapp-bridge"'
    return response


def json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(data),
        status=status,
        content_type="application/json",
        headers={hdrs.CACHE_CONTROL: "no-store"},
    )


def authorized(request: web.Request, token: str) -> bool:
    """`Authorization: Bearer <token>`, compared in constant time. Header values carry any
    byte a client sent (undecodable ones as surrogates): compare bytes."""
    given = request.headers.get(hdrs.AUTHORIZATION, "").encode("utf-8", "surrogatepass")
    return hmac.compare_digest(given, f"Bearer {token}".encode())


def endpoint(handler: Handler) -> Handler:
    """Token check, then the handler; every failure is a JSON error, never a traceback."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        token = request.app[API_TOKEN]
        if token is None:
            return error(404, "not found")
        if not authorized(request, token):
            return error(401, "missing or wrong API token (Authorization: Bearer <token>)")
        try:
            return await handler(request)
        except ApiError as exc:
            return error(exc.status, exc.message)
        except NoSuchConversation as exc:
            return error(404, str(exc))
        except (ModeConflict, WindowClosed) as exc:
            return error(409, str(exc))
        except OperatorError as exc:
            return error(400, str(exc))
        except StorageError as exc:
            log.error("api_storage_failed", path=request.path, error=str(exc))
            return error(503, "storage unavailable, nothing was changed; retry later")
        except BridgeError as exc:
            return error(400, str(exc))
        except Exception as exc:
            log.error("api_failed", path=request.path, exc_info=exc)
            return error(500, "internal error (logged)")

    return guarded


# -- request parsing --------------------------------------------------------------------------


def runtime_of(request: web.Request) -> ProfileRuntime:
    slug = request.match_info["slug"]
    runtime = request.app[RUNTIMES].get(slug)
    if runtime is None:
        raise ApiError(404, f"no profile {slug!r}")
    return runtime


async def body_of(request: web.Request) -> dict[str, Any]:
    """The JSON object of a request body ({} when there is none)."""
    if request.content_length is not None and request.content_length > BODY_LIMIT:
        raise ApiError(413, f"body too large (at most {BODY_LIMIT} bytes)")
    try:
        raw = await request.app[GUARD].read_body(request)
    except UnreadableBody as exc:
        raise ApiError(exc.status, exc.reason) from None
    if len(raw) > BODY_LIMIT:
        raise ApiError(413, f"body too large (at most {BODY_LIMIT} bytes)")
    if not raw.strip():
        return {}
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ApiError(400, "the body is not JSON") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object")
    return data


def text_field(data: dict[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ApiError(400, f"{name} must be a string")
    return value


def operator_of(data: dict[str, Any]) -> str:
    """The name an operator gives (`"operator"` in the body); the token is shared, so it is
    their word, kept for who/when/why."""
    return text_field(data, "operator") or "api"


def int_query(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    value = request.query.get(name)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise ApiError(400, f"{name} must be a whole number") from None
    if not low <= number <= high:
        raise ApiError(400, f"{name} must be {low}..{high}")
    return number


def since_query(request: web.Request) -> int | None:
    """`since`: ms since the epoch, or an ISO 8601 date/time (UTC unless it says)."""
    value = request.query.get("since")
    if not value:
        return None
    if value.isdigit():
        if len(value) > 16:
            raise ApiError(400, "since must be ms since the epoch or an ISO date/time")
        return int(value)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ApiError(400, "since must be ms since the epoch or an ISO date/time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def encode_cursor(conv: Conversation) -> str:
    raw = orjson.dumps([conv.last_activity, conv.key])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(value: str) -> tuple[int, str]:
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        activity, key = orjson.loads(raw)
        if type(activity) is not int or type(key) is not str:
            raise ValueError
    except (ValueError, TypeError, orjson.JSONDecodeError):
        raise ApiError(400, "invalid cursor") from None
    return activity, key


# -- views ------------------------------------------------------------------------------------


def window_json(conv: Conversation, now: int) -> dict[str, Any]:
    closes = window_closes_at(conv)
    return {"open": closes is not None and now < closes, "closes_at": closes}


def summary(conv: Conversation, now: int) -> dict[str, Any]:
    last = conv.messages[-1] if conv.messages else None
    preview = None
    if last is not None:
        preview = {
            "role": last.role,
            "content": last.content[:PREVIEW_CHARS],
            "timestamp": last.timestamp,
        }
        if last.extra and OPERATOR in last.extra:
            preview["operator"] = last.extra[OPERATOR]
    return {
        "key": conv.key,
        "name": conv.contact_name,
        "phone": mask(conv.key) if is_phone(conv.key) else None,
        **mode_json(conv.mode, now),
        "last_activity": conv.last_activity,
        "last_user_message": conv.last_user_message,
        "message_count": len(conv.messages),
        "window": window_json(conv, now),
        "last_message": preview,
    }


# -- handlers ---------------------------------------------------------------------------------


@endpoint
async def list_profiles(request: web.Request) -> web.StreamResponse:
    now = now_ms()
    out = []
    for slug, runtime in request.app[RUNTIMES].items():
        counts = dict.fromkeys(MODES, 0)
        state = runtime.store.state
        for conv in state.conversations.values():
            counts[current_mode(conv.mode, now)] += 1
        out.append(
            {
                "slug": slug,
                "conversations": len(state.conversations),
                "modes": counts,
                "outbox": len(state.outbox),
            }
        )
    return json({"profiles": out})


@endpoint
async def list_conversations(request: web.Request) -> web.StreamResponse:
    """Most recently active first; `cursor` (from `next_cursor`) continues after the last
    conversation of the previous page, so a page is stable while new messages arrive."""
    runtime = runtime_of(request)
    limit = int_query(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    since = since_query(request)
    mode = request.query.get("mode") or None
    if mode is not None and mode not in MODES:
        raise ApiError(400, f"mode must be one of {', '.join(MODES)}")
    cursor = request.query.get("cursor")
    after = decode_cursor(cursor) if cursor else None
    now = now_ms()

    def wanted(convs: Iterable[Conversation]) -> Iterable[Conversation]:
        for conv in convs:
            if since is not None and conv.last_activity < since:
                continue
            if mode is not None and current_mode(conv.mode, now) != mode:
                continue
            if after is not None and (-conv.last_activity, conv.key) <= (-after[0], after[1]):
                continue
            yield conv

    # A page of the newest without sorting every conversation: O(n log limit).
    page = heapq.nsmallest(
        limit + 1,
        wanted(list(runtime.store.state.conversations.values())),
        key=lambda c: (-c.last_activity, c.key),
    )
    more = len(page) > limit
    page = page[:limit]
    return json(
        {
            "conversations": [summary(c, now) for c in page],
            "next_cursor": encode_cursor(page[-1]) if more else None,
        }
    )


@endpoint
async def get_conversation(request: web.Request) -> web.StreamResponse:
    runtime = runtime_of(request)
    conv = runtime.operators.conversation(request.match_info["key"])
    limit = int_query(request, "limit", len(conv.messages), 0, 100_000)
    now = now_ms()
    messages = list(conv.messages)[len(conv.messages) - limit :] if limit else []
    return json(
        {
            **summary(conv, now),
            "messages": [m.to_dict() for m in messages],
            "queued": [i.id for i in runtime.store.state.queued_replies(conv.key)],
            "version": conv.seq,
        }
    )


@endpoint
async def pause(request: web.Request) -> web.StreamResponse:
    runtime = runtime_of(request)
    data = await body_of(request)
    minutes = data.get("minutes")
    until = None
    if minutes is not None:
        if (
            not isinstance(minutes, int | float)
            or isinstance(minutes, bool)
            or not math.isfinite(minutes)
            or minutes <= 0
        ):
            raise ApiError(400, "minutes must be a number above 0")
        until = now_ms() + max(1, round(minutes * 60_000))
    outcome = await runtime.operators.pause(
        request.match_info["key"],
        until_ms=until,
        who=operator_of(data),
        why=text_field(data, "reason"),
    )
    return json(outcome.to_json(now_ms()))


@endpoint
async def resume(request: web.Request) -> web.StreamResponse:
    runtime = runtime_of(request)
    data = await body_of(request)
    outcome = await runtime.operators.resume(
        request.match_info["key"], who=operator_of(data), why=text_field(data, "reason")
    )
    return json(outcome.to_json(now_ms()))


@endpoint
async def send(request: web.Request) -> web.StreamResponse:
    """202: queued in the durable outbox; its delivery state shows on the message (`GET` the
    conversation): `sent`, `delivered`, `read`, or `failed` with Meta's error."""
    runtime = runtime_of(request)
    data = await body_of(request)
    unknown = sorted(str(k) for k in data if k not in SEND_FIELDS)
    if unknown:
        raise ApiError(
            400,
            f"unknown field(s) {', '.join(map(repr, unknown))}: "
            'a message has "text" or "template", and "operator"',
        )
    text = text_field(data, "text")
    key, who = request.match_info["key"], operator_of(data)
    # A client that repeats a request whose answer it lost (a timeout, a 503 from a database
    # crash after the commit) sends the same key: the message is queued once.
    request_key = request.headers.get("Idempotency-Key")
    if request_key is not None and not 1 <= len(request_key) <= MAX_REQUEST_KEY:
        raise ApiError(400, f"an Idempotency-Key is 1 to {MAX_REQUEST_KEY} characters")
    if data.get("template") is not None:
        if text is not None:
            raise ApiError(400, 'send either "text" or "template", not both')
        try:
            template = template_from_json(data["template"])
        except TemplateError as exc:
            raise ApiError(400, str(exc)) from None
        outcome = await runtime.operators.send_template(
            key, template, operator=who, request_key=request_key
        )
    elif text is None:
        raise ApiError(400, 'missing "text" (or "template": {"name", "language", "params"})')
    else:
        outcome = await runtime.operators.send(key, text, operator=who, request_key=request_key)
    return json(outcome.to_json(now_ms()), status=202)


@endpoint
async def delete(request: web.Request) -> web.StreamResponse:
    runtime = runtime_of(request)
    data = await body_of(request)
    outcome = await runtime.operators.delete(request.match_info["key"], who=operator_of(data))
    return json(outcome.to_json(now_ms()))


@endpoint
async def openapi(request: web.Request) -> web.StreamResponse:
    from bridge.http.openapi import document

    return json(document())


@endpoint
async def unknown(request: web.Request) -> web.StreamResponse:
    """Anything else under /api/: 405 for a known path with another method, else 404 (after
    the token check, so without a token nothing tells what exists)."""
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        if resource is request.match_info.route.resource:
            continue
        match, methods = await resource.resolve(request)
        if match is None:
            allowed |= methods
    if allowed:
        response = error(405, f"method {request.method} not allowed here")
        response.headers[hdrs.ALLOW] = ", ".join(sorted(allowed))
        return response
    return error(404, "no such API route")


def add_routes(app: web.Application, token: str | None) -> None:
    """The API's routes; add them before the app's fallback route."""
    app[API_TOKEN] = token
    route = app.router.add_route
    expect = expect_continue
    conversation = PREFIX + "/profiles/{slug}/conversations/{key}"
    if token is not None:
        route("GET", PREFIX + "/openapi.json", openapi, expect_handler=expect)
        route("GET", PREFIX + "/profiles", list_profiles, expect_handler=expect)
        route(
            "GET",
            PREFIX + "/profiles/{slug}/conversations",
            list_conversations,
            expect_handler=expect,
        )
        route("GET", conversation, get_conversation, expect_handler=expect)
        route("DELETE", conversation, delete, expect_handler=expect)
        route("POST", conversation + "/pause", pause, expect_handler=expect)
        route("POST", conversation + "/resume", resume, expect_handler=expect)
        route("POST", conversation + "/messages", send, expect_handler=expect)
    route(hdrs.METH_ANY, "/api/{tail:.*}", unknown, expect_handler=expect)
