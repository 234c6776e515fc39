"""`gossipmed topology --compare`: every built-in kind side by side for one consortium size
(the table that used to exist only inside the demo)."""

from __future__ import annotations

import json

import pytest

from node.cli import main
from topology.graphs import KINDS


def test_compare_lists_every_kind_with_the_single_kind_numbers(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["topology", "--compare", "--nodes", "12", "--json"]) == 0
    rows = {row["kind"]: row for row in json.loads(capsys.readouterr().out)}
    assert set(rows) == set(KINDS) - {"file"}
    assert "power-of-two" in rows["hypercube"]["error"]  # 12 sites: no hypercube, said why
    assert main(["topology", "ring", "--nodes", "12", "--json"]) == 0
    ring = json.loads(capsys.readouterr().out)
    assert rows["ring"]["lambda2"] == ring["lambda2"]
    assert rows["ring"]["auto_gossip_steps"] == ring["auto_gossip_steps"]


def test_compare_prints_a_table_and_refuses_a_kind_beside_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["topology", "--compare"]) == 0
    out = capsys.readouterr().out
    assert "topologies for 16 sites" in out
    assert all(kind in out for kind in KINDS if kind != "file")
    assert main(["topology", "ring", "--compare"]) == 2
    assert main(["topology"]) == 2
    assert "--compare" in capsys.readouterr().err
