"""Logging: readable lines on a terminal, one JSON object per line for the journal.

Off a terminal each line is ``<N>{json}``: systemd-journald reads the ``<N>`` syslog priority
prefix (SyslogLevelPrefix=yes is its default), so ``journalctl -p warning`` works.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any, TextIO

import structlog

# syslog priorities (RFC 5424) for structlog's level names.
PRIORITY = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2, "exception": 3}


def journal_renderer(_logger: Any, _method: str, event_dict: dict[str, Any]) -> str:
    """Render one event as ``<N>`` + compact JSON."""
    priority = PRIORITY.get(str(event_dict.get("level", "info")), 6)
    return f"<{priority}>" + json.dumps(event_dict, default=str, separators=(",", ":"))


def configure_logging(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Configure structlog once per process. ``fmt``: auto | console | json."""
    stream = stream or sys.stderr
    use_console = fmt == "console" or (fmt == "auto" and stream.isatty())
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]
    renderer = structlog.dev.ConsoleRenderer(colors=False) if use_console else journal_renderer
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )


def get_logger(**bound: Any) -> structlog.typing.FilteringBoundLogger:
    """A logger with ``bound`` fields on every line."""
    return structlog.get_logger().bind(**bound)
