"""The operator's writes to a store: delete, prune, import, rotate-key.

One implementation for both ways they run: inside the running bridge, for a request on its
control channel, and in `sessions-admin` when no bridge runs (registry.py). Either way there
is one writer per store, and every change is journaled records committed through the store:
durable before the operation answers, replayed after a kill -9, in every later snapshot and
backup.

Each write decides from the state with every earlier commit applied and takes the next place
in the journal in the same step (`Store.commit_decided`): a deletion takes exactly what was
acknowledged before it (a message arriving meanwhile survives it), and an import's merge
never puts back a reply that a send has just taken off the outbox. An import commits one
conversation at a time and yields between them, so a large file does not stall the bridge.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from bridge.config import ProfileConfig
from bridge.control.protocol import Args, BadRequest, ControlError, Result
from bridge.control.registry import OPERATIONS, ControlContext, argument
from bridge.conversations import Message
from bridge.errors import BridgeError
from bridge.identities import normalize_key
from bridge.media import upkeep as media_upkeep
from bridge.persistence import layout
from bridge.persistence.crypto import Keyring
from bridge.persistence.keys import load_keyring, new_key, write_key_file
from bridge.records import IdentityLinked, MessageAdded, OutboxQueued, Record, settings_to_dict
from bridge.state import State
from bridge.store.base import Store
from bridge.store.durable import DurableStore

DAY_MS = 24 * 3600 * 1000


def conversation_key(state: State, typed: str) -> str:
    """The stored key for what an operator typed: a phone in any notation is its digits; a
    user id linked to a phone is the phone's conversation."""
    return state.resolve(normalize_key(typed))


def stored_settings(state: State) -> dict[str, int] | None:
    """The store's own cap and retention (None: none stored yet), for the operator's tool to
    compare with what it was given."""
    return settings_to_dict(state.settings) if state.settings is not None else None


# -- delete and prune -------------------------------------------------------------------------


async def erase_conversation(store: Store, typed: str, slug: str) -> str:
    """Erase the conversation `typed` names, decided on the state with every earlier commit
    applied (so it takes exactly what was acknowledged before it); returns its key. For the
    bridge's control channel and for sessions-admin on the database alike."""
    erased: list[str] = []

    def decide(state: State) -> list[Record]:
        key = conversation_key(state, typed)
        deletion = state.deletion(key)
        if deletion is None:
            raise BridgeError(f"no conversation {key!r} in profile {slug!r}")
        erased.append(key)
        return [deletion]

    await store.commit_decided(decide)
    return erased[0]


@OPERATIONS.operation("delete")
async def delete(ctx: ControlContext, args: Args) -> Result:
    """Erase one user's conversation, as it is when the erasure is decided."""
    key = await erase_conversation(ctx.store, argument(args, "key", str), ctx.slug)
    _media_after_erasure(ctx)
    return {"key": key, "settings": stored_settings(ctx.store.state)}


@OPERATIONS.operation("prune")
async def prune(ctx: ControlContext, args: Args) -> Result:
    """Erase the conversations idle for more than `older_than_days`."""
    days = argument(args, "older_than_days", int)
    if days < 1:
        raise BadRequest("--older-than must be at least 1 day")
    records = await ctx.store.commit_decided(lambda state: state.expired(now_ms(), days * DAY_MS))
    if records:
        _media_after_erasure(ctx)
    return {"deleted": len(records), "settings": stored_settings(ctx.store.state)}


def _media_after_erasure(ctx: ControlContext) -> None:
    """The erasure is durable: its media files go. A running bridge's media worker sees the
    commit and does it (it knows the files it is writing); sessions-admin does it here."""
    if ctx.runtime is None and isinstance(ctx.store, DurableStore):
        media_upkeep.sweep(ctx.store)  # the database's media are on the replicas' disks


# -- import -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Merge:
    """What merging messages into a conversation takes."""

    records: list[Record]  # none when every message is there already
    kept: int  # messages the conversation holds afterwards
    left_out: int  # the oldest, beyond the store's cap


def merge_records(state: State, key: str, incoming: list[Message]) -> Merge:
    """Records that make `key` hold the union of its messages and `incoming`, in time order,
    within the store's cap.

    A message counts as present when its id matches, or (for the seed's id-less messages) its
    role, timestamp and text all do, so importing the same file twice changes nothing.
    """
    existing = list(state.conversations[key].messages) if key in state.conversations else []
    ids = {m.id for m in existing if m.id}
    triples = {(m.role, m.timestamp, m.content) for m in existing}
    new = [
        m
        for m in incoming
        if not (m.id and m.id in ids) and (m.role, m.timestamp, m.content) not in triples
    ]
    if not new:
        return Merge([], len(existing), 0)
    merged = sorted(existing + new, key=lambda m: m.timestamp)
    total = len(merged)
    if state.max_messages is not None:  # the store's own cap, as the bridge applies it
        merged = merged[-state.max_messages :]
    deletion = state.deletion(key)
    records: list[Record] = [deletion] if deletion is not None else []
    records.extend(MessageAdded(key, m) for m in merged)
    if existing:
        # The erasure above drops the user ids linked to `key`: link them again.
        records.extend(IdentityLinked(u, k) for u, k in state.aliases.items() if k == key)
    # It also takes the user's queued replies with it; they were not imported over, so they
    # go back in the queue, in their order.
    records.extend(OutboxQueued(item) for item in state.queued_replies(key))
    return Merge(records, len(merged), total - len(merged))


def import_arguments(conversations: list[tuple[str, list[Message]]]) -> dict[str, Any]:
    """The `import` operation's arguments for these conversations (checked by the caller)."""
    return {"conversations": [[key, [m.to_dict() for m in ms]] for key, ms in conversations]}


def import_request(args: Args) -> list[tuple[str, list[Message]]]:
    """The conversations of an `import` request (as `import_arguments` sends them)."""
    raw = argument(args, "conversations", list)
    out = []
    for index, pair in enumerate(raw, start=1):
        if not (
            isinstance(pair, list)
            and len(pair) == 2
            and isinstance(pair[0], str)
            and pair[0]
            and isinstance(pair[1], list)
        ):
            raise BadRequest(f"bad request: conversation {index} is not [key, [messages]]")
        try:
            messages = [Message.from_dict(m) for m in pair[1]]
        except ValueError as exc:
            raise BadRequest(f"bad request: conversation {index}: {exc}") from None
        out.append((pair[0], messages))
    return out


@OPERATIONS.operation("import")
async def import_(ctx: ControlContext, args: Args) -> Result:
    """Merge conversations (as `import_arguments` sends them) into the store, each in one
    commit: a crash leaves each whole or absent."""
    return await import_conversations(ctx.store, import_request(args), ctx.client_gone)


async def import_conversations(
    store: Store,
    conversations: list[tuple[str, list[Message]]],
    client_gone: Callable[[], bool] = lambda: False,
) -> Result:
    """Merge each conversation in its own commit, decided on the settled state: for the
    bridge's control channel and for sessions-admin on the database alike."""
    counts = {"conversations": 0, "messages": 0, "skipped_expired": 0, "over_cap": 0}
    for done, (key, messages) in enumerate(conversations):
        if client_gone():
            raise ControlError(
                f"import stopped after {done} of {len(conversations)} conversations: the "
                "requester hung up"
            )
        outcome = await _import_one(store, key, messages)
        if outcome is None:
            counts["skipped_expired"] += 1
        elif outcome.records:
            counts["conversations"] += 1
            counts["messages"] += outcome.added
            counts["over_cap"] += outcome.left_out
        await asyncio.sleep(0)  # a conversation already there commits nothing: yield anyway
    return {**counts, "settings": stored_settings(store.state)}


@dataclass(frozen=True, slots=True)
class _Imported:
    records: int
    added: int
    left_out: int


async def _import_one(store: Store, key: str, messages: list[Message]) -> _Imported | None:
    """Merge one conversation in one commit; None when it is past the store's retention."""
    outcome: list[_Imported | None] = []

    def decide(state: State) -> list[Record]:
        settings = state.settings
        # Conversations idle past the store's retention would be erased by the bridge's next
        # snapshot: leave them out and say so. (No stored settings: the bridge decides later.)
        if settings is not None:
            cutoff = now_ms() - settings.retention_days * DAY_MS
            if max((m.timestamp for m in messages), default=0) < cutoff:
                outcome.append(None)
                return []
        conv = state.conversations.get(key)
        merge = merge_records(state, key, messages)
        added = merge.kept - (len(conv.messages) if conv else 0)
        outcome.append(_Imported(len(merge.records), added, merge.left_out))
        return merge.records

    await store.commit_decided(decide)
    return outcome[0]


# -- rotate-key -------------------------------------------------------------------------------


def key_source(profile: ProfileConfig) -> str | None:
    """Where an operator-supplied key comes from; None for the key file the bridge made."""
    if profile.key_file:
        return f"BRIDGE_KEY_FILE ({profile.key_file})"
    if profile.key:
        return "BRIDGE_KEY or the systemd credential 'key'"
    return None


@OPERATIONS.operation("rotate-key")
async def rotate_key(ctx: ControlContext, args: Args) -> Result:
    """New active key; the whole store re-encrypted under it; old keys kept for old backups.

    With the key file the bridge generated in the profile directory, a new key is made and
    written there first: a crash after it still has every key needed to read everything. A
    key from outside (BRIDGE_KEY, BRIDGE_KEY_FILE, a systemd credential) is the operator's
    to change: they put the new key first and the old one after it in that source, and the
    store is re-encrypted under the first key. A running bridge reads a key file again now;
    BRIDGE_KEY and credentials only when it starts.
    """
    store = ctx.store
    if not isinstance(store, DurableStore):
        raise BadRequest("rotate-key is not available with the postgres store yet")
    profile = store.profile
    source = key_source(profile)
    result: Result = {"source": source, "running": ctx.runtime is not None}
    if source is None:
        keyring = Keyring([new_key(), *store.keyring.keys])
        path = layout.key_path(profile.state_dir)
        await asyncio.to_thread(write_key_file, path, keyring.keys)
        await store.rekey(keyring, ctx.progress)
        await media_upkeep.reseal(store)
        return {**result, "key": keyring.active_id.decode(), "rekeyed": True, "key_file": str(path)}
    # The source as it reads now: a running bridge read the key file when it started.
    fresh = replace(profile, key=None) if profile.key_file else profile
    keyring = load_keyring(fresh, create=False)
    if len(keyring.keys) < 2:
        raise BridgeError(
            f"this profile's key comes from {source}, which rotate-key does not write: put a "
            "new key (32 random bytes, URL-safe base64) on the first line there and the "
            "current key on the line after it, make the bridge and this command see the same, "
            "then run rotate-key: it re-encrypts the store under the first key"
        )
    unreadable = store.sealed_with - set(keyring.key_ids)
    if unreadable:
        raise BridgeError(
            f"the keys in {source} cannot read data sealed with key(s) "
            f"{', '.join(sorted(k.decode() for k in unreadable))}: keep the key in use on the "
            "line after the new one; nothing was re-encrypted"
        )
    older = store.sealed_with - {keyring.active_id}
    if older:
        await store.rekey(keyring, ctx.progress)
    resealed = await media_upkeep.reseal(store)  # media files sealed with an older key
    return {**result, "key": keyring.active_id.decode(), "rekeyed": bool(older or resealed)}


def now_ms() -> int:
    return int(time.time() * 1000)
