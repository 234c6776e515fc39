"""Commands print gossipmed's own output only: no third-party progress bars (transformers'
`Loading weights`) and no Python warnings (peft's FutureWarning, on wrapping a model and on
loading a saved adapter), silenced at their sources rather than by a global filter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

NOISE = ("Warning", "Loading weights", "Writing model shards", "it/s]")
# train, simulate, then generate, in one fresh interpreter (one start-up, not three); each
# command loads the model itself, so each would print its own bar or warning
ALL = """
import json, sys
from node.cli import main
for argv in json.loads(sys.argv[1]):
    if main(argv) != 0:
        sys.exit(1)
"""


def test_train_and_simulate_print_no_warnings_and_no_foreign_bars(
    tiny_base: Path, tmp_path: Path
) -> None:
    small = ["--dataset", "notes", "--eval-size", "6", "--base-model", str(tiny_base)]
    train = ["train", *small, "--sites", "2", "--steps", "1", "--max-train", "40"]
    simulate = ["simulate", *small, "--nodes", "2", "--rounds", "1", "--local-steps", "1"]
    simulate += ["--max-train-examples", "40", "--out", str(tmp_path / "run")]
    # and the adapter the simulation saved, loaded back as `generate` does (peft's load path)
    generate = ["generate", "--adapter", str(tmp_path / "run" / "adapters" / "site-00")]
    generate += ["--dataset", "notes", "--base-model", str(tiny_base), "--max-new-tokens", "2"]
    generate += ["--prompt", "Patient with chest pain"]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env.pop("PYTHONWARNINGS", None)  # Python's defaults: a FutureWarning is shown
    res = subprocess.run(
        [
            sys.executable,
            "-c",
            ALL,
            json.dumps([[*train, "--batch-size", "4"], simulate, generate]),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    for noise in NOISE:
        assert noise not in res.stderr, f"printed {noise!r}:\n{res.stderr}"
    assert "held-out after:" in res.stdout  # train's own report is still there
    assert "gossip: 1/1 rounds" in res.stderr  # and the simulation's own progress line
