"""`detector run` with kafka-python consumer options the service does not expose (benchmarks only).

    python benchmarks/_run_patched.py --fetch-max-wait-ms 10

Used by throughput.py to show what an option would change; the service itself is unmodified.
"""

from __future__ import annotations

import argparse
import functools
import sys

import detector.stream
from detector.cli import main

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--fetch-max-wait-ms", type=int, default=None)
    args = parser.parse_args()
    if args.fetch_max_wait_ms is not None:
        detector.stream.KafkaConsumer = functools.partial(detector.stream.KafkaConsumer, fetch_max_wait_ms=args.fetch_max_wait_ms)  # type: ignore[misc]
    sys.exit(main(["run"]))
