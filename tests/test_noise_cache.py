"""Noise multipliers remembered across runs: the file only saves time. A remembered value is
used only when the accountant shows it spends at most the target, so no content of the file
(stale, corrupted, edited by someone else) can make a site spend more than its budget."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from opacus.accountants.utils import get_noise_multiplier

from gossipmed.privacy import dp
from gossipmed.privacy.noise_cache import CACHE_FILE, cache_key

SEARCH = {"target_epsilon": 1.0, "delta": 1e-5, "sample_rate": 0.001, "steps": 10}


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    dp._search_noise.cache_clear()  # the per-process memory, so each test reads the file
    yield tmp_path / "gossipmed" / CACHE_FILE
    dp._search_noise.cache_clear()


def opacus_search() -> float:
    return float(
        get_noise_multiplier(
            target_epsilon=SEARCH["target_epsilon"],
            target_delta=SEARCH["delta"],
            sample_rate=SEARCH["sample_rate"],
            steps=int(SEARCH["steps"]),
            accountant="rdp",
        )
    )


def key() -> str:
    return cache_key(accountant="rdp", **SEARCH)  # type: ignore[arg-type]


def test_the_first_search_is_opacus_own_and_is_remembered(cache: Path) -> None:
    sigma = dp.calibrate_noise(**SEARCH)  # type: ignore[arg-type]
    assert sigma == opacus_search()
    assert json.loads(cache.read_text()) == {key(): sigma}
    dp._search_noise.cache_clear()
    assert dp.calibrate_noise(**SEARCH) == sigma  # type: ignore[arg-type]


@pytest.mark.parametrize("planted", [1e-3, 0.5, 0.8, -1.0, float("nan")])
def test_a_remembered_value_that_would_overspend_is_never_used(cache: Path, planted: float) -> None:
    assert not planted >= opacus_search()  # each would spend more than the target
    cache.parent.mkdir(parents=True)
    cache.write_text(json.dumps({key(): planted}, allow_nan=True))
    sigma = dp.calibrate_noise(**SEARCH)  # type: ignore[arg-type]
    assert sigma == opacus_search()
    assert json.loads(cache.read_text())[key()] == sigma  # replaced by the checked search


def test_more_noise_than_needed_is_accepted_it_costs_utility_not_privacy(cache: Path) -> None:
    cache.parent.mkdir(parents=True)
    cache.write_text(json.dumps({key(): 50.0}))
    assert dp.calibrate_noise(**SEARCH) == 50.0  # type: ignore[arg-type]


@pytest.mark.parametrize("content", ["not json", "[1, 2]", '{"k": "v"}', "x" * (2 << 20)])
def test_an_unreadable_or_oversized_file_is_ignored(cache: Path, content: str) -> None:
    cache.parent.mkdir(parents=True)
    cache.write_text(content)
    assert dp.calibrate_noise(**SEARCH) == opacus_search()  # type: ignore[arg-type]
