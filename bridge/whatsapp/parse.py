"""Turn a webhook body into a `Delivery`: every entry, change, message and status.

Shapes follow Meta's WhatsApp Cloud API webhook reference ("messages" field). The envelope is
checked strictly (a wrong shape is a 400 and nothing is recorded); inside a message we are
lenient about optional parts, so a new or odd message type is still recorded as readable text
rather than lost.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from bridge.errors import PayloadError
from bridge.whatsapp.models import Change, Delivery, InboundMessage, StatusUpdate

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
    entries = _list(data, "entry", "body")
    changes: list[Change] = []
    for i, entry in enumerate(entries):
        where = f"entry[{i}]"
        if not isinstance(entry, dict):
            raise PayloadError(f"{where} must be an object")
        for j, change in enumerate(_list(entry, "changes", where)):
            changes.append(_change(change, f"{where}.changes[{j}]"))
    return Delivery(changes=tuple(changes))


def _list(obj: Mapping[str, Any], key: str, where: str) -> list[Any]:
    value = obj.get(key)
    if not isinstance(value, list):
        raise PayloadError(f"{where}.{key} must be a list")
    return value


def _optional_list(obj: Mapping[str, Any], key: str, where: str) -> list[Any]:
    if obj.get(key) is None:
        return []
    return _list(obj, key, where)


def _str(obj: Any, key: str) -> str | None:
    """A non-empty string field, else None: optional parts never fail a delivery."""
    if not isinstance(obj, dict):
        return None
    value = obj.get(key)
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def _change(change: Any, where: str) -> Change:
    if not isinstance(change, dict):
        raise PayloadError(f"{where} must be an object")
    field = change.get("field")
    if not isinstance(field, str):
        raise PayloadError(f"{where}.field must be a string")
    value = change.get("value")
    if not isinstance(value, dict):
        raise PayloadError(f"{where}.value must be an object")
    metadata = value.get("metadata")
    if field != "messages":
        # Other subscriptions (account_update, templates, ...) carry no conversation data.
        return Change(
            field=field,
            phone_number_id=_str(metadata, "phone_number_id"),
            display_phone_number=None,
        )
    if not isinstance(metadata, dict):
        raise PayloadError(f"{where}.value.metadata must be an object")
    names = _contact_names(_optional_list(value, "contacts", f"{where}.value"))
    messages = tuple(
        _message(m, names, f"{where}.value.messages[{k}]")
        for k, m in enumerate(_optional_list(value, "messages", f"{where}.value"))
    )
    statuses = tuple(
        _status(s, f"{where}.value.statuses[{k}]")
        for k, s in enumerate(_optional_list(value, "statuses", f"{where}.value"))
    )
    errors = tuple(
        _error_text(e)
        for e in _optional_list(value, "errors", f"{where}.value")
        if isinstance(e, dict)
    )
    return Change(
        field=field,
        phone_number_id=_str(metadata, "phone_number_id"),
        display_phone_number=_str(metadata, "display_phone_number"),
        messages=messages,
        statuses=statuses,
        errors=errors,
    )


def _contact_names(contacts: list[Any]) -> dict[str, str]:
    names: dict[str, str] = {}
    for contact in contacts:
        name = _str(contact.get("profile") if isinstance(contact, dict) else None, "name")
        if not name:
            continue
        for key in ("wa_id", "user_id"):
            ident = _str(contact, key)
            if ident:
                names[ident] = name
    return names


def _timestamp_ms(value: Any) -> int:
    """Meta sends unix seconds as a string; a missing or odd value means 'now'."""
    try:
        seconds = int(value)
    except (TypeError, ValueError):
        return int(time.time() * 1000)
    if seconds <= 0 or seconds > 10**11:
        return int(time.time() * 1000)
    return seconds * 1000


def _ident(obj: Mapping[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value or len(value) > MAX_ID_LEN:
        raise PayloadError(f"{where}.{key} must be a non-empty string")
    return value


def _message(msg: Any, names: Mapping[str, str], where: str) -> InboundMessage:
    if not isinstance(msg, dict):
        raise PayloadError(f"{where} must be an object")
    wamid = _ident(msg, "id", where)
    phone = _str(msg, "from")
    user_id = _str(msg, "user_id") or _str(msg, "from_user_id")
    key = phone or user_id
    if not key or len(key) > MAX_ID_LEN:
        raise PayloadError(f"{where} has no sender ('from' or 'user_id')")
    mtype = _str(msg, "type") or "unknown"
    context = msg.get("context")
    return InboundMessage(
        id=wamid,
        key=key,
        timestamp_ms=_timestamp_ms(msg.get("timestamp")),
        type=mtype,
        content=render_content(mtype, msg),
        phone=phone,
        user_id=user_id,
        contact_name=names.get(key) or (names.get(user_id) if user_id else None),
        context_id=_str(context, "id") or _str(msg.get("reaction"), "message_id"),
    )


def _status(status: Any, where: str) -> StatusUpdate:
    if not isinstance(status, dict):
        raise PayloadError(f"{where} must be an object")
    errors = status.get("errors")
    first_error = errors[0] if isinstance(errors, list) and errors else None
    return StatusUpdate(
        message_id=_ident(status, "id", where),
        status=_ident(status, "status", where),
        timestamp_ms=_timestamp_ms(status.get("timestamp")),
        recipient=_str(status, "recipient_id") or _str(status, "recipient_user_id"),
        error=_error_text(first_error) if isinstance(first_error, dict) else None,
        callback_data=_str(status, "biz_opaque_callback_data"),
    )


def _error_text(error: Mapping[str, Any]) -> str:
    code = _str(error, "code") or "?"
    title = _str(error, "title") or _str(error, "message") or "error"
    details = _str(error.get("error_data"), "details")
    return f"{code}: {title}" + (f" ({details})" if details else "")


def _join(*parts: str | None) -> str:
    return " ".join(p for p in parts if p)


def _media(label: str) -> Callable[[Mapping[str, Any]], str]:
    def render(body: Mapping[str, Any]) -> str:
        return _join(f"[{label}]", _str(body, "filename"), _str(body, "caption"))

    return render


def _audio(body: Mapping[str, Any]) -> str:
    return "[voice]" if body.get("voice") is True else "[audio]"


def _location(body: Mapping[str, Any]) -> str:
    lat, lon = _str(body, "latitude"), _str(body, "longitude")
    coords = f"{lat},{lon}" if lat and lon else None
    return _join("[location]", coords, _str(body, "name"), _str(body, "address"))


def _interactive(body: Mapping[str, Any]) -> str:
    for kind in ("button_reply", "list_reply"):
        reply = body.get(kind)
        if isinstance(reply, dict):
            return _str(reply, "title") or _str(reply, "id") or f"[{kind}]"
    flow = body.get("nfm_reply")
    if isinstance(flow, dict):
        return _join("[form]", _str(flow, "body") or _str(flow, "name"))
    return "[interactive]"


def _button(body: Mapping[str, Any]) -> str:
    return _str(body, "text") or _str(body, "payload") or "[button]"


def _reaction(body: Mapping[str, Any]) -> str:
    emoji = _str(body, "emoji")
    return f"[reaction] {emoji}" if emoji else "[reaction removed]"


def _order(body: Mapping[str, Any]) -> str:
    items = body.get("product_items")
    lines = []
    if isinstance(items, list):
        for item in items:
            if isinstance(item, dict):
                qty, pid = _str(item, "quantity") or "1", _str(item, "product_retailer_id") or "?"
                price, cur = _str(item, "item_price"), _str(item, "currency")
                lines.append(
                    _join(f"{qty}x {pid}", f"@ {price} {cur or ''}".strip() if price else None)
                )
    return _join(f"[order] {len(lines)} item(s):", "; ".join(lines), _str(body, "text"))


def _contacts(body: Any) -> str:
    people = []
    for contact in body if isinstance(body, list) else []:
        if not isinstance(contact, dict):
            continue
        name = _str(contact.get("name"), "formatted_name") or _str(
            contact.get("name"), "first_name"
        )
        phones = contact.get("phones")
        phone = _str(phones[0], "phone") if isinstance(phones, list) and phones else None
        people.append(_join(name, f"({phone})" if phone else None) or "?")
    return _join("[contacts]", ", ".join(people))


def _system(body: Mapping[str, Any]) -> str:
    return _join("[system]", _str(body, "body") or _str(body, "type"))


RENDERERS: dict[str, Callable[[Mapping[str, Any]], str]] = {
    "text": lambda b: _str(b, "body") or "",
    "image": _media("image"),
    "video": _media("video"),
    "document": _media("document"),
    "sticker": _media("sticker"),
    "audio": _audio,
    "location": _location,
    "interactive": _interactive,
    "button": _button,
    "reaction": _reaction,
    "order": _order,
    "system": _system,
}


def render_content(mtype: str, msg: Mapping[str, Any]) -> str:
    """Readable text for one message, e.g. `[image] caption` or a button's title."""
    if mtype == "contacts":
        return _contacts(msg.get("contacts"))
    renderer = RENDERERS.get(mtype)
    body = msg.get(mtype)
    if renderer is not None and isinstance(body, dict):
        return renderer(body)
    errors = msg.get("errors")
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        return f"[{mtype}] {_error_text(errors[0])}"
    return f"[{mtype}]"
