"""Produce assistant replies: per user in order and one at a time, never blocking the webhook.

Each recorded user message gets one reply, generated with the conversation up to and including
that message as context. A user's messages queue behind each other, so a slow assistant call
for one message never lets a later reply overtake it; different users proceed concurrently.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import deque
from collections.abc import Callable, Sequence

from bridge.assistants.base import Assistant, TurnLike
from bridge.config import AssistantConfig
from bridge.conversations import Message
from bridge.errors import AssistantError, BridgeError
from bridge.logs import get_logger, mask
from bridge.records import MessageAdded, OutboxItem, OutboxQueued
from bridge.store.base import Store


def new_reply_id() -> str:
    """Our id for a reply until Meta assigns wamids to its parts."""
    return "out." + secrets.token_hex(12)


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
    ) -> None:
        self._observe_assistant = observe_assistant
        self._store = store
        self._assistant = assistant
        self._config = config
        self._on_queued = on_queued
        self._log = get_logger(profile=profile)
        self._queues: dict[str, deque[tuple[str, str]]] = {}  # key -> (message id, recipient)
        self._workers: dict[str, asyncio.Task[None]] = {}

    def enqueue(self, key: str, message_id: str, recipient: str) -> None:
        """Ask for a reply to a recorded user message; returns at once."""
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
                message_id, recipient = queue.popleft()
                try:
                    await self._reply(key, message_id, recipient)
                except Exception as exc:  # one bad reply must not stop this user's later ones
                    self._log.error(
                        "reply_crashed", key=mask(key), message_id=message_id, error=repr(exc)
                    )
        except BaseException:
            self._workers.pop(key, None)
            raise

    def _history(self, key: str, message_id: str) -> Sequence[TurnLike]:
        """The last `history_limit` messages up to and including `message_id` (all of them
        if it is gone), oldest first. Walks back from the newest: the message being answered
        is almost always at the end."""
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
        return messages[max(0, end - limit) : end]

    async def _reply(self, key: str, message_id: str, recipient: str) -> None:
        history = self._history(key, message_id)
        if not history:
            return  # the conversation was deleted meanwhile
        started = time.monotonic()
        ok = True
        try:
            # The backend enforces config.timeout itself with a clearer error; this outer
            # limit only guards against a backend that hangs past it.
            async with asyncio.timeout(self._config.timeout + 1):
                text = await self._assistant.reply(key, history)
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
            text = self._config.fallback_reply or ""
            ok = False
        elapsed = time.monotonic() - started
        if self._observe_assistant:
            self._observe_assistant(elapsed, ok)
        elapsed_ms = round(elapsed * 1000, 1)
        if not text:
            self._log.info("no_reply", key=mask(key), message_id=message_id)
            return
        reply_id = new_reply_id()
        now_ms = int(time.time() * 1000)
        # A user id's conversation may have been merged into its phone's while the assistant
        # thought: the reply belongs there (no await from here to the commit).
        key = self._store.state.resolve(key)
        item = OutboxItem(id=reply_id, key=key, to=recipient, text=text, created_ms=now_ms)
        try:
            await self._store.commit(
                [
                    MessageAdded(
                        key,
                        Message(
                            role="assistant",
                            content=text,
                            timestamp=now_ms,
                            id=reply_id,
                            status="pending",
                        ),
                    ),
                    OutboxQueued(item),
                ]
            )
        except BridgeError as exc:
            self._log.error(
                "reply_not_recorded", key=mask(key), message_id=message_id, error=str(exc)
            )
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
        )
        self._on_queued(key)

    async def stop(self, timeout: float) -> None:
        """Let replies in progress finish for up to `timeout` seconds, then cancel the rest."""
        tasks = list(self._workers.values())
        if not tasks:
            return
        _done, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
