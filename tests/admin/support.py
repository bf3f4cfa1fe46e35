"""Running `sessions-admin` as an operator does: a subprocess with its own environment."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ADMIN = [sys.executable, "-m", "admin"]
DAY_MS = 24 * 3600 * 1000


def admin(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ADMIN + args, env=env, capture_output=True, text=True, timeout=60, check=False
    )


def admin_json(args: list[str], env: dict[str, str]) -> Any:
    result = admin([*args, "--json"], env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def now_ms() -> int:
    return int(time.time() * 1000)


def seed_conversation(key: str, count: int, start_ms: int) -> list[Any]:
    """One `[key, conversation]` pair of the old system's sessions.json: `count` messages,
    user and assistant in turn, one second apart from `start_ms`."""
    messages = [
        {
            "role": "user" if i % 2 == 0 else "assistant",
            "content": f"{key} message {i}",
            "timestamp": start_ms + i * 1000,
        }
        for i in range(count)
    ]
    return [
        key,
        {
            "messages": messages,
            "lastActivity": start_ms + (count - 1) * 1000,
            "firstInteraction": start_ms,
        },
    ]


def write_seed(path: Path, pairs: list[Any]) -> Path:
    path.write_text(json.dumps(pairs))
    return path
