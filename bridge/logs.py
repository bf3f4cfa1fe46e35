"""Logging: structlog, JSON lines for journald, a readable console in a terminal.

Phone numbers are personal data: log them only through `mask`, and never log message text at
info level.

A busy bridge writes a few lines per message, so the JSON path is built for speed: orjson
renders straight to bytes and each line is one write. `cache=True` (the server) lets each
logger resolve its configuration once; tests leave it off so `capture_logs` and later
`configure` calls still reach loggers created earlier.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import orjson
import structlog


def mask(identifier: str | None) -> str:
    """`34600000001` -> `346*****001`: enough to tell users apart in logs, not to contact them."""
    if not identifier:
        return "-"
    if len(identifier) <= 6:
        return "*" * len(identifier)
    return identifier[:3] + "*" * (len(identifier) - 6) + identifier[-3:]


_stream: Any = None


def _orjson_text(obj: Any, **kw: Any) -> str:
    return orjson.dumps(obj, **kw).decode()


def configure(
    log_format: str = "auto", level: str = "info", stream: Any = None, *, cache: bool = False
) -> None:
    """Set up structlog once per process; `auto` means JSON unless stderr is a terminal."""
    global _stream
    # Writing goes to the binary buffer under `stream`; keeping `stream` referenced stops it
    # from being collected, which would close that buffer.
    stream = _stream = stream or sys.stderr
    use_json = log_format == "json" or (log_format == "auto" and not stream.isatty())
    binary = getattr(stream, "buffer", None) if use_json else None
    renderer: Any
    if not use_json:
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty())
    elif binary is not None:
        renderer = structlog.processors.JSONRenderer(serializer=orjson.dumps)
    else:  # a text-only stream (tests): same JSON, as str
        renderer = structlog.processors.JSONRenderer(serializer=_orjson_text)
    factory: Any = (
        structlog.BytesLoggerFactory(file=binary)
        if binary is not None
        else structlog.PrintLoggerFactory(file=stream)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info
            if use_json
            else structlog.processors.StackInfoRenderer(),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
        ),
        logger_factory=factory,
        cache_logger_on_first_use=cache,
    )


def get_logger(**bound: Any) -> Any:
    """A lazy logger: module-level loggers made before `configure` still use its settings."""
    return structlog.get_logger(**bound)
