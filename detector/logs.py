"""Structured logging: JSON lines (one event per line), or a readable console on a TTY.

>>> configure_logging("info", "json")
>>> get_logger("detector.demo").info("service.start", version="1.0")  # doctest: +SKIP
{"version": "1.0", "event": "service.start", "level": "info", "logger": "detector.demo", "timestamp": "..."}
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

__all__ = ["configure_logging", "get_logger"]

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure_logging(level: str = "info", fmt: str = "auto") -> None:
    """Configure structlog once for the process; ``fmt`` is auto, json or console. Logs go to stderr."""
    console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    renderer: Any = structlog.dev.ConsoleRenderer() if console else structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    _route_library_logs(_LEVELS[level], renderer)


def _route_library_logs(level: int, renderer: Any) -> None:
    """Render stdlib ``logging`` records (kafka-python's joins, rebalances, connection errors) as
    the same JSON lines, at the same minimum level, instead of losing them or printing plain text."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_log_level, structlog.stdlib.add_logger_name, structlog.processors.TimeStamper(fmt="iso", utc=True)],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def get_logger(name: str) -> Any:
    """A bound logger carrying ``logger=name``."""
    return structlog.get_logger().bind(logger=name)
