"""Logging: structlog, JSON lines for journald, a readable console in a terminal.

Phone numbers are personal data: log them only through `mask`, and never log message text at
info level. Meta's message ids (wamids) are base64 that contain the sender's phone number, so
they are never logged either: every value of a `message_id`, `message_ids`, `wamid` or `wamids`
field is replaced by `log_id`, a short keyed hash (the same for the same wamid in every line,
across restarts and in `bridge log-id`, so lines still correlate).

A log line is never worth an outage: writing one must not break the code that logs (the
journal writer logs its own disk errors, and the log may sit on the disk that just filled).
The sink swallows write errors, counts the lines it lost (`lost_lines`, exported as
`whatsapp_bridge_log_lines_lost_total`) and, once writing works again, first writes one line
saying how many. A value the renderer cannot serialize gives a line of reprs, not an error.

A busy bridge writes a few lines per message, so the JSON path is built for speed: orjson
renders straight to bytes and each line is one `write(2)` on the stream's file descriptor (no
Python buffer that a failed write could leave stuck). `cache=True` (the server) lets each
logger resolve its configuration once; tests leave it off so `capture_logs` and later
`configure` calls still reach loggers created earlier.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import hashlib
import hmac
import logging
import queue
import secrets
import sys
import threading
import weakref
from collections.abc import Callable, MutableMapping, Sequence
from contextvars import ContextVar
from datetime import UTC, datetime
from os import write as _write_fd  # bound now: tests that patch os.write mean the journal's
from typing import Any

import orjson
import structlog

# Fields whose values are Meta message ids; `log_id` replaces them in every line.
WAMID_FIELDS = frozenset({"message_id", "message_ids", "wamid", "wamids"})
LOG_ID_HEX = 12  # 48 bits: unique enough to find a message's lines, too short to be an oracle
_LOG_ID_INFO = b"whatsapp-bridge log-id v1"


def mask(identifier: str | None) -> str:
    """`34600000001` -> `346*****001`: enough to tell users apart in logs, not to contact them."""
    if not identifier:
        return "-"
    if len(identifier) <= 6:
        return "*" * len(identifier)
    return identifier[:3] + "*" * (len(identifier) - 6) + identifier[-3:]


# --- log ids: wamids as short keyed hashes ---------------------------------------------------

# Per-profile hashing keys. A profile without one (a memory store: nothing survives a restart
# anyway) hashes with a key of this process.
_log_id_keys: dict[str, bytes] = {}
_process_log_id_key = secrets.token_bytes(32)


def log_id_key(keys: Sequence[bytes]) -> bytes:
    """The hashing key of a profile whose keyring holds `keys` (active first, oldest last).

    Derived from the oldest key (HMAC as a KDF, with its own label): it is the same for the
    bridge and every tool that can read the profile, survives restarts and `rotate-key` (which
    keeps old keys), and reveals nothing about the encryption key.
    """
    return hmac.new(keys[-1], _LOG_ID_INFO, hashlib.sha256).digest()


def set_log_id_key(profile: str, key: bytes) -> None:
    """From now on, hash `profile`'s wamids (lines bound to `profile=`) under `key`."""
    _log_id_keys[profile] = key


def log_id(wamid: str, profile: str | None = None, key: bytes | None = None) -> str:
    """What logs show instead of `wamid`: 12 hex digits of HMAC-SHA256 under the profile's key."""
    if key is None:
        key = _log_id_keys.get(profile or "", _process_log_id_key)
    digest = hmac.digest(key, wamid.encode("utf-8", "surrogatepass"), "sha256")
    return digest[: LOG_ID_HEX // 2].hex()


def _hash_wamids(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> Any:
    """Processor: replace message ids by their log ids, whichever call site logged them."""
    if WAMID_FIELDS.isdisjoint(event):  # most lines: no allocation, no hashing
        return event
    profile = event.get("profile")
    key = _log_id_keys.get(profile if isinstance(profile, str) else "", _process_log_id_key)
    for name in WAMID_FIELDS.intersection(event):
        value = event[name]
        if isinstance(value, str):
            event[name] = log_id(value, key=key)
        elif isinstance(value, list | tuple | set | frozenset):
            event[name] = [log_id(str(v), key=key) for v in value]
        elif value is not None:
            event[name] = log_id(str(value), key=key)
    return event


# --- the request id ----------------------------------------------------------------------------

# The webhook request being handled: every line logged meanwhile carries its id. One variable
# read per line, where structlog's merge_contextvars copies the whole context for every line.
REQUEST_ID: ContextVar[str | None] = ContextVar("bridge_request_id", default=None)


def _add_request_id(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> Any:
    request_id = REQUEST_ID.get()
    if request_id is not None:
        event.setdefault("request_id", request_id)
    return event


# --- the sink: writes whole lines, never raises ----------------------------------------------

_lost_total = 0  # lines lost since the process started (a Prometheus counter reads it)


def lost_lines() -> int:
    """How many log lines could not be written since the process started."""
    return _lost_total


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _json_notice(lost: int) -> bytes:
    return orjson.dumps(
        {"lost": lost, "event": "log_lines_lost", "level": "warning", "timestamp": _now()}
    )


def _console_notice(lost: int) -> bytes:
    return f"{_now()} [warning  ] log_lines_lost                 lost={lost}".encode()


class LineSink:
    """One line per `write`: to the stream's file descriptor when it has one, else to the stream.

    Errors (ENOSPC, EIO, EPIPE, a closed stream: OSError or ValueError) are swallowed and the
    line counted as lost. The first line written after a loss is preceded by a
    `log_lines_lost` line (and a newline, if the failure left half a line behind).

    In the server the lines go through a thread of their own (`background`). A write to a
    log file can block for tens of milliseconds while the disk is busy with the journal's
    fsyncs, and the event loop must not wait for that. Handing each line to the thread would
    cost a thread switch per line (measured: 17% more CPU per status webhook on one core), so
    lines logged on the event loop's thread (`batch_on`) are gathered for the length of one
    turn of the loop and handed over together, once per turn; lines of other threads are
    handed over one by one. The cost: a `kill -9` loses the lines of the last moment that
    were still queued (never a stored message).
    """

    def __init__(self, stream: Any, notice: Callable[[int], bytes]) -> None:
        self._stream = stream
        self._notice = notice
        self._fd: int | None = None
        with contextlib.suppress(AttributeError, OSError, ValueError):
            self._fd = stream.fileno()
        # Without a descriptor (tests: StringIO, BytesIO): the binary buffer if there is one.
        self._binary = getattr(stream, "buffer", None) if self._fd is None else None
        self._lock = threading.Lock()
        self._lost = 0  # lines lost since the last successful write
        self._torn = False  # a failed write may have left part of a line
        self._queue: queue.SimpleQueue[list[bytes] | None] | None = None
        self._writer: threading.Thread | None = None
        # The event loop whose lines are gathered per turn (`batch_on`), its thread, and the
        # lines of the turn under way.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._batch: list[bytes] = []

    def write(self, line: bytes | str) -> None:
        data = line if isinstance(line, bytes) else line.encode("utf-8", "backslashreplace")
        pending = self._queue
        if pending is None:
            with self._lock:
                self._write_lines([data])
        elif self._loop is not None and threading.get_ident() == self._loop_thread:
            self._batch.append(data)
            if len(self._batch) == 1:
                try:
                    self._loop.call_soon(self._hand_over)
                except RuntimeError:  # the loop is closed: no more turns to wait for
                    self._loop = None
                    self._hand_over()
        else:
            pending.put([data])

    def _hand_over(self) -> None:
        """The lines of this turn of the loop, to the writer thread in one go."""
        batch, self._batch = self._batch, []
        pending = self._queue
        if not batch:
            return
        if pending is not None:
            pending.put(batch)
        else:
            with self._lock:
                self._write_lines(batch)

    def background(self) -> None:
        """From now on, lines are written by a thread of the sink's own (idempotent)."""
        if self._writer is not None:
            return
        self._queue = queue.SimpleQueue()
        self._writer = threading.Thread(
            target=self._drain, args=(self._queue,), name="log-writer", daemon=True
        )
        self._writer.start()
        atexit.register(self.foreground)

    def batch_on(self, loop: asyncio.AbstractEventLoop) -> None:
        """Called on `loop`'s thread: its lines are handed over once per turn of it."""
        self._loop, self._loop_thread = loop, threading.get_ident()

    def foreground(self) -> None:
        """Write what is queued, stop the thread; lines are written in the caller again."""
        self._loop = None
        pending, writer = self._queue, self._writer
        if pending is None or writer is None:
            return
        batch, self._batch = self._batch, []  # a turn the loop never finished
        if batch:
            pending.put(batch)
        self._queue = self._writer = None
        pending.put(None)
        writer.join(timeout=5)
        rest: list[bytes] = []  # put by a thread that saw the queue just before it went
        with contextlib.suppress(queue.Empty):
            while True:
                item = pending.get_nowait()
                if item is not None:
                    rest.extend(item)
        if rest:
            with self._lock:
                self._write_lines(rest)
        atexit.unregister(self.foreground)

    def _drain(self, pending: queue.SimpleQueue[list[bytes] | None]) -> None:
        while True:
            item = pending.get()
            lines = [] if item is None else list(item)
            stop = item is None
            while not stop:
                try:
                    item = pending.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                else:
                    lines.extend(item)
            if lines:
                with self._lock:
                    self._write_lines(lines)
            if stop:
                return

    def _write_lines(self, lines: list[bytes]) -> None:
        """Under the lock: the notice of lost lines if due, then `lines` in one write."""
        if self._lost:
            prefix = b"\n" if self._torn else b""
            if not self._put(prefix + self._notice(self._lost) + b"\n"):
                self._lose(len(lines))
                return
            self._lost = 0
        if not self._put(b"\n".join(lines) + b"\n"):
            self._lose(len(lines))

    def _lose(self, count: int) -> None:
        global _lost_total
        self._lost += count
        _lost_total += count

    def _put(self, data: bytes) -> bool:
        try:
            if self._fd is not None:
                view = memoryview(data)
                while view:
                    try:
                        written = _write_fd(self._fd, view)
                    except OSError:
                        if len(view) < len(data):  # part of this line is out there
                            self._torn = True
                        raise
                    view = view[written:]
            elif self._binary is not None:
                self._binary.write(data)
                self._binary.flush()
            else:
                self._stream.write(data.decode("utf-8", "replace"))
                self._stream.flush()
        except (OSError, ValueError):
            return False
        self._torn = False
        return True


class SinkLogger:
    """structlog's logger interface (one method per level) over a `LineSink`."""

    def __init__(self, sink: LineSink) -> None:
        self._sink = sink

    def msg(self, message: bytes | str) -> None:
        self._sink.write(message)

    log = debug = info = warn = warning = err = error = critical = exception = fatal = msg


class _SinkLoggerFactory:
    def __init__(self, sink: LineSink) -> None:
        self._logger = SinkLogger(sink)

    def __call__(self, *args: Any) -> SinkLogger:
        return self._logger


def _safe(renderer: Callable[..., Any], binary: bool) -> Callable[..., Any]:
    """A renderer that falls back to reprs instead of raising (orjson refuses ints over 64 bits,
    a broken `__str__` raises): the caller must never see a logging error. The JSON renderer
    leaves the event as it was; the console one takes fields out, so it gets a copy."""

    def render(logger: Any, name: str, event: MutableMapping[str, Any]) -> Any:
        given = event if binary else dict(event)
        try:
            return renderer(logger, name, given)
        except Exception as exc:
            fallback = {str(k): v if isinstance(v, str) else _repr(v) for k, v in event.items()}
            fallback["log_render_error"] = _repr(exc)
            line = orjson.dumps(fallback)
            return line if binary else line.decode()

    return render


def _repr(value: Any) -> str:
    try:
        return repr(value)
    except Exception:
        return f"<unprintable {type(value).__name__}>"


# structlog's level names for the methods that are not named after their level.
_LEVEL_OF = {"warn": "warning", "exception": "error"}
_render_json = _safe(structlog.processors.JSONRenderer(serializer=orjson.dumps), binary=True)


def _json_line(logger: Any, name: str, event: MutableMapping[str, Any]) -> Any:
    """The JSON chain in one processor (request id, log ids, level, UTC timestamp, the
    exception, orjson): the same line as structlog's processors one after the other, at a
    third of the cost (every delivery logs one line at info)."""
    request_id = REQUEST_ID.get()
    if request_id is not None:
        event.setdefault("request_id", request_id)
    if not WAMID_FIELDS.isdisjoint(event):
        _hash_wamids(logger, name, event)
    event["level"] = _LEVEL_OF.get(name, name)
    event["timestamp"] = datetime.now(tz=UTC).isoformat().replace("+00:00", "Z")
    if "exc_info" in event:
        event = structlog.processors.format_exc_info(logger, name, event)
    return _render_json(logger, name, event)


_stream: Any = None


_sink: LineSink | None = None


def configure(
    log_format: str = "auto",
    level: str = "info",
    stream: Any = None,
    *,
    cache: bool = False,
    background: bool = False,
) -> None:
    """Set up structlog once per process; `auto` means JSON unless stderr is a terminal.
    `background` (the server): lines are written by a thread (see LineSink)."""
    global _stream, _sink
    # Keeping `stream` referenced stops it from being collected, which would close it (and
    # the buffer or descriptor under it).
    stream = _stream = stream or sys.stderr
    tty = _isatty(stream)
    use_json = log_format == "json" or (log_format == "auto" and not tty)
    processors: list[Any]
    if use_json:
        # Bytes straight to the sink; a text-only stream gets the same JSON decoded there.
        processors = [_json_line]
    else:
        processors = [
            _add_request_id,
            _hash_wamids,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            _safe(structlog.dev.ConsoleRenderer(colors=tty), binary=False),
        ]
    if _sink is not None:
        _sink.foreground()  # the previous configuration's lines first
    sink = _sink = LineSink(stream, _json_notice if use_json else _console_notice)
    if background:
        sink.background()
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
        ),
        logger_factory=_SinkLoggerFactory(sink),
        cache_logger_on_first_use=cache,
    )
    global _cached
    _cached = cache
    for logger in list(_loggers):
        logger._forget()


def batch_on(loop: asyncio.AbstractEventLoop) -> None:
    """The server's event loop (called on its thread): its lines are handed to the writer
    thread once per turn of the loop (see LineSink)."""
    if _sink is not None:
        _sink.batch_on(loop)


def foreground() -> None:
    """Write the lines queued for the background writer, and write in the caller from now on
    (a process about to exit, or a test)."""
    if _sink is not None:
        _sink.foreground()


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, OSError, ValueError):
        return False


# Loggers handed out by get_logger; configure() makes them resolve their methods again.
_loggers: weakref.WeakSet[Logger] = weakref.WeakSet()
_cached = False  # configure(cache=True): loggers keep their resolved methods


class Logger:
    """A logger made before `configure` that still follows it, and costs nothing to call once
    resolved.

    structlog's lazy proxy assembles (or, cached, looks up) a bound logger on every call, so
    even a debug line the level filters out cost about 2 us. Under `configure(cache=True)`
    (the server) the first call resolves the bound logger and keeps its methods on this
    object: a filtered level is then structlog's no-op, called directly. `configure` clears
    them, so a later configuration still reaches every logger. Without `cache` (tests),
    each call resolves afresh, so `capture_logs` sees every line."""

    def __init__(self, bound: dict[str, Any]) -> None:
        self._bound = bound
        _loggers.add(self)

    def __getattr__(self, name: str) -> Any:
        logger = structlog.get_logger(**self._bound).bind()
        if _cached:
            for level in _LEVELS:
                setattr(self, level, getattr(logger, level))
            self.bind = logger.bind
        return getattr(logger, name)

    def _forget(self) -> None:
        for name in (*_LEVELS, "bind"):
            self.__dict__.pop(name, None)


_LEVELS = ("debug", "info", "warning", "warn", "error", "exception", "critical", "msg", "log")


def get_logger(**bound: Any) -> Any:
    """A logger with `bound` fields in every line (see Logger)."""
    return Logger(bound)
