"""WhatsApp's pair rate limit: parts and replies to one user are paced, a 131056 waits a
whole interval before the retry, and other users are not held up."""

from __future__ import annotations

import asyncio
import time

from pytest_aiohttp import AiohttpServer

from bridge.whatsapp.graph import GraphClient
from bridge.whatsapp.pacing import PairPacer
from bridge.whatsapp.sender import SendError
from tests.fakes.graph import TOKEN, FakeGraph

ANA, BEN = "34600000001", "34600000002"


async def client_for(
    aiohttp_server: AiohttpServer, pacer: PairPacer
) -> tuple[FakeGraph, GraphClient]:
    fake = FakeGraph()
    server = await aiohttp_server(fake.app())
    return fake, GraphClient(str(server.make_url("")), "v21.0", "1", TOKEN, timeout=2, pacer=pacer)


async def test_parts_of_a_long_reply_are_paced_after_a_short_burst(
    aiohttp_server: AiohttpServer,
) -> None:
    fake, client = await client_for(aiohttp_server, PairPacer(interval=0.2, burst=2))
    try:
        ids = await client.send_text(ANA, "palabra " * 3000)  # 6 parts of up to 4096 chars
    finally:
        await client.close()
    times = fake.arrivals
    assert len(ids) == len(times) >= 5
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert gaps[0] < 0.15  # the burst
    assert all(gap >= 0.17 for gap in gaps[2:]), gaps  # then one per interval


async def test_other_users_are_not_held_up(aiohttp_server: AiohttpServer) -> None:
    fake, client = await client_for(aiohttp_server, PairPacer(interval=5.0, burst=1))
    try:
        await client.send_text(ANA, "uno")
        started = time.monotonic()
        await client.send_text(BEN, "dos")
        assert time.monotonic() - started < 1.0
    finally:
        await client.close()


async def test_a_pair_rate_error_makes_the_retry_wait_a_whole_interval(
    aiohttp_server: AiohttpServer,
) -> None:
    fake, client = await client_for(aiohttp_server, PairPacer(interval=0.5, burst=4))
    fake.fail_next(400, 131056)
    try:
        try:
            await client.send_text(ANA, "hola")
        except SendError as exc:
            assert exc.retryable and exc.code == 131056
        else:
            raise AssertionError("the scripted 131056 did not come")
        started = time.monotonic()
        assert await client.send_text(ANA, "hola") == ["wamid.FAKE000001"]
        assert time.monotonic() - started >= 0.45
    finally:
        await client.close()


async def test_pacer_waits_are_cancellable() -> None:
    pacer = PairPacer(interval=60, burst=1)
    await pacer.wait(ANA)
    waiting = asyncio.ensure_future(pacer.wait(ANA))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)


async def test_many_recipients_at_once_cost_no_walk_per_send() -> None:
    """Past 10,000 recipients within one interval, each send used to walk them all."""
    pacer = PairPacer(interval=6.0, burst=4)
    started = time.monotonic()
    for n in range(40_000):
        await pacer.wait(f"346{n:08d}")
    assert time.monotonic() - started < 5.0


async def test_recipients_whose_bucket_refilled_are_forgotten() -> None:
    pacer = PairPacer(interval=1e-9, burst=1)  # full again at once
    for n in range(50_000):
        await pacer.wait(f"346{n:08d}")
    assert pacer.remembered() <= 10_001
