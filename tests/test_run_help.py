"""What `gossipmed run --help` and the systemd unit promise about exit codes (issue #20): a
checkpoint of an invalid round exits 2 before the ledger opens, nothing a peer sends ends the
daemon, and the final round ends it with 0. tests/test_daemon_final_round.py and
tests/test_daemon_claims.py check that it is true."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from node.cli import main

UNIT = Path(__file__).resolve().parents[1] / "deploy" / "gossipmed@.service"


def flat(text: str) -> str:
    return re.sub(r"[\s#]+", " ", text)


def test_run_help_states_the_exit_codes_a_peer_cannot_change(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["run", "--help"]) == 0
    text = flat(capsys.readouterr().out)
    assert "at or above 2**40" in text and "before the privacy ledger is opened" in text
    assert "Nothing a peer sends makes the daemon exit" in text
    assert "2**40 - 1 stops with exit 0" in text


def test_the_service_unit_states_them_too() -> None:
    text = flat(UNIT.read_text(encoding="utf-8"))
    assert "at or above 2**40, refused before the privacy ledger opens" in text
    assert "Nothing a peer sends makes the daemon exit" in text
    assert "round 2**40 - 1 reached" in text
