"""A profile's whole state in memory, changed only by applying records.

Applying is pure bookkeeping with no I/O, so the same code serves live traffic, journal replay
and tests. Every record kind is idempotent or guarded by a sequence number, which lets a
snapshot be taken in slices while traffic goes on ("fuzzy" checkpoint): replaying the journal
from the snapshot's start over it yields the exact final state.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator, Mapping
from dataclasses import replace
from typing import Any

import orjson

from bridge.config import StoreSettings
from bridge.conversations import Conversation, ConversationView, Message
from bridge.errors import CorruptStateError
from bridge.events import EVENT_TYPES, apply_event
from bridge.identities import merge_conversation
from bridge.media.entry import has_work, stored_file
from bridge.persistence import packed
from bridge.records import (
    ConversationDeleted,
    IdentityLinked,
    MediaUpdated,
    MessageAdded,
    ModeChanged,
    OutboxConfirmed,
    OutboxDone,
    OutboxItem,
    OutboxQueued,
    OutboxUncertain,
    Record,
    SettingsChanged,
    StatusChanged,
)
from bridge.seen import SEEN_TTL_MS, SeenSet


class State:
    """Conversations, the seen-set of message ids, and the outbox of one profile.

    `settings` are the store's own (cap, retention), set by the data: a snapshot's first
    frame or a `SettingsChanged` record. Until then (a store of an older version, or a
    fresh one) nothing is capped: loading never truncates what was stored.
    """

    def __init__(self, settings: StoreSettings | None = None) -> None:
        self.settings = settings
        self.conversations: dict[str, Conversation] = {}
        # Inbound wamid -> receive time (ms), kept 8 to 9 days (bridge/seen.py).
        self.seen = SeenSet()
        # The same for the messages of erased conversations, keyed by `erased_id(wamid)`:
        # Meta's wamids embed the sender's phone number, which must not outlive an erasure,
        # while a redelivery of an erased message must still be recognised (not stored again).
        self.erased_seen: dict[str, int] = {}
        self.outbox: dict[str, OutboxItem] = {}  # insertion order is send order
        # Outbox items a send of which may have reached Meta unconfirmed (OutboxUncertain).
        self.uncertain: set[str] = set()
        # Parts of queued replies that Meta's status webhooks confirmed (OutboxConfirmed),
        # item id -> part -> wamid: committed by whichever replica received the status.
        self.confirmed: dict[str, dict[int, str]] = {}
        # The same items per conversation, so the sender finds a user's next reply without
        # scanning a long queue (after an outage it can hold thousands).
        self._outbox_by_key: dict[str, dict[str, OutboxItem]] = {}
        # A reply's local id and each of its wamids -> (conversation key, local id), so that
        # Meta's status webhooks, which name wamids, find the reply; or -> the conversation
        # key alone, for a conversation loaded packed (`reply_ref` finds the rest).
        self.replies: dict[str, tuple[str, str] | str] = {}
        # Business-scoped user id -> the conversation key (a phone) of the same person.
        self.aliases: dict[str, str] = {}
        # Derived from the messages (so snapshots need nothing of their own): inbound media
        # whose download or transcription is still to do, message id -> conversation key;
        # and the files the media store must keep, file name -> (conversation key, message
        # id). Keys may be a user id since linked to a phone: `resolve` them.
        self.media_jobs: dict[str, str] = {}
        self.media_files: dict[str, tuple[str, str]] = {}
        self.seq = 0  # last sequence number applied

    # -- mutation -------------------------------------------------------------------------

    def apply(self, seq: int, record: Record) -> None:
        """Apply one record; a conversation record at or below its conversation's seq is skipped."""
        self.seq = max(self.seq, seq)
        match record:
            case MessageAdded(key, message, contact_name):
                self._add_message(seq, key, message, contact_name, record.at_ms)
            case StatusChanged(message_id, status, error, wamids):
                ref = self.reply_ref(message_id)
                conv = self.conversations.get(ref[0]) if ref is not None else None
                if ref is None or conv is None:
                    return  # a status for a message we no longer hold (deleted, or not ours)
                if conv.update_status(ref[1], status, error, wamids):
                    for wamid in wamids:
                        self.replies[wamid] = ref
            case ConversationDeleted(key, upto):
                self._erase(seq, key, upto)
            case OutboxQueued(item):
                self.queue_reply(item)
            case OutboxDone(item_id):
                self._unqueue_reply(item_id)
            case OutboxUncertain(item_id):
                if item_id in self.outbox:
                    self.uncertain.add(item_id)
            case OutboxConfirmed(item_id, part, wamid):
                if item_id in self.outbox:
                    self.confirmed.setdefault(item_id, {})[part] = wamid
            case IdentityLinked(user_id, key):
                self._link(seq, user_id, key)
            case SettingsChanged(settings):
                self.use_settings(settings)
            case ModeChanged(key, mode):
                conv = self.conversations.get(key)
                if conv is None or (seq and seq <= conv.seq):
                    return  # erased meanwhile, or already in the snapshot replayed over
                conv.mode = mode
                if seq:
                    conv.seq = seq
            case MediaUpdated(key, message_id, media, content):
                self._update_media(seq, key, message_id, media, content)

    def changes(self, record: Record) -> bool:
        """Whether applying `record` now would change anything. Only a status can be told
        apart: one for a message we do not hold (not ours, or deleted), or one that reports
        a state the reply is already at or past, changes nothing; so can a confirmation of
        a reply no longer queued, or of a part already confirmed so."""
        if isinstance(record, OutboxConfirmed):
            return (
                record.item_id in self.outbox
                and self.confirmed.get(record.item_id, {}).get(record.part) != record.wamid
            )
        if not isinstance(record, StatusChanged):
            return True
        ref = self.replies.get(record.message_id)
        conv = self.conversations.get(ref[0]) if ref is not None else None
        if ref is None or conv is None:
            return False  # what `apply` skips
        if record.wamids:
            return True  # they are indexed even when the reply's state stays
        return conv.status_would_change(ref[1], record.status, record.error, record.wamids)

    def _link(self, seq: int, user_id: str, key: str) -> None:
        """Record that `user_id` is the person of conversation `key`, and move a conversation
        kept under `user_id` into `key`'s.

        Replay-safe over a fuzzy snapshot: a source conversation whose seq is at or past this
        record was made after it (so it is not the one to move), and a target whose seq is
        at or past it already holds what was moved (the source then is a stale copy, dropped).
        """
        self.aliases[user_id] = key
        source = self.conversations.get(user_id)
        if source is None or user_id == key or (seq and source.seq >= seq):
            return
        del self.conversations[user_id]
        target = self.conversations.get(key)
        if target is not None and seq and target.seq >= seq:
            for message in source.messages:
                self._forget_reply(message)
                self._forget_media(message)
            for message in target.messages:  # ids the stale copy shared with the target
                self._index_reply(key, message)
                self._index_media(key, message)
            return
        merged, dropped = merge_conversation(source, target, key, self.max_messages)
        for message in dropped:
            self._forget_reply(message)
            self._forget_media(message)
        if seq:
            merged.seq = seq
        self.conversations[key] = merged
        for message in merged.messages:
            self._index_reply(key, message)
            self._index_media(key, message)

    def _forget_identities(self, key: str) -> None:
        """A user's conversation erased: the link from their user id goes with it."""
        for user_id in [u for u, k in self.aliases.items() if k == key]:
            del self.aliases[user_id]

    def resolve(self, key: str) -> str:
        """The conversation a key stands for: a linked user id's phone, else the key."""
        return self.aliases.get(key, key)

    @property
    def max_messages(self) -> int | None:
        """Messages kept per conversation; None: no cap known (nothing is dropped)."""
        return self.settings.max_messages if self.settings is not None else None

    def use_settings(self, settings: StoreSettings) -> None:
        """Adopt the store's settings; a lower cap drops the oldest messages past it now."""
        self.settings = settings
        cap = settings.max_messages
        for conv in self.conversations.values():
            if conv.cap == cap:
                continue
            if conv.count > cap:  # decodes a cold conversation: only those over the new cap
                for _ in range(conv.count - cap):
                    dropped = conv.messages.popleft()
                    self._forget_reply(dropped)
                    self._forget_media(dropped)
            conv.recap(cap)

    def queue_reply(self, item: OutboxItem) -> None:
        self.outbox[item.id] = item
        self._outbox_by_key.setdefault(item.key, {})[item.id] = item

    def _erase_outbox(self, key: str) -> None:
        """An erasure takes the user's queued replies with it (their phone number and text
        must not stay on disk, nor be sent afterwards): every item of `key` whose reply is no
        longer in the conversation. The outbox notices before its next attempt."""
        queued = self._outbox_by_key.get(key)
        if not queued:
            return
        conv = self.conversations.get(key)
        kept = {m.id for m in conv.messages if m.role == "assistant"} if conv else set()
        for item_id in [i for i in queued if i not in kept]:
            self._unqueue_reply(item_id)

    def _unqueue_reply(self, item_id: str) -> None:
        self.uncertain.discard(item_id)
        self.confirmed.pop(item_id, None)
        item = self.outbox.pop(item_id, None)
        if item is None:
            return
        queued = self._outbox_by_key.get(item.key)
        if queued is not None:
            queued.pop(item_id, None)
            if not queued:
                del self._outbox_by_key[item.key]

    def _erase(self, seq: int, key: str, upto: int | None) -> None:
        """Erase what a deletion decided on; see `ConversationDeleted`.

        Guarded by the conversation's seq like a message: a snapshot that already holds
        changes after this record already reflects it, and a bounded erasure applied again
        would cut into messages that came later.
        """
        conv = self.conversations.get(key)
        if conv is None or (seq and seq <= conv.seq):
            return
        if upto is None or upto >= conv.appended:
            del self.conversations[key]
            erased = list(conv.messages)
            self._forget_identities(key)
        else:
            erased = conv.erase_before(upto)
            if seq:
                conv.seq = seq
            if conv.messages:
                conv.first_interaction = conv.messages[0].timestamp
        for message in erased:
            self._forget_reply(message)
            self._forget_media(message)
            self._forget_seen(message)
        self._erase_outbox(key)

    def _add_message(
        self, seq: int, key: str, message: Message, contact_name: str | None, at_ms: int
    ) -> None:
        if message.role == "user" and message.id is not None:
            self.seen.add(message.id, at_ms)
        conv = self.conversations.get(key)
        if conv is None:
            conv = Conversation(key, self.max_messages, at_ms)
            self.conversations[key] = conv
        elif seq and seq <= conv.seq:
            return  # already in the snapshot this journal is replayed over
        if len(conv.messages) == conv.messages.maxlen:
            self._forget_reply(conv.messages[0])
            self._forget_media(conv.messages[0])
        conv.append(message, at_ms)
        if message.role == "user" and message.type in EVENT_TYPES:
            apply_event(conv, message)
        if seq:
            conv.seq = seq
        if contact_name:
            conv.contact_name = contact_name
        self._index_reply(key, message)
        if message.extra is not None:
            self._index_media(key, message)

    def _update_media(
        self,
        seq: int,
        key: str,
        message_id: str,
        media: Mapping[str, Any],
        content: str | None,
    ) -> None:
        """Replace a message's media fields (and content); see `MediaUpdated`. Guarded by
        the conversation's seq, so replay over a snapshot that holds it changes nothing."""
        conv = self.conversations.get(key)
        if conv is None or (seq and seq <= conv.seq):
            return
        for index in range(len(conv.messages) - 1, -1, -1):  # media work is on recent ones
            message = conv.messages[index]
            if message.id == message_id and message.role == "user":
                break
        else:
            return  # erased, or dropped by the cap, meanwhile
        self._forget_media(message)
        updated = replace(
            message,
            content=message.content if content is None else content,
            extra={**(message.extra or {}), "media": dict(media)},
        )
        conv.messages[index] = updated
        if seq:
            conv.seq = seq
        self._index_media(key, updated)

    def _index_media(self, key: str, message: Message) -> None:
        if message.id is None:
            return
        if has_work(message):
            self.media_jobs[message.id] = key
        name = stored_file(message)
        if name is not None:
            self.media_files[name] = (key, message.id)

    def _forget_media(self, message: Message) -> None:
        if message.id is None or message.extra is None:
            return
        self.media_jobs.pop(message.id, None)
        name = stored_file(message)
        if name is not None:
            self.media_files.pop(name, None)

    def _index_reply(self, key: str, message: Message) -> None:
        if message.role == "assistant" and message.id is not None:
            ref = (key, message.id)
            self.replies[message.id] = ref
            for wamid in message.wamids:
                self.replies[wamid] = ref

    def _forget_reply(self, message: Message) -> None:
        if message.role != "assistant" or message.id is None:
            return
        self.replies.pop(message.id, None)
        for wamid in message.wamids:
            self.replies.pop(wamid, None)

    def _forget_seen(self, message: Message) -> None:
        """Keep an erased user message's id only as its one-way hash (see `erased_seen`)."""
        if message.role == "user" and message.id is not None:
            at = self.seen.pop(message.id)
            if at is not None:
                self.erased_seen[erased_id(message.id)] = at

    def add_conversation(self, conv: Conversation) -> None:
        """Install a conversation loaded from a snapshot or an import (cold or not)."""
        self.conversations[conv.key] = conv
        cold = conv.cold
        if cold is not None:
            self._index_cold(conv.key, cold)
        else:
            for message in conv.messages:
                self._index_reply(conv.key, message)
                if message.extra is not None:
                    self._index_media(conv.key, message)
        self.seq = max(self.seq, conv.seq)

    def _index_cold(self, key: str, cold: bytes) -> None:
        """Index a cold conversation from its packed index, without decoding its messages:
        its reply ids and wamids point to the conversation's key alone (resolved when a
        status names one, `reply_ref`), so the index is built without a Python loop."""
        try:
            replies, media = packed.index(cold)
            self.replies.update(zip(replies, itertools.repeat(key)))
            for message_id, name, work in media:
                if work:
                    self.media_jobs[message_id] = key
                if name is not None:
                    self.media_files[name] = (key, message_id)
        except (packed.PackError, TypeError, ValueError) as exc:
            raise CorruptStateError(f"conversation {key!r}: malformed index ({exc})") from None

    def reply_ref(self, message_id: str) -> tuple[str, str] | None:
        """(conversation key, local id) of the reply `message_id` (a local id or a wamid)
        names; for a reply indexed from a packed conversation, found in its messages."""
        ref = self.replies.get(message_id)
        if not isinstance(ref, str):
            return ref
        conv = self.conversations.get(ref)
        for message in reversed(conv.messages if conv is not None else ()):
            if (
                message.role == "assistant"
                and message.id is not None
                and (message.id == message_id or message_id in message.wamids)
            ):
                return (ref, message.id)
        return None

    def prune_seen(self, now_ms: int) -> int:
        """Forget ids older than Meta's redelivery horizon; returns how many were dropped."""
        return sum(self.prune_seen_steps(now_ms))

    def prune_seen_steps(self, now_ms: int) -> Iterator[int]:
        """`prune_seen` in steps of bounded size, for a caller that yields to the event loop
        between two: how many ids each step dropped."""
        yield from self.seen.prune_steps(now_ms)
        cutoff = now_ms - SEEN_TTL_MS
        erased = [h for h, ts in self.erased_seen.items() if ts < cutoff]
        for digest in erased:
            del self.erased_seen[digest]
        yield len(erased)

    # -- queries --------------------------------------------------------------------------

    def has_seen(self, message_id: str) -> bool:
        return message_id in self.seen or (
            bool(self.erased_seen) and erased_id(message_id) in self.erased_seen
        )

    def get(self, key: str) -> ConversationView | None:
        conv = self.conversations.get(key)
        return conv.view() if conv is not None else None

    def find_message(self, key: str, message_id: str) -> Message | None:
        """A message of conversation `key` (or the phone's it was merged into), newest first."""
        conv = self.conversations.get(self.resolve(key))
        if conv is None:
            return None
        for message in reversed(conv.messages):
            if message.id == message_id:
                return message
        return None

    def keys(self) -> list[str]:
        return list(self.conversations)

    def views(self) -> Iterator[ConversationView]:
        for conv in list(self.conversations.values()):
            yield conv.view()

    def message_count(self) -> int:
        return sum(c.count for c in self.conversations.values())

    def expired(self, now_ms: int, retention_ms: int) -> list[ConversationDeleted]:
        """Erasures of the conversations idle longer than the retention period, each bounded
        to the messages it has now (a message acknowledged meanwhile survives)."""
        cutoff = now_ms - retention_ms
        return [
            ConversationDeleted(k, c.appended)
            for k, c in self.conversations.items()
            if c.last_activity < cutoff
        ]

    def deletion(self, key: str) -> ConversationDeleted | None:
        """The erasure of everything `key` holds now, or None if there is no such conversation."""
        conv = self.conversations.get(key)
        return ConversationDeleted(key, conv.appended) if conv is not None else None

    def pending_outbox(self) -> list[OutboxItem]:
        return list(self.outbox.values())

    def next_reply(self, key: str) -> OutboxItem | None:
        """The oldest queued reply to conversation `key`."""
        queued = self._outbox_by_key.get(key)
        return next(iter(queued.values())) if queued else None

    def queued_replies(self, key: str) -> list[OutboxItem]:
        """The replies to conversation `key` waiting to be sent, oldest first."""
        return list(self._outbox_by_key.get(key, {}).values())

    def outbox_keys(self) -> list[str]:
        """Conversations with replies queued, in the order their oldest reply was queued."""
        return list(self._outbox_by_key)


def packed_parts(conv: Conversation) -> tuple[bytes, bytes]:
    """A conversation's messages JSON and index JSON (bridge/persistence/packed.py), for a
    snapshot to compress in its writer thread: the index says, without decoding the
    messages, what `add_conversation` indexes of them."""
    replies: list[str] = []
    media: list[list[Any]] = []
    rows = []
    for message in conv.messages:
        rows.append(message.to_dict())
        if message.id is None:
            continue
        if message.role == "assistant":
            replies.append(message.id)
            replies.extend(message.wamids)
        elif message.extra is not None:
            work, name = has_work(message), stored_file(message)
            if work or name is not None:
                media.append([message.id, name, 1 if work else 0])
    return orjson.dumps(rows), packed.encode_index(replies, media)


def erased_id(message_id: str) -> str:
    """What remains of an erased message's id: not reversible (a wamid holds, besides the
    phone number, a random part nobody can guess), still comparable with a redelivery."""
    return hashlib.sha256(message_id.encode()).hexdigest()[:32]
