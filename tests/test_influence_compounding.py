"""Issue #20 finding 2: poisoning within the default rule must not compound.

The earlier default scaled each neighbour to at most 10x the site's own norm (or an RMS-1
floor). A member that answered every exchange just under that cap grew its neighbour's norm
about 3x per exchange; the neighbour forwarded it, no mix was ever rolled back, and on a
6-ring the consensus distance went from 19 to 1.6e9 in 20 rounds. The property: under that
attack, honest sites' norms at round 30 stay within 2x of the same run without it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from gossipmed.storage.checkpoint import load_state
from node.cli import main

RING6 = ["--problem", "quadratic", "--nodes", "6", "--topology", "ring", "--rounds", "30"]
ATTACK = ["--attack", "scale", "--attackers", "1", "--attack-scale", "1000"]


def _run(out: Path, *extra: str) -> tuple[dict[str, float], list[str]]:
    """(final state norm per site, the attackers) of a default-rule simulation."""
    assert main(["simulate", *RING6, *extra, "--seed", "0", "--json", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    norms = {}
    for site in summary["sites"]:
        state, _meta = load_state(out / "adapters" / site)
        norms[site] = math.sqrt(sum(float(t.double().pow(2).sum()) for t in state.values()))
    return norms, summary["robustness"]["attackers"]


def test_a_neighbour_scaling_its_state_by_1000_leaves_honest_norms_within_2x_of_a_clean_run(
    tmp_path: Path,
) -> None:
    clean, _ = _run(tmp_path / "clean")
    attacked, attackers = _run(tmp_path / "attacked", *ATTACK)
    assert len(attackers) == 1
    for site, norm in attacked.items():
        if site in attackers:
            continue
        assert math.isfinite(norm), site
        assert clean[site] / 2 <= norm <= 2 * clean[site], (site, norm, clean[site])
