"""Catch-up on the secure-aggregation path (issue #20): frames' round claims are capped below
MAX_ROUND, count only while recent, and a jump on them is bounded like any other."""

from __future__ import annotations

import trio.testing
from test_secagg_driver import _sites

from gossipmed.wire.update import MAX_ROUND
from node.net.memory import MemoryNetwork
from node.round.driver import RoundDriver
from node.round.progress import FINAL_ROUND, MAX_JUMP_ROUNDS, recent_window_s


def frames_to_site_00(round: int, senders: list[str]) -> tuple[object, list[tuple[str, bytes]]]:
    peers, sessions, _guards = _sites()
    out = []
    for sender in senders:
        sessions[sender].open(round)
        frames = sessions[sender].begin(round, peers[sender].learner.get_state())
        out.append((sender, next(d for r, d in frames if r == "site-00")))
    return (peers, sessions), out


def test_a_quorum_claiming_2_40_moves_a_secure_site_one_bounded_jump_below_max_round() -> None:
    (peers, sessions), frames = frames_to_site_00(MAX_ROUND, ["site-01", "site-02", "site-03"])
    session = sessions["site-00"]  # type: ignore[index]
    session.open(0)
    for sender, data in frames:
        session.handle(sender, data)
    assert session.furthest_round == FINAL_ROUND  # capped below MAX_ROUND
    driver = RoundDriver(
        peers["site-00"],  # type: ignore[index]
        MemoryNetwork().endpoint("site-00"),
        round_timeout_s=session.timeout_s,
        secure=session,
    )
    assert driver._catch_up_target(0) == MAX_JUMP_ROUNDS
    assert driver._catch_up_target(FINAL_ROUND - 3) == FINAL_ROUND  # where the site stops


def test_claims_of_neighbours_not_heard_recently_do_not_count() -> None:
    (_peers, sessions), frames = frames_to_site_00(9, ["site-01", "site-02", "site-03"])
    session = sessions["site-00"]  # type: ignore[index]
    clock = trio.testing.MockClock(rate=0)
    session.clock = clock.current_time
    session.open(0)
    for sender, data in frames:
        session.handle(sender, data)
    assert session.furthest_round == 9
    clock.jump(recent_window_s(session.timeout_s) + 1)
    assert session.furthest_round is None
