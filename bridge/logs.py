"""Logging: structlog, JSON lines for journald, a readable console in a terminal.

Phone numbers are personal data: log them only through `mask`, and never log message text at
info level.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog


def mask(identifier: str | None) -> str:
    """`34600000001` -> `346*****001`: enough to tell users apart in logs, not to contact them."""
    if not identifier:
        return "-"
    if len(identifier) <= 6:
        return "*" * len(identifier)
    return identifier[:3] + "*" * (len(identifier) - 6) + identifier[-3:]


def configure(log_format: str = "auto", level: str = "info", stream: Any = None) -> None:
    """Set up structlog once per process; `auto` means JSON unless stderr is a terminal."""
    stream = stream or sys.stderr
    use_json = log_format == "json" or (log_format == "auto" and not stream.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
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
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )


def get_logger(**bound: Any) -> Any:
    """A lazy logger: module-level loggers made before `configure` still use its settings."""
    return structlog.get_logger(**bound)
