"""Turn state into what an operator reads: terminal tables, or JSON for scripts."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from bridge.conversations import ConversationView, Message
from bridge.media.entry import duration_text, media_of
from bridge.modes import current_mode


def when(ms: int | None) -> str:
    """Milliseconds since the epoch as UTC, to the second."""
    if not ms:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain aligned table; the last column is left unpadded so long text can wrap."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    return "\n".join(lines)


def emit_json(data: Any) -> None:
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")


def conversation_summary(view: ConversationView) -> dict[str, Any]:
    return {
        "key": view.key,
        "name": view.contact_name,
        "messages": len(view.messages),
        "firstInteraction": view.first_interaction,
        "lastActivity": view.last_activity,
        "lastUserMessage": view.last_user_message,
        # WhatsApp's 24-hour window: free-form replies only until then, templates after.
        "windowOpen": view.window_open(int(time.time() * 1000)),
        "windowUntil": view.window_until,
        "mode": current_mode(view.mode, _now_ms()),
        "modeSet": view.mode.to_dict() if view.mode is not None else None,
    }


def window_text(view: ConversationView) -> str:
    until = view.window_until
    if until is None:
        return "never opened"
    if view.window_open(int(time.time() * 1000)):
        return f"open until {when(until)}"
    return f"closed since {when(until)}"


def _now_ms() -> int:
    return int(datetime.now(tz=UTC).timestamp() * 1000)


def mode_text(view: ConversationView) -> str:
    """`assistant`, `paused until <time>`, `paused`, `opted_out`: the mode in effect now."""
    mode = current_mode(view.mode, _now_ms())
    if mode == "paused" and view.mode is not None and view.mode.until_ms is not None:
        return f"paused until {when(view.mode.until_ms)}"
    return mode


def list_table(views: Sequence[ConversationView]) -> str:
    rows = [
        (
            v.key,
            v.contact_name or "-",
            len(v.messages),
            when(v.first_interaction),
            when(v.last_activity),
            mode_text(v),
            window_text(v),
        )
        for v in views
    ]
    return table(
        ("KEY", "NAME", "MESSAGES", "FIRST INTERACTION", "LAST ACTIVITY", "MODE", "24-HOUR WINDOW"),
        rows,
    )


def conversation_text(view: ConversationView) -> str:
    """The whole conversation, one entry per message: time, role, delivery state, full text
    (continuation lines of a multi-line message indented under it)."""
    head = [
        f"conversation {view.key}" + (f" ({view.contact_name})" if view.contact_name else ""),
        f"messages {len(view.messages)}, first {when(view.first_interaction)}, "
        f"last activity {when(view.last_activity)}, last user message {when(view.last_user_message)}",
        f"mode {mode_text(view)}"
        + (
            f" (set by {view.mode.by} {when(view.mode.at_ms)}"
            + (f": {view.mode.reason}" if view.mode.reason else "")
            + ")"
            if view.mode is not None
            else ""
        ),
        f"24-hour window {window_text(view)} (after it only a template reaches the user)",
        "",
    ]
    indent = " " * 31
    lines = []
    for m in view.messages:
        state = f" [{m.status}{': ' + m.error if m.error else ''}]" if m.status else ""
        first, *rest = (m.content or "").splitlines() or [""]
        operator = m.extra.get("operator") if m.extra and m.role == "assistant" else None
        role = f"{m.role} ({operator})" if operator else m.role
        lines.append(f"{when(m.timestamp)}  {role:<9}{state} {first}")
        lines.extend(indent + line for line in rest)
        media = media_line(m)
        if media:
            lines.append(indent + media)
    return "\n".join(head + lines)


def media_line(message: Message) -> str | None:
    """`media: audio/ogg, 48,213 bytes, 0:07, stored, transcribed (id wamid...)`: what an
    operator needs to judge a media entry and to get its file (`sessions-admin media`)."""
    media = media_of(message)
    if media is None:
        return None
    parts = [str(media.get("mime_type") or message.type or "media").split(";")[0]]
    if isinstance(media.get("size"), int):
        parts.append(f"{media['size']:,} bytes")
    if isinstance(media.get("duration_ms"), int):
        parts.append(duration_text(media["duration_ms"]))
    state = media.get("state")
    if state is None:
        parts.append("not fetched yet")
    elif state == "failed":
        parts.append(f"failed: {media.get('error', '?')}")
    else:
        parts.append(str(state))
    if "transcript" in media:
        parts.append("transcribed")
    elif "transcript_error" in media:
        parts.append(f"no transcript: {media['transcript_error']}")
    return f"media: {', '.join(parts)} (id {message.id})"


def terminal_progress(what: str) -> Callable[[int, int], None] | None:
    """A one-line progress counter on stderr, only when stderr is a terminal."""
    if not sys.stderr.isatty():
        return None

    def show(done: int, total: int) -> None:
        end = "\n" if done >= total else ""
        sys.stderr.write(f"\r{what}: {done:,}/{total:,} conversations{end}")
        sys.stderr.flush()

    return show
