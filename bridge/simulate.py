"""`bridge simulate`: sign and post a realistic delivery, as Meta would, to a running bridge.

The builders here make Meta-shaped payloads (the webhook reference's "messages" field); the
tests and benchmarks use the same ones, so what we test is what the simulator sends.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from bridge.whatsapp import signature


def new_wamid() -> str:
    return "wamid.SIM" + secrets.token_hex(16).upper()


def text_message(
    text: str, sender: str, wamid: str | None = None, timestamp: int | None = None
) -> dict[str, Any]:
    return typed_message("text", {"body": text}, sender, wamid, timestamp)


def typed_message(
    mtype: str,
    body: Any,
    sender: str,
    wamid: str | None = None,
    timestamp: int | None = None,
) -> dict[str, Any]:
    """One message object of any type, e.g. `typed_message("image", {"caption": "hi"}, ...)`."""
    return {
        "from": sender,
        "id": wamid or new_wamid(),
        "timestamp": str(timestamp or int(time.time())),
        "type": mtype,
        mtype: body,
    }


def change_value(
    messages: list[dict[str, Any]] | None = None,
    statuses: list[dict[str, Any]] | None = None,
    phone_number_id: str = "100000000000001",
    names: dict[str, str] | None = None,
) -> dict[str, Any]:
    value: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550000000", "phone_number_id": phone_number_id},
    }
    if messages:
        senders = dict.fromkeys(m["from"] for m in messages if "from" in m)
        value["contacts"] = [
            {"profile": {"name": (names or {}).get(s, "WhatsApp User")}, "wa_id": s}
            for s in senders
        ]
        value["messages"] = messages
    if statuses:
        value["statuses"] = statuses
    return value


def delivery(*values: dict[str, Any], waba_id: str = "200000000000001") -> dict[str, Any]:
    """A whole webhook body: one entry with one `messages` change per value."""
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": waba_id, "changes": [{"value": v, "field": "messages"} for v in values]}],
    }


def status(
    wamid: str,
    state: str,
    recipient: str,
    error_code: int | None = None,
    callback_data: str | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": wamid,
        "status": state,
        "timestamp": str(int(time.time())),
        "recipient_id": recipient,
    }
    if callback_data is not None:
        out["biz_opaque_callback_data"] = callback_data
    if error_code is not None:
        out["errors"] = [{"code": error_code, "title": "error", "message": "error"}]
    return out


def encode(body: dict[str, Any]) -> bytes:
    return orjson.dumps(body)


def signed_headers(raw: bytes, app_secret: str) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-Hub-Signature-256": signature.sign(raw, app_secret),
    }


@dataclass(frozen=True, slots=True)
class PostResult:
    status: int
    body: str
    wamid: str


def simulated_text(
    text: str,
    phone: str | None,
    user_id: str | None,
    phone_number_id: str,
    name: str | None = None,
    wamid: str | None = None,
) -> dict[str, Any]:
    """A text delivery from a phone, a business-scoped user id, or both. Without `name` the
    contact card carries no profile name, so an existing conversation keeps its name."""
    message: dict[str, Any] = {
        "id": wamid or new_wamid(),
        "timestamp": str(int(time.time())),
        "type": "text",
        "text": {"body": text},
    }
    card: dict[str, Any] = {}
    if phone:
        message["from"] = card["wa_id"] = phone
    if user_id:
        message["from_user_id"] = card["user_id"] = user_id
    if name:
        card["profile"] = {"name": name}
    value = change_value(phone_number_id=phone_number_id)
    value["contacts"] = [card]
    value["messages"] = [message]
    return delivery(value)


async def post_text(
    url: str,
    app_secret: str,
    text: str,
    sender: str | None,
    phone_number_id: str,
    name: str | None = None,
    wamid: str | None = None,
    timeout: float = 10.0,
    user_id: str | None = None,
) -> PostResult:
    """Post one signed text delivery and return the bridge's answer."""
    body = simulated_text(text, sender, user_id, phone_number_id, name, wamid)
    message = body["entry"][0]["changes"][0]["value"]["messages"][0]
    raw = encode(body)
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
        session.post(url, data=raw, headers=signed_headers(raw, app_secret)) as resp,
    ):
        return PostResult(resp.status, await resp.text(), str(message["id"]))
