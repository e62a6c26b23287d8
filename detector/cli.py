"""Command line: ``detector fit | score | evaluate | run``.

    detector fit --data history.csv --out models/current
    detector score --model models/current --data today.csv --out scores.csv
    detector evaluate --nab ../shared/data/nab --skab ../shared/data/skab [--seeds 7,8,9]
    detector run --config config.toml

Exit codes: 0 success, 2 bad input (file, settings or model), 1 unexpected failure.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence
from pathlib import Path

from detector import __version__
from detector.config import Settings, SettingsError, load_settings
from detector.logs import configure_logging, get_logger
from detector.model import ModelError, load_model
from detector.schema import DataError, Table, observations_from_table, read_csv

__all__ = ["build_parser", "main", "score_table"]

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT = 0, 1, 2
log = get_logger(__name__)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``detector`` console script."""
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
        configure_logging(settings.log.level, settings.log.format)
        return int(args.handler(args, settings) or EXIT_OK)
    except (SettingsError, DataError, ModelError) as error:
        print(f"detector {args.command}: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="detector", description="Real-time anomaly detection with a stateful LSTM autoencoder.")
    parser.add_argument("--version", action="version", version=f"detector {__version__}")
    parser.add_argument("--config", type=Path, default=None, help="TOML settings file (env DETECTOR_* overrides it)")
    # --config is also accepted after the subcommand (`detector run --config FILE`, as containers write it);
    # SUPPRESS keeps a subcommand that was not given one from resetting the value given before it.
    config_after = argparse.ArgumentParser(add_help=False)
    config_after.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="TOML settings file (env DETECTOR_* overrides it)")
    commands = parser.add_subparsers(dest="command", required=True)

    fit = commands.add_parser("fit", parents=[config_after], help="fit and calibrate a model on CSV files")
    fit.add_argument("--data", type=Path, action="append", required=True, help="CSV file (repeatable)")
    fit.add_argument("--out", type=Path, required=True, help="model directory to write")
    fit.set_defaults(handler=_fit)

    score = commands.add_parser("score", parents=[config_after], help="score a CSV file in order with the service's step function")
    score.add_argument("--model", type=Path, required=True, help="model directory")
    score.add_argument("--data", type=Path, required=True, help="CSV file to score")
    score.add_argument("--out", type=Path, required=True, help="scores CSV to write")
    score.set_defaults(handler=_score)

    evaluate = commands.add_parser("evaluate", parents=[config_after], help="fit and score benchmark data with its standard protocol")
    evaluate.add_argument("--nab", type=Path, default=None, help="NAB directory (data/, labels/, config/)")
    evaluate.add_argument("--skab", type=Path, default=None, help="SKAB directory (valve1/ ...)")
    evaluate.add_argument("--limit", type=int, default=None, help="only the first N files of each benchmark (of NAB: the first N with a labelled window)")
    evaluate.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    evaluate.add_argument("--seeds", type=_seed_list, default=None,
                          help="comma-separated fit seeds (e.g. 7,8,9): run once per seed and print the mean too (default: fit.seed only)")
    evaluate.set_defaults(handler=_evaluate)

    run = commands.add_parser("run", parents=[config_after], help="run the streaming service on Kafka")
    run.set_defaults(handler=_run)
    return parser


def _fit(args: argparse.Namespace, settings: Settings) -> int:
    from detector.fit import fit_tables, write_model

    tables = [read_csv(path) for path in args.data]
    model, history = fit_tables(tables, settings.model, settings.fit, settings.scoring, progress=sys.stderr.isatty())
    write_model(model, history, args.out, report=settings.fit.report)
    cal = model.calibration
    print(
        f"model {model.version} -> {args.out}: {model.info['rows']} rows, {model.info['epochs']} epochs "
        f"(best {model.info['best_epoch'] + 1}, held-out loss {model.info['best_val_loss']:.4f}), "
        f"threshold score {cal.threshold_score:.3f} from {cal.heldout_scores} held-out scores"
    )
    return EXIT_OK


def _score(args: argparse.Namespace, settings: Settings) -> int:
    table = read_csv(args.data)
    model = load_model(args.model, features=table.features)
    rows = score_table(model, table)
    _write_scores(args.out, table, rows)
    alerts = sum(1 for _, _, flag in rows if flag)
    print(f"scored {len(rows)} rows of {args.data} -> {args.out}: {alerts} anomalous")
    return EXIT_OK


def score_table(model, table: Table) -> list[tuple[float, float, bool]]:  # type: ignore[no-untyped-def]
    """(score, probability, is_anomaly) per row, in file order, via the service's step function."""
    from detector.scoring import Detector

    decisions = Detector(model).process(list(observations_from_table(table)))
    return [(d.score, d.probability, d.is_anomaly) for d in decisions]


def _write_scores(path: Path, table: Table, rows: list[tuple[float, float, bool]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["timestamp"] + (["entity"] if table.entities is not None else []) + ["score", "probability", "is_anomaly"])
        for i, (score, probability, flag) in enumerate(rows):
            entity = [table.entities[i]] if table.entities is not None else []
            writer.writerow([table.raw_timestamps[i], *entity, f"{score:.9g}", f"{probability:.9g}", int(flag)])


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

    if not args.nab and not args.skab:
        raise DataError("<arguments>", "give --nab DIR and/or --skab DIR")
    if args.seeds:
        results = evaluate_seeds(settings, args.seeds, args.skab, args.nab, args.limit)
    else:
        results = evaluate(settings, args.skab, args.nab, args.limit)
    print_results(results)
    if args.out:
        write_results(results, args.out)
    return EXIT_OK


def _run(args: argparse.Namespace, settings: Settings) -> int:
    from detector.stream import run_service

    return run_service(settings)


if __name__ == "__main__":
    sys.exit(main())
