"""Produce assistant replies: per user in order and one at a time, never blocking the webhook.

People write in bursts ("hola" / "quería preguntar" / "¿tenéis salado?" within seconds). With
a debounce (`reply_debounce_seconds`, default 2) the replier waits until the user has been
quiet that long, but never longer than `reply_debounce_max_seconds` after the burst's first
message, then asks the assistant once, with the whole burst in the history, and records one
reply that answers the burst's newest message. Messages that arrive while a reply is being
produced start the next burst. With a debounce of 0 each message gets its own reply.

Nothing about a burst needs saving: its messages are journaled, and a reply names the
message it answers, so a restart answers a burst the crash interrupted exactly once
(`Conversation.unanswered`). A user's bursts queue behind each other, so a slow assistant
never lets a later reply overtake an earlier one; different users proceed concurrently.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime

from bridge.assistants.base import Assistant, TurnLike, reply_parts
from bridge.config import AssistantConfig
from bridge.conversations import Message
from bridge.errors import AssistantError, BridgeError
from bridge.hours import OpeningHours
from bridge.modes import assistant_may_answer
from bridge.ops.logs import get_logger, mask
from bridge.records import MessageAdded, OutboxItem, OutboxQueued, Record
from bridge.state import State
from bridge.store.base import Store
from bridge.whatsapp.sender import OutboundMedia

# Backoff while a reply cannot be committed (seconds): quick at first, a gentle probe later.
RECORD_RETRY_BASE = 0.5
RECORD_RETRY_MAX = 30.0
# How often a replier waiting for a conversation another replica owns tries again (seconds).
OWNER_RETRY = 0.2


class Superseded(Exception):
    """Another replica recorded a reply in the conversation since this one read the history
    it answers: recording ours too could answer a message twice."""


def _last_reply(state: State, key: str) -> str | None:
    """The id of the conversation's newest reply: another replica's commit changes it."""
    conv = state.conversations.get(state.resolve(key))
    if conv is None:
        return None
    for message in reversed(conv.messages):
        if message.role == "assistant" and message.reply_to:
            return message.id
    return None


def _in_place(window: Sequence[Message]) -> bool:
    """Whether every reply in `window` comes right after the run of user messages it
    answers (as one process always stores them)."""
    last_user: str | None = None
    for message in window:
        if message.role == "user":
            last_user = message.id
        elif message.reply_to and last_user is not None and message.reply_to != last_user:
            return False
    return True


# Reply ids: a random prefix per process and a counter (24 hex digits, as before); unique
# across restarts (a new prefix) without a getrandom(2) per reply.
_REPLY_PREFIX = secrets.token_hex(8)
_reply_numbers = itertools.count(1)


def new_reply_id() -> str:
    """Our id for a reply until Meta assigns wamids to its parts."""
    return f"out.{_REPLY_PREFIX}{next(_reply_numbers):08x}"


class Replier:
    """Queues user messages per conversation and turns each into a queued, durable reply."""

    def __init__(
        self,
        store: Store,
        assistant: Assistant,
        config: AssistantConfig,
        *,
        profile: str,
        on_queued: Callable[[str], None],
        observe_assistant: Callable[[float, bool], None] | None = None,
        debounce: float = 0.0,
        debounce_max: float = 0.0,
        hours: OpeningHours | None = None,
        outside_hours: str = "assistant",
        outside_hours_reply: str | None = None,
        clock: Callable[[], float] = time.time,
        media_ready: Callable[[str], Awaitable[None]] | None = None,
        on_answering: Callable[[str], None] | None = None,
    ) -> None:
        self._hours = hours
        self._outside_hours = outside_hours
        self._outside_hours_reply = outside_hours_reply
        self._clock = clock
        # Told the id of each message a reply is about to be made for (read receipt and
        # typing indicator; must return at once, never fail the reply).
        self._on_answering = on_answering
        # Waits (bounded) until the media work of a conversation's messages is done, so the
        # assistant hears the voice note's words and sees the photo (bridge/media/worker.py).
        self._media_ready = media_ready
        self._observe_assistant = observe_assistant
        self._debounce = debounce
        self._debounce_max = max(debounce, debounce_max)
        # key -> (loop time of the burst's first message, of its latest message)
        self._bursts: dict[str, tuple[float, float]] = {}
        self._store = store
        self._assistant = assistant
        self._config = config
        self._on_queued = on_queued
        self._log = get_logger(profile=profile)
        self._queues: dict[str, deque[tuple[str, str]]] = {}  # key -> (message id, recipient)
        self._workers: dict[str, asyncio.Task[None]] = {}

    def enqueue(self, key: str, message_id: str, recipient: str) -> None:
        """Ask for a reply to a recorded user message; returns at once."""
        now = asyncio.get_running_loop().time()
        first, _latest = self._bursts.get(key, (now, now))
        self._bursts[key] = (first, now)
        self._queues.setdefault(key, deque()).append((message_id, recipient))
        if key not in self._workers:
            self._workers[key] = asyncio.create_task(self._work(key), name=f"reply:{mask(key)}")

    @property
    def busy(self) -> int:
        return sum(len(q) for q in self._queues.values()) + len(self._workers)

    async def _work(self, key: str) -> None:
        try:
            while True:
                queue = self._queues.get(key)
                if not queue:
                    # Checked and deregistered in one step (no await in between): a message
                    # enqueued after this finds no worker and starts a new one.
                    self._queues.pop(key, None)
                    del self._workers[key]
                    return
                if self._debounce > 0:
                    await self._quiet(key)
                    # One reply for the burst: to its newest message, whose history holds
                    # the rest. Later messages start the next burst.
                    message_id, recipient = queue[-1]
                    burst = len(queue)
                    queue.clear()
                    self._bursts.pop(key, None)
                else:
                    message_id, recipient = queue.popleft()
                    burst = 1
                try:
                    await self._owned_reply(key, message_id, recipient, burst)
                except Exception as exc:  # one bad reply must not stop this user's later ones
                    self._log.error(
                        "reply_crashed", key=mask(key), message_id=message_id, error=repr(exc)
                    )
        except BaseException:
            self._workers.pop(key, None)
            raise

    def busy_with(self, key: str) -> bool:
        """Whether a reply to conversation `key` is waiting or under way here."""
        return key in self._workers

    async def _owned_reply(self, key: str, message_id: str, recipient: str, burst: int) -> None:
        """Reply while owning the conversation (bridge/ownership.py). With replicas, wait
        for whoever holds it, take in what it recorded, and answer only if nobody has."""
        owner = self._store.ownership
        if not owner.shared:
            await self._reply(key, message_id, recipient, burst)
            return
        while not await owner.acquire(key):
            await asyncio.sleep(OWNER_RETRY)  # another replica answers or sends to this user
        try:
            while True:
                await self._store.refresh()
                if self._answered(key, message_id):
                    self._log.info("reply_skipped_answered", key=mask(key), message_id=message_id)
                    return
                try:
                    await self._reply(key, message_id, recipient, burst)
                    return
                except Superseded:
                    # The lock went with its connection (a database restart) and another
                    # replica answered meanwhile, or our own commit went in though its
                    # acknowledgement was lost: look again at what is answered now.
                    self._log.info("reply_superseded", key=mask(key), message_id=message_id)
        finally:
            await owner.release(key)
            # Replies queued by another replica whose outbox found us owning the
            # conversation: ours sends them (in order, before anything newer).
            if self._store.state.next_reply(self._store.state.resolve(key)) is not None:
                self._on_queued(self._store.state.resolve(key))

    def _answered(self, key: str, message_id: str) -> bool:
        """A reply (of any replica) answers `message_id` or a user message after it; or the
        conversation is gone."""
        state = self._store.state
        conv = state.conversations.get(state.resolve(key))
        if conv is None:
            return True
        answered = {m.reply_to for m in conv.messages if m.role == "assistant" and m.reply_to}
        if message_id in answered:
            return True
        after = False
        for message in conv.messages:
            if message.id == message_id:
                after = True
            elif after and message.role == "user" and message.id in answered:
                return True
        return False

    def _fence(self, key: str) -> Callable[[State], bool] | None:
        """With replicas, what must still hold when a reply decided now is committed: no
        reply recorded in the conversation since (None with one process: its replies to a
        conversation are made one at a time, here)."""
        if not self._store.ownership.shared:
            return None
        last = _last_reply(self._store.state, key)
        return lambda state: _last_reply(state, key) == last

    async def _quiet(self, key: str) -> None:
        """Wait until `key`'s user has been quiet for the debounce time, or the burst is as
        old as the maximum; a message arriving meanwhile moves the first deadline."""
        loop = asyncio.get_running_loop()
        while True:
            first, latest = self._bursts.get(key, (loop.time(), loop.time()))
            due = min(latest + self._debounce, first + self._debounce_max)
            if loop.time() >= due:
                return
            await asyncio.sleep(due - loop.time())

    def _history(self, key: str, message_id: str) -> Sequence[TurnLike]:
        """The last `history_limit` turns of the conversation as of `message_id` (all of it
        if that message is gone), oldest first.

        Replies are stored when produced, which can be after later user messages arrived
        ("uno", "dos", "tres", reply to dos): such a reply is part of the conversation the
        answer to "tres" continues, so it is placed right after the message it answers. Walks
        back from the newest: the message being answered is almost always at the end, and
        then the stored messages are passed as they are, without copying."""
        state = self._store.state
        view = state.get(state.resolve(key))  # merged into a phone's conversation meanwhile?
        if view is None:
            return ()
        messages = view.messages
        limit = self._config.history_limit
        end = len(messages)
        for index, message in enumerate(reversed(messages)):
            if message.id == message_id:
                end -= index
                break
        later = [m for m in messages[end:] if m.role == "assistant" and m.reply_to]
        window = messages[max(0, end - limit) : end]
        if not later and _in_place(window):
            return window
        # Replies stored after a later user message: with replicas, one replica's reply can
        # be stored after a message another replica recorded meanwhile (and then died before
        # answering it). Each goes right after the message it answers, here too.
        held = {m.id for m in messages[:end] if m.role == "user" and m.id}
        moved = {id(m) for m in window if m.role == "assistant" and m.reply_to in held}
        answers: dict[str, list[Message]] = {}
        for reply in [*(m for m in messages[:end] if id(m) in moved), *later]:
            answers.setdefault(reply.reply_to or "", []).append(reply)
        turns: list[Message] = []
        for message in messages[:end]:
            if id(message) in moved:
                continue  # placed after the message it answers
            turns.append(message)
            turns.extend(answers.get(message.id or "", ()))
        return turns[-limit:]

    def _may_answer(self, key: str, message_id: str) -> bool:
        """The mode gate (bridge/modes.py): a person took the conversation over, or its user
        opted out? Asked before the assistant is, and again just before its reply is
        committed, so a change while the burst waited or the assistant thought counts."""
        if assistant_may_answer(self._store.state, key, int(time.time() * 1000)):
            return True
        self._log.info("reply_skipped_mode", key=mask(key), message_id=message_id)
        return False

    async def _reply(self, key: str, message_id: str, recipient: str, burst: int = 1) -> None:
        if not self._may_answer(key, message_id):
            return
        history = self._history(key, message_id)
        if not history:
            return  # the conversation was deleted meanwhile
        if self._hours is not None and self._outside_hours != "assistant":
            now = datetime.fromtimestamp(self._clock(), UTC)
            if not self._hours.is_open(now):
                await self._closed(key, message_id, recipient, now)
                return
        if self._on_answering is not None:
            self._on_answering(message_id)
        if self._media_ready is not None:
            await self._media_ready(key)
            history = self._history(key, message_id)  # with the transcripts now in it
            if not history:
                return
        fence = self._fence(key)
        started = time.monotonic()
        ok = True
        try:
            # The backend enforces config.timeout itself with a clearer error; this outer
            # limit only guards against a backend that hangs past it.
            async with asyncio.timeout(self._config.timeout + 1):
                text, media = reply_parts(await self._assistant.reply(key, history))
        except (AssistantError, TimeoutError) as exc:
            reason = str(exc) or f"timed out after {self._config.timeout:g}s"
            self._log.warning(
                "assistant_failed",
                key=mask(key),
                message_id=message_id,
                assistant=self._assistant.kind,
                error=reason,
                fallback=self._config.fallback_reply is not None,
            )
            text, media = self._config.fallback_reply or "", ()
            ok = False
        elapsed = time.monotonic() - started
        if self._observe_assistant:
            self._observe_assistant(elapsed, ok)
        elapsed_ms = round(elapsed * 1000, 1)
        if not text and not media:
            self._log.info("no_reply", key=mask(key), message_id=message_id)
            return
        reply_id = new_reply_id()
        if not await self._record(
            key, message_id, recipient, reply_id, text, media=media, fence=fence
        ):
            return
        # debug: `reply_sent` (or a retry or failure) follows for every queued reply.
        self._log.debug(
            "reply_queued",
            key=mask(key),
            message_id=message_id,
            reply_id=reply_id,
            assistant=self._assistant.kind,
            assistant_ms=elapsed_ms,
            chars=len(text),
            media=len(media),
            burst=burst,
        )
        self._on_queued(key)

    async def _closed(self, key: str, message_id: str, recipient: str, now: datetime) -> None:
        """Outside business hours: record only ("silent"), or send the outside-hours reply,
        at most once per conversation per closed period ("reply")."""
        if self._outside_hours == "silent" or not self._outside_hours_reply:
            self._log.info("outside_hours_recorded", key=mask(key), message_id=message_id)
            return
        assert self._hours is not None
        fence = self._fence(key)
        since = self._hours.closed_since(now)
        since_ms = int(since.timestamp() * 1000) if since is not None else 0
        view = self._store.state.get(self._store.state.resolve(key))
        if view is not None and any(
            m.role == "assistant"
            and m.extra
            and m.extra.get("outside_hours")
            and m.timestamp >= since_ms
            for m in view.messages
        ):
            self._log.info("outside_hours_reply_already_sent", key=mask(key), message_id=message_id)
            return
        reply_id = new_reply_id()
        text = self._outside_hours_reply
        extra: dict[str, object] = {"outside_hours": True}
        if await self._record(key, message_id, recipient, reply_id, text, extra, fence=fence):
            self._log.info("outside_hours_reply_queued", key=mask(key), reply_id=reply_id)
            self._on_queued(key)

    async def _record(
        self,
        key: str,
        message_id: str,
        recipient: str,
        reply_id: str,
        text: str,
        extra: dict[str, object] | None = None,
        media: tuple[OutboundMedia, ...] = (),
        fence: Callable[[State], bool] | None = None,
    ) -> bool:
        """Commit the reply and its outbox item; while the store fails (a full disk), keep
        the text and try again with backoff rather than drop an acknowledged user's answer.

        Gives up only when the conversation was erased meanwhile (False). A stop cancels the
        wait; the restart then asks the assistant again (`ProfileRuntime.start`). With a
        `fence` (replicas), commits only while it holds, else raises Superseded: also when a
        commit reported failed had in fact gone in (its acknowledgement lost with the
        connection), so the retry never records the reply twice."""
        attempt = 0
        while True:
            # A user id's conversation may have been merged into its phone's while the
            # assistant thought: the reply belongs there (no await from here to the commit).
            key = self._store.state.resolve(key)
            if key not in self._store.state.conversations:
                self._log.info(
                    "reply_dropped_conversation_erased", key=mask(key), reply_id=reply_id
                )
                return False
            if not self._may_answer(key, message_id):
                return False
            now_ms = int(self._clock() * 1000)
            item = OutboxItem(id=reply_id, key=key, to=recipient, text=text, created_ms=now_ms)
            # Media parts live on the reply's entry (the outbox reads them there): the
            # history reads `[image] Salado` after the text.
            message = Message(
                role="assistant",
                content="\n".join([text] * bool(text) + [m.readable() for m in media]),
                timestamp=now_ms,
                id=reply_id,
                status="pending",
                reply_to=message_id,
                extra={**(extra or {}), "sent_media": [m.as_dict() for m in media]}
                if media
                else extra,
            )
            records: list[Record] = [MessageAdded(key, message), OutboxQueued(item)]
            try:
                if fence is None:
                    await self._store.commit(records)
                elif not await self._store.commit_if(records, fence):
                    raise Superseded
            except BridgeError as exc:
                delay = min(RECORD_RETRY_MAX, RECORD_RETRY_BASE * 2.0**attempt)
                attempt += 1
                self._log.error(
                    "reply_not_recorded",
                    key=mask(key),
                    message_id=message_id,
                    error=str(exc),
                    attempt=attempt,
                    retry_in=delay,
                )
                await asyncio.sleep(delay)
                continue
            if attempt:
                self._log.info("reply_recorded_after_retry", key=mask(key), attempts=attempt + 1)
            return True

    async def stop(self, timeout: float) -> None:
        """Let replies in progress finish for up to `timeout` seconds, then cancel the rest."""
        tasks = list(self._workers.values())
        if not tasks:
            return
        _done, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
