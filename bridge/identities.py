"""Who a user is: conversation keys, phone numbers as people type them, business-scoped ids.

Meta identifies a WhatsApp user by phone (`wa_id`: digits, no `+`) and, since its username
rollout, by a business-scoped user id (BSUID, e.g. `US.13491208655302741918`: a country code,
a dot, digits). A conversation is keyed by the phone when Meta gives one, else by the user id.
"""

from __future__ import annotations

import re

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
