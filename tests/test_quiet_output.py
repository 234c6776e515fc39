"""Commands print gossipmed's own output only: no third-party progress bars (transformers'
`Loading weights`) and no Python warnings (peft's FutureWarning), silenced at their sources
rather than by a global filter."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

NOISE = ("Warning", "Loading weights", "Writing model shards", "it/s]")


def start(*args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env.pop("PYTHONWARNINGS", None)  # Python's defaults: FutureWarning is shown
    return subprocess.Popen(
        [sys.executable, "-m", "node.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_train_and_simulate_print_no_warnings_and_no_foreign_bars(
    tiny_base: Path, tmp_path: Path
) -> None:
    small = ["--dataset", "notes", "--eval-size", "6", "--base-model", str(tiny_base)]
    runs = {  # run side by side: each is mostly start-up
        "train": start(
            "train", *small, "--sites", "2", "--steps", "1", "--max-train", "40",
            "--batch-size", "4",
        ),
        "simulate": start(
            "simulate", *small, "--nodes", "2", "--rounds", "1", "--local-steps", "1",
            "--max-train-examples", "40", "--out", str(tmp_path / "run"),
        ),
    }  # fmt: skip
    for name, proc in runs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{name}: {err}"
        for noise in NOISE:
            assert noise not in err, f"{name} printed {noise!r}:\n{err}"
        assert out.strip()  # its own report is still there
    assert "gossip: 1/1 rounds" in err  # the simulation's own progress line stays
