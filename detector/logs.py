"""Structured logging: JSON lines (one event per line), or a readable console on a TTY.

>>> configure_logging("info", "json")
>>> get_logger("detector.demo").info("service.start", version="1.0")  # doctest: +SKIP
{"version": "1.0", "event": "service.start", "level": "info", "logger": "detector.demo", "timestamp": "..."}
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any

import structlog

__all__ = ["KafkaLogLimiter", "configure_logging", "get_logger"]

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure_logging(level: str = "info", fmt: str = "auto") -> None:
    """Configure structlog once for the process; ``fmt`` is auto, json or console. Logs go to stderr."""
    console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    renderer: Any = structlog.dev.ConsoleRenderer() if console else structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=_NamedStderrLogger,
        cache_logger_on_first_use=False,
    )
    _route_library_logs(_LEVELS[level], renderer)


def _route_library_logs(level: int, renderer: Any) -> None:
    """Render stdlib ``logging`` records (kafka-python's joins, rebalances, connection errors) as
    the same JSON lines, at the same minimum level, instead of losing them or printing plain text."""
    handler = _StderrHandler()
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
            ],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    handler.addFilter(_drop_close_noise)
    handler.addFilter(KafkaLogLimiter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # kafka-python narrates every connection at info; its warnings and errors are what matter
    logging.getLogger("kafka").setLevel(level if level == logging.DEBUG else max(level, logging.WARNING))


def _drop_close_noise(record: logging.LogRecord) -> bool:
    """kafka-python 3 logs "Metadata refresh: failed Cancelled" at error level on every clean close."""
    return not (record.name == "kafka.cluster" and record.getMessage() == "Metadata refresh: failed Cancelled")


class KafkaLogLimiter(logging.Filter):
    """Keeps kafka-python's warnings and errors to rate-limited warnings.

    Against a broker that is down kafka-python logs several lines per connection attempt; the
    service's own ``kafka.unreachable`` event says what matters. Each kind of kafka-python line
    (logger and message template) passes at most once per ``every_s``, at most ``per_window``
    lines of all kinds pass per window, and errors are shown as warnings.
    """

    def __init__(self, every_s: float = 30.0, per_window: int = 6, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.every_s, self.per_window, self.clock = every_s, per_window, clock
        self._last: dict[tuple[str, str], float] = {}
        self._window_start, self._in_window = float("-inf"), 0

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("kafka") or record.levelno < logging.WARNING:
            return True
        now = self.clock()
        key = (record.name, str(record.msg))
        if now - self._last.get(key, float("-inf")) < self.every_s:
            return False
        if now - self._window_start >= self.every_s:
            self._window_start, self._in_window = now, 0
        if self._in_window >= self.per_window:
            return False
        self._last[key] = now
        self._in_window += 1
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


class _StderrHandler(logging.StreamHandler):
    """A stream handler writing to whatever ``sys.stderr`` is when a record is emitted."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


class _NamedStderrLogger(structlog.PrintLogger):
    """Prints to whatever ``sys.stderr`` is when an event is logged (as library records do) and
    knows its name (``structlog.stdlib.add_logger_name`` adds it to the event)."""

    def __init__(self, name: str = "") -> None:
        super().__init__(sys.stderr)
        self.name = name


def get_logger(name: str) -> Any:
    """A logger named ``name``; lazy, so one made at import time (``log = get_logger(__name__)`` in a
    module imported before :func:`configure_logging`) follows the configuration made later."""
    return structlog.get_logger(name)
