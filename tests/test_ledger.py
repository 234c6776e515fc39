"""The privacy ledger: monotone, never over budget, persistent across reloads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gossipmed.errors import PrivacyBudgetExceeded, PrivacyError
from gossipmed.privacy.dp import epsilon_for
from gossipmed.privacy.ledger import PrivacyLedger

MECH = {"noise_multiplier": 1.0, "sample_rate": 0.05}


def test_ledger_is_monotone_and_refuses_to_exceed_budget(tmp_path: Path) -> None:
    ledger = PrivacyLedger.open(tmp_path / "ledger.json", budget=2.0, delta=1e-5)
    seen = [ledger.epsilon]
    refused = False
    for _ in range(200):
        try:
            ledger.charge(steps=10, **MECH)
        except PrivacyBudgetExceeded as exc:
            assert "budget" in str(exc)
            refused = True
            break
        seen.append(ledger.epsilon)
    assert refused
    assert seen == sorted(seen) and seen[-1] <= 2.0
    before = ledger.history
    with pytest.raises(PrivacyBudgetExceeded):
        ledger.charge(steps=10, **MECH)
    assert ledger.history == before  # a refused charge records nothing


def test_ledger_survives_reload(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    ledger = PrivacyLedger.open(path, budget=8.0, delta=1e-5)
    ledger.charge(steps=30, **MECH)
    ledger.charge(steps=20, noise_multiplier=2.0, sample_rate=0.05)
    again = PrivacyLedger.open(path, budget=8.0, delta=1e-5)
    assert again.history == ledger.history
    assert again.epsilon == pytest.approx(ledger.epsilon)
    assert again.epsilon > epsilon_for(steps=30, delta=1e-5, **MECH)
    assert json.loads(path.read_text())["version"] == 1


def test_consecutive_identical_charges_compose_like_one(tmp_path: Path) -> None:
    ledger = PrivacyLedger(budget=100, delta=1e-5)
    for _ in range(5):
        ledger.charge(steps=20, **MECH)
    assert ledger.history == [(1.0, 0.05, 100)]
    assert ledger.epsilon == pytest.approx(epsilon_for(steps=100, delta=1e-5, **MECH))


def test_ledger_refuses_a_mismatched_delta_or_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    PrivacyLedger.open(path, budget=8.0, delta=1e-5)
    with pytest.raises(PrivacyError, match="delta"):
        PrivacyLedger.open(path, budget=8.0, delta=1e-6)
    path.write_text("{broken")
    with pytest.raises(PrivacyError, match="not valid JSON"):
        PrivacyLedger.load(path)
