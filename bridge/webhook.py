"""The WhatsApp webhook: Meta's GET handshake and signed POST deliveries.

Order on POST matters: verify the signature on the raw bytes, parse, route each change to its
profile, make the new messages durable, answer 200, and only then start the slow part (the
assistant and the send), so Meta gets its answer fast whatever the assistant's latency.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import os
import time
from collections.abc import Sequence

import orjson
from aiohttp import web

from bridge.errors import PayloadError, StorageError
from bridge.httpguard import GUARD, UnreadableBody, expect_continue
from bridge.ingest import IngestResult
from bridge.logs import REQUEST_ID, get_logger
from bridge.metrics import Metrics
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


def _candidates(request: web.Request) -> list[ProfileRuntime]:
    """The profiles a request may be for: the one named in the path, else all of them."""
    runtimes = request.app[RUNTIMES]
    slug = request.match_info.get("slug")
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
    matched = [
        r
        for r in _candidates(request)
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


async def receive_delivery(request: web.Request) -> web.StreamResponse:
    """Verify, parse, record durably, answer 200, then hand new messages to the replier."""
    started = time.monotonic()
    token = REQUEST_ID.set(f"{_REQUEST_PREFIX}{next(_request_numbers):06x}")
    metrics = request.app[METRICS]
    outcome = "error"
    try:
        response = await _receive(request, started)
        outcome = OUTCOMES.get(response.status, str(response.status))
        return response
    finally:
        REQUEST_ID.reset(token)
        metrics.deliveries_by(outcome).inc()
        metrics.webhook_seconds.observe(time.monotonic() - started)


OUTCOMES = {
    200: "ok",
    400: "bad_request",
    401: "unsigned",
    403: "bad_signature",
    404: "unknown_profile",
    408: "body_timeout",
    413: "too_large",
    503: "storage_unavailable",
}


async def _receive(request: web.Request, started: float) -> web.StreamResponse:
    candidates = _candidates(request)
    if not candidates:
        return error(404, "unknown profile")
    try:
        body = await request.app[GUARD].read_body(request)
    except UnreadableBody as exc:
        log.warning("delivery_unreadable", reason=exc.reason, length=request.content_length)
        response = error(exc.status, exc.reason)
        response.force_close()  # what is left of the body is not worth reading
        return response
    header = request.headers.get(SIGNATURE_HEADER)
    if not header:
        log.warning("signature_missing", path=request.path)
        return error(401, f"missing {SIGNATURE_HEADER}")
    matched = [
        r
        for r in candidates
        if r.config.app_secret and signature.verify(body, header, r.config.app_secret)
    ]
    if not matched:
        log.warning("signature_invalid", path=request.path, bytes=len(body))
        return error(403, "invalid signature")
    try:
        delivery = parse_body(body)
    except PayloadError as exc:
        log.warning("delivery_rejected", reason=str(exc))
        return error(400, str(exc))
    if delivery.skipped:
        _report_skipped(delivery, request.app[METRICS])
        if not delivery.usable:
            # Nothing in the body could be used: a 400 names the first problem.
            log.warning("delivery_rejected", reason=delivery.skipped[0].detail)
            return error(400, delivery.skipped[0].detail)
    routed = _route(delivery.changes, matched, explicit="slug" in request.match_info)
    runtimes = request.app[RUNTIMES]
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
        return error(503, "storage unavailable, retry later")
    recorded = sum(len(r.recorded) for r in results.values())
    duplicates = sum(r.duplicates for r in results.values())
    answer = {"recorded": recorded, "duplicates": duplicates}
    if delivery.skipped:
        answer["skipped"] = len(delivery.skipped)
    response = web.Response(body=orjson.dumps(answer), content_type="application/json")
    # Send the 200 before any reply work can start: the reply must never precede the ack.
    await response.prepare(request)
    await response.write_eof()
    metrics = request.app[METRICS]
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
            message_ids=[m.id for m in result.recorded],  # logged as hashes (bridge.logs)
            duplicates=result.duplicates,
            statuses=result.statuses,
            ms=round((time.monotonic() - started) * 1000, 2),
        )
    return response


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
