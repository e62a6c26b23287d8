"""The HTTP endpoint serving /metrics, /healthz and /readyz from a daemon thread.

* ``GET /metrics`` -- Prometheus text exposition of the instance's registry.
* ``GET /healthz`` -- 200 ``ok`` while the loop beats; 503 with the reason otherwise.
* ``GET /readyz``  -- 200 ``ok`` once ``set_ready(True)``; 503 with the reason otherwise.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST
from waitress import wasyncore
from waitress.server import create_server

if TYPE_CHECKING:
    from detector.health import Health
    from detector.metrics import Metrics

__all__ = [
    "HTTP_CHANNEL_TIMEOUT_S",
    "HTTP_CLEANUP_INTERVAL_S",
    "HTTP_CONNECTION_LIMIT",
    "HTTP_LOOP_WAIT_S",
    "HTTP_THREADS",
    "MetricsServer",
    "serve",
]

# The endpoint's bounds: requests run on a few threads, and a connection only reaches one once
# its request has arrived (waitress reads requests asynchronously), so idle or slow clients hold
# a file descriptor each, never a thread; beyond the connection limit new ones wait in the
# listen backlog, and idle connections are closed after the channel timeout.
HTTP_THREADS = 4
HTTP_CONNECTION_LIMIT = 400
HTTP_CHANNEL_TIMEOUT_S = 10
HTTP_CLEANUP_INTERVAL_S = 5
# How long the serving loop waits in poll() for a socket event, in whole seconds: waitress parses
# this setting as an int, so a fraction becomes 0 and the loop spins a core. close() wakes the
# loop through waitress's trigger, so a long wait does not delay shutdown.
HTTP_LOOP_WAIT_S = 1


class MetricsServer:
    """A running metrics/health HTTP server; see :func:`serve`."""

    def __init__(self, server: Any, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        # a host name with several addresses ("localhost") gives one socket each: the first is shown
        host, port = (
            server.effective_listen[0]
            if hasattr(server, "effective_listen")
            else (server.effective_host, server.effective_port)
        )
        self.host: str = host
        self.port: int = int(port)

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:9100``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def close(self) -> None:
        """Stop serving and release the port (idempotent)."""
        self._server.task_dispatcher.shutdown()
        sockets = self._server.map if hasattr(self._server, "map") else self._server._map
        if self._thread.is_alive() and sockets:
            # close every socket inside the serving thread, woken by the trigger: its loop then
            # finds the map empty and returns at once instead of after its poll wait
            self._server.trigger.pull_trigger(lambda: wasyncore.close_all(sockets))
            self._thread.join(timeout=5)
        wasyncore.close_all(sockets)  # the thread had ended or did not answer: close from here


def _make_app(metrics: Metrics, health: Health) -> Callable[[dict[str, Any], Callable[..., Any]], list[bytes]]:
    """The WSGI application serving ``metrics`` and ``health``."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "")
        ctype = "text/plain; charset=utf-8"
        if method not in ("GET", "HEAD"):
            status, body = 405, b"method not allowed\n"
        elif path == "/metrics":
            status, body, ctype = 200, metrics.render(), CONTENT_TYPE_LATEST
        elif path in ("/healthz", "/readyz"):
            ok, reason = health.is_alive() if path == "/healthz" else health.is_ready()
            status, body = 200 if ok else 503, (reason + "\n").encode()
        else:
            status, body = 404, b"not found\n"
        start_response(
            f"{status} {HTTPStatus(status).phrase}",
            [("Content-Type", ctype), ("Content-Length", str(len(body))), ("Cache-Control", "no-store")],
        )
        return [body] if method == "GET" else []

    return app


def serve(metrics: Metrics, health: Health, host: str = "0.0.0.0", port: int = 9100) -> MetricsServer:
    """Serve /metrics, /healthz and /readyz in a daemon thread, within the bounds above.

    ``port=0`` picks a free port; read it back from ``.port``::

        server = serve(Metrics(), Health(), host="127.0.0.1", port=0)
        print(server.url + "/metrics")
        server.close()
    """
    server = create_server(
        _make_app(metrics, health),
        host=host,
        port=port,
        ident="detector",
        threads=HTTP_THREADS,
        connection_limit=HTTP_CONNECTION_LIMIT,
        channel_timeout=HTTP_CHANNEL_TIMEOUT_S,
        cleanup_interval=HTTP_CLEANUP_INTERVAL_S,
        asyncore_use_poll=True,
        asyncore_loop_timeout=HTTP_LOOP_WAIT_S,
    )
    thread = threading.Thread(target=server.run, name="metrics-http", daemon=True)
    thread.start()
    return MetricsServer(server, thread)
