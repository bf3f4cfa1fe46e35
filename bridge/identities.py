"""Who a user is: conversation keys, phone numbers as people type them, business-scoped ids.

Meta identifies a WhatsApp user by phone (`wa_id`: digits, no `+`) and, since its username
rollout, by a business-scoped user id (BSUID, e.g. `US.13491208655302741918`: a country code,
a dot, digits). A conversation is keyed by the phone when Meta gives one, else by the user id; a user id seen
with a phone is linked to the phone's conversation (durably: an `IdentityLinked` record), so
one person is one conversation whichever ids a message carries.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from bridge.conversations import Conversation, Message
from bridge.records import IdentityLinked
from bridge.whatsapp.models import InboundMessage

# What people type around a phone number: `+34 600-000-001`, `(34) 600.000.001`.
_PHONE_TYPED = re.compile(r"\+?[\d\s().\-]*\d[\d\s().\-]*")


def normalize_key(typed: str) -> str:
    """A conversation key as stored: a phone as its digits only (`+34 600-000-001` ->
    `34600000001`, as Meta sends `wa_id`); anything else (a user id) as given, trimmed."""
    text = typed.strip()
    if _PHONE_TYPED.fullmatch(text):
        return re.sub(r"\D", "", text)
    return text


def is_phone(key: str) -> bool:
    """True for a phone key (digits only); False for a business-scoped user id."""
    return key.isdigit()


def merge_conversation(
    source: Conversation, target: Conversation | None, key: str, cap: int | None
) -> tuple[Conversation, list[Message]]:
    """`source` (a user id's conversation) folded into `target` (the phone's) under `key`:
    the union of their messages in time order (a message both hold counted once), capped at
    the newest `cap`. Returns the merged conversation and the messages left out."""
    merged = Conversation(key, cap, source.first_interaction)
    if target is None:
        merged.messages.extend(source.messages)
        merged.last_activity = source.last_activity
        merged.last_user_message = source.last_user_message
        merged.contact_name = source.contact_name
        merged.appended = source.appended
        merged.mode = source.mode
        return merged, []
    ids = {m.id for m in target.messages if m.id}
    triples = {(m.role, m.timestamp, m.content) for m in target.messages}
    moved, duplicates = [], []
    for message in source.messages:
        if (message.id and message.id in ids) or (
            message.role,
            message.timestamp,
            message.content,
        ) in triples:
            duplicates.append(message)
        else:
            moved.append(message)
    ordered = sorted([*target.messages, *moved], key=lambda m: m.timestamp)  # stable
    limit = len(ordered) if cap is None else cap
    kept, dropped = ordered[len(ordered) - limit :], ordered[: max(0, len(ordered) - limit)]
    merged.messages.extend(kept)
    merged.first_interaction = min(source.first_interaction, target.first_interaction)
    merged.last_activity = max(source.last_activity, target.last_activity)
    user_times = [t for t in (source.last_user_message, target.last_user_message) if t]
    merged.last_user_message = max(user_times) if user_times else None
    merged.contact_name = target.contact_name or source.contact_name
    # One person, one mode: the one set last (a user who opted out under their user id
    # stays opted out in the phone's conversation).
    modes = [m for m in (target.mode, source.mode) if m is not None]
    merged.mode = max(modes, key=lambda m: m.at_ms) if modes else None
    # The moved messages count as appended to the phone's conversation (a bounded erasure
    # decided on it still covers exactly what it saw).
    merged.appended = max(len(merged.messages), target.appended + len(moved))
    return merged, dropped + duplicates


class LinkResolver:
    """The conversation key of each inbound message, and the links to record with it.

    A message with a phone and a user id is keyed by the phone, and links the user id to it
    (once; `IdentityLinked` moves a conversation kept under the user id into the phone's).
    A message with only a user id goes to the phone's conversation when the id is linked.

    Links are looked up in the state (applied) and among the links of batches committed but
    not yet applied (`pending`): the journal applies batches in commit order, so a message
    resolved after a link was handed to the store, but before it was applied, must already
    use it. A batch that relies on a pending link carries the link itself, so it never
    depends on another batch's outcome.
    """

    def __init__(self) -> None:
        self._pending: dict[str, str] = {}  # user id -> phone, in batches not yet applied

    def resolve(
        self, message: InboundMessage, aliases: Mapping[str, str]
    ) -> tuple[str, IdentityLinked | None]:
        user_id, phone = message.user_id, message.phone
        if user_id is None:
            return message.key, None
        known, pending = aliases.get(user_id), self._pending.get(user_id)
        if phone is not None:
            if known == phone and pending in (None, phone):
                return phone, None
            self._pending[user_id] = phone
            return phone, IdentityLinked(user_id, phone)
        if pending is not None:
            return pending, (IdentityLinked(user_id, pending) if known != pending else None)
        return known or user_id, None

    def settle(self, links: Iterable[IdentityLinked]) -> None:
        """A batch is applied (or failed): its links are the state's business now."""
        for link in links:
            if self._pending.get(link.user_id) == link.key:
                del self._pending[link.user_id]
