"""Secure aggregation only after fresh training (issue #20, finding 3).

Without training a site's next state is a public linear function of states its neighbours
already summed, x(r + 1) = W x(r), so one receiver that keeps its own sums s(r) = sum_j w_0j
x_j(r) of a few training-free rounds solves for its neighbours' (and their neighbours')
individual states. Here sites that do not train (training off, as for a spent budget) run
the real round driver, sessions and protocol over the in-memory transport, and site-00
plays that receiver: it must get no sum at all, so nothing to solve from.
"""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import torch
import trio
from nacl.signing import SigningKey

from gossipmed.mixing.secagg import ContributionGuard, FixedPoint, InstanceId
from node.net.memory import MemoryNetwork
from node.round.driver import RoundDriver
from node.round.peer import Peer
from node.round.secure_mix import SecureOutcome
from node.round.secure_session import SecureSession
from node.sim.quadratic import QuadraticFactory
from node.sim.simulation import build_sealers
from topology.schedule import MixingSchedule

ROSTER = b"F" * 32
ROUNDS = 8
DIM = 4
# degrees 3 to 4, no symmetry that fixes site-00: its sums of 6 rounds determine all 6 states
EDGES = [(0, 3), (0, 4), (0, 5), (1, 2), (1, 4), (1, 5), (2, 3), (2, 5), (3, 4), (4, 5)]


def _untrained_sites(graph: nx.Graph) -> tuple[dict[str, Peer], dict[str, SecureSession]]:
    schedule = MixingSchedule.from_graphs([graph])
    names = schedule.sites
    sealers = build_sealers(
        names, mode="plaintext", edges=[(names[u], names[v]) for u, v in graph.edges], topology=""
    )
    learners = QuadraticFactory(n_sites=len(names), seed=0, lr=0.1, dim=DIM).site_learners()
    keys = {name: SigningKey.generate() for name in names}
    public = {name: bytes(k.verify_key) for name, k in keys.items()}
    peers, sessions = {}, {}
    for i, name in enumerate(names):
        peers[name] = Peer(
            name=name,
            learner=learners[i],
            sealer=sealers[name],
            schedule=schedule,
            local_steps=1,
            train=False,  # nobody trains: training off, or every budget spent
            secure=True,
        )
        sessions[name] = SecureSession(
            name=name,
            signing_key=keys[name],
            sign_keys=public,
            roster_hash=ROSTER,
            schedule=schedule,
            schema={"x": (DIM,)},
            fixed_point=FixedPoint(),
            timeout_s=10.0,
        )
    return peers, sessions


def _run(peers: dict[str, Peer], sessions: dict[str, SecureSession]) -> None:
    done = {name: trio.Event() for name in peers}
    network = MemoryNetwork()

    async def site(name: str) -> None:
        driver = RoundDriver(
            peers[name],
            network.endpoint(name),
            round_timeout_s=10.0,
            retry_pause_s=0.05,
            secure=sessions[name],
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(driver.pump)
            for r in range(ROUNDS):
                await driver.run_round(r)
            done[name].set()
            for event in done.values():
                await event.wait()
            nursery.cancel_scope.cancel()

    async def main() -> None:
        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                for name in peers:
                    nursery.start_soon(site, name)

    trio.run(main)


def _solvable(
    w: np.ndarray, sums: dict[int, np.ndarray], own: np.ndarray
) -> tuple[set[int], np.ndarray]:
    """The attacker's algebra: rows of W^(r+1) - w_00 W^r (site 0's sum of round r) and e_0
    (its own start) against the start states; the sites whose start lies in the row space,
    and the least-squares starts."""
    n = w.shape[0]
    rows, rhs = [np.eye(n)[0]], [own]
    power = np.eye(n)
    for r in range(max(sums, default=-1) + 1):
        if r in sums:
            rows.append((w @ power)[0] - w[0, 0] * power[0])
            rhs.append(sums[r])
        power = w @ power
    a = np.array(rows)
    solved = np.linalg.lstsq(a, np.array(rhs), rcond=1e-9)[0]
    projector = np.linalg.pinv(a, rcond=1e-9) @ a
    known = {j for j in range(n) if np.allclose(projector[j], np.eye(n)[j], atol=1e-6)}
    return known, solved


def test_a_receiver_gets_no_sum_to_solve_from_when_nobody_trains() -> None:
    graph = nx.Graph(EDGES)
    peers, sessions = _untrained_sites(graph)
    names = sorted(peers)
    attacker = peers[names[0]]
    starts = np.stack([peers[n].learner.get_state()["x"].double().numpy() for n in names])
    sums: dict[int, np.ndarray] = {}
    accept = attacker.accept_secure

    def keep(round: int, outcome: SecureOutcome) -> None:
        if outcome.result is not None:
            sums[round] = outcome.result.tensors(dtype=torch.float64)["x"].numpy()
        accept(round, outcome)

    attacker.accept_secure = keep  # type: ignore[method-assign]
    _run(peers, sessions)
    schedule = attacker.schedule
    w = np.array([[schedule.row(0, i).get(j, 0.0) for j in names] for i in names])
    known, solved = _solvable(w, sums, starts[0])
    others = {j for j in known if j != 0}
    error = max((float(np.abs(solved[j] - starts[j]).max()) for j in others), default=0.0)
    assert others == set(), f"site-00 solved sites {sorted(others)} (max error {error:.1e})"
    assert sums == {}
    assert all(s.guard.last(r) is None for s in sessions.values() for r in names)


def test_the_guard_admits_one_contribution_per_receiver_per_training_step() -> None:
    from gossipmed.mixing.secagg import StaleState

    guard = ContributionGuard()
    with pytest.raises(StaleState):  # nothing trained yet
        guard.admit(InstanceId(ROSTER, "a", 0))
    guard.note_trained(0)
    assert guard.fresh_for(0) and not guard.fresh_for(1)
    guard.admit(InstanceId(ROSTER, "a", 0))
    guard.admit(InstanceId(ROSTER, "b", 0))  # the same fresh state to each receiver
    with pytest.raises(StaleState):  # no training since the last contribution to "a"
        guard.admit(InstanceId(ROSTER, "a", 1))
    guard.note_trained(1)
    guard.admit(InstanceId(ROSTER, "a", 1))
    restored = ContributionGuard()
    restored.load_state_dict(guard.state_dict())  # a restart keeps the record, not the ticket
    assert not restored.fresh_for(1)
    with pytest.raises(StaleState):
        restored.admit(InstanceId(ROSTER, "c", 1))


def test_a_session_without_a_trained_state_contributes_to_nobody_and_sums_nothing() -> None:
    _peers, sessions = _untrained_sites(nx.Graph(EDGES))
    session = sessions[sorted(sessions)[0]]
    session.open(0)
    assert session.begin(0, None) == []
    outcome = session.outcome(0)
    assert outcome.result is None and "training" in (outcome.skipped or "")
    assert session.guard.last(sorted(sessions)[1]) is None


def test_a_round_plan_with_secure_aggregation_and_no_training_is_refused() -> None:
    from gossipmed.errors import ConfigError
    from node.round.builder import RoundPlan

    with pytest.raises(ConfigError, match="needs training"):
        RoundPlan(local_steps=1, gossip_steps=1, train=False, secure=True)
    assert RoundPlan(local_steps=1, gossip_steps=1, train=False).train is False
