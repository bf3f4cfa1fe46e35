"""Turn a webhook body into a `Delivery`: every entry, change, message and status.

Shapes follow Meta's WhatsApp Cloud API webhook reference ("messages" field). Only the
envelope decides the whole body (not JSON, not an object, another `object`, no `entry` list:
PayloadError, a 400). Below it, each entry, change, message and status stands on its own: one
that cannot be used (a message without an id or a sender, a change without metadata) is
returned in `Delivery.skipped` with the reason, and the rest is recorded. Meta redelivers a
whole delivery on any non-200, so rejecting all of it for one odd item would only repeat the
rejection for a week while the valid messages beside it are never recorded.

Inside a message we are lenient about optional parts (whatsapp/content.py), so a new or odd
message type is still recorded as readable text rather than lost. Nothing here raises on any
JSON other than PayloadError.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import orjson

from bridge.errors import PayloadError
from bridge.whatsapp.content import describe, error_text, text
from bridge.whatsapp.models import Change, Delivery, InboundMessage, Skipped, StatusUpdate

OBJECT = "whatsapp_business_account"
MAX_ID_LEN = 256


def parse_body(body: bytes) -> Delivery:
    """Decode and parse a raw webhook body; PayloadError names what is wrong."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise PayloadError("body is not valid JSON") from None
    return parse_delivery(data)


def parse_delivery(data: Any) -> Delivery:
    if not isinstance(data, dict):
        raise PayloadError("body must be a JSON object")
    if data.get("object") != OBJECT:
        raise PayloadError(f"'object' must be {OBJECT!r}")
    entries = data.get("entry")
    if not isinstance(entries, list):
        raise PayloadError("body.entry must be a list")
    parser = _Parser()
    for i, entry in enumerate(entries):
        parser.entry(entry, f"entry[{i}]")
    return Delivery(changes=tuple(parser.changes), skipped=tuple(parser.skipped))


class _Parser:
    """Collects what is usable and what was skipped, with the reason, in body order."""

    def __init__(self) -> None:
        self.changes: list[Change] = []
        self.skipped: list[Skipped] = []

    def skip(
        self, what: str, where: str, reason: str, detail: str, mtype: str | None = None
    ) -> None:
        self.skipped.append(Skipped(what, where, reason, f"{where} {detail}", mtype))

    def entry(self, entry: Any, where: str) -> None:
        if not isinstance(entry, dict):
            self.skip("entry", where, "not_an_object", "must be an object")
            return
        changes = entry.get("changes")
        if not isinstance(changes, list):
            self.skip("entry", where, "no_changes", "changes must be a list")
            return
        for j, change in enumerate(changes):
            self.change(change, f"{where}.changes[{j}]")

    def _list(self, value: Mapping[str, Any], key: str, where: str) -> list[Any]:
        items = value.get(key)
        if items is None:
            return []
        if not isinstance(items, list):
            self.skip("change", where, "not_a_list", f"{key} must be a list")
            return []
        return items

    def change(self, change: Any, where: str) -> None:
        if not isinstance(change, dict):
            self.skip("change", where, "not_an_object", "must be an object")
            return
        field = change.get("field")
        value = change.get("value")
        if not isinstance(field, str):
            self.skip("change", where, "no_field", "field must be a string")
            return
        if not isinstance(value, dict):
            self.skip("change", where, "no_value", "value must be an object")
            return
        metadata = value.get("metadata")
        if field != "messages":
            # Other subscriptions (account_update, templates, ...) carry no conversation data.
            self.changes.append(
                Change(field, text(metadata, "phone_number_id"), display_phone_number=None)
            )
            return
        if not isinstance(metadata, dict):
            # Without it the change cannot be routed to a profile with certainty.
            self.skip("change", where, "no_metadata", "value.metadata must be an object")
            return
        at = f"{where}.value"
        contacts = _contacts(self._list(value, "contacts", at))
        messages = [
            m
            for k, raw in enumerate(self._list(value, "messages", at))
            if (m := self.message(raw, contacts, f"{at}.messages[{k}]")) is not None
        ]
        statuses = [
            s
            for k, raw in enumerate(self._list(value, "statuses", at))
            if (s := self.status(raw, f"{at}.statuses[{k}]")) is not None
        ]
        errors = [error_text(e) for e in self._list(value, "errors", at) if isinstance(e, dict)]
        self.changes.append(
            Change(
                field=field,
                phone_number_id=text(metadata, "phone_number_id"),
                display_phone_number=text(metadata, "display_phone_number"),
                messages=tuple(messages),
                statuses=tuple(statuses),
                errors=tuple(errors),
            )
        )

    def message(
        self, msg: Any, contacts: Mapping[str, Mapping[str, str]], where: str
    ) -> InboundMessage | None:
        if not isinstance(msg, dict):
            self.skip("message", where, "not_an_object", "must be an object")
            return None
        mtype = text(msg, "type")
        wamid = _ident(msg.get("id"))
        if wamid is None:
            self.skip("message", where, "no_id", "has no id (a non-empty string)", mtype)
            return None
        phone = _user_ident(msg, "from")
        # `from_user_id` is the business-scoped user id (BSUID) of Meta's username rollout;
        # `user_id` is accepted too, as some relays name it so.
        user_id = _user_ident(msg, "from_user_id") or _user_ident(msg, "user_id")
        if phone is None and user_id is None:
            self.skip(
                "message", where, "no_sender", "has no sender ('from' or 'from_user_id')", mtype
            )
            return None
        key = phone or user_id
        assert key is not None
        contact = contacts.get(key) or (contacts.get(user_id) if user_id else None) or {}
        if user_id is None and contact.get("user_id"):
            user_id = contact["user_id"]
        mtype, content, extra = describe(msg)
        if phone and user_id:
            extra["user_id"] = user_id
        parent = text(msg, "from_parent_user_id") or contact.get("parent_user_id")
        if parent:
            extra["parent_user_id"] = parent
        if contact.get("username"):
            extra["username"] = contact["username"]
        context = extra.get("context", {})
        reaction = extra.get("reaction", {})
        return InboundMessage(
            id=wamid,
            key=key,
            timestamp_ms=_timestamp_ms(msg.get("timestamp")),
            type=mtype,
            content=content,
            phone=phone,
            user_id=user_id,
            contact_name=contact.get("name"),
            context_id=context.get("id") or reaction.get("message_id"),
            extra=extra or None,
        )

    def status(self, status: Any, where: str) -> StatusUpdate | None:
        if not isinstance(status, dict):
            self.skip("status", where, "not_an_object", "must be an object")
            return None
        message_id, state = _ident(status.get("id")), _ident(status.get("status"))
        if message_id is None or state is None:
            self.skip("status", where, "no_id", "needs an id and a status")
            return None
        errors = status.get("errors")
        first_error = errors[0] if isinstance(errors, list) and errors else None
        return StatusUpdate(
            message_id=message_id,
            status=state,
            timestamp_ms=_timestamp_ms(status.get("timestamp")),
            recipient=text(status, "recipient_id") or text(status, "recipient_user_id"),
            error=error_text(first_error) if isinstance(first_error, dict) else None,
            callback_data=text(status, "biz_opaque_callback_data"),
        )


def _ident(value: Any) -> str | None:
    """An id Meta sends as a string: non-empty and of sane length, else None."""
    if isinstance(value, str) and value and len(value) <= MAX_ID_LEN:
        return value
    return None


def _user_ident(obj: Mapping[str, Any], key: str) -> str | None:
    """A user's phone or user id: a string (or a number, as text) of sane length."""
    value = text(obj, key)
    return value if value is not None and len(value) <= MAX_ID_LEN else None


def _contacts(contacts: list[Any]) -> dict[str, dict[str, str]]:
    """`value.contacts[]` by every id it names (phone `wa_id`, `user_id`): the profile name,
    the username and the ids, so a message finds its sender's card by either id."""
    cards: dict[str, dict[str, str]] = {}
    for contact in contacts:
        if not isinstance(contact, dict):
            continue
        profile = contact.get("profile")
        card = {
            k: v
            for k, v in (
                ("name", text(profile, "name")),
                ("username", text(profile, "username")),
                ("user_id", _user_ident(contact, "user_id")),
                ("parent_user_id", text(contact, "parent_user_id")),
            )
            if v
        }
        for key in ("wa_id", "user_id"):
            ident = _user_ident(contact, key)
            if ident:
                cards[ident] = card
    return cards


def _timestamp_ms(value: Any) -> int:
    """Meta sends unix seconds as a string; a missing or odd value means 'now'."""
    try:
        seconds = int(value)
    except (TypeError, ValueError, OverflowError):
        return int(time.time() * 1000)
    if seconds <= 0 or seconds > 10**11:
        return int(time.time() * 1000)
    return seconds * 1000
