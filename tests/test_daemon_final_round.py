"""Issue #20 finding 1 against real daemons: a checkpoint of a round that could never be sealed
is refused before the privacy ledger opens, and a round's charge is made once, before it
trains, whatever happens after.

On 428312f a daemon resumed from a checkpoint of round 2**40, trained round 2**40 + 1 (charging
the ledger), failed to seal it and exited 1; under systemd every restart charged again.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from daemon_support import rounds_done

from gossipmed.consortium.audit import read_audit
from gossipmed.consortium.site import load_site
from gossipmed.storage.checkpoint import META_FILE
from gossipmed.wire.update import MAX_ROUND
from node.cli import main
from node.daemon.cluster import create_cluster, toy_sections
from node.daemon.config import STATE_DIR
from node.daemon.ledger import ledger_path
from node.round.peer import Peer
from node.round.progress import FINAL_ROUND

pytest_plugins = ["daemon_support"]  # fixture: toy_base
pytestmark = [pytest.mark.slow, pytest.mark.network]

STEPS = 2  # DP steps per round


def dp_site(tmp_path: Path, toy_base: Path, *, rounds: int) -> Path:
    """Site 0 of a 2-site ring with a real DP ledger; its neighbour never runs."""

    def sections(i: int) -> dict[str, dict[str, object]]:
        s = toy_sections(
            index=i, nodes=2, base_model=toy_base, rounds=rounds, round_timeout_s=0.2, steps=STEPS
        )
        s["dp"] = {"epsilon": 1000.0, "noise_multiplier": 1.0}
        return s

    return create_cluster(tmp_path / "c", nodes=2, topology="ring", sections=sections)[0]


def set_rounds(site: Path, rounds: int) -> None:
    toml = site / "site.toml"
    text, n = re.subn(r"(?m)^rounds = \d+$", f"rounds = {rounds}", toml.read_text())
    assert n == 1
    toml.write_text(text)


def steps_charged(site: Path) -> int:
    return sum(
        int(steps) for _noise, _rate, steps in json.loads(ledger_path(site).read_text())["history"]
    )


@pytest.mark.parametrize("round", [MAX_ROUND])
def test_a_restart_on_a_checkpoint_at_or_above_max_round_exits_2_and_charges_nothing(
    tmp_path: Path, toy_base: Path, round: int
) -> None:
    site = dp_site(tmp_path, toy_base, rounds=1)
    assert main(["run", "--site", str(site)]) == 0  # one real round: a checkpoint, a charge
    meta_path = site / STATE_DIR / META_FILE
    meta = json.loads(meta_path.read_text())
    meta["round"] = round
    meta_path.write_text(json.dumps(meta))
    set_rounds(site, 0)  # a service runs until stopped
    ledger = ledger_path(site).read_bytes()
    records = rounds_done(site)

    for _restart in range(2):  # what a supervisor would do, if it restarted it
        assert main(["run", "--site", str(site)]) == 2
    assert ledger_path(site).read_bytes() == ledger
    assert rounds_done(site) == records


def test_a_crash_after_training_is_charged_exactly_once(
    tmp_path: Path, toy_base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = dp_site(tmp_path, toy_base, rounds=0)

    def crash(self: Peer, round: int, step: int = 0) -> dict[str, bytes]:
        raise OSError(5, "the disk failed right after training")

    monkeypatch.setattr(Peer, "seal_outgoing", crash)
    assert main(["run", "--site", str(site)]) == 1
    assert steps_charged(site) == STEPS  # round 0's steps, charged once, before training
    assert rounds_done(site) == []


def test_a_site_that_reaches_the_final_round_stops_with_exit_0_audited(tmp_path: Path) -> None:
    def sections(i: int) -> dict[str, dict[str, object]]:
        return {
            "daemon": {"rounds": 1, "site_index": i, "problem": "quadratic"},
            "gossip": {"round_timeout_s": 0.2},
        }

    site = create_cluster(tmp_path / "c", nodes=2, topology="ring", sections=sections)[0]
    assert main(["run", "--site", str(site)]) == 0
    meta_path = site / STATE_DIR / META_FILE
    meta = json.loads(meta_path.read_text())
    meta["round"] = FINAL_ROUND - 1  # it resumes at FINAL_ROUND
    meta_path.write_text(json.dumps(meta))
    set_rounds(site, 0)
    records = rounds_done(site)
    assert main(["run", "--site", str(site)]) == 0
    assert rounds_done(site) == records  # nothing ran
    events = read_audit(load_site(site).audit_path)
    assert any("final_round_reached" in str(e.get("reason")) for e in events)
