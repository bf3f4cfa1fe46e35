"""One served profile: its store, ingestion, replier, outbox, assistant and sender, wired."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from bridge import __version__
from bridge.assistants import create_assistant
from bridge.assistants.base import Assistant
from bridge.config import ProfileConfig
from bridge.conversations import WINDOW_MS, Conversation, Message
from bridge.events import expects_reply, says_something
from bridge.identities import is_phone
from bridge.ingest import Ingestor, IngestResult
from bridge.keywords import KeywordRules
from bridge.media.store import MediaStore, SharedMedia
from bridge.media.transcribe import Transcriber
from bridge.media.worker import MediaWorker
from bridge.modes import owed_answer
from bridge.notify import Notifier
from bridge.operators import Operators
from bridge.ops.eventlog import EventLog
from bridge.ops.logs import get_logger, mask, set_log_id_key
from bridge.ops.metrics import MeteredSender, Metrics
from bridge.outbox import Outbox
from bridge.persistence import layout
from bridge.persistence.crypto import Keyring
from bridge.replies import Replier
from bridge.store import MemoryStore, Store
from bridge.takeover import Takeover
from bridge.whatsapp.graph import GraphClient
from bridge.whatsapp.media import MediaClient
from bridge.whatsapp.models import InboundMessage
from bridge.whatsapp.receipts import ReadReceipts
from bridge.whatsapp.sender import LogSender, Sender

if TYPE_CHECKING:
    from bridge.control.server import ControlServer

StoreFactory = Callable[[ProfileConfig], Store]


def memory_store(profile: ProfileConfig) -> Store:
    from bridge.state import State

    return MemoryStore(State(profile.store_settings))


def durable_store(profile: ProfileConfig, accept_data_loss: bool = False) -> Store:
    from bridge.store.durable import DurableStore

    return DurableStore(profile, accept_data_loss=accept_data_loss)


def postgres_store(profile: ProfileConfig, database_url: str) -> Store:
    from bridge.store.postgres import PostgresStore

    return PostgresStore(profile, database_url)


def default_sender(profile: ProfileConfig) -> Sender:
    """The Graph API when an access token is configured, else the log-only sender."""
    if profile.access_token and profile.phone_number_id:
        return GraphClient.from_profile(profile)
    return LogSender(profile.slug)


def media_keyring(store: Store) -> Callable[[], Keyring]:
    """The keys media files are sealed with: the durable store's own (so a rotation covers
    them), else a key of this process (a memory store keeps nothing across restarts)."""
    from bridge.store.durable import DurableStore
    from bridge.store.postgres import PostgresStore

    if isinstance(store, DurableStore | PostgresStore):
        return lambda: store.keyring
    ephemeral = Keyring([os.urandom(32)])
    return lambda: ephemeral


def shared_media(store: Store) -> SharedMedia | None:
    """Replicas share their media files through the database; one process needs no copy."""
    from bridge.store.pg.media import DatabaseMedia
    from bridge.store.postgres import PostgresStore

    return DatabaseMedia.of(store) if isinstance(store, PostgresStore) else None


def media_worker(config: ProfileConfig, store: Store, metrics: Metrics) -> MediaWorker:
    """Fetching needs the access token; transcription a configured endpoint."""
    client = None
    if config.media.fetch and config.access_token:
        client = MediaClient(
            config.graph_url, config.graph_version, config.access_token, config.phone_number_id
        )
    transcribe = config.media.transcribe
    return MediaWorker(
        store,
        MediaStore(
            layout.media_dir(config.state_dir),
            media_keyring(store),
            config.slug,
            shared_media(store),
        ),
        config.media,
        profile=config.slug,
        client=client,
        transcriber=Transcriber(transcribe) if transcribe.url else None,
        metrics=metrics,
    )


@dataclass(slots=True)
class ProfileRuntime:
    config: ProfileConfig
    store: Store
    ingestor: Ingestor
    replier: Replier
    outbox: Outbox
    assistant: Assistant
    sender: Sender
    metrics: Metrics
    # What a person can do (pause, resume, send, delete): the HTTP API and the control
    # channel act through it.
    operators: Operators
    media: MediaWorker
    notifier: Notifier | None = None
    receipts: ReadReceipts | None = None
    # The profile's control channel (operators' writes while it runs); file stores only.
    control: ControlServer | None = None
    # Replicas (a shared store): takes over what a replica that went away left.
    takeover: Takeover | None = None

    @classmethod
    def build(
        cls,
        config: ProfileConfig,
        store_factory: StoreFactory = memory_store,
        sender: Sender | None = None,
        assistant: Assistant | None = None,
        metrics: Metrics | None = None,
        control: bool = False,
    ) -> ProfileRuntime:
        """Wire one profile; `metrics` (shared with the app) is observed along the way.
        With `control`, the profile gets its control channel (its store must be a
        DurableStore: the socket lives in the profile directory)."""
        metrics = metrics or Metrics()
        slug = config.slug
        store = store_factory(config)
        sender = MeteredSender(sender or default_sender(config), metrics, slug)
        assistant = assistant or create_assistant(config.assistant)
        outbox = Outbox(
            store, sender, profile=slug, reconcile_seconds=config.send_reconcile_seconds
        )

        assistant_seconds = metrics.assistant_seconds.labels(slug)

        def observe_assistant(seconds: float, ok: bool) -> None:
            assistant_seconds.observe(seconds)
            if not ok:
                metrics.assistant_failures.labels(slug).inc()

        media = media_worker(config, store, metrics)
        receipts = ReadReceipts(sender, profile=slug) if config.read_receipts else None
        replier = Replier(
            store,
            assistant,
            config.assistant,
            profile=slug,
            on_queued=outbox.notify,
            observe_assistant=observe_assistant,
            debounce=config.reply_debounce_seconds,
            debounce_max=config.reply_debounce_max_seconds,
            media_ready=media.ready,
            on_answering=receipts,
            hours=config.hours,
            outside_hours=config.outside_hours,
            outside_hours_reply=config.outside_hours_reply,
        )
        ingestor = Ingestor(
            store,
            metrics.commit_seconds.labels(slug).observe,
            keywords=KeywordRules(config, recipient_of),
        )
        operators = Operators(
            store,
            config,
            on_queued=outbox.notify,
            on_action=lambda action: metrics.operator_actions.labels(slug, action).inc(),
        )
        notifier = (
            Notifier(config.notify_url, config.notify_secret, slug) if config.notify_url else None
        )
        assistant.attach_media(media.files)
        runtime = cls(
            config,
            store,
            ingestor,
            replier,
            outbox,
            assistant,
            sender,
            metrics,
            operators,
            media,
            notifier=notifier,
            receipts=receipts,
        )
        if control:
            runtime.control = control_server(runtime)
        return runtime

    @property
    def slug(self) -> str:
        return self.config.slug

    @property
    def events(self) -> EventLog:
        """The profile's event log (nothing is written where it has no state directory)."""
        return EventLog(self.config.state_dir)

    async def start(self) -> None:
        """Load state, then resume what a previous run left: unsent replies, unanswered users."""
        await self.store.open()
        self.events.record("started", version=__version__)
        self._use_log_id_key()
        await self.media.start()  # before replies resume: they wait for its work
        self.outbox.start()
        resumed = self._resume_unanswered(int(time.time() * 1000))
        if self.store.ownership.shared:
            # Replicas: answer and send what a replica that went away left behind.
            self.takeover = Takeover(
                self.store,
                self.replier,
                self.outbox,
                self.owed,
                profile=self.slug,
                grace=max(
                    self.config.reply_debounce_seconds, self.config.reply_debounce_max_seconds
                )
                + 1.0,
            )
            self.takeover.start()
        if self.control is not None:
            await self.control.start()
        state = self.store.state
        get_logger(profile=self.slug).info(
            "profile_loaded",
            conversations=len(state.conversations),
            messages=state.message_count(),
            outbox=len(state.outbox),
            replies_resumed=resumed,
            assistant=self.assistant.kind,
            sender=type(
                self.sender.inner if isinstance(self.sender, MeteredSender) else self.sender
            ).__name__,
        )

    def _use_log_id_key(self) -> None:
        """Hash this profile's wamids in logs under a key derived from its encryption key, so
        a message's hash is the same after a restart and in `bridge log-id`."""
        from bridge.persistence.keys import log_id_key_for

        key = log_id_key_for(self.config)
        if key is not None:
            set_log_id_key(self.slug, key)

    def _resume_unanswered(self, now_ms: int) -> int:
        """Ask again for replies a crash, a stop or a store that kept failing interrupted:
        conversations with user messages after the last one a reply answers, still inside
        the 24-hour window (outside it, WhatsApp refuses free-form replies anyway), and that
        the assistant answers (bridge/modes.py: not paused or opted out, and the messages
        came after it last took over). One reply answers the whole unanswered run, with all
        of it in the history."""
        count = 0
        for conv in self.store.state.conversations.values():
            message = self.owed(conv, now_ms)
            if message is not None and message.id:
                self.replier.enqueue(conv.key, message.id, conv.key)
                count += 1
        return count

    def owed(self, conv: Conversation, now_ms: int) -> Message | None:
        """The user message of `conv` the assistant still owes an answer, if any (see
        `_resume_unanswered`)."""
        if now_ms - (conv.last_user_message or 0) >= WINDOW_MS:
            return None
        message = owed_answer(conv, now_ms, self._wants_reply)
        if message is None or not message.id or self._closed_when_received(message):
            return None  # outside hours with outside_hours reply/silent: not the assistant's
        return message

    def _closed_when_received(self, message: Message) -> bool:
        hours = self.config.hours
        if hours is None or self.config.outside_hours == "assistant":
            return False
        return not hours.is_open(datetime.fromtimestamp(message.timestamp / 1000, UTC))

    def _wants_reply(self, message: Message) -> bool:
        return expects_reply(message, self.config.reply_to_reactions)

    def acknowledged(self, result: IngestResult) -> None:
        """Called once Meta has its 200: only now may the slow part begin. Only messages that
        say something are answered: a reaction, a deletion, an edit or a system notice is
        recorded and changes what it is about, and gets no reply. A keyword that changed its
        conversation's mode was answered by its own reply (already queued), not by the
        assistant."""
        hits = result.keyword_hits
        handled = {hit.message_id for hit in hits} if hits else frozenset()
        for message in result.recorded:
            if message.extra is not None and "media" in message.extra:
                self.media.enqueue(message.key, message.id)  # a sticker too: kept, not answered
            if message.id in handled:
                continue
            if says_something(message.type, message.extra, self.config.reply_to_reactions):
                self.replier.enqueue(message.key, message.id, recipient_of(message))
        if not hits:
            return  # the usual delivery: no logger to make
        log = get_logger(profile=self.slug)
        for hit in hits:
            self.metrics.keywords.labels(self.slug, hit.kind).inc()
            log.info("keyword_mode_changed", key=mask(hit.key), kind=hit.kind)
            if hit.reply_id is not None:
                self.outbox.notify(hit.key)
            if hit.kind == "handoff":
                self.metrics.handoff_requests.labels(self.slug).inc()
                log.info("handoff_requested", key=mask(hit.key))
                if self.notifier is not None:
                    self.notifier.handoff(
                        hit.key, hit.contact_name, hit.text, int(time.time() * 1000)
                    )

    async def stop(self, timeout: float) -> None:
        """Stop taking operators' writes (those under way finish), finish replies in
        progress, stop sending, then close the store (final snapshot)."""
        if self.control is not None:
            await self.control.stop(timeout)
        if self.takeover is not None:
            await self.takeover.stop()
        await self.replier.stop(timeout)
        if self.receipts is not None:
            await self.receipts.stop()
        await self.media.stop()
        await self.outbox.stop()
        await self.assistant.close()
        await self.sender.close()
        if self.notifier is not None:
            await self.notifier.close()
        await self.store.ownership.close()
        await self.store.close()
        self.events.record("stopped")


def control_server(runtime: ProfileRuntime) -> ControlServer:
    """The runtime's control channel (imported here: bridge.control's handlers may use the
    runtime, so it cannot be imported before this module)."""
    from bridge.control.registry import ControlContext
    from bridge.control.server import ControlServer
    from bridge.store.durable import DurableStore

    if not isinstance(runtime.store, DurableStore):
        raise TypeError("the control channel needs the file store (a profile directory)")
    return ControlServer(ControlContext(runtime.store, runtime=runtime))


def recipient_of(message: InboundMessage) -> str:
    """Replies go to the phone when one is known (given now, or linked earlier to the user id:
    the message's conversation key is then that phone), else to the business-scoped user id,
    which Meta accepts for a username-only user."""
    if message.phone:
        return message.phone
    if is_phone(message.key):
        return message.key
    return message.user_id or message.key
