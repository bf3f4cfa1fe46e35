"""`sessions-admin pause | resume | send`: the operator actions of bridge/operators.py.

They write to the store, through the same code the HTTP API runs. On a stopped bridge they
write directly (journaled; a message sent goes out when the bridge starts). While a bridge
runs, the store has one writer, the bridge: these commands then refuse, pointing to the API
and the console (they will go through the running bridge once it has a control channel).
"""

from __future__ import annotations

import argparse
import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from admin import render
from admin.commands import UsageError, report_settings, resolve_profile
from bridge.config import ProfileConfig
from bridge.errors import BridgeError, ProfileLockedError
from bridge.operators import Operators, iso, mode_json, now_ms
from bridge.persistence import layout
from bridge.store.durable import DurableStore

T = TypeVar("T")
UNITS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
DURATION = re.compile(r"(?:\d+[smhd])+")


def parse_duration(text: str) -> int:
    """`2h`, `90m`, `1h30m`, `45s`, `7d` as milliseconds."""
    value = text.strip().lower()
    if not DURATION.fullmatch(value):
        raise UsageError(f"--for {text!r}: use a duration like 2h, 90m, 1h30m, 45s or 7d")
    total = sum(int(n) * UNITS[u] for n, u in re.findall(r"(\d+)([smhd])", value))
    if total <= 0:
        raise UsageError("--for must be longer than 0")
    return total


def running_refusal(profile: ProfileConfig, pid: int | None) -> BridgeError:
    who = f" (pid {pid})" if pid else ""
    return BridgeError(
        f"the bridge is running for profile {profile.slug!r}{who}: while it runs, use the "
        "HTTP API (/api/v1) or the console (/console) for this; nothing was changed"
    )


def operate(profile: ProfileConfig, action: Callable[[Operators], Awaitable[T]]) -> T:
    """Run `action` on the store of a stopped bridge (the lock held meanwhile)."""
    pid = layout.lock_holder(profile.state_dir)
    if pid is not None:
        raise running_refusal(profile, pid)

    async def run() -> T:
        store = DurableStore(profile, enforce_settings=False)
        try:
            await store.open()  # takes the profile lock
        except ProfileLockedError:
            raise running_refusal(profile, layout.lock_holder(profile.state_dir)) from None
        try:
            report_settings(profile, store.state)
            return await action(Operators(store, profile))
        finally:
            await store.close()

    return asyncio.run(run())


def _mode_line(data: dict[str, Any]) -> str:
    mode = str(data["mode"])
    change = data.get("set") or {}
    if mode == "paused":
        until = change.get("until")
        return f"paused {'until ' + iso(until) if until else 'until resumed'}"
    return mode


def cmd_pause(args: argparse.Namespace) -> int:
    profile = resolve_profile(args)
    duration = parse_duration(args.duration) if args.duration else None
    outcome = operate(
        profile,
        lambda ops: ops.pause(
            args.key,
            until_ms=now_ms() + duration if duration else None,
            who=args.operator,
            why=args.reason,
        ),
    )
    data = outcome.to_json(now_ms())
    if args.json:
        render.emit_json(data)
    else:
        print(f"conversation {outcome.key} of profile {profile.slug!r}: {_mode_line(data)}")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    profile = resolve_profile(args)
    outcome = operate(profile, lambda ops: ops.resume(args.key, who=args.operator, why=args.reason))
    data = outcome.to_json(now_ms())
    if args.json:
        render.emit_json(data)
    else:
        already = "" if outcome.changed else " (it already was)"
        print(
            f"conversation {outcome.key} of profile {profile.slug!r}: the assistant answers "
            f"new messages again{already}"
        )
    return 0


def cmd_send(args: argparse.Namespace) -> int:
    profile = resolve_profile(args)
    outcome = operate(profile, lambda ops: ops.send(args.key, args.text, operator=args.operator))
    data = outcome.to_json(now_ms())
    if args.json:
        render.emit_json(data)
    else:
        print(
            f"queued message {outcome.id} to {outcome.key} (profile {profile.slug!r}); it is "
            f"sent when the bridge starts. Conversation: {_mode_line(mode_json(outcome.mode, now_ms()))}"
        )
    return 0


def add_commands(
    add: Callable[[str, str, Callable[[argparse.Namespace], int]], argparse.ArgumentParser],
    key_help: str,
) -> None:
    """Register pause, resume and send on the sessions-admin parser."""
    p = add(
        "pause",
        "a person takes over a conversation: the assistant stops answering it",
        cmd_pause,
    )
    p.add_argument("key", help=key_help)
    p.add_argument(
        "--for",
        dest="duration",
        metavar="DURATION",
        help="resume by itself after this long: 2h, 90m, 1h30m, 45s, 7d (default: until resumed)",
    )
    p.add_argument("--reason", help="why (kept with the change)")
    p.add_argument("--as", dest="operator", default="cli", metavar="NAME", help="who (default cli)")

    p = add("resume", "the assistant answers a conversation again", cmd_resume)
    p.add_argument("key", help=key_help)
    p.add_argument("--reason", help="why (kept with the change)")
    p.add_argument("--as", dest="operator", default="cli", metavar="NAME", help="who (default cli)")

    p = add(
        "send",
        "queue a message written by a person (sent when the bridge starts); pauses the "
        "conversation for the profile's handoff_minutes",
        cmd_send,
    )
    p.add_argument("key", help=key_help)
    p.add_argument("text", help="the message")
    p.add_argument(
        "--as",
        dest="operator",
        default="cli",
        metavar="NAME",
        help="who writes (kept on the message; default cli)",
    )
