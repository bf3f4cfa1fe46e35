"""One served profile: its store, ingestion, replier, outbox, assistant and sender, wired."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from bridge import __version__
from bridge.assistants import create_assistant
from bridge.assistants.base import Assistant
from bridge.config import ProfileConfig
from bridge.eventlog import EventLog
from bridge.identities import is_phone
from bridge.ingest import Ingestor, IngestResult
from bridge.logs import get_logger, set_log_id_key
from bridge.metrics import MeteredSender, Metrics
from bridge.outbox import Outbox
from bridge.replies import Replier
from bridge.store import MemoryStore, Store
from bridge.whatsapp.graph import GraphClient
from bridge.whatsapp.models import InboundMessage
from bridge.whatsapp.sender import LogSender, Sender

StoreFactory = Callable[[ProfileConfig], Store]

# WhatsApp's customer service window: free-form replies only within 24 h of the user's message.
WINDOW_MS = 24 * 3600 * 1000


def memory_store(profile: ProfileConfig) -> Store:
    from bridge.state import State

    return MemoryStore(State(profile.store_settings))


def durable_store(profile: ProfileConfig, accept_data_loss: bool = False) -> Store:
    from bridge.store.durable import DurableStore

    return DurableStore(profile, accept_data_loss=accept_data_loss)


def default_sender(profile: ProfileConfig) -> Sender:
    """The Graph API when an access token is configured, else the log-only sender."""
    if profile.access_token and profile.phone_number_id:
        return GraphClient.from_profile(profile)
    return LogSender(profile.slug)


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

    @classmethod
    def build(
        cls,
        config: ProfileConfig,
        store_factory: StoreFactory = memory_store,
        sender: Sender | None = None,
        assistant: Assistant | None = None,
        metrics: Metrics | None = None,
    ) -> ProfileRuntime:
        """Wire one profile; `metrics` (shared with the app) is observed along the way."""
        metrics = metrics or Metrics()
        slug = config.slug
        store = store_factory(config)
        sender = MeteredSender(sender or default_sender(config), metrics, slug)
        assistant = assistant or create_assistant(config.assistant)
        outbox = Outbox(
            store, sender, profile=slug, reconcile_seconds=config.send_reconcile_seconds
        )

        def observe_assistant(seconds: float, ok: bool) -> None:
            metrics.assistant_seconds.labels(slug).observe(seconds)
            if not ok:
                metrics.assistant_failures.labels(slug).inc()

        replier = Replier(
            store,
            assistant,
            config.assistant,
            profile=slug,
            on_queued=outbox.notify,
            observe_assistant=observe_assistant,
            debounce=config.reply_debounce_seconds,
            debounce_max=config.reply_debounce_max_seconds,
        )
        ingestor = Ingestor(
            store, metrics.commit_seconds.labels(slug).observe, on_confirmed=outbox.confirm
        )
        return cls(config, store, ingestor, replier, outbox, assistant, sender, metrics)

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
        self.outbox.start()
        resumed = self._resume_unanswered(int(time.time() * 1000))
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
        the 24-hour window (outside it, WhatsApp refuses free-form replies anyway). One reply
        answers the whole unanswered run, with all of it in the history."""
        count = 0
        for conv in self.store.state.conversations.values():
            if now_ms - (conv.last_user_message or 0) >= WINDOW_MS:
                continue
            message = conv.unanswered()
            if message is not None and message.id:
                self.replier.enqueue(conv.key, message.id, conv.key)
                count += 1
        return count

    def acknowledged(self, result: IngestResult) -> None:
        """Called once Meta has its 200: only now may the slow part begin."""
        for message in result.recorded:
            self.replier.enqueue(message.key, message.id, recipient_of(message))

    async def stop(self, timeout: float) -> None:
        """Finish replies in progress, stop sending, then close the store (final snapshot)."""
        await self.replier.stop(timeout)
        await self.outbox.stop()
        await self.assistant.close()
        await self.sender.close()
        await self.store.close()
        self.events.record("stopped")


def recipient_of(message: InboundMessage) -> str:
    """Replies go to the phone when one is known (given now, or linked earlier to the user id:
    the message's conversation key is then that phone), else to the business-scoped user id,
    which Meta accepts for a username-only user."""
    if message.phone:
        return message.phone
    if is_phone(message.key):
        return message.key
    return message.user_id or message.key
