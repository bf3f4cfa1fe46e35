"""The old system's plaintext sessions.json, read and checked whole before anything is imported.

Format: `[[key, {"messages": [{"role", "content", "timestamp" (ms)}, ...], ...}], ...]`, or
an object keyed by phone. Every entry is checked before a single record is written: one bad
message anywhere means nothing is imported, and the operator gets one line per problem
(a partial import followed by a traceback would leave them guessing what went in).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from bridge.conversations import Message
from bridge.errors import BridgeError, ConfigError

# A timestamp outside these years is not a time in milliseconds (seconds, a typo, 1e20).
EARLIEST_MS = int(datetime(2000, 1, 1, tzinfo=UTC).timestamp() * 1000)
LATEST_MS = int(datetime(2100, 1, 1, tzinfo=UTC).timestamp() * 1000)
MAX_SHOWN = 50  # problems listed; the rest are counted
MAX_KEY_LEN = 128


class SeedFileError(BridgeError):
    """A file that cannot be imported: its str() is a summary line, then one line a problem."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        shown = problems[:MAX_SHOWN]
        lines = [f"{path}: {len(problems)} problem(s), nothing was imported", *shown]
        if len(problems) > len(shown):
            lines.append(f"... and {len(problems) - len(shown)} more")
        super().__init__("\n".join(lines))
        self.problems = problems


def load_seed_file(path: Path) -> list[tuple[str, list[Message]]]:
    """Every conversation of the file as (key, messages); SeedFileError listing every problem."""
    try:
        data = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise ConfigError(f"no such file: {path}") from None  # a usage mistake: exit 2
    except OSError as exc:
        raise BridgeError(f"cannot read {path}: {exc.strerror}") from None
    except orjson.JSONDecodeError as exc:
        raise BridgeError(f"{path}: not valid JSON ({exc})") from None
    pairs = list(data.items()) if isinstance(data, dict) else data
    if not isinstance(pairs, list):
        raise BridgeError(f"{path}: expected a list of [key, conversation] pairs")
    problems: list[str] = []
    out: list[tuple[str, list[Message]]] = []
    seen_keys: set[str] = set()
    for index, pair in enumerate(pairs, start=1):
        where = f"{path}: entry {index}"
        if not (isinstance(pair, list | tuple) and len(pair) == 2):
            problems.append(f"{where}: not a [key, conversation] pair")
            continue
        key, conv = pair
        if not isinstance(key, str) or not key or len(key) > MAX_KEY_LEN:
            problems.append(f"{where}: the key must be a phone number or user id (a string)")
            continue
        where = f"{path}: conversation {key!r}"
        if key in seen_keys:
            problems.append(f"{where}: appears twice")
            continue
        seen_keys.add(key)
        raw = conv.get("messages", []) if isinstance(conv, dict) else None
        if not isinstance(raw, list):
            problems.append(f"{where}: expected an object with a list of messages")
            continue
        messages = []
        for number, item in enumerate(raw, start=1):
            parsed = _parse_message(item)
            if isinstance(parsed, Message):
                messages.append(parsed)
            else:
                problems.append(f"{where} message {number}: {parsed}")
        out.append((key, messages))
    if problems:
        raise SeedFileError(path, problems)
    return out


def _parse_message(item: Any) -> Message | str:
    """The message, or why `item` cannot be imported as one."""
    try:
        message = Message.from_dict(item)
    except ValueError as exc:
        return str(exc)
    if not EARLIEST_MS <= message.timestamp < LATEST_MS:
        return (
            f"timestamp {message.timestamp} is not a time in milliseconds between the years "
            "2000 and 2100"
        )
    return message
