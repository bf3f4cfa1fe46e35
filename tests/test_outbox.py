"""The outbox draining a real store through the Graph client to a local fake Graph API."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from pytest_aiohttp import AiohttpServer
from structlog.testing import capture_logs

from bridge.conversations import Message
from bridge.errors import StorageError
from bridge.ingest import confirmations
from bridge.outbox import Outbox
from bridge.records import MessageAdded, OutboxDone, OutboxItem, OutboxQueued, Record
from bridge.state import State
from bridge.store.memory import MemoryStore
from bridge.whatsapp.graph import GraphClient
from bridge.whatsapp.models import StatusUpdate
from bridge.whatsapp.pacing import PairPacer
from bridge.whatsapp.sender import Sender, split_text
from tests.conftest import eventually
from tests.fakes.graph import TOKEN, FakeGraph

ANA = "34600000001"
BEN = "34600000002"


class FlakyStore(MemoryStore):
    """A memory store whose next `failures` commits that finish an item raise StorageError."""

    def __init__(self, failures: int) -> None:
        super().__init__(State())
        self.failures = failures

    async def commit(self, records: Sequence[Record]) -> None:
        if self.failures and any(isinstance(r, OutboxDone) for r in records):
            self.failures -= 1
            raise StorageError("disk full")
        await super().commit(records)


@dataclass
class Rig:
    fake: FakeGraph
    store: MemoryStore
    outbox: Outbox

    async def queue(self, key: str, n: int, text: str | None = None) -> str:
        """Commit an assistant reply and its outbox item, as the replier does."""
        rid = f"reply-{n}"  # unique per test; real ids are random
        body = text or f"reply {n}"
        # The user's message opens WhatsApp's 24-hour window the reply is sent in.
        asked = Message("user", f"question {n}", 1_700_000_000_000 + n, id=f"wamid.in.{n}")
        await self.store.commit(
            [
                MessageAdded(key, asked, received_ms=int(time.time() * 1000)),
                MessageAdded(
                    key, Message("assistant", body, 1_700_000_000_000 + n, id=rid, status="pending")
                ),
                OutboxQueued(OutboxItem(rid, key, key, body, n)),
            ]
        )
        self.outbox.notify()
        return rid

    def last(self, key: str) -> Message:
        view = self.store.state.get(key)
        assert view is not None
        return view.messages[-1]

    def status(self, key: str) -> list[tuple[str | None, str | None]]:
        view = self.store.state.get(key)
        assert view is not None
        return [(m.status, m.error) for m in view.messages if m.role == "assistant"]


@pytest.fixture
async def make_rig(aiohttp_server: AiohttpServer) -> AsyncIterator[Callable[..., Rig]]:
    """Build outboxes over one fake Graph API; `store`/`sender` and Outbox options override."""
    fake = FakeGraph()
    server = await aiohttp_server(fake.app())
    # No pair-rate pacing here: these tests send many replies to one user at once
    # (tests/whatsapp/test_pacing.py is about the pacing).
    client = GraphClient(
        str(server.make_url("")), "v21.0", "1", TOKEN, timeout=2, pacer=PairPacer(0.001)
    )
    outboxes: list[Outbox] = []

    def make(store: MemoryStore | None = None, sender: Sender | None = None, **options: Any) -> Rig:
        store = store or MemoryStore(State())
        options = {"base_delay": 0.01, "max_delay": 0.05} | options
        outbox = Outbox(store, sender or client, profile="test", **options)
        outboxes.append(outbox)
        return Rig(fake, store, outbox)

    yield make
    for outbox in outboxes:
        await outbox.stop()
    await client.close()


@pytest.fixture
def rig(make_rig: Callable[..., Rig]) -> Rig:
    return make_rig()


async def test_sent_reply_is_marked_sent_with_its_wamid_and_leaves_the_queue(rig: Rig) -> None:
    rig.outbox.start()
    rid = await rig.queue(ANA, 1)
    assert await rig.outbox.drain(5)
    assert (rig.last(ANA).id, rig.last(ANA).status) == (rid, "sent")
    assert rig.last(ANA).wamids == ("wamid.FAKE000001",)
    assert rig.fake.sent[0]["to"] == ANA
    assert rig.store.state.outbox == {}


async def test_server_error_is_retried_and_sent_once(rig: Rig) -> None:
    rig.fake.fail_next(500, times=2)
    rig.outbox.start()
    await rig.queue(ANA, 1)
    assert await rig.outbox.drain(5)
    assert len(rig.fake.requests) == 3 and len(rig.fake.sent) == 1
    assert rig.status(ANA) == [("sent", None)]


async def test_rate_limit_130429_is_retried(rig: Rig) -> None:
    rig.fake.fail_next(400, 130429)
    rig.outbox.start()
    await rig.queue(ANA, 1)
    assert await rig.outbox.drain(5)
    assert len(rig.fake.requests) == 2
    assert rig.status(ANA) == [("sent", None)]


async def test_closed_window_131047_fails_without_retry(rig: Rig) -> None:
    rig.fake.fail_next(400, 131047)
    rig.outbox.start()
    await rig.queue(ANA, 1)
    assert await rig.outbox.drain(5)
    await asyncio.sleep(0.1)  # a retry, if any, would have happened by now
    assert len(rig.fake.requests) == 1
    ((status, error),) = rig.status(ANA)
    assert status == "failed" and error is not None
    assert error.startswith("131047: Re-engagement message")


async def test_closed_window_is_logged_as_window_closed(rig: Rig) -> None:
    rig.fake.fail_next(400, 131047)
    with capture_logs() as logs:
        rig.outbox.start()
        await rig.queue(ANA, 1)
        assert await rig.outbox.drain(5)
    failed = [e for e in logs if e["event"] == "reply_failed"]
    assert [(e["code"], e["reason"], e["log_level"]) for e in failed] == [
        (131047, "window_closed", "warning")
    ]


async def test_invalid_request_fails_with_its_code(rig: Rig) -> None:
    rig.fake.fail_next(400, 100)
    rig.outbox.start()
    await rig.queue(ANA, 1)
    assert await rig.outbox.drain(5)
    assert rig.status(ANA) == [("failed", "100: (#100) Invalid parameter")]


async def test_expired_token_keeps_the_reply_queued(rig: Rig) -> None:
    rig.fake.token = "rotated"  # our token is no longer valid
    rig.outbox.start()
    await rig.queue(ANA, 1)
    await eventually(lambda: len(rig.fake.requests) >= 2, what="a retry after 190")
    assert list(rig.store.state.outbox) == ["reply-1"]
    assert rig.status(ANA) == [("pending", None)]
    rig.fake.token = TOKEN  # the operator fixed the token
    assert await rig.outbox.drain(5)
    assert rig.status(ANA) == [("sent", None)]


async def test_expired_token_is_alerted_once_per_outage(rig: Rig) -> None:
    rig.fake.token = "rotated"
    with capture_logs() as logs:
        rig.outbox.start()
        await rig.queue(ANA, 1)
        await rig.queue(BEN, 2)
        await eventually(lambda: len(rig.fake.requests) >= 6, what="several 190s")
        rig.fake.token = TOKEN
        assert await rig.outbox.drain(5)
        rig.fake.token = "rotated-again"  # a second outage alerts again
        before = len(rig.fake.requests)
        await rig.queue(ANA, 3)
        await eventually(lambda: len(rig.fake.requests) >= before + 3, what="more 190s")
    alerts = [e for e in logs if e["event"] == "graph_token_invalid"]
    assert len(alerts) == 2 and all(e["log_level"] == "error" for e in alerts)


async def test_kick_retries_at_once_instead_of_waiting_out_the_backoff(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(max_delay=60.0)
    rig.fake.token = "rotated"
    rig.outbox.start()
    await rig.queue(ANA, 1)
    await eventually(lambda: len(rig.fake.requests) == 1, what="the first attempt")
    rig.fake.token = TOKEN
    assert not await rig.outbox.drain(0.2)  # waiting out a backoff of 30-60 s
    rig.outbox.kick()
    assert await rig.outbox.drain(5)


async def test_replies_to_one_user_stay_in_order_across_a_retry(rig: Rig) -> None:
    rig.fake.fail_next(500)
    rig.outbox.start()
    for n in range(3):
        await rig.queue(ANA, n)
    assert await rig.outbox.drain(5)
    assert rig.fake.bodies() == ["reply 0", "reply 1", "reply 2"]


async def test_one_users_retries_do_not_hold_up_another_user(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(base_delay=0.05, max_delay=0.05)
    rig.fake.fail_next(500, times=1000, to=ANA)
    rig.outbox.start()
    await rig.queue(ANA, 1)
    await rig.queue(BEN, 2)
    await eventually(lambda: rig.fake.bodies(BEN) == ["reply 2"], what="the other user's reply")
    assert list(rig.store.state.outbox) == ["reply-1"]
    rig.fake.failures_to.clear()
    assert await rig.outbox.drain(5)


class GateSender(Sender):
    """Holds every send until released; records how many were in flight at once."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.peak = 0
        self.release = asyncio.Event()

    async def send_text(
        self, to: str, text: str, skip_parts: int = 0, tag: str | None = None
    ) -> list[str]:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        await self.release.wait()
        self.in_flight -= 1
        return [f"wamid.{to}"]


async def test_different_users_are_sent_concurrently_up_to_max_concurrency(
    make_rig: Callable[..., Rig],
) -> None:
    sender = GateSender()
    rig = make_rig(sender=sender, max_concurrency=3)
    rig.outbox.start()
    for n in range(6):
        await rig.queue(f"3460000001{n}", n)
    await eventually(lambda: sender.in_flight == 3, what="three sends in flight")
    await asyncio.sleep(0.05)  # room for a fourth, if the limit were not kept
    sender.release.set()
    assert await rig.outbox.drain(5)
    assert sender.peak == 3


async def test_items_left_by_a_previous_run_are_sent_on_start(rig: Rig) -> None:
    await rig.queue(ANA, 1)
    await rig.queue(BEN, 2)
    await asyncio.sleep(0.05)
    assert rig.fake.requests == []  # nothing moves before start()
    rig.outbox.start()
    assert await rig.outbox.drain(5)
    assert sorted(m["to"] for m in rig.fake.sent) == [ANA, BEN]


async def test_notify_for_one_user_sends_without_a_full_scan(rig: Rig) -> None:
    rig.outbox.start()
    assert await rig.outbox.drain(5)
    body = "for ana"
    now = int(time.time() * 1000)
    await rig.store.commit(
        [
            MessageAdded(ANA, Message("user", "hola", now, id="wamid.in"), received_ms=now),
            MessageAdded(ANA, Message("assistant", body, 1, id="r1", status="pending")),
            OutboxQueued(OutboxItem("r1", ANA, ANA, body, 1)),
        ]
    )
    rig.outbox.notify(ANA)  # what the replier calls: starts ANA's worker directly
    assert await rig.outbox.drain(5)
    assert [m["to"] for m in rig.fake.sent] == [ANA]
    assert rig.last(ANA).status == "sent"


async def test_notify_for_a_user_before_start_waits_for_start(rig: Rig) -> None:
    await rig.queue(ANA, 1)
    rig.outbox.notify(ANA)
    await asyncio.sleep(0.05)
    assert rig.fake.requests == []
    rig.outbox.start()
    assert await rig.outbox.drain(5)
    assert [m["to"] for m in rig.fake.sent] == [ANA]


async def test_partial_failure_does_not_resend_sent_parts(rig: Rig) -> None:
    rig.fake.succeed_next()
    rig.fake.fail_next(500)
    rig.outbox.start()
    await rig.queue(ANA, 1, text="a" * 4096 + "b" * 5)
    assert await rig.outbox.drain(5)
    assert rig.fake.bodies() == ["a" * 4096, "b" * 5]
    assert rig.last(ANA).wamids == ("wamid.FAKE000001", "wamid.FAKE000002")


async def test_sent_parts_are_not_resent_after_a_restart(make_rig: Callable[..., Rig]) -> None:
    text = "a" * 4096 + "b" * 4096 + "c" * 5
    first = make_rig()
    first.fake.succeed_next()
    first.fake.fail_next(500, times=1000)  # the rest fails until "the restart"
    first.outbox.start()
    await first.queue(ANA, 1, text=text)
    await eventually(lambda: len(first.fake.requests) >= 3, what="retries of the second part")
    await first.outbox.stop()
    first.fake.failures.clear()
    second = make_rig(store=first.store)  # a new process over the same durable state
    second.outbox.start()
    assert await second.outbox.drain(5)
    assert first.fake.bodies() == split_text(text)
    assert first.last(ANA).status == "sent"
    assert first.last(ANA).wamids == ("wamid.FAKE000001", "wamid.FAKE000002", "wamid.FAKE000003")


async def test_store_failure_after_a_send_retries_the_commit_not_the_send(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(store=FlakyStore(failures=3))
    with capture_logs() as logs:
        rig.outbox.start()
        await rig.queue(ANA, 1)
        assert await rig.outbox.drain(5)
    assert len(rig.fake.requests) == 1
    assert rig.status(ANA) == [("sent", None)]
    events = [(e["event"], e["log_level"]) for e in logs if e["log_level"] == "error"]
    assert events == [("reply_outcome_not_recorded", "error")] * 3


async def test_stop_lets_a_send_in_flight_finish_and_be_recorded(rig: Rig) -> None:
    rig.fake.delay = 0.3
    rig.outbox.start()
    await rig.queue(ANA, 1)
    await eventually(lambda: len(rig.fake.received) == 1, what="the send to start")
    await rig.outbox.stop()
    assert rig.store.state.outbox == {}
    assert rig.status(ANA) == [("sent", None)]


async def test_stop_leaves_unsent_replies_queued_for_the_next_start(rig: Rig) -> None:
    rig.fake.fail_all = (500, None)
    rig.outbox.start()
    await rig.queue(ANA, 1)
    await eventually(lambda: len(rig.fake.requests) >= 2, what="a retry")
    await rig.outbox.stop()
    count = len(rig.fake.requests)
    await asyncio.sleep(0.1)
    assert len(rig.fake.requests) == count  # stopped means no more attempts
    assert list(rig.store.state.outbox) == ["reply-1"]


class CrashOnceSender(Sender):
    """A sender with a bug that shows once: it raises something other than SendError."""

    def __init__(self) -> None:
        self.calls = 0

    async def send_text(
        self, to: str, text: str, skip_parts: int = 0, tag: str | None = None
    ) -> list[str]:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("sender bug")
        return ["wamid.ok"]


async def test_unexpected_sender_exception_is_logged_and_retried(
    make_rig: Callable[..., Rig],
) -> None:
    sender = CrashOnceSender()
    rig = make_rig(sender=sender)
    with capture_logs() as logs:
        rig.outbox.start()
        await rig.queue(ANA, 1)
        assert await rig.outbox.drain(5)
    assert sender.calls == 2 and rig.status(ANA) == [("sent", None)]
    assert "reply_send_crashed" in [e["event"] for e in logs]


async def test_logs_mask_the_recipient_and_omit_the_text(rig: Rig) -> None:
    rig.fake.fail_next(500)
    with capture_logs() as logs:
        rig.outbox.start()
        await rig.queue(ANA, 1, text="my secret diagnosis")
        assert await rig.outbox.drain(5)
    events = [e["event"] for e in logs]
    assert "reply_retry" in events and "reply_sent" in events
    sent = next(e for e in logs if e["event"] == "reply_sent")
    assert sent["to"] == "346*****001" and sent["item"] == "reply-1"
    everything = repr(logs)
    assert "my secret diagnosis" not in everything
    assert ANA not in everything


# -- sends whose outcome we never heard: reconciled with Meta's status webhooks -------------


async def test_each_part_carries_its_reply_id_for_status_webhooks(rig: Rig) -> None:
    rig.outbox.start()
    rid = await rig.queue(ANA, 1, text="word " * 1000)  # two parts
    assert await rig.outbox.drain(5)
    assert [m["biz_opaque_callback_data"] for m in rig.fake.sent] == [f"{rid}:0", f"{rid}:1"]


async def confirm(rig: Rig, tag: str, wamid: str) -> None:
    """Meta's status webhook naming part `tag` as `wamid`, committed as the ingest does it
    before its 200 (the outbox hears of it through the store, as from any replica)."""
    status = StatusUpdate(wamid, "sent", int(time.time() * 1000), callback_data=tag)
    await rig.store.commit(confirmations([status], rig.store.state))


async def test_a_lost_answer_confirmed_by_a_status_is_not_sent_again(
    make_rig: Callable[..., Rig],
) -> None:
    """Graph took the message and the connection dropped before its answer: the retry
    waits for Meta's status webhook, which names the part, and sends nothing again."""
    rig = make_rig(reconcile_seconds=5.0)
    rig.fake.lose_answers = 1
    rig.outbox.start()
    rid = await rig.queue(ANA, 1)
    await eventually(lambda: rid in rig.store.state.uncertain, what="the send to be uncertain")
    sent = rig.fake.sent[0]
    await confirm(rig, sent["biz_opaque_callback_data"], "wamid.FAKE000001")
    assert await rig.outbox.drain(5)
    assert len(rig.fake.sent) == 1, "sent twice"
    assert rig.last(ANA).status == "sent"
    assert rig.last(ANA).wamids == ("wamid.FAKE000001",)
    assert rig.store.state.uncertain == set()


async def test_a_lost_answer_never_confirmed_is_sent_again_after_the_window(
    make_rig: Callable[..., Rig],
) -> None:
    """The at-least-once rest: no status within the window means we cannot tell, and a
    reply sent twice beats a reply never sent."""
    rig = make_rig(reconcile_seconds=0.2)
    rig.fake.lose_answers = 1
    rig.outbox.start()
    await rig.queue(ANA, 1)
    assert await rig.outbox.drain(5)
    assert len(rig.fake.sent) == 2
    assert rig.last(ANA).wamids == ("wamid.FAKE000002",)


async def test_a_confirmed_first_part_is_kept_and_only_the_rest_is_sent(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(reconcile_seconds=5.0)
    rig.fake.lose_answers = 1
    rig.outbox.start()
    rid = await rig.queue(ANA, 1, text="word " * 1000)
    await eventually(lambda: rid in rig.store.state.uncertain, what="the send to be uncertain")
    await confirm(rig, f"{rid}:0", "wamid.FAKE000001")
    assert await rig.outbox.drain(5)
    assert [m["biz_opaque_callback_data"] for m in rig.fake.sent] == [f"{rid}:0", f"{rid}:1"]
    assert rig.last(ANA).wamids == ("wamid.FAKE000001", "wamid.FAKE000002")


async def test_statuses_of_other_messages_confirm_nothing(rig: Rig) -> None:
    await confirm(rig, "something else", "wamid.X")
    await confirm(rig, "reply-9:0", "wamid.X")  # not queued
    rig.outbox.start()
    await rig.queue(ANA, 1)
    assert await rig.outbox.drain(5)
    assert len(rig.fake.sent) == 1


async def test_stop_lets_a_slow_send_finish_instead_of_repeating_it_later(
    make_rig: Callable[..., Rig], aiohttp_server: AiohttpServer
) -> None:
    """Graph answers after 5.5 s, within the client's 6 s timeout: a stop then must wait for
    the answer (the old 5 s grace cut it off, and the restart sent the reply again)."""
    rig = make_rig()
    server = await aiohttp_server(rig.fake.app())
    slow_client = GraphClient(str(server.make_url("")), "v21.0", "1", TOKEN, timeout=6)
    rig = make_rig(store=rig.store, sender=slow_client)
    rig.fake.delay = 5.5
    rig.outbox.start()
    await rig.queue(ANA, 1)
    await eventually(lambda: len(rig.fake.received) == 1, what="the send to be in flight")
    await rig.outbox.stop()
    await slow_client.close()
    assert rig.status(ANA) == [("sent", None)]
    assert rig.store.state.outbox == {}


async def test_a_send_cut_off_by_stop_is_marked_uncertain(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    rig.fake.delay = 1.0
    rig.outbox.start()
    await rig.queue(ANA, 1)
    await eventually(lambda: len(rig.fake.received) == 1, what="the send to be in flight")
    await rig.outbox.stop(grace=0.1)
    assert rig.store.state.uncertain == {"reply-1"}


async def test_a_reply_outside_the_24_hour_window_is_refused_without_calling_meta(
    rig: Rig,
) -> None:
    """The user last wrote 25 h ago: Meta would answer 131047, so the outbox records the
    failure with the reason and never sends."""
    long_ago = int(time.time() * 1000) - 25 * 3600 * 1000
    await rig.store.commit(
        [
            MessageAdded(
                ANA, Message("user", "hola", long_ago, id="wamid.old"), received_ms=long_ago
            ),
            MessageAdded(ANA, Message("assistant", "late", long_ago, id="late", status="pending")),
            OutboxQueued(OutboxItem("late", ANA, ANA, "late", long_ago)),
        ]
    )
    with capture_logs() as logs:
        rig.outbox.start()
        assert await rig.outbox.drain(5)
    assert rig.fake.requests == []
    status, error = rig.status(ANA)[0]
    assert status == "failed" and error is not None and "24 hours" in error and "template" in error
    assert any(e.get("reason") == "window_closed_locally" for e in logs)
