"""Issue #13 finding 7: a missing ledger must never reset a site's epsilon to 0.

The ledger used to live in state/ next to the checkpoint; with it gone the daemon resumed at
epsilon 0 and spent a fresh budget -- and deleting state/ is the obvious reaction to a crash
loop. Now it lives in SITE/privacy/, the daemon refuses to start when any record of spending
exists but the ledger is missing or accounts for less, and a new budget is an explicit,
audited command.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gossipmed.consortium.audit import read_audit
from gossipmed.privacy.ledger import PrivacyLedger
from node.cli import main
from node.daemon.cluster import create_cluster, toy_sections
from node.daemon.config import STATE_DIR, load_daemon_settings
from node.daemon.ledger import ledger_path
from node.daemon.site_daemon import SiteDaemon

pytest_plugins = ["daemon_support"]  # fixture: toy_base
pytestmark = pytest.mark.slow


@pytest.fixture
def site(tmp_path: Path, toy_base: Path) -> Iterator[Path]:
    """A DP site that has run one round: ledger charged, checkpoint and metrics written."""

    def sections(i: int) -> dict[str, Any]:
        s = toy_sections(index=i, nodes=2, base_model=toy_base, rounds=0, round_timeout_s=5.0)
        s["dp"] = {"epsilon": 50.0, "noise_multiplier": 1.0}
        return s

    site = create_cluster(tmp_path / "c", nodes=2, topology="ring", sections=sections)[0]
    daemon = SiteDaemon(load_daemon_settings(site))
    daemon.peer.train(0)
    daemon.peer.seal_outgoing(0)
    daemon.peer.complete_round(0)
    daemon.metrics.close()
    assert daemon.peer.epsilon > 0
    yield site


def start(site: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """`gossipmed run` up to the point where the daemon would start serving."""
    from node.commands import run as run_command

    original = run_command.run

    def construct_only(args: Any) -> int:  # build the daemon, do not serve
        SiteDaemon(load_daemon_settings(args.site)).metrics.close()
        return 0

    run_command.run = construct_only  # type: ignore[assignment]
    try:
        code = main(["run", "--site", str(site)])
    finally:
        run_command.run = original  # type: ignore[assignment]
    return code, capsys.readouterr().err


def test_the_ledger_lives_outside_the_state_folder_and_survives_its_deletion(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spent = PrivacyLedger.load(ledger_path(site)).epsilon
    assert spent > 0 and not (site / STATE_DIR / "ledger.json").exists()
    shutil.rmtree(site / STATE_DIR)  # the operator's reaction to a crash loop
    (site / "metrics.jsonl").unlink()
    assert start(site, capsys)[0] == 0
    daemon = SiteDaemon(load_daemon_settings(site))
    assert daemon.peer.epsilon == pytest.approx(spent)  # not reset
    daemon.metrics.close()


def test_a_missing_ledger_stops_the_daemon_with_one_line(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ledger_path(site).unlink()
    code, err = start(site, capsys)
    assert code == 2 and err.count("\n") == 1
    assert "ledger" in err and "missing" in err and "gossipmed ledger reset" in err


def test_a_ledger_that_accounts_for_less_stops_the_daemon(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = PrivacyLedger.load(ledger_path(site))
    PrivacyLedger(budget=old.budget, delta=old.delta).save(ledger_path(site))  # a fresh one
    code, err = start(site, capsys)
    assert code == 2 and "accounts for epsilon 0.0000" in err


def test_a_reset_is_explicit_archived_carried_over_and_audited(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spent = PrivacyLedger.load(ledger_path(site)).epsilon
    ledger_path(site).unlink()  # lost: the site's records still show what was spent
    assert main(["ledger", "reset", "--site", str(site)]) == 2  # --confirm is required
    capsys.readouterr()
    assert main(["ledger", "reset", "--site", str(site), "--confirm", "--json"]) == 0
    done = json.loads(capsys.readouterr().out)
    assert done["carried_over"] == pytest.approx(spent)
    fresh = PrivacyLedger.load(ledger_path(site))
    assert fresh.epsilon == 0 and fresh.total_spent == pytest.approx(spent)
    lines = read_audit(load_daemon_settings(site).site.audit_path)
    assert any("privacy budget reset" in line["reason"] for line in lines)
    assert start(site, capsys)[0] == 0
    # a second reset keeps the first ledger generation's total and archives the ledger
    assert main(["ledger", "reset", "--site", str(site), "--confirm", "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["archived"] and Path(again["archived"]).is_file()
    assert again["carried_over"] == pytest.approx(spent)
