"""Per-neighbour waits: learnt from recent arrivals, bounded by the site's own work for a
straggler, and never longer than the round timeout, whatever a neighbour does."""

from __future__ import annotations

import math

import pytest

from gossipmed.errors import ConfigError
from node.round.patience import Patience, PatienceSettings

T = 30.0  # round_timeout_s


def test_a_neighbour_without_history_gets_the_whole_timeout() -> None:
    assert Patience().wait_s("b", own_work_s=10.0, timeout_s=T) == T


def test_a_punctual_neighbour_gets_a_margin_over_its_slowest_recent_arrival() -> None:
    p = Patience(PatienceSettings(floor_s=1.0, margin=2.0, own_share=0.25, window=3))
    for delay in (0.5, 1.5, 0.2):
        p.heard("b", delay)
    assert p.wait_s("b", own_work_s=40.0, timeout_s=T) == pytest.approx(3.0)
    for _ in range(3):  # the slow arrival leaves the window
        p.heard("b", 0.1)
    assert p.wait_s("b", own_work_s=40.0, timeout_s=T) == pytest.approx(1.0)  # the floor


def test_a_straggler_may_lengthen_a_round_only_by_a_share_of_our_own_work() -> None:
    p = Patience(PatienceSettings(floor_s=1.0, margin=2.0, own_share=0.25))
    p.heard("slow", 25.0)  # within the timeout, but 50 s of margin would follow its pace
    assert p.wait_s("slow", own_work_s=8.0, timeout_s=T) == pytest.approx(2.0)
    assert p.wait_s("slow", own_work_s=0.001, timeout_s=T) == pytest.approx(1.0)


def test_a_missed_neighbour_gets_the_allowance_until_it_is_punctual_for_a_whole_window() -> None:
    p = Patience(PatienceSettings(floor_s=1.0, margin=2.0, own_share=0.25, window=2))
    p.missed("dead")
    assert p.wait_s("dead", own_work_s=20.0, timeout_s=T) == pytest.approx(5.0)
    p.heard("dead", 0.5)
    assert p.wait_s("dead", own_work_s=20.0, timeout_s=T) == pytest.approx(5.0)
    p.heard("dead", 0.5)
    assert p.wait_s("dead", own_work_s=20.0, timeout_s=T) == pytest.approx(1.0)


def test_no_neighbour_stretches_a_wait_beyond_the_timeout_or_touches_another_one() -> None:
    p = Patience(PatienceSettings(floor_s=1.0, margin=8.0, own_share=4.0))
    p.heard("honest", 0.2)
    before = p.wait_s("honest", own_work_s=100.0, timeout_s=T)
    for delay in (1e9, math.inf, math.nan, -5.0, 29.9):
        p.heard("hostile", delay)
        assert p.wait_s("hostile", own_work_s=100.0, timeout_s=T) <= T
        assert p.wait_s("hostile", own_work_s=math.inf, timeout_s=T) <= T
    assert p.wait_s("honest", own_work_s=100.0, timeout_s=T) == before
    assert p.describe(own_work_s=100.0, timeout_s=T)["honest"] == before


@pytest.mark.parametrize(
    "kwargs",
    [{"floor_s": -1.0}, {"margin": 0.5}, {"own_share": math.nan}, {"window": 0}, {"floor_s": True}],
)
def test_settings_are_validated(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match="patience"):
        PatienceSettings(**kwargs)  # type: ignore[arg-type]
