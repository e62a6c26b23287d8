"""Logs are JSON lines, one event per line, including what libraries (kafka-python) log."""

import json
import subprocess
import sys


def _run(level: str) -> list[dict]:
    code = (
        "import logging\n"
        "from detector.logs import configure_logging, get_logger\n"
        f"configure_logging({level!r}, 'json')\n"
        "get_logger('detector.test').info('service.start', version='1')\n"
        "logging.getLogger('kafka.coordinator').info('Successfully joined group %s', 'g1')\n"
        "logging.getLogger('kafka.cluster').error('Metadata refresh: failed %s', 'Cancelled')\n"
        "logging.getLogger('kafka.coordinator').warning('Heartbeat failed: %s', 'RebalanceInProgress')\n"
        "logging.getLogger('kafka.conn').debug('socket detail')\n"
        "logging.getLogger('kafka.conn').warning('Connection failed: %s', 'ECONNRESET')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return [json.loads(line) for line in done.stderr.splitlines()]


def test_own_and_library_events_are_json_lines_at_the_configured_level():
    events = _run("info")
    assert [(e["logger"], e["event"], e["level"]) for e in events] == [
        ("detector.test", "service.start", "info"),  # kafka-python's info chatter is left out below debug
        ("kafka.coordinator", "Heartbeat failed: RebalanceInProgress", "warning"),
        ("kafka.conn", "Connection failed: ECONNRESET", "warning"),
    ]  # and its error on every clean close ("Metadata refresh: failed Cancelled") is dropped
    assert all("timestamp" in e for e in events)


def test_library_info_and_debug_lines_at_debug_level():
    events = [e["event"] for e in _run("debug")]
    assert "socket detail" in events and "Successfully joined group g1" in events


def test_a_logger_made_before_configuration_follows_it():
    # a module-level `log = get_logger(__name__)` is made at import, often before `main` configures
    # logging: its events must still be JSON lines on stderr, not the default console on stdout
    code = (
        "from detector.logs import configure_logging, get_logger\n"
        "early = get_logger('detector.early')\n"
        "configure_logging('info', 'json')\n"
        "early.info('service.start', version='1')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout == ""
    assert [(e["logger"], e["event"], e["version"]) for e in map(json.loads, done.stderr.splitlines())] == [
        ("detector.early", "service.start", "1")
    ]
