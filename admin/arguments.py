"""Checks of sessions-admin's argument values that argparse cannot make: a bad value is a
UsageError, exit 2 with one line saying what to give instead."""

from __future__ import annotations

import argparse
import re
from datetime import UTC, datetime

from bridge.errors import ConfigError

DAY_MS = 24 * 3600 * 1000


class UsageError(ConfigError):
    """Bad arguments: exit code 2."""


def check_timeout(args: argparse.Namespace) -> float:
    """--timeout of a write: how long a running bridge may stay silent."""
    timeout = float(args.timeout)
    if not 0 < timeout <= 86400:
        raise UsageError("--timeout must be more than 0 seconds (and at most a day)")
    return timeout


def parse_since(text: str, now_ms: int) -> int:
    """`7d`, `24h`, `30m` ago, or an ISO date/time (UTC), as ms since the epoch."""
    match = re.fullmatch(r"(\d+)([dhm])", text.strip())
    if match:
        unit = {"d": DAY_MS, "h": 3600_000, "m": 60_000}[match.group(2)]
        return now_ms - int(match.group(1)) * unit
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"--since {text!r}: use 7d, 24h, 30m or a date like 2026-11-01") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)
