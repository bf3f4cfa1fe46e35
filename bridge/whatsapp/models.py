"""Parsed webhook data: frozen records so nothing downstream touches Meta's raw JSON."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """One message a user sent, reduced to what a conversation needs."""

    id: str  # wamid: Meta's id, the dedupe key
    key: str  # conversation key: the phone when present, else the business-scoped user id
    timestamp_ms: int
    type: str
    content: str  # readable text for the history and the assistant
    phone: str | None = None
    user_id: str | None = None
    contact_name: str | None = None
    context_id: str | None = None  # the wamid this message replies or reacts to


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    """Meta's report on a message we sent: sent, delivered, read or failed."""

    message_id: str  # wamid of our outgoing message
    status: str
    timestamp_ms: int
    recipient: str | None = None
    error: str | None = None  # "code: title" of the first error on a failed status
    # What we sent as biz_opaque_callback_data with the message (Meta echoes it): names the
    # reply and part even when the send's own answer never reached us.
    callback_data: str | None = None


@dataclass(frozen=True, slots=True)
class Change:
    """One `entry[].changes[]` item: the unit that is routed to a profile."""

    field: str
    phone_number_id: str | None
    display_phone_number: str | None
    messages: tuple[InboundMessage, ...] = ()
    statuses: tuple[StatusUpdate, ...] = ()
    errors: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Delivery:
    """A whole webhook POST body; Meta batches several entries and changes into one."""

    changes: tuple[Change, ...]

    @property
    def message_count(self) -> int:
        return sum(len(c.messages) for c in self.changes)
