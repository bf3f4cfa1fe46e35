"""The WhatsApp webhook: Meta's GET handshake and signed POST deliveries.

Order on POST matters: verify the signature on the raw bytes, parse, route each change to its
profile, make the new messages durable, answer 200, and only then start the slow part (the
assistant and the send), so Meta gets its answer fast whatever the assistant's latency.
"""

from __future__ import annotations

import asyncio
import contextvars
import hmac
import itertools
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import orjson
from aiohttp import web

from bridge.errors import PayloadError, StorageError
from bridge.http.guard import GUARD, UnreadableBody, expect_continue
from bridge.ingest import IngestResult
from bridge.ops.logs import REQUEST_ID, get_logger
from bridge.ops.metrics import Metrics
from bridge.runtime import ProfileRuntime
from bridge.whatsapp import signature
from bridge.whatsapp.models import Change, Delivery, InboundMessage, StatusUpdate
from bridge.whatsapp.parse import parse_body

SIGNATURE_HEADER = "X-Hub-Signature-256"
RUNTIMES = web.AppKey("runtimes", dict[str, ProfileRuntime])
METRICS = web.AppKey("metrics", Metrics)

log = get_logger()

# Skipped parts are logged one line each up to this many per delivery, then summed up in one
# line: a crafted body of thousands of odd items must not flood the log.
SKIPPED_LOGGED = 10

# Request ids only tell log lines of one request apart: a per-process prefix and a counter
# are unique enough and cost nothing per request.
_REQUEST_PREFIX = os.urandom(3).hex()
_request_numbers = itertools.count(1)


def error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@dataclass(slots=True)
class Answer:
    """What a delivery gets: the status and JSON body of the response, and for a 200 what
    was recorded, for `acknowledge` once the response is on its way."""

    status: int
    body: bytes
    results: dict[str, IngestResult] | None = None
    # Nothing more on this connection: what is left of the body is not worth reading.
    close: bool = False


def refusal(status: int, message: str, close: bool = False) -> Answer:
    return Answer(status, orjson.dumps({"error": message}), close=close)


def candidates_for(
    runtimes: Mapping[str, ProfileRuntime], slug: str | None
) -> list[ProfileRuntime]:
    """The profiles a request may be for: the one named in the path, else all of them."""
    if slug is None:
        return list(runtimes.values())
    runtime = runtimes.get(slug)
    return [runtime] if runtime is not None else []


async def verify_subscription(request: web.Request) -> web.StreamResponse:
    """Meta's handshake: echo `hub.challenge` when the mode and the verify token match."""
    query = request.query
    mode, token, challenge = (
        query.get("hub.mode"),
        query.get("hub.verify_token", ""),
        query.get("hub.challenge"),
    )
    # A query carries any byte a client sent (undecodable ones as surrogates): compare bytes.
    given = token.encode("utf-8", "surrogatepass")
    runtimes = request.app[RUNTIMES]
    matched = [
        r
        for r in candidates_for(runtimes, request.match_info.get("slug"))
        if r.config.verify_token and hmac.compare_digest(r.config.verify_token.encode(), given)
    ]
    if mode != "subscribe" or not matched:
        log.warning("verification_refused", mode=mode, path=request.path)
        return web.Response(status=403, text="verification failed")
    if challenge is None or not challenge.isprintable():
        return web.Response(status=400, text="missing or unprintable hub.challenge")
    log.info("verification_ok", profiles=[r.slug for r in matched])
    return web.Response(text=challenge, content_type="text/plain")


def _route(
    changes: Sequence[Change], matched: Sequence[ProfileRuntime], explicit: bool
) -> dict[str, tuple[list[InboundMessage], list[StatusUpdate]]]:
    """Assign each change to a profile by `metadata.phone_number_id`.

    A path that names the profile wins. Otherwise the change goes to the profile with that
    phone_number_id; failing that, to the only profile the signature matched (one-profile
    setups need not configure the id). A change no profile claims is logged, not recorded.
    """
    by_id = {r.config.phone_number_id: r for r in matched if r.config.phone_number_id}
    routed: dict[str, tuple[list[InboundMessage], list[StatusUpdate]]] = {}
    for change in changes:
        if change.field != "messages" or not (change.messages or change.statuses):
            continue
        target = by_id.get(change.phone_number_id) if change.phone_number_id else None
        if explicit or (target is None and len(matched) == 1):
            target = matched[0]
        if target is None:
            log.warning(
                "change_unrouted",
                phone_number_id=change.phone_number_id,
                messages=len(change.messages),
                statuses=len(change.statuses),
            )
            continue
        messages, statuses = routed.setdefault(target.slug, ([], []))
        messages.extend(change.messages)
        statuses.extend(change.statuses)
    return routed


def begin(since: float | None = None) -> tuple[float, contextvars.Token[str | None]]:
    """A delivery's start time (`since`, when its head came before its body), and its
    request id for every line logged while it runs."""
    started = time.monotonic() if since is None else since
    return started, REQUEST_ID.set(f"{_REQUEST_PREFIX}{next(_request_numbers):06x}")


def finish(
    metrics: Metrics, status: int, started: float, token: contextvars.Token[str | None]
) -> None:
    REQUEST_ID.reset(token)
    metrics.deliveries_by(OUTCOMES.get(status, str(status))).inc()
    metrics.webhook_seconds.observe(time.monotonic() - started)


async def receive_delivery(request: web.Request) -> web.StreamResponse:
    """Verify, parse, record durably, answer 200, then hand new messages to the replier.

    The aiohttp route; `bridge.http.webhook_protocol` serves the usual deliveries on the
    connections of `bridge serve` without aiohttp, through the same `answer_delivery`."""
    started, token = begin()
    metrics = request.app[METRICS]
    status = 500
    try:
        answer = await _receive(request)
        response = web.Response(
            body=answer.body, status=answer.status, content_type="application/json"
        )
        status = answer.status
        if answer.close:
            response.force_close()
        if answer.results is not None:
            # Send the 200 before any reply work can start: the reply must never precede
            # the ack.
            await response.prepare(request)
            await response.write_eof()
            runtimes = request.app[RUNTIMES]
            acknowledge(runtimes, metrics, answer.results, started)
        return response
    finally:
        finish(metrics, status, started, token)


OUTCOMES = {
    200: "ok",
    400: "bad_request",
    401: "unsigned",
    403: "bad_signature",
    404: "unknown_profile",
    408: "body_timeout",
    413: "too_large",
    500: "error",
    503: "storage_unavailable",
}


async def _receive(request: web.Request) -> Answer:
    runtimes = request.app[RUNTIMES]
    slug = request.match_info.get("slug")
    candidates = candidates_for(runtimes, slug)
    if not candidates:
        return refusal(404, "unknown profile")
    try:
        body = await request.app[GUARD].read_body(request)
    except UnreadableBody as exc:
        log.warning("delivery_unreadable", reason=exc.reason, length=request.content_length)
        return refusal(exc.status, exc.reason, close=True)
    return await answer_delivery(
        runtimes,
        request.app[METRICS],
        candidates,
        body,
        request.headers.get(SIGNATURE_HEADER),
        request.path,
        explicit=slug is not None,
    )


async def answer_delivery(
    runtimes: Mapping[str, ProfileRuntime],
    metrics: Metrics,
    candidates: Sequence[ProfileRuntime],
    body: bytes,
    header: str | None,
    path: str,
    explicit: bool,
) -> Answer:
    """Verify the signature on the raw bytes, parse, route each change to its profile and
    commit; the answer Meta gets. Nothing here knows the HTTP server it is answered on."""
    if not header:
        log.warning("signature_missing", path=path)
        return refusal(401, f"missing {SIGNATURE_HEADER}")
    matched = [
        r
        for r in candidates
        if r.config.app_secret and signature.verify(body, header, r.config.app_secret)
    ]
    if not matched:
        log.warning("signature_invalid", path=path, bytes=len(body))
        return refusal(403, "invalid signature")
    try:
        delivery = parse_body(body)
    except PayloadError as exc:
        log.warning("delivery_rejected", reason=str(exc))
        return refusal(400, str(exc))
    if delivery.skipped:
        _report_skipped(delivery, metrics)
        if not delivery.usable:
            # Nothing in the body could be used: a 400 names the first problem.
            log.warning("delivery_rejected", reason=delivery.skipped[0].detail)
            return refusal(400, delivery.skipped[0].detail)
    routed = _route(delivery.changes, matched, explicit)
    slugs = list(routed)
    outcomes: list[IngestResult | BaseException]
    if len(slugs) == 1:  # the usual case: no gather, no extra task
        try:
            outcomes = [await runtimes[slugs[0]].ingestor.ingest(*routed[slugs[0]])]
        except StorageError as exc:
            outcomes = [exc]
    else:
        outcomes = await asyncio.gather(
            *(runtimes[s].ingestor.ingest(*routed[s]) for s in slugs), return_exceptions=True
        )
    results: dict[str, IngestResult] = {}
    failed = False
    for slug, outcome in zip(slugs, outcomes, strict=True):
        if isinstance(outcome, IngestResult):
            results[slug] = outcome
        elif isinstance(outcome, StorageError):
            failed = True
            log.error("delivery_not_durable", profile=slug, error=str(outcome))
        else:
            raise outcome
    if failed:
        # Meta redelivers on any non-200; what did commit is deduplicated then.
        return refusal(503, "storage unavailable, retry later")
    recorded = sum(len(r.recorded) for r in results.values())
    duplicates = sum(r.duplicates for r in results.values())
    answer = {"recorded": recorded, "duplicates": duplicates}
    if delivery.skipped:
        answer["skipped"] = len(delivery.skipped)
    return Answer(200, orjson.dumps(answer), results)


def acknowledge(
    runtimes: Mapping[str, ProfileRuntime],
    metrics: Metrics,
    results: Mapping[str, IngestResult],
    started: float,
) -> None:
    """Once the 200 is on its way: start the replies, count, log the delivery's one line."""
    for slug, result in results.items():
        runtimes[slug].acknowledged(result)
        if result.recorded:
            metrics.messages_by(slug).inc(len(result.recorded))
        if result.duplicates:
            metrics.duplicates_by(slug).inc(result.duplicates)
        for status in result.status_names:
            metrics.statuses_by(slug, status).inc()
        log.info(
            "delivery_recorded",
            profile=slug,
            recorded=len(result.recorded),
            message_ids=[m.id for m in result.recorded],  # logged as hashes (bridge.ops.logs)
            duplicates=result.duplicates,
            statuses=result.statuses,
            ms=round((time.monotonic() - started) * 1000, 2),
        )


def _report_skipped(delivery: Delivery, metrics: Metrics) -> None:
    """Count every skipped part by what and why; log the first few with their place."""
    for item in delivery.skipped:
        metrics.skipped.labels(item.what, item.reason).inc()
    for item in delivery.skipped[:SKIPPED_LOGGED]:
        log.warning(
            "delivery_item_skipped",
            what=item.what,
            where=item.where,
            reason=item.reason,
            type=item.type,
        )
    if len(delivery.skipped) > SKIPPED_LOGGED:
        log.warning("delivery_items_skipped", count=len(delivery.skipped), logged=SKIPPED_LOGGED)


def add_routes(app: web.Application) -> None:
    expect = expect_continue
    app.router.add_get("/webhook", verify_subscription, expect_handler=expect)
    app.router.add_post("/webhook", receive_delivery, expect_handler=expect)
    app.router.add_get("/webhook/{slug}", verify_subscription, expect_handler=expect)
    app.router.add_post("/webhook/{slug}", receive_delivery, expect_handler=expect)
