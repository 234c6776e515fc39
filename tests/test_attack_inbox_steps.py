"""What one neighbour can make a site buffer is what a round needs, whatever steps it names.

The wire allows steps 0..63 in any round; a round of a consortium with `gossip_steps` = k
has steps 0..k-1 only. An update for a step the round does not have is never mixed, so
buffering it would only hold memory: on 428312f (and before this fix) one neighbour's
authentic updates for steps 1..63 of each of the max_future_rounds + 1 open rounds were all
kept, 64 x (max_future_rounds + 1) full decoded adapter states per neighbour (192 at the
default, 4,160 at max_future_rounds = 64) instead of (max_future_rounds + 1) x k, refilled
every round. Here a real Peer receives real envelopes sealed with the adversary's real key.
"""

from __future__ import annotations

import networkx as nx
from adversary import enrol
from hypothesis import given, settings
from hypothesis import strategies as st

from gossipmed.wire.update import MAX_STEPS_PER_ROUND
from node.round.audit import ListAudit
from node.round.peer import Peer
from node.sim.quadratic import QuadraticFactory
from topology.schedule import MixingSchedule

MAX_FUTURE = 2


def _site(gossip_steps: int) -> tuple[Peer, object, ListAudit]:
    graph = nx.path_graph(3)
    schedule = MixingSchedule.from_graphs([graph])
    names = schedule.sites
    world = enrol(names, edges=[(names[u], names[v]) for u, v in graph.edges])
    learners = QuadraticFactory(n_sites=3, seed=0, lr=0.1, dim=4).site_learners()
    audit = ListAudit()
    peer = Peer(
        name=names[1],
        learner=learners[1],
        sealer=world.sealer(names[1]),
        schedule=schedule,
        local_steps=1,
        gossip_steps=gossip_steps,
        max_future_rounds=MAX_FUTURE,
        audit=audit,
    )
    return peer, world.adversary(names[0]), audit


@settings(max_examples=15, deadline=None)
@given(
    gossip_steps=st.integers(min_value=1, max_value=3),
    sends=st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=MAX_FUTURE + 1),
            st.integers(min_value=0, max_value=MAX_STEPS_PER_ROUND - 1),
        ),
        min_size=1,
        max_size=40,
    ),
)
def test_one_neighbour_fills_at_most_the_exchanges_a_round_has(
    gossip_steps: int, sends: list[tuple[int, int]]
) -> None:
    peer, mallory, _ = _site(gossip_steps)
    state = peer.learner.get_state()
    for round, step in sorted(sends):
        data = mallory.envelope(to=peer.name, round=round, step=step, tensors=state)
        if peer.receive(data):
            assert step < gossip_steps
    buffered = peer._inbox._buffers  # what is held in memory for later exchanges
    assert all(step < gossip_steps for _, step in buffered)
    assert len(buffered) <= (MAX_FUTURE + 1) * gossip_steps


def test_every_step_of_every_open_round_in_order_keeps_one_state_per_exchange() -> None:
    """The sender's best order (the sealer's replay rule wants exchanges increasing)."""
    peer, mallory, audit = _site(1)
    state = peer.learner.get_state()
    kept = 0
    for round in range(MAX_FUTURE + 1):
        for step in range(MAX_STEPS_PER_ROUND):
            data = mallory.envelope(to=peer.name, round=round, step=step, tensors=state)
            kept += peer.receive(data)
    assert kept == MAX_FUTURE + 1  # was 64 x (MAX_FUTURE + 1) = 192
    refused = [e for e in audit.events if e.get("reason") == "no_such_step"]
    assert len(refused) == (MAX_FUTURE + 1) * (MAX_STEPS_PER_ROUND - 1)
