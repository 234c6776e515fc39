"""Behaviour that must not move when the code around it does: a recorded simulation.

The quadratic run of the simulator issue (8-site ring, drops and churn, seed 3) was recorded
before the redesign of the peer, the update type and the configuration; the same command must
keep giving the same per-site, per-round numbers, bit for bit. A change here is a change of
behaviour: explain it, then re-record the file.
"""

from __future__ import annotations

import json
from pathlib import Path

from node.cli import main

REFERENCE = Path(__file__).parent / "data" / "quadratic_ring8_seed3.jsonl"
FIELDS = ("accuracy", "eval_loss", "train_loss", "consensus_distance", "neighbours_heard")
COMMAND = [
    "simulate",
    "--problem",
    "quadratic",
    "--nodes",
    "8",
    "--topology",
    "ring",
    "--rounds",
    "15",
    "--drop",
    "0.2",
    "--churn",
    "0.1",
    "--seed",
    "3",
    "--json",
]


def test_the_recorded_quadratic_ring_run_is_reproduced_exactly(tmp_path: Path) -> None:
    assert main([*COMMAND, "--out", str(tmp_path)]) == 0
    got = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    want = [json.loads(line) for line in REFERENCE.read_text().splitlines()]
    assert len(got) == len(want) == 8 * 15
    for new, old in zip(got, want, strict=True):
        assert (new["site"], new["round"]) == (old["site"], old["round"])
        assert {k: new[k] for k in FIELDS} == {k: old[k] for k in FIELDS}, (
            old["site"],
            old["round"],
        )
