"""Sum up py-spy's collapsed stacks (`--format raw`): the functions with the most samples, by
their own time and including what they call.

Usage: python -m tests.bench.profile_top FILE [--top 25] [--thread MainThread]
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

# py-spy's frame: "function (path/to/file.py:line)"; the line is dropped to sum per function.
FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]*)(?::\d+)?\)$")


def short(frame: str) -> str:
    found = FRAME.match(frame)
    if not found:
        return frame
    path = found["file"]
    for marker in ("site-packages/", "lib/python3.11/", "wt-perf/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{found['func']} ({path})"


def summarize(text: str, thread: str | None) -> tuple[int, Counter[str], Counter[str]]:
    total = 0
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = stack.split(";")
        if thread is not None and thread not in frames[0]:
            continue
        count = int(count_text)
        total += count
        names = [short(f) for f in frames[1:]] or [frames[0]]
        own[names[-1]] += count
        for name in set(names):
            inclusive[name] += count
    return total, own, inclusive


# Where a sample's time goes: the first part with one of its frames in the stack. A
# coroutine resumed by the loop's C code shows only its own frames, so each part lists the
# frames its coroutines start from as well as its entry point.
PARTS = (
    ("journal thread", ("_worker (concurrent/futures/thread.py",)),
    ("log writer thread", ("LineSink._drain",)),
    (
        "webhook (HTTP in, verify, parse, commit, 200)",
        (
            "bridge/http/webhook_protocol.py",
            "receive_delivery (bridge/http/webhook.py",
            "answer_delivery (bridge/http/webhook.py",
            "Ingestor.",
            "GuardedConnection.",
        ),
    ),
    ("replier", ("Replier.",)),
    ("outbox (send, HTTP out)", ("Outbox.", "GraphClient.", "bridge/http/client.py")),
    ("journal writer (loop side)", ("Journal._run", "Journal._commit")),
    ("metrics scrape", ("Metrics.render",)),
)


def parts(text: str) -> Counter[str]:
    """Samples per part of the bridge (PARTS; the rest is the loop and aiohttp's protocol)."""
    out: Counter[str] = Counter()
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        part = next(
            (name for name, frames in PARTS if any(f in stack for f in frames)),
            "loop, HTTP protocol, other",
        )
        out[part] += int(count_text)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("file", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--thread", help="only stacks of threads whose name contains this")
    args = parser.parse_args()
    total, own, inclusive = summarize(args.file.read_text(), args.thread)
    print(f"{total} samples")
    for name, count in parts(args.file.read_text()).most_common():
        print(f"{100 * count / total:5.1f}%  {name}")
    for title, table in (("own time", own), ("including callees", inclusive)):
        print(f"\n{title}:")
        for name, count in table.most_common(args.top):
            print(f"{100 * count / total:5.1f}%  {name}")


if __name__ == "__main__":
    main()
