"""Prometheus metrics: counters and histograms of the message path, gauges read from state.

Each app gets its own registry (not prometheus_client's global one), so several bridges in one
process (tests, one process serving many profiles) never collide. Gauges of what is in memory
are computed at scrape time from the live state instead of being kept in sync by hand.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bridge.conversations import ASSISTANT, MODES
from bridge.ops import logs
from bridge.ops.diskspace import disk_space
from bridge.ops.loopwatch import LoopWatch
from bridge.state import State
from bridge.templates import Template
from bridge.whatsapp.sender import OutboundMedia, Sender, SendError

PREFIX = "whatsapp_bridge"
FAST = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
SLOW = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Children:
    """A labelled metric's children, each looked up once: prometheus_client's `labels()`
    validates its arguments and takes a lock on every call, which the message path would
    pay several times per delivery."""

    def __init__(self, metric: Counter | Histogram) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.deliveries = Counter(
            f"{PREFIX}_deliveries", "Webhook POSTs by outcome", ["outcome"], registry=r
        )
        self.webhook_seconds = Histogram(
            f"{PREFIX}_webhook_seconds", "Webhook POST handling time", buckets=FAST, registry=r
        )
        self.messages = Counter(
            f"{PREFIX}_messages_recorded", "New user messages recorded", ["profile"], registry=r
        )
        self.duplicates = Counter(
            f"{PREFIX}_duplicates",
            "Redelivered messages acknowledged again",
            ["profile"],
            registry=r,
        )
        self.statuses = Counter(
            f"{PREFIX}_statuses", "Status webhooks by state", ["profile", "status"], registry=r
        )
        self.skipped = Counter(
            f"{PREFIX}_skipped",
            "Parts of deliveries that could not be recorded (no sender, no id, wrong shape)",
            ["what", "reason"],
            registry=r,
        )
        self.commit_seconds = Histogram(
            f"{PREFIX}_commit_seconds",
            "Time to make a delivery durable (journal group commit incl. fsync)",
            ["profile"],
            buckets=FAST,
            registry=r,
        )
        self.assistant_seconds = Histogram(
            f"{PREFIX}_assistant_seconds",
            "Assistant reply latency",
            ["profile"],
            buckets=SLOW,
            registry=r,
        )
        self.assistant_failures = Counter(
            f"{PREFIX}_assistant_failures",
            "Assistant calls that failed or timed out",
            ["profile"],
            registry=r,
        )
        self.sends = Counter(
            f"{PREFIX}_sends",
            "Graph API send attempts by result and error code",
            ["profile", "result", "code"],
            registry=r,
        )
        self.snapshot_seconds = Histogram(
            f"{PREFIX}_snapshot_seconds", "Snapshot duration", ["profile"], buckets=SLOW, registry=r
        )
        self.connections = Gauge(
            f"{PREFIX}_connections", "Open HTTP connections (bridge serve)", registry=r
        )
        self.connections_dropped = Counter(
            f"{PREFIX}_connections_dropped",
            "HTTP connections closed by the bridge: header_timeout (no complete request head in "
            "time, or idle), body_timeout, evicted (room for a new one at the cap), refused",
            ["reason"],
            registry=r,
        )
        self.handoff_requests = Counter(
            f"{PREFIX}_handoff_requests",
            "Users who asked for a person (a handoff keyword that paused their conversation)",
            ["profile"],
            registry=r,
        )
        self.keywords = Counter(
            f"{PREFIX}_keywords",
            "Keywords that changed a conversation's mode (handoff, opt_out, opt_in)",
            ["profile", "kind"],
            registry=r,
        )
        self.operator_actions = Counter(
            f"{PREFIX}_operator_actions",
            "Operator actions (pause, resume, send, delete) by any way (API, console, CLI)",
            ["profile", "action"],
            registry=r,
        )
        self.media_downloads = Counter(
            f"{PREFIX}_media_downloads",
            "Inbound media fetched: result `stored`, else why it failed for good "
            "(too_large, digest_mismatch, not_found, ...)",
            ["profile", "result"],
            registry=r,
        )
        self.media_bytes = Counter(
            f"{PREFIX}_media_bytes", "Bytes of inbound media stored", ["profile"], registry=r
        )
        self.transcription_seconds = Histogram(
            f"{PREFIX}_transcription_seconds",
            "Transcription latency (the server's answer)",
            ["profile"],
            buckets=SLOW,
            registry=r,
        )
        self.transcription_failures = Counter(
            f"{PREFIX}_transcription_failures",
            "Voice notes and audio left without a transcript",
            ["profile"],
            registry=r,
        )
        self.loop = LoopWatch(r)
        r.register(LogCollector())
        # Pre-bound children of the metrics the message path counts on every delivery.
        self.deliveries_by = Children(self.deliveries)
        self.messages_by = Children(self.messages)
        self.duplicates_by = Children(self.duplicates)
        self.statuses_by = Children(self.statuses)
        self.sends_by = Children(self.sends)

    def watch(
        self,
        profiles: Callable[[], Mapping[str, Watched]],
        store_bytes: Callable[[], Mapping[str, int]] = dict,
    ) -> None:
        """Expose in-memory sizes (conversations, messages, outbox) and each profile's free
        disk, computed at scrape time, and its bytes on disk as last measured."""
        self.registry.register(StateCollector(profiles, store_bytes))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class Watched(NamedTuple):
    """What the state gauges read of a profile: its state in memory and its directory. (Not
    the runtime itself: the runtime imports this module for its metrics.)"""

    state: State
    state_dir: Path


class StateCollector(Collector):
    def __init__(
        self,
        profiles: Callable[[], Mapping[str, Watched]],
        store_bytes: Callable[[], Mapping[str, int]],
    ) -> None:
        self._profiles = profiles
        self._store_bytes = store_bytes

    def collect(self) -> Iterable[Metric]:
        convs = GaugeMetricFamily(
            f"{PREFIX}_conversations", "Conversations in memory", labels=["profile"]
        )
        msgs = GaugeMetricFamily(f"{PREFIX}_messages", "Messages in memory", labels=["profile"])
        outbox = GaugeMetricFamily(
            f"{PREFIX}_outbox", "Replies waiting to be sent", labels=["profile"]
        )
        modes = GaugeMetricFamily(
            f"{PREFIX}_conversation_modes",
            "Conversations by mode: assistant, paused (a person handles it), opted_out",
            labels=["profile", "mode"],
        )
        now = int(time.time() * 1000)
        media = GaugeMetricFamily(
            f"{PREFIX}_media_pending",
            "Inbound media whose download or transcription is still to do",
            labels=["profile"],
        )
        free = GaugeMetricFamily(
            f"{PREFIX}_disk_free_bytes",
            "Bytes an unprivileged process may still write on the file system of the profile's "
            "state",
            labels=["profile"],
        )
        total = GaugeMetricFamily(
            f"{PREFIX}_disk_size_bytes",
            "Size of the file system of the profile's state",
            labels=["profile"],
        )
        stored = GaugeMetricFamily(
            f"{PREFIX}_store_bytes",
            "Bytes under the profile's state directory (store, backups, everything), as the "
            "health monitor last measured them",
            labels=["profile"],
        )
        sizes = self._store_bytes()
        for slug, (state, state_dir) in self._profiles().items():
            convs.add_metric([slug], len(state.conversations))
            msgs.add_metric([slug], state.message_count())
            outbox.add_metric([slug], len(state.outbox))
            try:
                space = disk_space(state_dir)
            except OSError:
                pass  # no number rather than a wrong one
            else:
                free.add_metric([slug], space.free)
                total.add_metric([slug], space.total)
            if slug in sizes:
                stored.add_metric([slug], sizes[slug])
            counts = dict.fromkeys(MODES, 0)
            for conv in state.conversations.values():
                counts[ASSISTANT if conv.mode is None else conv.mode.current(now)] += 1
            for mode, count in counts.items():
                modes.add_metric([slug, mode], count)
            media.add_metric([slug], len(state.media_jobs))
        return [convs, msgs, outbox, modes, media, free, total, stored]


class LogCollector(Collector):
    """Log lines lost to a failing log stream (full disk, closed pipe): logging never fails the
    code that logs, so this counter is where such a failure shows."""

    def collect(self) -> Iterable[Metric]:
        lost = CounterMetricFamily(
            f"{PREFIX}_log_lines_lost", "Log lines that could not be written"
        )
        lost.add_metric([], logs.lost_lines())
        return [lost]


class MeteredSender(Sender):
    """Counts every send attempt by result and Graph error code, around any Sender."""

    def __init__(self, inner: Sender, metrics: Metrics, profile: str) -> None:
        self._inner = inner
        self._failed = metrics.sends_by  # children by (profile, "error", code), looked up once
        self._profile = profile
        self._ok = metrics.sends_by(profile, "ok", "")
        self.outcome = inner.outcome

        self.confirms_by_status = inner.confirms_by_status
        self.timeout = inner.timeout

    @property
    def inner(self) -> Sender:
        return self._inner

    async def send_text(
        self, to: str, text: str, skip_parts: int = 0, tag: str | None = None
    ) -> list[str]:
        return await self._counted(self._inner.send_text(to, text, skip_parts, tag))

    async def send_media(
        self, to: str, media: OutboundMedia, index: int, tag: str | None = None
    ) -> list[str]:
        return await self._counted(self._inner.send_media(to, media, index, tag))

    async def send_template(
        self, to: str, template: Template, index: int = 0, tag: str | None = None
    ) -> list[str]:
        return await self._counted(self._inner.send_template(to, template, index, tag))

    async def _counted(self, send: Awaitable[list[str]]) -> list[str]:
        """One send, counted as ok or as an error with Graph's code."""
        try:
            ids = await send
        except SendError as exc:
            self._failed(self._profile, "error", str(exc.code or "none")).inc()
            raise
        self._ok.inc()
        return ids

    async def mark_read(self, message_id: str) -> None:
        await self._inner.mark_read(message_id)

    async def close(self) -> None:
        await self._inner.close()


class Timer:
    """`with Timer(histogram.labels(...)):` without prometheus' decorator magic."""

    def __init__(self, observe: Callable[[float], None]) -> None:
        self._observe = observe
        self._start = 0.0

    def __enter__(self) -> Timer:
        self._start = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        self._observe(time.monotonic() - self._start)
