"""Long commands show progress even when stderr is not a terminal (nohup, systemd, CI):
one plain line per round, and no control codes."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from node.cli import main
from node.progress import progress_lines


def test_simulate_prints_one_plain_line_per_round_without_a_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["simulate", "--problem", "quadratic", "--nodes", "3", "--rounds", "3"]
    assert main([*argv, "--baselines", "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    for label in ("gossip", "local-only", "centralized"):
        lines = [line for line in err.splitlines() if line.startswith(f"{label}: ")]
        assert [line.split(" (")[0] for line in lines] == [
            f"{label}: {r}/3 rounds" for r in (1, 2, 3)
        ]
    assert "\x1b" not in err


def test_a_terminal_gets_a_bar_and_quiet_gets_nothing() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    quiet = io.StringIO()
    with progress_lines(quiet=True, unit="steps", stream=quiet) as update:
        update("training", 1, 2)
    assert quiet.getvalue() == ""
    plain = io.StringIO()
    with progress_lines(unit="steps", stream=plain) as update:
        update("training", 1, 2)
        update("training", 1, 2)  # a repeat is not a new line
    assert plain.getvalue().count("\n") == 1
    assert plain.getvalue().startswith("training: 1/2 steps (")
    with progress_lines(unit="steps", stream=Terminal()) as update:
        update("training", 2, 2)  # drawn by rich; just must not fail
