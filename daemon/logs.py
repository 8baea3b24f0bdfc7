"""Logging: readable lines on a terminal, one JSON object per line for the journal.

Off a terminal each line is ``<N>{json}``: systemd-journald reads the ``<N>`` syslog priority
prefix (SyslogLevelPrefix=yes is its default), so ``journalctl -p warning`` works. When
``$JOURNAL_STREAM`` says the stream is the journal, events go as native journal entries with
structured fields instead (daemon/journal.py), falling back to the line if the socket is gone.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any, TextIO

import structlog

from daemon.journal import JournalSender, encode, entry_fields, stream_is_journal

# syslog priorities (RFC 5424) for structlog's level names.
PRIORITY = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2, "exception": 3}


def journal_renderer(_logger: Any, _method: str, event_dict: dict[str, Any]) -> str:
    """Render one event as ``<N>`` + compact JSON."""
    priority = PRIORITY.get(str(event_dict.get("level", "info")), 6)
    return f"<{priority}>" + json.dumps(event_dict, default=str, separators=(",", ":"))


class JournalLogger:
    """structlog's logger for native journal entries; the line on ``stream`` as a fallback."""

    def __init__(self, stream: TextIO, sender: Any = None) -> None:
        self.stream = stream
        self.sender = sender or JournalSender()

    def msg(self, **event_dict: Any) -> None:
        """Send one event (structlog calls this for every level)."""
        priority = PRIORITY.get(str(event_dict.get("level", "info")), 6)
        if not self.sender.send(encode(entry_fields(event_dict, priority))):
            print(journal_renderer(None, "", event_dict), file=self.stream, flush=True)

    debug = info = warning = warn = error = critical = exception = fatal = failure = err = msg


def _keep_dict(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    return event_dict  # a dict from the last processor reaches the logger as keyword arguments


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
    factory: Any = structlog.PrintLoggerFactory(stream)
    if not use_console and stream_is_journal(stream):
        journal = JournalLogger(stream)
        renderer, factory = _keep_dict, lambda *_args: journal
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=factory,
        cache_logger_on_first_use=False,
    )


def get_logger(**bound: Any) -> structlog.typing.FilteringBoundLogger:
    """A logger with ``bound`` fields on every line."""
    return structlog.get_logger().bind(**bound)
