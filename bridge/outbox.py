"""The outbox: replies waiting to be sent, drained through a Sender with retries.

Items live in the store (journaled), so a reply produced before a crash is sent after the
restart. Replies to one user go out in order, one at a time: a later reply waits while an
earlier one is retried. Different users proceed concurrently, up to `max_concurrency` sends.

A reply longer than one WhatsApp message goes out as several parts; a reply with media
(`Message.extra["sent_media"]`, set by the replier) sends each file by link as one more
part after the text. When a later part fails,
the wamids of the parts already sent are kept (in memory, and committed to the store as the
reply's wamids with status still `pending`), and the retry resumes after them with the
sender's `skip_parts`: neither a retry nor a restart sends a part twice.

A send whose outcome we never heard (a timeout, a connection lost after the request went
out, a crash while sending) may have reached Meta. Each part carries
`biz_opaque_callback_data` = `<reply id>:<part>`, which Meta echoes in its status webhooks,
so such a reply is marked uncertain (durably: OutboxUncertain) and, before it is sent
again, waits up to `reconcile_seconds` for a status that names its next part: a part Meta
confirms is recorded, not repeated. Only a part Meta never reports within that window is
sent a second time (at-least-once, with the window made small and stated in the README).

The confirmation is shared state: the Ingestor commits it (OutboxConfirmed) before
answering Meta, so it survives a crash, and with replicas the status may land on any of
them while another one waits for it. With replicas, a reply that one replica comes to send
while another may have had it on the wire when it died is uncertain too: one taken over
(`take_over`), another replica's reply first in a user's queue (`_work`), and each user's
first reply when a replica starts (`start`). A replica that sends a reply it did not queue
claims it first (`_claim`), so the one that did queue it, should it come to own the
conversation again, waits for that confirmation too. A conversation's lock can go with its
connection at any time (a database restart): it is checked again right before each send,
and a lost one is never taken back here (`Ownership.still_holds`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import time
from collections.abc import Iterable, Sequence

from bridge.conversations import Conversation, window_until
from bridge.errors import BridgeError
from bridge.modes import outbox_hold
from bridge.ops.logs import get_logger, mask
from bridge.records import (
    OutboxConfirmed,
    OutboxDone,
    OutboxItem,
    OutboxQueued,
    OutboxUncertain,
    Record,
    StatusChanged,
)
from bridge.store.base import Store
from bridge.whatsapp.graph import WINDOW_CLOSED, PartialSendError
from bridge.whatsapp.sender import (
    OutboundMedia,
    Sender,
    SendError,
    text_parts,
)

# How long `stop` lets sends already on the wire finish and be recorded, at least; it is
# raised above the sender's own timeout, so a send in flight ends by itself (sent, or known
# to be uncertain) instead of being cut off and repeated after the restart.
STOP_GRACE = 5.0
# How long an uncertain reply waits for Meta's status webhook before it is sent again. Meta
# reports `sent` within seconds of taking a message.
RECONCILE_SECONDS = 20.0
# The same with replicas, where every reply taken over from a replica that died waits so
# (most were never sent, and wait in vain): shorter, as the takeover itself comes only after
# the reply was left unowned for a few seconds (bridge/takeover.py), time Meta's status
# had already to arrive and be committed.
REPLICA_RECONCILE_SECONDS = 10.0
WINDOW_CLOSED_TEXT = (
    "131047: not sent: more than 24 hours since the user's last message (WhatsApp's "
    "customer service window is closed; only an approved template can reach them now)"
)


class Outbox:
    """Drains `store.state.outbox` through `sender`: one worker task per conversation key."""

    def __init__(
        self,
        store: Store,
        sender: Sender,
        *,
        profile: str,
        base_delay: float = 1.0,
        max_delay: float = 300.0,
        max_concurrency: int = 8,
        reconcile_seconds: float | None = None,
    ) -> None:
        if not 0 < base_delay <= max_delay or max_concurrency < 1:
            raise ValueError("need 0 < base_delay <= max_delay and max_concurrency >= 1")
        self._store = store
        self._sender = sender
        self._log = get_logger(profile=profile)
        self._base_delay = base_delay
        self._max_delay = max_delay
        self._slots = asyncio.Semaphore(max_concurrency)
        self._wake = asyncio.Event()
        self._main: asyncio.Task[None] | None = None
        self._workers: dict[str, asyncio.Task[None]] = {}  # conversation key -> its worker
        self._sent_parts: dict[str, list[str]] = {}  # item id -> wamids of parts already sent
        self._token_alerted = False
        self._token_ok_at = 0.0  # loop time when the latest successful send started
        self._stopping = False
        # Set (and replaced) by kick(): every retry waiting in a backoff wakes up at once.
        self._kicked = asyncio.Event()
        # None: the default for the store, known once it is open (replicas or not).
        self._reconcile_setting = reconcile_seconds
        self._confirm_wake: dict[str, asyncio.Event] = {}  # items waiting for a confirmation
        self._unsure: set[str] = set()  # uncertain in this run (also if not yet durable)
        self._reconciled: set[str] = set()  # waited for since they last became uncertain
        self._in_flight: set[str] = set()  # items whose send is awaiting the sender
        self._foreign: set[str] = set()  # queued items another replica queued (replicas)
        # Items this process did not queue (another replica's, or left by a previous run):
        # with replicas, claimed durably before this one first sends them (`_claim`).
        self._unclaimed: set[str] = set()
        # Confirmations any replica committed (OutboxConfirmed) wake the reply waiting for them.
        store.add_listener(self._committed)
        store.add_follower(self._followed)

    # -- control --------------------------------------------------------------------------

    def start(self) -> None:
        """Begin draining, including items a previous run left behind.

        With replicas, the first reply queued for each user is uncertain: this replica
        (restarted) or another one may have been sending it when it died, and the database
        cannot tell a crash from a clean stop the way the file store's lock file does. (A
        user's replies go out one at a time, in order: only the first can have been on the
        wire; marking the rest would make each wait the window in turn.)"""
        if self._store.ownership.shared:
            state = self._store.state
            self._unclaimed.update(state.outbox)
            for key in state.outbox_keys():
                head = state.next_reply(key)
                if head is not None:
                    self._unsure.add(head.id)
        if self._main is None:
            self._stopping = False
            self._main = asyncio.create_task(self._run(), name="outbox")
            self._wake.set()

    def notify(self, key: str | None = None) -> None:
        """A new item was committed (for conversation `key`, if given: no scan needed)."""
        if key is None:
            self._wake.set()
        elif self._main is not None and not self._stopping:
            self._ensure_worker(key)

    def _committed(self, records: Sequence[Record]) -> None:
        for record in records:
            if isinstance(record, OutboxConfirmed):
                wake = self._confirm_wake.get(record.item_id)
                if wake is not None:
                    wake.set()
            elif isinstance(record, OutboxDone):
                # Sent by another replica (or by us: `_finish` forgets it too). A wait for
                # its confirmation ends: there is nothing left to confirm.
                wake = self._confirm_wake.get(record.item_id)
                if wake is not None:
                    wake.set()
                self._unsure.discard(record.item_id)
                self._reconciled.discard(record.item_id)
                self._foreign.discard(record.item_id)

    def _followed(self, records: Sequence[Record]) -> None:
        """Replies another replica queued (see `_work`)."""
        for record in records:
            if isinstance(record, OutboxQueued) and record.item.id in self._store.state.outbox:
                self._foreign.add(record.item.id)  # (not if already sent: the batch says so)
                self._unclaimed.add(record.item.id)
            elif isinstance(record, OutboxUncertain):
                # Another replica claimed it (or found its send uncertain): it may be on
                # the wire from there, so a send from here waits for its confirmation first.
                self._reconciled.discard(record.item_id)

    def take_over(self, key: str) -> None:
        """Send `key`'s queued replies, which a replica that went away owned: the first of
        them may have been on the wire when it died, so it waits for Meta's confirmation
        (committed by whichever replica received it) before it is sent again, as the file
        store's replies do after a crash."""
        item = self._store.state.next_reply(key)
        if item is not None:
            self._unsure.add(item.id)
            self._reconciled.discard(item.id)
        self.notify(key)

    @property
    def _reconcile_seconds(self) -> float:
        if self._reconcile_setting is not None:
            return self._reconcile_setting
        return REPLICA_RECONCILE_SECONDS if self._store.ownership.shared else RECONCILE_SECONDS

    def kick(self) -> None:
        """The outbound path is healthy again: retry everything now instead of after backoff."""
        kicked, self._kicked = self._kicked, asyncio.Event()
        kicked.set()
        self._wake.set()

    async def drain(self, timeout: float) -> bool:
        """Wait until nothing is queued; False if `timeout` passed first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._store.state.outbox:
            if loop.time() > deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    async def stop(self, grace: float | None = None) -> None:
        """Stop sending; queued items stay in the store for the next start.

        Sends in flight get `grace` seconds (default: longer than the sender's timeout) to
        finish and be recorded; waiting retries end now. A send cut off all the same is
        marked uncertain, so the next start asks Meta before repeating it.
        """
        if grace is None:
            grace = max(STOP_GRACE, self._sender.timeout + 2.0)
        self._stopping = True
        if self._main is not None:
            self._main.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._main
            self._main = None
        self.kick()  # wakes every backoff; the workers see `_stopping` and return
        workers = list(self._workers.values())
        if workers:
            _done, late = await asyncio.wait(workers, timeout=grace)
            cut_off = set(self._in_flight) if late else set()
            for task in late:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            if cut_off:
                await self._mark_uncertain(cut_off)
        self._workers.clear()

    # -- workers --------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            for key in self._store.state.outbox_keys():
                self._ensure_worker(key)

    def _ensure_worker(self, key: str) -> None:
        if key not in self._workers:
            task = asyncio.create_task(self._work(key), name="outbox-worker")
            self._workers[key] = task
            task.add_done_callback(functools.partial(self._worker_done, key))

    def _worker_done(self, key: str, task: asyncio.Task[None]) -> None:
        if self._workers.get(key) is task:
            del self._workers[key]
        if task.cancelled() or task.exception() is None:
            return
        # A bug, not a send failure (those are handled in _deliver): say so, and try this
        # user's replies again later rather than spin on the same fault.
        self._log.error("outbox_worker_crashed", key=mask(key), exc_info=task.exception())
        if not self._stopping:
            asyncio.get_running_loop().call_later(self._max_delay, self._wake.set)

    def busy_with(self, key: str) -> bool:
        """Whether a worker sends (or waits to send) conversation `key`'s replies here."""
        return key in self._workers

    async def _work(self, key: str) -> None:
        owner = self._store.ownership
        if owner.shared:
            # Replicas: only the conversation's owner sends, after taking in what the
            # previous owner sent (its OutboxDone), so no part goes out twice.
            if not await owner.acquire(key):
                return  # its owner sends; if it dies, bridge/takeover.py starts us again
            try:
                await self._store.refresh()
            except BridgeError:  # the database is away: the takeover sweep tries again
                await owner.release(key)
                return
            except BaseException:
                await owner.release(key)
                raise
            head = self._store.state.next_reply(key)
            if head is not None and head.id in self._foreign:
                # Another replica's reply, first in line: that replica's outbox may have
                # been sending it when it died (a user's replies go out one at a time, so
                # only the first can have been on the wire). Uncertain, as after a crash.
                self._unsure.add(head.id)
        try:
            while not self._stopping:
                item = self._store.state.next_reply(key)
                if item is None:
                    break
                if owner.shared and not await owner.still_holds(key):
                    break  # lost with the database connection: the takeover sweep resumes
                if not await self._deliver(item, key):
                    break
            # Checked and removed in one step (no await since the check): a notify for this
            # key after this point finds no worker and starts a new one.
            if self._workers.get(key) is asyncio.current_task():
                del self._workers[key]
        finally:
            if owner.shared:
                await owner.release(key)

    def _delay(self, attempt: int) -> float:
        delay = min(self._max_delay, self._base_delay * 2.0**attempt)
        # Jitter: after an outage, the retries of many users spread out instead of bursting.
        return delay * (0.5 + random.random() / 2)

    async def _backoff(self, delay: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._kicked.wait(), delay)

    def _already_sent(self, item: OutboxItem) -> list[str]:
        """Wamids of the parts of `item` sent before: this run's, else those a previous run
        recorded in the store (a reply's wamids are only ever set by the outbox)."""
        sent = self._sent_parts.get(item.id)
        if sent is None:
            sent = []
            conv = self._conversation(item)
            for message in reversed(conv.messages if conv is not None else ()):
                if message.id == item.id:
                    sent.extend(message.wamids)
                    break
            self._sent_parts[item.id] = sent
        return sent

    def _conversation(self, item: OutboxItem) -> Conversation | None:
        """The item's conversation (a user id's may have been merged into its phone's)."""
        state = self._store.state
        return state.conversations.get(state.resolve(item.key))

    def _window_closed(self, item: OutboxItem) -> bool:
        """WhatsApp's 24-hour window: free-form text only within 24 h of the user's last
        message (as we received it)."""
        conv = self._conversation(item)
        if conv is None:
            return False  # erased meanwhile: the erasure takes the item too
        until = window_until(conv.last_user_message)
        return until is None or time.time() * 1000 >= until

    def _media_of(self, item: OutboxItem) -> list[OutboundMedia]:
        """The files `item` sends after its text, from its reply's entry."""
        conv = self._conversation(item)
        for message in reversed(conv.messages if conv is not None else ()):
            if message.id == item.id:
                listed = (message.extra or {}).get("sent_media")
                if not isinstance(listed, list):
                    return []
                found = (OutboundMedia.from_dict(m) for m in listed if isinstance(m, dict))
                return [m for m in found if m is not None]
        return []

    def _part_count(self, item: OutboxItem) -> int:
        if item.template is not None:
            return 1  # a template item is that one message
        return len(text_parts(item.text)) + len(self._media_of(item))

    async def _send(self, item: OutboxItem, sent: list[str]) -> None:
        """Send the parts of `item` after those in `sent`, appending each one's wamid as it
        goes: the text parts, then the media. A media part that fails after others went
        out is a PartialSendError, so the progress is recorded. A template item is one
        template message."""
        if item.template is not None:
            if not sent:
                sent.extend(await self._sender.send_template(item.to, item.template, 0, item.id))
            return
        texts = len(text_parts(item.text))
        if len(sent) < texts:
            sent.extend(await self._sender.send_text(item.to, item.text, len(sent), item.id))
        media = self._media_of(item)
        # A sender that assigns no ids (the log-only one) sends everything in one go.
        for index in range(max(0, len(sent) - texts), len(media)):
            before = len(sent)
            try:
                sent.extend(
                    await self._sender.send_media(item.to, media[index], texts + index, item.id)
                )
            except SendError as exc:
                if before:
                    raise PartialSendError(exc, []) from None
                raise

    def _needs_reconcile(self, item_id: str) -> bool:
        return (
            self._sender.confirms_by_status
            and (item_id in self._unsure or item_id in self._store.state.uncertain)
            and item_id not in self._reconciled
        )

    async def _may_send(self, item: OutboxItem, key: str) -> bool:
        """Right before a send: the item still queued and, with replicas, the conversation
        still ours. A lock lost with its connection (a database restart) while this waited
        for a confirmation or backed off may have let another replica send the item and
        record it: the sweep resumes the conversation under a new lock, after a refresh."""
        if item.id not in self._store.state.outbox:
            return False
        owner = self._store.ownership
        return not owner.shared or await owner.still_holds(key)

    async def _claim(self, item: OutboxItem) -> None:
        """With replicas, before the first send of an item another replica queued (or a
        previous run left): commit that it may be on the wire from here. The replica that
        queued it treats its own items as never sent by anyone else; it could come to own
        the conversation again while this one's send is still unrecorded (a lost lock), and
        this record makes it wait for Meta's confirmation instead of sending it again. A
        claim that cannot be committed stops the send (a retryable error: backoff)."""
        if item.id not in self._unclaimed:
            return
        try:
            await self._store.commit([OutboxUncertain(item.id)])
        except BridgeError as exc:
            raise SendError(f"the send could not be claimed: {exc}", retryable=True) from None
        self._unclaimed.discard(item.id)
        self._reconciled.add(item.id)  # our own claim: nothing to wait for here

    async def _deliver(self, item: OutboxItem, key: str) -> bool:
        """Send one item until it is sent, has failed for good, or the outbox stops; False
        if the conversation stopped being this replica's meanwhile (`_may_send`)."""
        attempt = 0
        while not self._stopping and item.id in self._store.state.outbox:
            held = self._held_back(item)
            if held is not None:
                await self._finish(item, "cancelled", held)
                self._log.info("reply_cancelled", item=item.id, to=mask(item.to), reason=held)
                return True
            sent = self._already_sent(item)
            if self._needs_reconcile(item.id):
                await self._reconcile(item, sent)
                if self._stopping:
                    return True
                if item.id not in self._store.state.outbox:
                    break
                if len(sent) >= self._part_count(item):
                    # Every part reached Meta before: record that, send nothing again.
                    await self._finish(item, "sent", None)
                    self._log.info("reply_sent", item=item.id, to=mask(item.to), reconciled=True)
                    return True
            if item.template is None and self._window_closed(item):  # templates may go
                # Meta would refuse it (131047): say so now, without a call that cannot work.
                await self._finish(item, "failed", WINDOW_CLOSED_TEXT)
                self._log.warning(
                    "reply_failed", item=item.id, to=mask(item.to), reason="window_closed_locally"
                )
                return True
            started = asyncio.get_running_loop().time()
            try:
                async with self._slots:
                    if self._stopping:
                        return True
                    # Checked with the slot held: the wait for one can be long, and the
                    # conversation may stop being ours meanwhile.
                    if not await self._may_send(item, key):
                        if item.id in self._store.state.outbox:
                            return False
                        break  # sent (or dropped) by another replica meanwhile
                    await self._claim(item)
                    self._in_flight.add(item.id)
                    try:
                        await self._send(item, sent)
                    finally:
                        self._in_flight.discard(item.id)
            except SendError as exc:
                error = exc
            except Exception as exc:
                # A sender bug must not kill this user's queue: log it loudly, retry later.
                self._log.error("reply_send_crashed", item=item.id, to=mask(item.to), exc_info=exc)
                error = SendError(f"{type(exc).__name__}: {exc}", retryable=True)
            else:
                self._token_alerted = False
                self._token_ok_at = max(self._token_ok_at, started)
                outcome = self._sender.outcome  # "sent", or "logged" without an access token
                await self._finish(item, outcome, None)
                self._log.info(
                    f"reply_{outcome}",
                    item=item.id,
                    to=mask(item.to),
                    parts=len(sent),
                    attempt=attempt + 1,
                )
                return True
            if isinstance(error, PartialSendError):
                sent.extend(error.sent_ids)
                if error.retryable:
                    await self._record_progress(item, sent)
            if error.uncertain and error.retryable:
                # It may have got through: ask Meta's status webhooks (at the top of the loop)
                # instead of backing off and sending it again blindly.
                await self._mark_uncertain([item.id])
                self._log.warning(
                    "reply_send_uncertain",
                    item=item.id,
                    to=mask(item.to),
                    attempt=attempt + 1,
                    error=str(error),
                    wait_for_status=self._reconcile_seconds,
                )
                attempt += 1
                continue
            if not error.retryable:
                await self._finish(item, "failed", _failure_text(error))
                self._log.warning(
                    "reply_failed",
                    item=item.id,
                    to=mask(item.to),
                    code=error.code,
                    # 131047: the user's 24-hour window closed; only a template could reach them.
                    reason="window_closed" if error.code == WINDOW_CLOSED else "rejected",
                    attempt=attempt + 1,
                    error=str(error),
                )
                return True
            attempt += 1
            if error.auth:
                # Every send fails the same way until the operator replaces the token: alert
                # once, then probe at the slowest pace (the health monitor kicks us on repair).
                # A 190 for a request older than a success is a leftover of the outage that
                # success ended, not a new one.
                if not self._token_alerted and started >= self._token_ok_at:
                    self._token_alerted = True
                    self._log.error(
                        "graph_token_invalid", item=item.id, code=error.code, error=str(error)
                    )
                delay = self._max_delay * (0.5 + random.random() / 2)
            else:
                delay = self._delay(attempt - 1)
            self._log.info(
                "reply_retry",
                item=item.id,
                to=mask(item.to),
                code=error.code,
                attempt=attempt,
                retry_in=round(delay, 2),
                error=str(error),
            )
            await self._backoff(delay)
        if item.id not in self._store.state.outbox:
            self._forget(item.id)  # dropped from the queue by someone else
        return True

    def _held_back(self, item: OutboxItem) -> str | None:
        """The mode gate (bridge/modes.py): an assistant reply to a conversation a person
        took over, or whose user opted out, after it was queued is not sent."""
        return outbox_hold(self._store.state, item, int(time.time() * 1000))

    async def _reconcile(self, item: OutboxItem, sent: list[str]) -> None:
        """Wait up to `reconcile_seconds` for Meta to confirm the parts after `sent`; each
        confirmed part joins `sent` (and is recorded), so only the rest is sent again."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._reconcile_seconds
        total = self._part_count(item)
        before = len(sent)
        wake = self._confirm_wake.setdefault(item.id, asyncio.Event())
        try:
            while True:
                # What any replica committed (the store follows them; a status this one
                # heard is committed before its 200, and wakes this wait by `_committed`).
                confirmed = self._store.state.confirmed.get(item.id, {})
                while len(sent) in confirmed:
                    sent.append(confirmed[len(sent)])
                remaining = deadline - loop.time()
                if len(sent) >= total or self._stopping or remaining <= 0:
                    break
                if item.id not in self._store.state.outbox:
                    return  # another replica sent it and recorded that: nothing to wait for
                wake.clear()
                await _first_of((wake, self._kicked), remaining)
        finally:
            self._confirm_wake.pop(item.id, None)
        if self._stopping:
            return
        self._reconciled.add(item.id)
        self._unsure.discard(item.id)
        self._log.info(
            "reply_reconciled",
            item=item.id,
            to=mask(item.to),
            parts=total,
            confirmed=len(sent) - before,
            sending_again=total - len(sent),
        )
        if len(sent) > before and len(sent) < total:
            await self._record_progress(item, sent)

    async def _mark_uncertain(self, item_ids: Iterable[str]) -> None:
        """Remember (durably if the store lets us) that these sends may have reached Meta."""
        ids = [i for i in item_ids if i in self._store.state.outbox]
        self._unsure.update(ids)
        self._reconciled.difference_update(ids)
        try:
            await self._store.commit([OutboxUncertain(i) for i in ids])
        except BridgeError as exc:
            # Known in this run; only a crash before the next success could send it twice.
            self._log.warning("reply_uncertainty_not_recorded", items=len(ids), error=str(exc))

    def _forget(self, item_id: str) -> None:
        self._sent_parts.pop(item_id, None)
        self._unsure.discard(item_id)
        self._foreign.discard(item_id)
        self._unclaimed.discard(item_id)
        self._reconciled.discard(item_id)

    async def _record_progress(self, item: OutboxItem, sent: list[str]) -> None:
        """Commit the wamids of the parts sent so far, so a restart resumes after them."""
        try:
            await self._store.commit([StatusChanged(item.id, "pending", None, tuple(sent))])
        except BridgeError as exc:
            # Still known in memory: only a restart before the next success would re-send.
            self._log.warning("reply_progress_not_recorded", item=item.id, error=str(exc))

    async def _finish(self, item: OutboxItem, status: str, error: str | None) -> None:
        """Record the outcome; if the store fails, keep trying without sending again."""
        wamids = tuple(self._sent_parts.get(item.id, ()))
        attempt = 0
        while True:
            try:
                await self._store.commit(
                    [StatusChanged(item.id, status, error, wamids), OutboxDone(item.id)]
                )
            except BridgeError as exc:
                delay = self._delay(attempt)
                self._log.error(
                    "reply_outcome_not_recorded",
                    item=item.id,
                    status=status,
                    error=str(exc),
                    attempt=attempt + 1,
                    retry_in=round(delay, 2),
                )
                attempt += 1
                await asyncio.sleep(delay)
                continue
            self._forget(item.id)
            return


async def _first_of(events: Iterable[asyncio.Event], timeout: float) -> None:
    """Return when any of `events` is set or `timeout` seconds have passed."""
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


def _failure_text(error: SendError) -> str:
    """`<code>: <Meta's message>` as stored on the failed reply."""
    text = str(error)
    if error.code is None or text.startswith(f"{error.code}:"):
        return text
    return f"{error.code}: {text}"
