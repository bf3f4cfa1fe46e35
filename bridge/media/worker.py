"""The media work of one profile: fetch, check and store inbound media, transcribe audio.

The queue is durable without a record of its own: a journaled user message whose media has
no `state` yet is work to do (`State.media_jobs`, rebuilt from the messages at every start),
so a `kill -9` in the middle of a download is followed, after the restart, by the whole
download again. A file is recorded (`MediaUpdated`, state `stored`) only once it is whole
and durable under its name (and, with replicas, in the database: `MediaStore.publish`); one
a crash left unrecorded is an orphan that `sweep` deletes at the next start (in the
database, after a grace), so every message ends up with exactly one file.

Each job runs after the 200 (the webhook path only journals the message) and retries a
failed fetch with backoff, looking the URL up again (it expires within minutes); a file
that is too large, whose digest does not match, or whose media id Meta does not know fails
for good (`state: failed`, logged), and the reply goes ahead without it. A reply waits for
the media work of its conversation (`ready`), at most `wait_seconds`.

Media follow their conversation: once an erasure is durable (a store listener sees the
`ConversationDeleted`), the files no message refers to any longer are deleted; media
retention drops the bytes of old media (`state: dropped`) while the history entry stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import time
from collections.abc import Mapping, Sequence
from typing import Any

from bridge.config import MediaConfig
from bridge.conversations import Message
from bridge.errors import BridgeError, StorageError
from bridge.media.audio import Probe
from bridge.media.entry import (
    AUDIO_TYPES,
    DROPPED,
    FAILED,
    STORED,
    audio_content,
    media_of,
    needs_download,
    needs_transcript,
)
from bridge.media.store import MediaFileError, MediaStore, StoredMedia
from bridge.media.transcribe import Transcriber, TranscriptionError
from bridge.ops.logs import get_logger, mask
from bridge.ops.metrics import Metrics
from bridge.records import ConversationDeleted, MediaUpdated, Record
from bridge.store.base import Store
from bridge.whatsapp.media import MediaClient, MediaError, MediaInfo, parse_digest

DAY_MS = 24 * 3600 * 1000
# Media left to fetch at start in a conversation idle longer than this (an upgrade over an
# old store, a long outage) are recorded as failed instead of asked for: Meta keeps a user's
# media for a limited time, and a flood of lookups would only meet 404s. Judged by when we
# received the conversation's last message, and the message's own stamp, both past it (a
# sender's stamp alone never decides anything).
FETCH_HORIZON_MS = 7 * DAY_MS
MAX_ATTEMPTS = 6
MAX_DELAY = 60.0
# A token Graph refuses: every fetch fails until the operator replaces it; probe slowly.
TOKEN_DELAY = 300.0
DOWNLOADS = 4  # at once, per profile
TRANSCRIPTIONS = 2
# How often the retention pass (and an orphan sweep) runs.
MAINTAIN_SECONDS = 3600.0


def _not_written(exc: OSError) -> MediaError:
    """The local disk refused the file (full, a directory it cannot use): a failed try like
    a network one, retried and then recorded, never a crash that leaves the job undone until
    the next start."""
    return MediaError(f"media file not written: {exc.strerror or exc}", "storage", retryable=True)


class MediaWorker:
    """Runs the media jobs of one profile's store; see the module docstring."""

    def __init__(
        self,
        store: Store,
        files: MediaStore,
        config: MediaConfig,
        *,
        profile: str,
        client: MediaClient | None = None,
        transcriber: Transcriber | None = None,
        metrics: Metrics | None = None,
        base_delay: float = 1.0,
    ) -> None:
        self._store = store
        self.files = files
        self._config = config
        self._client = client
        self._transcriber = transcriber
        self._metrics = metrics
        self._slug = profile
        self._base_delay = base_delay
        self._log = get_logger(profile=profile)
        self._jobs: dict[str, asyncio.Task[None]] = {}  # message id -> its job
        self._busy: set[str] = set()  # files written but not (yet) recorded
        self._downloads = asyncio.Semaphore(DOWNLOADS)
        self._transcriptions = asyncio.Semaphore(TRANSCRIPTIONS)
        self._sweeping: asyncio.Task[None] | None = None
        self._sweep_again = False
        self._maintainer: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def fetching(self) -> bool:
        return self._client is not None

    # -- control --------------------------------------------------------------------------

    async def start(self) -> None:
        """Clean up after the previous run (orphans, media past retention), then resume the
        work it left: every message whose media is not done yet."""
        self._stopping = False
        self._store.add_listener(self._after_commit)
        await self._sweep()
        try:
            await self.maintain(sweep=False)
        except BridgeError as exc:  # a full disk: the next pass (hourly) tries again
            self._log.warning("media_retention_failed", error=str(exc))
        self._maintainer = asyncio.create_task(self._maintain_forever(), name="media-maintain")
        if self._client is None:
            return
        now_ms = int(time.time() * 1000)
        state = self._store.state
        stale: list[Record] = []
        horizon = now_ms - FETCH_HORIZON_MS
        for message_id, key in list(state.media_jobs.items()):
            key = state.resolve(key)
            conv = state.conversations.get(key)
            message = state.find_message(key, message_id)
            media = media_of(message) if message is not None else None
            if conv is None or message is None or media is None:
                continue
            if (
                needs_download(media)
                and conv.last_activity < horizon
                and message.timestamp < horizon
            ):
                failed = {**media, "state": FAILED, "error": "too old to fetch"}
                stale.append(MediaUpdated(key, message_id, failed))
                continue
            self.enqueue(key, message_id)
        if stale:
            try:
                await self._store.commit(stale)
                self._log.warning("media_too_old_to_fetch", messages=len(stale))
            except BridgeError as exc:  # still to do in the store: decided again next start
                self._log.warning("media_not_recorded", error=str(exc))
        if self._jobs:
            self._log.info("media_resumed", jobs=len(self._jobs))

    def enqueue(self, key: str, message_id: str) -> None:
        """Start the work on a recorded message's media (after the 200); returns at once."""
        if self._client is None or self._stopping or message_id in self._jobs:
            return
        if message_id not in self._store.state.media_jobs:
            return
        task = asyncio.create_task(self._job(message_id), name="media-job")
        self._jobs[message_id] = task
        task.add_done_callback(functools.partial(self._job_done, message_id))

    def _job_done(self, message_id: str, task: asyncio.Task[None]) -> None:
        if self._jobs.get(message_id) is task:
            del self._jobs[message_id]
        if not task.cancelled() and task.exception() is not None:
            self._log.error("media_job_crashed", message_id=message_id, exc_info=task.exception())

    async def ready(self, key: str, timeout: float | None = None) -> None:
        """Wait until the media work of conversation `key` queued so far is done, or
        `timeout` (default: the profile's `wait_seconds`) passed: the reply then goes ahead
        with what is known."""
        state = self._store.state
        key = state.resolve(key)
        tasks = [
            task
            for message_id, task in self._jobs.items()
            if state.resolve(state.media_jobs.get(message_id, "")) == key
        ]
        if not tasks:
            return
        wait = self._config.wait_seconds if timeout is None else timeout
        _done, pending = await asyncio.wait(tasks, timeout=wait)
        if pending:
            self._log.info("reply_not_waiting_for_media", key=mask(key), jobs=len(pending))

    @property
    def busy(self) -> int:
        return len(self._jobs)

    async def stop(self) -> None:
        """Stop working; what is not done stays queued in the store for the next start."""
        self._stopping = True
        tasks = list(self._jobs.values())
        for extra in (self._maintainer, self._sweeping):
            if extra is not None:
                tasks.append(extra)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._jobs.clear()
        for closing in (self._client, self._transcriber):
            if closing is not None:
                await closing.close()

    # -- one message's job ----------------------------------------------------------------

    def _current(self, message_id: str) -> tuple[str, Message, Mapping[str, Any]] | None:
        """The message as it is now (its key resolved), if it still has media work."""
        state = self._store.state
        key = state.media_jobs.get(message_id)
        if key is None:
            return None
        key = state.resolve(key)
        message = state.find_message(key, message_id)
        media = media_of(message) if message is not None else None
        if message is None or media is None:
            return None
        return key, message, media

    async def _job(self, message_id: str) -> None:
        while not self._stopping:
            current = self._current(message_id)
            if current is None:
                return
            key, message, media = current
            if needs_download(media):
                if not await self._fetch(key, message, media):
                    return
            elif needs_transcript(message, media) and self._transcriber is not None:
                await self._transcribe(message_id)
                return
            else:
                return

    def _delay(self, attempt: int, error: MediaError | None = None) -> float:
        if error is not None and error.reason == "token":
            return TOKEN_DELAY * (0.5 + random.random() / 2)
        delay = min(MAX_DELAY, self._base_delay * 2.0**attempt)
        return delay * (0.5 + random.random() / 2)

    async def _fetch(self, key: str, message: Message, media: Mapping[str, Any]) -> bool:
        """Download until stored or failed for good; True when stored."""
        assert self._client is not None and message.id is not None
        webhook_url = media.get("url")
        url = (
            webhook_url
            if isinstance(webhook_url, str) and self._client.trusted(webhook_url)
            else None
        )
        attempt = 0
        while not self._stopping:
            started = time.monotonic()
            try:
                async with self._downloads:
                    stored, duration, mime = await self._download_once(message, media, url)
            except MediaError as exc:
                url = None  # expired, or never known: look it up on the next try
                counted = exc.reason != "token"
                if not exc.retryable or (counted and attempt + 1 >= MAX_ATTEMPTS):
                    await self._record_failure(message.id, media, exc)
                    return False
                attempt += counted
                delay = self._delay(attempt - 1, exc)
                self._log.info(
                    "media_retry",
                    message_id=message.id,
                    reason=exc.reason,
                    error=str(exc),
                    attempt=attempt,
                    retry_in=round(delay, 2),
                )
                await asyncio.sleep(delay)
                continue
            return await self._record_stored(message, media, stored, duration, mime, started)
        return False

    async def _download_once(
        self, message: Message, media: Mapping[str, Any], url: str | None
    ) -> tuple[StoredMedia, int | None, str | None]:
        assert self._client is not None and message.id is not None
        info = MediaInfo(url) if url is not None else await self._client.lookup(str(media["id"]))
        limit = self._config.limit(message.type or "document")
        if info.file_size is not None and info.file_size > limit:
            raise MediaError(
                f"media is {info.file_size} bytes, over the {message.type} limit of {limit}",
                "too_large",
            )
        mime = media.get("mime_type") or info.mime_type
        mime = mime if isinstance(mime, str) else None
        try:
            writer = self.files.writer(message.id, mime)
        except OSError as exc:
            raise _not_written(exc) from None
        self._busy.add(writer.name)
        probe = Probe() if message.type in AUDIO_TYPES else None

        async def sink(data: bytes) -> None:
            if probe is not None:
                probe.feed(data)
            await writer.write(data)

        try:
            await self._client.download(info.url, sink, limit)
            stored = await writer.finish()
        except BaseException as exc:
            writer.abort()
            self._busy.discard(writer.name)
            if isinstance(exc, OSError):
                raise _not_written(exc) from None
            raise
        problem = self._mismatch(stored, media, info)
        if problem is not None:
            self._discard(stored.name)
            raise problem
        await self._seal_with_active_key(stored.name)
        return stored, (probe.duration_ms() if probe is not None else None), mime

    async def _seal_with_active_key(self, name: str) -> None:
        """A `rotate-key` that ran during the download re-encrypted only the files recorded
        then; this one, sealed with the key of its start and not recorded yet, is moved to
        the active key before a record names it (else it would need a key the operator is
        told the store no longer uses)."""
        try:
            if self.files.stale(name):
                await asyncio.get_running_loop().run_in_executor(None, self.files.reseal, name)
        except (OSError, MediaFileError) as exc:
            self._discard(name)
            raise MediaError(
                f"media file not re-encrypted: {exc}", "storage", retryable=True
            ) from None

    @staticmethod
    def _mismatch(
        stored: StoredMedia, media: Mapping[str, Any], info: MediaInfo
    ) -> MediaError | None:
        """The bytes are not what Meta announced: digest (the webhook's, the lookup's) or size."""
        got = bytes.fromhex(stored.sha256)
        for announced in (parse_digest(media.get("sha256")), info.sha256):
            if announced is not None and announced != got:
                return MediaError("media digest does not match (sha256)", "digest_mismatch")
        if info.file_size is not None and info.file_size != stored.size:
            return MediaError(
                f"media is {stored.size} bytes, Meta announced {info.file_size}",
                "size_mismatch",
                retryable=True,
            )
        return None

    def _discard(self, name: str) -> None:
        self._busy.discard(name)
        with contextlib.suppress(OSError, MediaFileError):
            self.files.delete(name)

    async def _record_stored(
        self,
        message: Message,
        media: Mapping[str, Any],
        stored: StoredMedia,
        duration_ms: int | None,
        mime: str | None,
        started: float,
    ) -> bool:
        assert message.id is not None
        new: dict[str, Any] = {
            **media,
            "state": STORED,
            "file": stored.name,
            "size": stored.size,
            "stored_ms": int(time.time() * 1000),
        }
        if mime:
            new["mime_type"] = mime
        if duration_ms is not None:
            new["duration_ms"] = duration_ms
        content = audio_content(new, None) if message.type in AUDIO_TYPES else None
        try:
            # Replicas: the shared copy first, so a record never names a file it lacks.
            await self.files.publish(stored.name)
            committed = await self._commit(message.id, new, content)
        except BridgeError as exc:
            # The file is whole but not recorded: drop it; the job tries again later. (Its
            # shared copy, if any, goes with the sweep: a commit that failed may still
            # have committed, and the record then names it.)
            self._discard(stored.name)
            self._log.error("media_not_recorded", message_id=message.id, error=str(exc))
            await asyncio.sleep(self._delay(2))
            return True  # the job loop looks at the message again
        self._busy.discard(stored.name)
        if not committed or stored.name not in self._store.state.media_files:
            self._discard(stored.name)  # the conversation was erased meanwhile
            return False
        try:
            await self.files.recorded(stored.name)
        except BridgeError as exc:  # only a hint: the next sweep marks it anyway
            self._log.warning("media_not_marked_recorded", error=str(exc))
        if self._metrics is not None:
            self._metrics.media_downloads.labels(self._slug, "stored").inc()
            self._metrics.media_bytes.labels(self._slug).inc(stored.size)
        self._log.info(
            "media_stored",
            message_id=message.id,
            type=message.type,
            bytes=stored.size,
            duration_ms=duration_ms,
            seconds=round(time.monotonic() - started, 3),
        )
        return True

    async def _record_failure(
        self, message_id: str | None, media: Mapping[str, Any], error: MediaError
    ) -> None:
        assert message_id is not None
        failed = {**media, "state": FAILED, "error": f"{error.reason}: {error}"[:300]}
        if self._metrics is not None:
            self._metrics.media_downloads.labels(self._slug, error.reason).inc()
        self._log.warning(
            "media_failed", message_id=message_id, reason=error.reason, error=str(error)
        )
        try:
            await self._commit(message_id, failed, None)
        except BridgeError as exc:
            # Still to do in the store: the next start tries again.
            self._log.error("media_not_recorded", message_id=message_id, error=str(exc))

    async def _commit(self, message_id: str, media: Mapping[str, Any], content: str | None) -> bool:
        """Record the update if the message is still there (not erased); no await between
        the check and the commit taking its place in the journal."""
        current = self._current_message(message_id)
        if current is None:
            return False
        await self._store.commit([MediaUpdated(current, message_id, media, content)])
        return True

    def _current_message(self, message_id: str) -> str | None:
        """The conversation key of a message whose media work is still to do, else None
        (erased, or dropped by the cap, meanwhile)."""
        state = self._store.state
        key = state.media_jobs.get(message_id)
        if key is None:
            return None
        key = state.resolve(key)
        return key if state.find_message(key, message_id) is not None else None

    # -- transcription --------------------------------------------------------------------

    async def _transcribe(self, message_id: str) -> None:
        assert self._transcriber is not None
        attempt = 0
        while not self._stopping:
            current = self._current(message_id)
            if current is None:
                return
            _key, message, media = current
            if not needs_transcript(message, media):
                return
            name = str(media.get("file"))
            mime = media.get("mime_type")
            limit = self._config.limit("audio")
            try:
                async with self._transcriptions:
                    audio = await self.files.load(name, message_id, limit)
                    text, seconds = await self._transcriber.transcribe(
                        audio, mime if isinstance(mime, str) else None
                    )
            except (TranscriptionError, MediaFileError, StorageError) as exc:
                # StorageError: the shared copy (replicas) out of reach for now.
                retryable = isinstance(exc, StorageError) or (
                    isinstance(exc, TranscriptionError) and exc.retryable
                )
                if retryable and attempt + 1 < MAX_ATTEMPTS:
                    attempt += 1
                    delay = self._delay(attempt - 1)
                    self._log.info(
                        "transcription_retry",
                        message_id=message_id,
                        error=str(exc),
                        attempt=attempt,
                        retry_in=round(delay, 2),
                    )
                    await asyncio.sleep(delay)
                    continue
                if self._metrics is not None:
                    self._metrics.transcription_failures.labels(self._slug).inc()
                self._log.warning("transcription_failed", message_id=message_id, error=str(exc))
                failed = {**media, "transcript_error": str(exc)[:300]}
                with contextlib.suppress(BridgeError):
                    await self._commit(message_id, failed, None)
                return
            if self._metrics is not None:
                self._metrics.transcription_seconds.labels(self._slug).observe(seconds)
            done = {**media, "transcript": text}
            try:
                await self._commit(message_id, done, audio_content(done, text))
            except BridgeError as exc:
                self._log.error("transcript_not_recorded", message_id=message_id, error=str(exc))
                return
            self._log.info(
                "transcribed", message_id=message_id, seconds=round(seconds, 3), chars=len(text)
            )
            return

    # -- following the conversation: erasure, retention, orphans --------------------------

    def _after_commit(self, records: Sequence[Record]) -> None:
        """An erasure is durable: delete the files nobody refers to any longer."""
        if any(isinstance(r, ConversationDeleted) for r in records):
            self._schedule_sweep()

    def _schedule_sweep(self) -> None:
        if self._stopping:
            return
        if self._sweeping is not None and not self._sweeping.done():
            self._sweep_again = True
            return
        self._sweeping = asyncio.create_task(self._sweep_loop(), name="media-sweep")

    async def _sweep_loop(self) -> None:
        while True:
            self._sweep_again = False
            await self._sweep()
            if not self._sweep_again:
                return

    async def _sweep(self) -> None:
        store = self._store

        def keep(name: str) -> bool:
            # The store's state as it is now: a replica replaces it when it reloads (a
            # restore on the database), and the files that one names must stay.
            return name in store.state.media_files or name in self._busy

        try:
            removed = await asyncio.get_running_loop().run_in_executor(None, self.files.sweep, keep)
        except OSError as exc:
            self._log.warning("media_sweep_failed", error=exc.strerror or str(exc))
            return
        if removed:
            self._log.info(
                "media_files_removed", files=len(removed), bytes=sum(size for _, size in removed)
            )
        try:
            await self.files.sweep_shared()
        except BridgeError as exc:  # the database away: the next sweep (hourly) tries again
            self._log.warning("media_shared_sweep_failed", error=str(exc))

    async def maintain(self, now_ms: int | None = None, *, sweep: bool = True) -> int:
        """Media retention: drop the bytes of media stored longer than `retention_days`
        ago (the entry stays, `state: dropped`); returns how many."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        cutoff = now_ms - self._config.retention_days * DAY_MS
        state = self._store.state
        records: list[Record] = []
        names: list[str] = []
        for name, (key, message_id) in list(state.media_files.items()):
            if name in self._busy:
                continue
            key = state.resolve(key)
            message = state.find_message(key, message_id)
            media = media_of(message) if message is not None else None
            if media is None or not isinstance(media.get("stored_ms"), int):
                continue
            if media["stored_ms"] < cutoff:
                dropped = {k: v for k, v in media.items() if k != "file"}
                dropped["state"] = DROPPED
                records.append(MediaUpdated(key, message_id, dropped))
                names.append(name)
        if records:
            await self._store.commit(records)  # durable first: then the bytes may go
            for name in names:
                with contextlib.suppress(OSError, MediaFileError):
                    self.files.delete(name)
            self._log.info("media_retention_dropped", files=len(names))
        if sweep:
            await self._sweep()
        return len(records)

    async def _maintain_forever(self) -> None:
        while True:
            await asyncio.sleep(MAINTAIN_SECONDS)
            try:
                await self.maintain()
            except BridgeError as exc:
                self._log.warning("media_retention_failed", error=str(exc))
