"""Command line: ``detector fit | score | evaluate | run | broker | send | read``.

    detector fit --data history.csv --out models/current
    detector score --model models/current --data today.csv --out scores.csv
    detector evaluate --nab ../shared/data/nab --skab ../shared/data/skab [--seeds 7,8,9]
    detector run --config config.toml
    detector broker | send --data today.csv | read --topic detector-alerts   (trying it out)

Exit codes: 0 success, 2 bad input (file, settings or model), 1 unexpected failure.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from detector import __version__

# Only the standard library at import: --help answers at once. Settings and input checks (pydantic,
# numpy) are imported once the arguments are parsed, torch only by the commands that need it.
if TYPE_CHECKING:
    from detector.config import Settings
    from detector.model import FittedModel
    from detector.schema import Table
    from detector.scoring import Decision

__all__ = ["build_parser", "main", "score_table"]

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT = 0, 1, 2


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``detector`` console script."""
    try:
        args = build_parser().parse_args(argv)
    except _UsageError as error:
        return _explain(None, str(error), error.help)
    from detector.config import load_settings
    from detector.environment import unknown_variables
    from detector.logs import configure_logging

    for variable in unknown_variables(os.environ):
        print(variable.message(), file=sys.stderr)
    try:
        settings = load_settings(args.config)
        configure_logging(settings.log.level, settings.log.format)
        return int(args.handler(args, settings) or EXIT_OK)
    except _user_errors() as error:
        return _explain(args.command, str(error), getattr(error, "help", None) or _help_for(error))


def _user_errors() -> tuple[type[Exception], ...]:
    """The exceptions that mean the input (settings, files, model) is wrong: those of the modules
    imported so far (an exception can only have been raised by a module that was imported)."""
    classes = {"detector.config": "SettingsError", "detector.schema": "DataError", "detector.model": "ModelError"}
    return tuple(getattr(sys.modules[module], name) for module, name in classes.items() if module in sys.modules)


def _help_for(error: Exception) -> str | None:
    if str(error).startswith("no model in"):
        return "fit one with `detector fit --data FILE.csv --out DIR`, then give that DIR"
    return None


def _explain(command: str | None, message: str, help: str | None) -> int:
    """Print a user error as one line (and a ``help:`` line); the exit code for bad input."""
    print(f"detector{' ' + command if command else ''}: error: {message}", file=sys.stderr)
    if help:
        print(f"help: {help}", file=sys.stderr)
    return EXIT_BAD_INPUT


class _UsageError(Exception):
    """Arguments argparse refused; ``help`` points to the command's --help."""

    def __init__(self, message: str, help: str):
        super().__init__(message)
        self.help = help


class _Parser(argparse.ArgumentParser):
    """An argument parser that reports a mistake as one line instead of the usage text."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(message, f"see `{self.prog} --help`")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="detector", description="Real-time anomaly detection with a stateful LSTM autoencoder.")
    parser.add_argument("--version", action="version", version=f"detector {__version__}")
    parser.add_argument("--config", type=Path, default=None, help="TOML settings file (env DETECTOR_* overrides it)")
    # --config is also accepted after the subcommand (`detector run --config FILE`, as containers write it);
    # SUPPRESS keeps a subcommand that was not given one from resetting the value given before it.
    config_after = _Parser(add_help=False)
    config_after.add_argument(
        "--config", type=Path, default=argparse.SUPPRESS, help="TOML settings file (env DETECTOR_* overrides it)"
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    fit = commands.add_parser("fit", parents=[config_after], help="fit and calibrate a model on CSV files")
    fit.add_argument("--data", type=_existing_file, action="append", required=True, help="CSV file (repeatable)")
    fit.add_argument("--out", type=Path, required=True, help="model directory to write")
    fit.set_defaults(handler=_fit)

    score = commands.add_parser(
        "score", parents=[config_after], help="score a CSV file in order with the service's step function"
    )
    score.add_argument(
        "--model", type=_existing_directory, required=True, help="model directory (written by `detector fit`)"
    )
    score.add_argument("--data", type=_existing_file, required=True, help="CSV file to score")
    score.add_argument("--out", type=Path, required=True, help="scores CSV to write")
    score.set_defaults(handler=_score)

    evaluate = commands.add_parser(
        "evaluate", parents=[config_after], help="fit and score benchmark data with its standard protocol"
    )
    evaluate.add_argument("--nab", type=Path, default=None, help="NAB directory (data/, labels/, config/)")
    evaluate.add_argument("--skab", type=Path, default=None, help="SKAB directory (valve1/ ...)")
    evaluate.add_argument(
        "--limit",
        type=int,
        default=None,
        help="only the first N files of each benchmark (of NAB: the first N with a labelled window)",
    )
    evaluate.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    evaluate.add_argument(
        "--seeds",
        type=_seed_list,
        default=None,
        help="comma-separated fit seeds (e.g. 7,8,9): run once per seed and print the mean too "
        "(default: fit.seed only)",
    )
    evaluate.add_argument(
        "--jobs", type=int, default=None, help="processes scoring files side by side (default: one per core)"
    )
    evaluate.set_defaults(handler=_evaluate)

    run = commands.add_parser("run", parents=[config_after], help="run the streaming service on Kafka")
    run.set_defaults(handler=_run)

    broker = commands.add_parser(
        "broker",
        parents=[config_after],
        help="run the bundled broker at kafka.bootstrap_servers, with the service's topics (for trying it out)",
    )
    broker.set_defaults(handler=_broker)
    send = commands.add_parser(
        "send", parents=[config_after], help="publish the rows of a CSV file as messages (for trying it out)"
    )
    send.add_argument("--data", type=_existing_file, required=True, help="CSV file whose rows to send, in order")
    send.add_argument("--topic", default=None, help="topic (default: the first of kafka.input_topics)")
    send.set_defaults(handler=_send)
    read = commands.add_parser(
        "read", parents=[config_after], help="print a topic's records as JSON lines (for trying it out)"
    )
    read.add_argument("--topic", default=None, help="topic (default: kafka.alert_topic)")
    read.add_argument("--count", type=int, default=1, help="stop after this many records (default 1)")
    read.add_argument(
        "--timeout", type=float, default=60.0, help="give up after this many seconds, exit 1 (default 60)"
    )
    read.set_defaults(handler=_read)
    return parser


def _fit(args: argparse.Namespace, settings: Settings) -> int:
    from detector.schema import DataError

    tables = [_read_ordered(path, settings) for path in args.data]
    _writable_directory(args.out, "--out")
    from detector.fit import fit_tables, write_model

    model, history = fit_tables(tables, settings.model, settings.fit, settings.scoring, progress=sys.stderr.isatty())
    try:
        write_model(model, history, args.out, report=settings.fit.report)
    except OSError as error:
        raise DataError(str(args.out), f"cannot write the model: {error.strerror}") from None
    cal = model.calibration
    print(
        f"model {model.version} -> {args.out}: {model.info['rows']} rows, {model.info['epochs']} epochs "
        f"(best {model.info['best_epoch'] + 1}, held-out loss {model.info['best_val_loss']:.4f}), "
        f"threshold score {cal.threshold_score:.3f} from {cal.heldout_scores} held-out scores"
    )
    return EXIT_OK


def _score(args: argparse.Namespace, settings: Settings) -> int:
    _writable_directory(args.out.parent, "--out")
    from detector.model import load_model
    from detector.offline import score_file
    from detector.runtime import scoring_for

    model = load_model(args.model)
    model = scoring_for(settings, model, args.config, str(args.model)).apply(model)  # run-time values in effect
    summary = score_file(model, args.data, args.out, settings.stream.reject_out_of_order, progress=sys.stderr.isatty())
    ignored = [f for f in _header(args.data) if f not in model.features and f not in ("timestamp", "entity")]
    print(
        f"scored {summary.rows} rows of {args.data} -> {args.out}: "
        f"{summary.anomalous} anomalous, {summary.opened} alerts opened"
        + (f" (columns the model does not know, ignored: {', '.join(ignored)})" if ignored else "")
    )
    return EXIT_OK


def _header(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        return [column.strip() for column in next(csv.reader(handle), [])]


def _read_ordered(path: Path, settings: Settings, features: Sequence[str] | None = None) -> Table:
    """The CSV file at ``path``, its rows in time order per entity (the stream's rule: with
    ``stream.reject_out_of_order`` an older row is refused, else it is taken in file order)."""
    from detector.logs import get_logger
    from detector.schema import DataError, read_csv

    table = read_csv(path, features)
    disorder = table.first_out_of_order()
    if disorder is not None:
        row, earlier = disorder
        entity = table.entity_of(row - 2)
        message = (
            f"entity {entity!r} goes back in time: {table.raw_timestamps[row - 2]!r} "
            f"is older than {table.raw_timestamps[earlier - 2]!r} on row {earlier}"
        )
        if settings.stream.reject_out_of_order:
            raise DataError(
                str(path),
                message,
                row,
                help="sort the rows by time (each entity's rows in time order), "
                "or set stream.reject_out_of_order = false to take them in file order",
            )
        get_logger(__name__).warning("input.out_of_order", file=str(path), row=row, entity=entity, detail=message)
    return table


def _writable_directory(directory: Path, option: str) -> None:
    """Create ``directory`` now, so that a path that cannot be written fails before the work."""
    from detector.schema import DataError

    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataError(
            str(directory),
            f"{option} cannot be created: {error.strerror}",
            help=f"give {option} a path in a directory you can write",
        ) from None
    if not os.access(directory, os.W_OK):
        raise DataError(
            str(directory), f"{option} is not writable", help=f"give {option} a path in a directory you can write"
        )


def score_table(model: FittedModel, table: Table) -> list[Decision]:
    """The decision of each row, in file order, via the service's step function."""
    from detector.schema import observations_from_table
    from detector.scoring import Detector

    return Detector(model).process(list(observations_from_table(table)))


def _existing_file(text: str) -> Path:
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a file" if Path(text).exists() else f"no such file: {text!r}"
        )
    return Path(text)


def _existing_directory(text: str) -> Path:
    if not Path(text).is_dir():
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a directory" if Path(text).exists() else f"no such directory: {text!r}"
        )
    return Path(text)


def _seed_list(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"seeds repeat: {text!r}")
    return seeds


def _evaluate(args: argparse.Namespace, settings: Settings) -> int:
    from detector.evaluate import evaluate, evaluate_seeds, print_results, write_results
    from detector.schema import DataError

    if not args.nab and not args.skab:
        raise DataError("<arguments>", "give --nab DIR and/or --skab DIR")
    if args.jobs is not None and args.jobs < 1:
        raise DataError("<arguments>", f"--jobs must be at least 1, got {args.jobs}")
    for directory in (args.nab, args.skab):
        if directory is not None and not directory.is_dir():
            raise DataError(
                str(directory), "no such directory", help="give the directory the benchmark was unpacked in"
            )
    if args.seeds:
        results = evaluate_seeds(settings, args.seeds, args.skab, args.nab, args.limit, args.jobs)
    else:
        results = evaluate(settings, args.skab, args.nab, args.limit, args.jobs)
    print_results(results)
    if args.out:
        write_results(results, args.out)
    return EXIT_OK


def _run(args: argparse.Namespace, settings: Settings) -> int:
    from detector.stream import run_service

    return run_service(settings, args.config)


def _broker(args: argparse.Namespace, settings: Settings) -> int:
    from detector.tryout import run_broker

    return run_broker(settings)


def _send(args: argparse.Namespace, settings: Settings) -> int:
    from detector.tryout import send_csv

    return send_csv(settings, args.data, args.topic)


def _read(args: argparse.Namespace, settings: Settings) -> int:
    from detector.tryout import read_topic

    return read_topic(settings, args.topic, args.count, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
