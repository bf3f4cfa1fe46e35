"""`sessions-admin list/show` say whether WhatsApp's 24-hour window is open, and until when."""

from __future__ import annotations

import time

from admin import render
from bridge.conversations import ConversationView, Message


def view(last_user_ms: int | None) -> ConversationView:
    return ConversationView(
        key="34600000001",
        messages=(Message("user", "hola", last_user_ms or 0),),
        first_interaction=last_user_ms or 0,
        last_activity=last_user_ms or 0,
        last_user_message=last_user_ms,
        contact_name=None,
    )


def test_window_open_for_a_recent_message_and_closed_after_24_hours() -> None:
    now = int(time.time() * 1000)
    recent, old = view(now - 3600_000), view(now - 25 * 3600_000)
    assert render.conversation_summary(recent)["windowOpen"] is True
    assert render.conversation_summary(recent)["windowUntil"] == now - 3600_000 + 24 * 3600_000
    assert render.conversation_summary(old)["windowOpen"] is False
    assert render.window_text(recent).startswith("open until ")
    assert render.window_text(old).startswith("closed since ")
    assert render.window_text(view(None)) == "never opened"
    assert "24-hour window open until" in render.conversation_text(recent)
    assert "24-HOUR WINDOW" in render.list_table([recent, old])
