"""`sessions-admin pause | resume | send`: the operator actions of bridge/operators.py.

They write through the same code the HTTP API runs. While a bridge runs they go to it over
its control channel (bridge/control/handoff.py) and a message sent goes out at once; on a
stopped bridge they write to the store directly (journaled; a message sent goes out when the
bridge starts). Either way the store has one writer. With the PostgreSQL store they write to
the database directly, live (admin/database.py), and a running replica sends a queued
message within about 15 s (it waits to be sure no dead replica sent it).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from typing import Any, TypeVar

from admin import render, writer
from admin.arguments import UsageError
from admin.store import resolve_profile
from bridge.config import ProfileConfig
from bridge.operators import iso, now_ms
from bridge.whatsapp.template import TemplateError, build_template

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
    request: dict[str, Any] = {"key": args.key, "who": args.operator, "why": args.reason}
    if duration:
        request["until_ms"] = now_ms() + duration
    data = _perform(profile, "pause", request, args)
    if args.json:
        render.emit_json(data)
    else:
        print(f"conversation {data['key']} of profile {profile.slug!r}: {_mode_line(data)}")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    profile = resolve_profile(args)
    request = {"key": args.key, "who": args.operator, "why": args.reason}
    data = _perform(profile, "resume", request, args)
    if args.json:
        render.emit_json(data)
    else:
        already = "" if data["changed"] else " (it already was)"
        print(
            f"conversation {data['key']} of profile {profile.slug!r}: the assistant answers "
            f"new messages again{already}"
        )
    return 0


def send_request(args: argparse.Namespace) -> dict[str, Any]:
    """The control request of `send`: a text, or `--template NAME --lang CODE --param V...`
    (checked here too, so a mistake is a usage error before anything is contacted)."""
    request: dict[str, Any] = {"key": args.key, "who": args.operator}
    if args.template is None:
        if args.lang is not None or args.params:
            raise UsageError("--lang and --param go with --template NAME")
        if args.text is None:
            raise UsageError("send needs the message TEXT, or --template NAME --lang CODE")
        request["text"] = args.text
        return request
    if args.text is not None:
        raise UsageError("send either a TEXT or a --template, not both")
    if args.lang is None:
        raise UsageError(
            "--template needs --lang CODE: the language the template was approved in "
            "(es, en_US, pt_BR)"
        )
    try:
        template = build_template(args.template, args.lang, args.params)
    except TemplateError as exc:
        raise UsageError(str(exc)) from None
    request["template"] = template.to_dict()
    return request


def cmd_send(args: argparse.Namespace) -> int:
    request = send_request(args)
    profile = resolve_profile(args)
    data = _perform(profile, "send", request, args)
    if args.json:
        render.emit_json(data)
    else:
        if data.get("shared"):  # the PostgreSQL store: replicas take queued replies over
            when = "a running replica sends it within about 15 s"
        elif data.get("running"):
            when = "the bridge sends it now"
        else:
            when = "sent when the bridge starts"
        print(
            f"queued message {data['id']} to {data['key']} (profile {profile.slug!r}); "
            f"{when}. Conversation: {_mode_line(data)}"
        )
    return 0


def _perform(
    profile: ProfileConfig, op: str, request: dict[str, Any], args: argparse.Namespace
) -> dict[str, Any]:
    """Through the running bridge, or on the stopped store: one writer either way."""
    (result,) = writer.perform(profile, op, [request], getattr(args, "timeout", None) or 15.0)
    return dict(result)


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
        "queue a message written by a person, or an approved template (--template); the "
        "running bridge sends it at once, else when it starts (with the postgres store: a "
        "running replica, within about 15 s); pauses the conversation for the profile's "
        "handoff_minutes",
        cmd_send,
    )
    p.add_argument("key", help=key_help)
    p.add_argument("text", nargs="?", help="the message (free text: within the 24-hour window)")
    p.add_argument(
        "--template",
        metavar="NAME",
        help="send this approved template instead of a text (allowed after the 24-hour window)",
    )
    p.add_argument("--lang", metavar="CODE", help="the template's language code: es, en_US, pt_BR")
    p.add_argument(
        "--param",
        dest="params",
        action="append",
        default=[],
        metavar="VALUE",
        help="a body parameter of the template ({{1}}, {{2}}, ... in order; repeat it)",
    )
    p.add_argument(
        "--as",
        dest="operator",
        default="cli",
        metavar="NAME",
        help="who writes (kept on the message; default cli)",
    )
