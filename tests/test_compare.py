"""`gossipmed compare RUN RUN...`: several runs side by side, as a table or JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from node.cli import main

TINY = ["simulate", "--problem", "quadratic", "--nodes", "4", "--rounds", "3", "--json"]


def test_compare_puts_runs_side_by_side(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    ring, complete = tmp_path / "ring", tmp_path / "complete"
    assert main([*TINY, "--topology", "ring", "--baselines", "--out", str(ring)]) == 0
    assert main([*TINY, "--topology", "complete", "--out", str(complete)]) == 0
    capsys.readouterr()

    assert main(["compare", str(ring), str(complete), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["run"] for r in rows] == [str(ring), str(complete)]
    assert [r["topology"] for r in rows] == ["ring", "complete"]
    assert all(r["rounds"] == 3 and r["sites"] == 4 for r in rows)
    inspected = json.loads((ring / "summary.json").read_text())["final"]
    assert rows[0]["accuracy_mean"] == inspected["gossip"]["accuracy_mean"]
    assert rows[0]["local_accuracy_mean"] == inspected["local"]["accuracy_mean"]
    assert rows[1]["local_accuracy_mean"] is None  # no baselines in that run

    monkeypatch.setenv("COLUMNS", "200")
    assert main(["compare", str(ring), str(complete)]) == 0
    out = capsys.readouterr().out
    assert "ring (4)" in out and "complete (4)" in out


def test_compare_names_a_folder_without_metrics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["compare", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(tmp_path) in err
