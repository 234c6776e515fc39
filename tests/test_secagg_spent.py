"""Under secure aggregation a site whose privacy budget is spent runs no further rounds
(issue #20, finding 3): it would otherwise keep contributing training-free states, public
linear functions of sums its neighbours already hold. It rests in phase `budget_spent`
(still serving its status), stops when a number of rounds was planned, and its neighbours go
on without it, counting it as a dropout, never as an offender. Real peers, sessions and
round drivers over the in-memory transport."""

from __future__ import annotations

import networkx as nx
import pytest
import trio
from nacl.signing import SigningKey

from gossipmed.errors import PrivacyBudgetExceeded
from gossipmed.learn.learner import Learner
from gossipmed.mixing.secagg import FixedPoint
from node.net.memory import MemoryNetwork
from node.round.audit import ListAudit
from node.round.driver import RoundDriver
from node.round.peer import Peer
from node.round.secure_session import SecureSession
from node.sim.quadratic import QuadraticFactory, QuadraticLearner
from node.sim.simulation import build_sealers
from topology.schedule import MixingSchedule

ROSTER = b"S" * 32
N = 5  # complete graph: 4 contributors per instance, threshold 3, one dropout tolerated
SPENT = "site-02"
BUDGET_ROUNDS = 2  # SPENT's ledger allows two training rounds
ROUNDS = 4
TIMEOUT = 5.0  # a phase share of 1 s: a dropout costs one share per round


class BudgetedLearner:
    """A quadratic learner whose budget allows `rounds` training rounds, then refuses, as
    the DP learner does when its ledger is spent."""

    def __init__(self, inner: Learner, rounds: int) -> None:
        self.inner = inner
        self.left = rounds

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def train_round(self, *, steps: int) -> object:
        if self.left <= 0:
            raise PrivacyBudgetExceeded("the privacy budget is spent")
        self.left -= 1
        return self.inner.train_round(steps=steps)


def _sites() -> tuple[dict[str, Peer], dict[str, SecureSession], dict[str, ListAudit]]:
    graph = nx.complete_graph(N)
    schedule = MixingSchedule.from_graphs([graph])
    names = schedule.sites
    sealers = build_sealers(
        names, mode="plaintext", edges=[(names[u], names[v]) for u, v in graph.edges], topology=""
    )
    learners = QuadraticFactory(n_sites=N, seed=0, lr=0.1, dim=8).site_learners()
    keys = {name: SigningKey.generate() for name in names}
    public = {name: bytes(k.verify_key) for name, k in keys.items()}
    peers, sessions, audits = {}, {}, {}
    for i, name in enumerate(names):
        learner: object = learners[i]
        if name == SPENT:
            assert isinstance(learner, QuadraticLearner)
            learner = BudgetedLearner(learner, BUDGET_ROUNDS)
        audits[name] = ListAudit()
        peers[name] = Peer(
            name=name,
            learner=learner,  # type: ignore[arg-type]
            sealer=sealers[name],
            schedule=schedule,
            local_steps=1,
            secure=True,
            audit=audits[name],
        )
        sessions[name] = SecureSession(
            name=name,
            signing_key=keys[name],
            sign_keys=public,
            roster_hash=ROSTER,
            schedule=schedule,
            schema={"x": (8,)},
            fixed_point=FixedPoint(),
            timeout_s=TIMEOUT,
            audit=audits[name].record,
        )
    return peers, sessions, audits


@pytest.mark.parametrize("planned", [ROUNDS, 0])
def test_a_spent_site_runs_no_further_rounds_and_its_neighbours_count_it_as_a_dropout(
    planned: int,
) -> None:
    peers, sessions, audits = _sites()
    network = MemoryNetwork()
    drivers = {
        name: RoundDriver(
            peers[name],
            network.endpoint(name),
            round_timeout_s=TIMEOUT,
            retry_pause_s=0.05,
            secure=sessions[name],
        )
        for name in peers
    }
    spent_returned = trio.Event()
    others_done = {name: trio.Event() for name in peers if name != SPENT}

    async def spent_site() -> None:
        await drivers[SPENT].run(rounds=planned)  # 0: run until cancelled
        spent_returned.set()

    async def other(name: str) -> None:
        await drivers[name].run(rounds=ROUNDS)
        others_done[name].set()

    async def main() -> None:
        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                for driver in drivers.values():
                    await nursery.start(driver.pump)
                nursery.start_soon(spent_site)
                for name in others_done:
                    nursery.start_soon(other, name)
                for event in others_done.values():
                    await event.wait()
                if planned:
                    await spent_returned.wait()  # it stopped by itself (the daemon exits 0)
                else:  # it rests, serving its status, until stopped
                    assert not spent_returned.is_set()
                nursery.cancel_scope.cancel()

    trio.run(main)
    state = drivers[SPENT].state
    assert state.phase == "budget_spent"
    assert state.completed == BUDGET_ROUNDS + 1  # the round that found the budget spent
    assert peers[SPENT].budget_spent
    spent_events = [e["event"] for e in audits[SPENT].events]
    assert "secure_rounds_stopped" in spent_events
    assert not any(e == "secure_contribution_refused" for e in spent_events)
    summed_without_it = 0
    for name in others_done:
        assert drivers[name].state.completed == ROUNDS
        late = [e for e in audits[name].events if e.get("round", -1) >= BUDGET_ROUNDS]
        sums = [e for e in late if e["event"] == "secure_exchange"]
        dropouts = {e["round"]: e["dropped"] for e in late if e["event"] == "secure_dropout"}
        for exchange in sums:  # every sum after the stop is without it, and says so
            assert SPENT not in exchange["contributors"]
            assert SPENT in dropouts[exchange["round"]]
        summed_without_it += len(sums)
        offences = [e for e in audits[name].events if e.get("sender") == SPENT]
        assert offences == []  # never a refused frame, never named as an offender
        assert all(e["event"] != "mix_rolled_back" for e in audits[name].events)
    assert summed_without_it >= len(others_done)  # the others went on summing without it


def test_status_and_metrics_show_the_budget_spent_phase() -> None:
    from node.daemon.control_routes import prometheus_text

    page = prometheus_text({"site": SPENT, "phase": "budget_spent", "round": 3})
    assert f'gossipmed_budget_spent{{site="{SPENT}"}} 1' in page
    page = prometheus_text({"site": SPENT, "phase": "exchanging", "round": 3})
    assert f'gossipmed_budget_spent{{site="{SPENT}"}} 0' in page
