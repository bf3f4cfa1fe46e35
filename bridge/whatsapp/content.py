"""What one inbound message says: readable text for the history, and the structured fields.

Every message becomes two things (shapes from Meta's webhook reference, "messages" field):
- `content`: the text the assistant and an operator read, e.g. `[image] receipt`, a button's
  title, a flow's answers as `label: value` lines, `[ad: headline]` before the text;
- `extra`: a small JSON-able dict of what a program needs and the text cannot carry: reply
  ids and payloads, the ad a user came from (`referral`), the replied-to message
  (`context`), media ids, order items, a call-permission answer. Only keys with a value are
  set, so a text message has none.

Nothing here may raise on any JSON Meta (or anyone holding the app secret) sends: every field
is optional, every shape is checked, unknown types keep their raw type and a readable summary.
What is copied verbatim (an unknown type's body, a flow's answers) is bounded in depth and
size, so the record always serializes (orjson refuses nesting past 254 levels).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import orjson

Extra = dict[str, Any]
# What isinstance checks for a JSON object: dict first, since orjson makes dicts and the ABC
# check of Mapping alone costs more than the rest of a field lookup (parsing does hundreds).
MAPPING = (dict, Mapping)

# An unknown type's body is kept verbatim up to this size (serialized); larger ones are
# summarized only. Meta's message bodies are well under it.
MAX_RAW_BYTES = 4096
MAX_DEPTH = 8


# -- field access: optional parts never fail a message ----------------------------------------


def text(obj: Any, key: str) -> str | None:
    """A non-empty string field (numbers as text), else None."""
    if not isinstance(obj, MAPPING):
        return None
    value = obj.get(key)
    if value is None:  # most optional fields are absent: no type checks for them
        return None
    if isinstance(value, str):
        return value or None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def _flag(obj: Any, key: str) -> bool | None:
    value = obj.get(key) if isinstance(obj, MAPPING) else None
    return value if isinstance(value, bool) else None


def _scalar(obj: Any, key: str) -> str | int | float | bool | None:
    """A JSON scalar as sent (numbers stay numbers), else None."""
    value = obj.get(key) if isinstance(obj, MAPPING) else None
    if isinstance(value, str):
        return value or None
    if isinstance(value, bool | int | float):
        return value
    return None


def _strings(obj: Any, *keys: str) -> Extra:
    """The given fields that are non-empty strings (or numbers, as text)."""
    out: Extra = {}
    for key in keys:
        value = text(obj, key)
        if value is not None:
            out[key] = value
    return out


def _mapping(obj: Any, key: str) -> Mapping[str, Any]:
    value = obj.get(key) if isinstance(obj, MAPPING) else None
    return value if isinstance(value, MAPPING) else {}


def _items(obj: Any, key: str) -> list[Mapping[str, Any]]:
    value = obj.get(key) if isinstance(obj, MAPPING) else None
    return [v for v in value if isinstance(v, MAPPING)] if isinstance(value, list) else []


def _join(*parts: str | None, sep: str = " ") -> str:
    return sep.join(p for p in parts if p)


def bounded(value: Any, depth: int = 0) -> Any:
    """A copy of decoded JSON cut at MAX_DEPTH levels (deeper parts become None)."""
    if depth >= MAX_DEPTH:
        return None
    if isinstance(value, MAPPING):
        return {str(k): bounded(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [bounded(v, depth + 1) for v in value]
    return value


def _raw(value: Any) -> Any:
    """`value` verbatim when small enough to keep, else None."""
    kept = bounded(value)
    try:
        size = len(orjson.dumps(kept))
    except (TypeError, orjson.JSONEncodeError):
        return None
    return kept if size <= MAX_RAW_BYTES else None


# -- errors -----------------------------------------------------------------------------------


def error_text(error: Mapping[str, Any]) -> str:
    """`code: title (details)`, as Meta's error objects carry them."""
    code = text(error, "code") or "?"
    title = text(error, "title") or text(error, "message") or "error"
    details = text(_mapping(error, "error_data"), "details")
    return f"{code}: {title}" + (f" ({details})" if details else "")


def _errors(msg: Mapping[str, Any]) -> list[Extra]:
    out = []
    for error in _items(msg, "errors"):
        item = _strings(error, "code", "title", "message")
        details = text(_mapping(error, "error_data"), "details")
        if details:
            item["details"] = details
        out.append(item)
    return out


# -- one renderer per type: (type body, whole message) -> (content, extra) ------------------

Rendered = tuple[str, Extra]


def _text(body: Mapping[str, Any], msg: Mapping[str, Any]) -> Rendered:
    return text(body, "body") or "", {}


def _media(label: str) -> Callable[[Mapping[str, Any], Mapping[str, Any]], Rendered]:
    def render(body: Mapping[str, Any], msg: Mapping[str, Any]) -> Rendered:
        # The caption too, although `content` holds it: a backend that gets the file
        # (bridge/assistants/, `send_media`) gets its caption beside it.
        media = _strings(body, "id", "mime_type", "sha256", "filename", "caption", "url")
        for flag in ("voice", "animated"):
            value = _flag(body, flag)
            if value is not None:
                media[flag] = value
        if label == "audio":
            head = "[voice]" if body.get("voice") is True else "[audio]"
        else:
            head = f"[{label}]"
        content = _join(head, text(body, "filename"), text(body, "caption"))
        return content, {"media": media} if media else {}

    return render


def _location(body: Mapping[str, Any], msg: Mapping[str, Any]) -> Rendered:
    lat, lon = text(body, "latitude"), text(body, "longitude")
    coords = f"{lat},{lon}" if lat and lon else None
    content = _join(
        "[location]", coords, text(body, "name"), text(body, "address"), text(body, "url")
    )
    place: Extra = {}
    for key in ("latitude", "longitude", "name", "address", "url"):
        value = _scalar(body, key)
        if value is not None and not isinstance(value, bool):
            place[key] = value
    return content, {"location": place} if place else {}


def _contact_card(card: Mapping[str, Any]) -> Extra:
    name = _mapping(card, "name")
    out: Extra = {}
    formatted = text(name, "formatted_name") or _join(
        text(name, "first_name"), text(name, "last_name")
    )
    if formatted:
        out["name"] = formatted
    for key, fields in (
        ("phones", ("phone", "wa_id", "type")),
        ("emails", ("email", "type")),
        ("urls", ("url", "type")),
    ):
        values = [v for v in (_strings(i, *fields) for i in _items(card, key)) if v]
        if values:
            out[key] = values
    org = _strings(_mapping(card, "org"), "company", "department", "title")
    if org:
        out["org"] = org
    birthday = text(card, "birthday")
    if birthday:
        out["birthday"] = birthday
    return out


def _contacts(body: Any, msg: Mapping[str, Any]) -> Rendered:
    cards = [_contact_card(c) for c in _items(msg, "contacts")]
    people = []
    for card in cards:
        details = [p["phone"] for p in card.get("phones", []) if "phone" in p]
        details += [e["email"] for e in card.get("emails", []) if "email" in e]
        company = card.get("org", {}).get("company")
        if company:
            details.append(company)
        people.append(
            _join(card.get("name"), f"({', '.join(details)})" if details else None) or "?"
        )
    content = _join("[contacts]", ", ".join(people))
    return content, {"contacts": cards} if cards else {}


_SCREEN_PREFIX = re.compile(r"^screen_\d+_")
_INDEX_SUFFIX = re.compile(r"_\d+$")


def _label(key: str) -> str:
    """A flow field's name as a label: `screen_0_Rate_us_1` -> `Rate us`."""
    label = _INDEX_SUFFIX.sub("", _SCREEN_PREFIX.sub("", key)).replace("_", " ").strip()
    return label or key


def _answer(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str | int | float):
        return str(value)
    if isinstance(value, list):
        return ", ".join(a for a in (_answer(v) for v in value) if a)
    if isinstance(value, MAPPING):
        return "; ".join(f"{_label(str(k))}: {_answer(v)}" for k, v in value.items())
    return ""


def _flow(reply: Mapping[str, Any]) -> Rendered:
    """A WhatsApp Flow's answers (`nfm_reply`): `response_json` is a JSON string of the
    submitted fields plus the `flow_token`; each answer becomes a `label: value` line."""
    flow = _strings(reply, "name", "body")
    raw = reply.get("response_json")
    response: Any = raw
    if isinstance(raw, str):
        try:
            response = orjson.loads(raw)
        except orjson.JSONDecodeError:
            response = raw
    lines = []
    if isinstance(response, MAPPING):
        response = bounded(response)
        for key, value in response.items():
            answer = _answer(value)
            if key != "flow_token" and answer:
                lines.append(f"{_label(key)}: {answer}")
    if response is not None:
        flow["response"] = response if isinstance(response, MAPPING) else _raw(response)
    head = _join("[form]", text(reply, "body") or text(reply, "name"))
    return "\n".join([head, *lines]), {"flow": flow}


def _call_permission(reply: Mapping[str, Any]) -> Rendered:
    answer: Extra = _strings(reply, "response", "response_source", "expiration_timestamp")
    permanent = _flag(reply, "is_permanent")
    if permanent is not None:
        answer["is_permanent"] = permanent
    response = answer.get("response")
    said = {"accept": "accepted", "reject": "rejected"}.get(response or "", response)
    content = _join("[call permission]", said, "(permanent)" if permanent else None)
    return content, {"call_permission": answer}


def _interactive(body: Mapping[str, Any], msg: Mapping[str, Any]) -> Rendered:
    kind = text(body, "type")
    for name in ("button_reply", "list_reply"):
        reply = body.get(name)
        if isinstance(reply, MAPPING) and kind in (None, name):
            fields = _strings(reply, "id", "title", "description")
            content = _join(
                fields.get("title") or fields.get("id") or f"[{name}]",
                fields.get("description"),
                sep=" — ",
            )
            return content, {"reply": {"kind": name, **fields}}
    flow = body.get("nfm_reply")
    if isinstance(flow, MAPPING):
        return _flow(flow)
    permission = body.get("call_permission_reply")
    if isinstance(permission, MAPPING):
        return _call_permission(permission)
    # A subtype we do not know yet: its type, and any title it carries.
    sub = body.get(kind) if kind else None
    title = text(sub, "title") or text(sub, "body")
    return _join(f"[interactive: {kind}]" if kind else "[interactive]", title), (
        {"interactive": {"type": kind}} if kind else {}
    )


def _button(body: Mapping[str, Any], msg: Mapping[str, Any]) -> Rendered:
    """A template's quick-reply button: `payload` is what the business set, `text` the label."""
    fields = _strings(body, "payload", "text")
    content = fields.get("text") or fields.get("payload") or "[button]"
    return content, {"reply": {"kind": "quick_reply", **fields}} if fields else {}


def _reaction(body: Mapping[str, Any], msg: Mapping[str, Any]) -> Rendered:
    emoji = text(body, "emoji")
    content = f"[reaction] {emoji}" if emoji else "[reaction removed]"
    reaction = _strings(body, "message_id", "emoji")
    return content, {"reaction": reaction} if reaction else {}


def _order(body: Mapping[str, Any], msg: Mapping[str, Any]) -> Rendered:
    lines, items = [], []
    for item in _items(body, "product_items"):
        qty, pid = text(item, "quantity") or "1", text(item, "product_retailer_id") or "?"
        price, cur = text(item, "item_price"), text(item, "currency")
        lines.append(_join(f"{qty}x {pid}", f"@ {price} {cur or ''}".strip() if price else None))
        kept: Extra = {}
        for key in ("product_retailer_id", "quantity", "item_price", "currency"):
            value = _scalar(item, key)
            if value is not None and not isinstance(value, bool):
                kept[key] = value
        items.append(kept)
    content = _join(f"[order] {len(lines)} item(s):", "; ".join(lines), text(body, "text"))
    order = _strings(body, "catalog_id", "text")
    if items:
        order["items"] = items
    return content, {"order": order} if order else {}


def _system(body: Mapping[str, Any], msg: Mapping[str, Any]) -> Rendered:
    """Meta's notices about the user: a changed number (`new_wa_id`), a changed
    business-scoped user id (`user_id`), a changed identity."""
    content = _join("[system]", text(body, "body") or text(body, "type"))
    fields = _strings(
        body,
        "type",
        "body",
        "new_wa_id",
        "wa_id",
        "user_id",
        "parent_user_id",
        "previous_user_id",
        "identity",
        "customer",
    )
    return content, {"system": fields} if fields else {}


def _unsupported(body: Mapping[str, Any], msg: Mapping[str, Any]) -> Rendered:
    sub = text(body, "type")
    return (f"[unsupported: {sub}]" if sub else "[unsupported]"), (
        {"unsupported": {"type": sub}} if sub else {}
    )


def _edit(body: Mapping[str, Any], msg: Mapping[str, Any]) -> Rendered:
    """A user edited an earlier message (Coexistence numbers): the new version, with the
    original's id; the original entry stays as it was received."""
    inner = _mapping(body, "message")
    # One level only: an edit of an edit is not something Meta sends, and unbounded
    # recursion on crafted nesting would exhaust the stack.
    nested = text(inner, "type") == "edit"
    content, extra = describe_body(inner) if inner and not nested else ("", {})
    original = text(body, "original_message_id")
    if original:
        extra["edit"] = {"original_id": original}
    return _join("[edited]", content), extra


def _revoke(body: Mapping[str, Any], msg: Mapping[str, Any]) -> Rendered:
    original = text(body, "original_message_id")
    return "[deleted a message]", {"revoke": {"original_id": original}} if original else {}


RENDERERS: dict[str, Callable[[Mapping[str, Any], Mapping[str, Any]], Rendered]] = {
    "text": _text,
    "image": _media("image"),
    "video": _media("video"),
    "document": _media("document"),
    "sticker": _media("sticker"),
    "audio": _media("audio"),
    "location": _location,
    "interactive": _interactive,
    "button": _button,
    "reaction": _reaction,
    "order": _order,
    "system": _system,
    "unsupported": _unsupported,
    "edit": _edit,
    "revoke": _revoke,
}

# Fields an unknown type's summary is taken from, in order.
SUMMARY_FIELDS = ("body", "text", "caption", "title", "name", "description")


def _unknown(mtype: str, body: Any) -> Rendered:
    summary = next((s for s in (text(body, f) for f in SUMMARY_FIELDS) if s), None)
    raw = _raw(body) if body is not None else None
    return _join(f"[{mtype}]", summary), {"raw": raw} if raw is not None else {}


def describe_body(msg: Mapping[str, Any]) -> Rendered:
    """Content and extra of a message's type-specific part (and of its errors)."""
    mtype = text(msg, "type") or "unknown"
    body = msg.get(mtype)
    renderer = RENDERERS.get(mtype)
    if mtype == "contacts":
        content, extra = _contacts(body, msg)
    elif renderer is not None and (isinstance(body, MAPPING) or mtype == "unsupported"):
        content, extra = renderer(body if isinstance(body, MAPPING) else {}, msg)
    elif renderer is not None:
        content, extra = f"[{mtype}]", {}
    else:
        content, extra = _unknown(mtype, body)
    errors = _errors(msg)
    if errors:
        extra["errors"] = errors
        first = next(iter(_items(msg, "errors")))
        if content in (f"[{mtype}]", "") or mtype == "unsupported":
            content = _join(content or f"[{mtype}]", error_text(first))
    return content, extra


def _context(msg: Mapping[str, Any]) -> tuple[list[str], Extra]:
    """The replied-to or forwarded message, or the product a question is about."""
    context = _mapping(msg, "context")
    fields = _strings(context, "id", "from")
    labels = []
    for flag in ("forwarded", "frequently_forwarded"):
        if _flag(context, flag) is True:
            fields[flag] = True
    if fields.get("frequently_forwarded"):
        labels.append("[forwarded many times]")
    elif fields.get("forwarded"):
        labels.append("[forwarded]")
    product = _strings(_mapping(context, "referred_product"), "catalog_id", "product_retailer_id")
    if product:
        fields["referred_product"] = product
        labels.append(_join("[about product", product.get("product_retailer_id")) + "]")
    return labels, fields


REFERRAL_FIELDS = (
    "source_url",
    "source_id",
    "source_type",
    "headline",
    "body",
    "media_type",
    "image_url",
    "video_url",
    "thumbnail_url",
    "ctwa_clid",
)


def _referral(msg: Mapping[str, Any]) -> tuple[list[str], Extra]:
    """A click-to-WhatsApp ad or post the user came from: the assistant reads `[ad: headline]`
    and the program gets every field Meta sent (source, media urls, click id)."""
    raw = msg.get("referral")
    if not isinstance(raw, MAPPING):
        return [], {}
    fields = _strings(raw, *REFERRAL_FIELDS)
    welcome = text(_mapping(raw, "welcome_message"), "text")
    if welcome:
        fields["welcome_message"] = welcome
    if not fields:
        return [], {}
    kind = fields.get("source_type") if fields.get("source_type") in ("ad", "post") else "ad"
    headline = fields.get("headline")
    return [f"[{kind}: {headline}]" if headline else f"[{kind}]"], fields


def describe(msg: Mapping[str, Any]) -> tuple[str, str, Extra]:
    """(type, content, extra) of one inbound message object; never raises."""
    mtype = text(msg, "type") or "unknown"
    content, extra = describe_body(msg)
    ad_labels, referral = _referral(msg)
    context_labels, context = _context(msg)
    if referral:
        extra["referral"] = referral
    if context:
        extra["context"] = context
    group = text(msg, "group_id")
    if group:
        extra["group_id"] = group
    return mtype, _join(*ad_labels, *context_labels, content), extra
