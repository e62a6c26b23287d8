"""The command line takes ``--config`` before or after the subcommand, and ``--version``."""

import pytest

from detector import __version__
from detector.cli import build_parser


@pytest.mark.parametrize("argv", [["--config", "a.toml", "run"], ["run", "--config", "a.toml"]])
def test_config_is_accepted_before_or_after_the_subcommand(argv):
    args = build_parser().parse_args(argv)
    assert (args.command, str(args.config)) == ("run", "a.toml")


def test_config_after_the_subcommand_wins_and_absent_keeps_the_default():
    assert str(build_parser().parse_args(["--config", "a.toml", "run", "--config", "b.toml"]).config) == "b.toml"
    assert build_parser().parse_args(["--config", "a.toml", "run"]).config.name == "a.toml"
    assert build_parser().parse_args(["run"]).config is None


def test_version_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"detector {__version__}"
