"""The outbox: replies waiting to be sent, drained through a Sender with retries.

Items live in the store (journaled), so a reply produced before a crash is sent after the
restart. Replies to one user go out in order, one at a time: a later reply waits while an
earlier one is retried. Different users proceed concurrently, up to `max_concurrency` sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import random

from bridge.errors import BridgeError
from bridge.logs import get_logger, mask
from bridge.records import OutboxDone, OutboxItem, StatusChanged
from bridge.store.base import Store
from bridge.whatsapp.graph import WINDOW_CLOSED, PartialSendError
from bridge.whatsapp.sender import Sender, SendError


class Outbox:
    def __init__(
        self,
        store: Store,
        sender: Sender,
        *,
        profile: str,
        base_delay: float = 1.0,
        max_delay: float = 300.0,
        max_concurrency: int = 8,
    ) -> None:
        self._store = store
        self._sender = sender
        self._log = get_logger(profile=profile)
        self._base_delay = base_delay
        self._max_delay = max_delay
        self._slots = asyncio.Semaphore(max_concurrency)
        self._wake = asyncio.Event()
        self._main: asyncio.Task[None] | None = None
        self._workers: dict[str, asyncio.Task[None]] = {}  # conversation key -> its sender
        self._sent_parts: dict[str, list[str]] = {}  # item id -> wamids of parts already sent
        self._token_alerted = False
        # Set (and replaced) by kick(): every retry waiting in a backoff wakes up at once.
        self._kicked = asyncio.Event()

    def start(self) -> None:
        """Begin draining, including items a previous run left behind."""
        if self._main is None:
            self._main = asyncio.create_task(self._run(), name="outbox")
            self._wake.set()

    def notify(self) -> None:
        """A new item was committed."""
        self._wake.set()

    def kick(self) -> None:
        """The outbound path is healthy again: retry everything now instead of after backoff."""
        kicked, self._kicked = self._kicked, asyncio.Event()
        kicked.set()
        self._wake.set()

    async def _backoff(self, delay: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._kicked.wait(), delay)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            for item in list(self._store.state.outbox.values()):
                if item.key not in self._workers:
                    self._workers[item.key] = asyncio.create_task(
                        self._work(item.key), name=f"outbox:{mask(item.key)}"
                    )

    async def _work(self, key: str) -> None:
        try:
            while True:
                item = next((i for i in self._store.state.outbox.values() if i.key == key), None)
                if item is None:
                    # Checked and removed in one step (no await): a notify for this key after
                    # this point finds no worker and starts a new one.
                    del self._workers[key]
                    return
                await self._deliver(item)
        except BaseException:
            self._workers.pop(key, None)
            raise

    def _delay(self, attempt: int) -> float:
        delay = min(self._max_delay, self._base_delay * 2.0**attempt)
        return delay * (0.5 + random.random() / 2)  # jitter: retries of many users spread out

    async def _deliver(self, item: OutboxItem) -> None:
        """Send one item until it is sent or has failed for good; never send a part twice."""
        attempt = 0
        while True:
            sent = self._sent_parts.setdefault(item.id, [])
            try:
                async with self._slots:
                    sent.extend(await self._sender.send_text(item.to, item.text, len(sent)))
            except SendError as exc:
                if isinstance(exc, PartialSendError):
                    sent.extend(exc.sent_ids)
                if not exc.retryable:
                    await self._finish(
                        item,
                        "failed",
                        f"{exc.code or 'error'}: {exc}" if exc.code is None else str(exc),
                    )
                    event = "reply_window_closed" if exc.code == WINDOW_CLOSED else "reply_failed"
                    self._log.warning(
                        event, item=item.id, to=mask(item.to), code=exc.code, error=str(exc)
                    )
                    return
                if exc.auth:
                    if not self._token_alerted:
                        self._log.error(
                            "graph_token_invalid", item=item.id, code=exc.code, error=str(exc)
                        )
                        self._token_alerted = True
                    await self._backoff(self._max_delay * (0.5 + random.random() / 2))
                    continue
                delay = self._delay(attempt)
                self._log.info(
                    "reply_retry",
                    item=item.id,
                    to=mask(item.to),
                    code=exc.code,
                    attempt=attempt + 1,
                    retry_in=round(delay, 2),
                    error=str(exc),
                )
                attempt += 1
                await self._backoff(delay)
                continue
            self._token_alerted = False
            await self._finish(item, "sent", None)
            self._log.info(
                "reply_sent", item=item.id, to=mask(item.to), parts=len(sent), attempts=attempt + 1
            )
            return

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
                    error=str(exc),
                    retry_in=round(delay, 2),
                )
                attempt += 1
                await asyncio.sleep(delay)
                continue
            self._sent_parts.pop(item.id, None)
            return

    async def drain(self, timeout: float) -> bool:
        """Wait until nothing is queued; False if `timeout` passed first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._store.state.outbox:
            if loop.time() > deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    async def stop(self) -> None:
        """Stop sending; queued items stay in the store for the next start."""
        tasks = [t for t in (self._main, *self._workers.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._main = None
        self._workers.clear()
