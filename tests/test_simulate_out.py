"""`simulate --out` never mixes two runs: a used run directory needs --overwrite, which
clears it; a folder that is not a run directory is never cleared."""

from __future__ import annotations

from pathlib import Path

import pytest

from gossipmed.metrics import read_metrics
from node.cli import main

TINY = ["simulate", "--problem", "quadratic", "--nodes", "3", "--topology", "ring"]


def test_a_used_run_directory_needs_overwrite_which_clears_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert main([*TINY, "--rounds", "2", "--baselines", "--json", "--out", str(out)]) == 0
    assert (out / "baselines").is_dir()
    capsys.readouterr()

    assert main([*TINY, "--rounds", "1", "--json", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--overwrite" in err
    assert len(read_metrics(out / "metrics.jsonl")) == 3 * 2  # untouched

    assert main([*TINY, "--rounds", "1", "--json", "--overwrite", "--out", str(out)]) == 0
    assert not (out / "baselines").exists()  # the old run's baselines are gone
    assert len(read_metrics(out / "metrics.jsonl")) == 3 * 1


def test_overwrite_never_clears_a_folder_that_is_not_a_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    precious = tmp_path / "notes.txt"
    precious.write_text("mine")
    assert main([*TINY, "--rounds", "1", "--json", "--overwrite", "--out", str(tmp_path)]) == 2
    assert "not a simulation run directory" in capsys.readouterr().err
    assert precious.read_text() == "mine"
