"""A member's invalid envelopes are audited as its own, and do not use up anyone else's
refused-record budget.

A refusal before the envelope's sender is verified (a bad signature, a bad header, a
replay) used to be audited with no sender at all. The audit log's per-sender rate limit
then put every such record of every member into one shared budget: one member sending
garbage named nobody and suppressed the records of every other member's invalid messages
for the rest of the window. The transport knows who sent the bytes (Noise-authenticated);
the record carries that. Real RoundDriver pump, Peer, AuditLogSink and AuditLog over the
in-memory transport; the adversary holds a real member's key.
"""

from __future__ import annotations

import networkx as nx
import trio
import trio.testing
from adversary import enrol

from gossipmed.consortium.audit import AuditLog, read_audit
from node.net.memory import MemoryNetwork
from node.round.audit import AuditLogSink
from node.round.driver import RoundDriver
from node.round.peer import Peer
from node.sim.quadratic import QuadraticFactory
from topology.schedule import MixingSchedule

PER_WINDOW = 5
FLOOD = 40


def test_garbage_is_attributed_to_its_sender_and_spares_other_members_budget(tmp_path) -> None:
    graph = nx.star_graph(2)  # site-00 the hub; site-01 (mallory) and site-02 (honest)
    schedule = MixingSchedule.from_graphs([graph])
    names = schedule.sites
    world = enrol(names, edges=[(names[u], names[v]) for u, v in graph.edges])
    learners = QuadraticFactory(n_sites=3, seed=0, lr=0.1, dim=4).site_learners()
    log = AuditLog(tmp_path / "audit.jsonl", refused_per_window=PER_WINDOW, window_s=3600.0)
    hub, mallory_name, honest_name = names
    peer = Peer(
        name=hub,
        learner=learners[0],
        sealer=world.sealer(hub),
        schedule=schedule,
        local_steps=1,
        audit=AuditLogSink(log),
    )
    network = MemoryNetwork()
    driver = RoundDriver(peer, network.endpoint(hub), round_timeout_s=1.0)
    mallory = world.adversary(mallory_name, transport=network.endpoint(mallory_name))
    honest = world.adversary(honest_name, transport=network.endpoint(honest_name))
    state = learners[1].get_state()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(driver.pump)
            for _ in range(FLOOD):  # invalid: not an envelope at all
                await mallory.send(hub, b"\x81\xa1h\xc4\x01x")
            # one invalid envelope from an honest member: a header its sealer would refuse
            await honest.send(hub, honest.envelope(to=hub, round=0, tensors=state, version=99))
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()

    trio.run(main)
    log.flush_suppressed()
    records = read_audit(log.path)
    from_mallory = [r for r in records if r["sender"] == mallory_name]
    assert len(from_mallory) == PER_WINDOW + 1  # its budget, then one summary record
    assert sum(r.get("suppressed", 1) for r in from_mallory) == FLOOD
    assert [r["outcome"] for r in records if r["sender"] == honest_name] == ["rejected"]
    assert not [r for r in records if r["sender"] is None]
