"""Issue #13 finding 5: only authentic updates of graph neighbours move a site's round.

Envelopes refused as too early or from a non-neighbour used to update the catch-up state, and
catch-up built a list sized by the attacker's round number: round 2^63 - 1 killed the daemon
with MemoryError. Now a member without an edge to us cannot inform catch-up at all, a
neighbour's far-ahead update still can (or a restarted site could never rejoin), nothing is
allocated in proportion to a jump, rounds above 2^40 never get past the wire, and the replay
state moves only when an update is accepted.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import msgpack
import networkx as nx
import torch
import trio
from nacl.public import Box, PublicKey

from gossipmed.consortium.crypto import generate_identity
from gossipmed.consortium.member import Member
from gossipmed.consortium.roster import Roster
from gossipmed.learn.learner import AdapterState, EvalStats, TrainStats
from gossipmed.wire.envelope import EnvelopeSealer
from gossipmed.wire.envelope_format import signed_message
from gossipmed.wire.tensors import encode_payload
from gossipmed.wire.update import MAX_ROUND
from node.net.memory import MemoryNetwork
from node.round.audit import ListAudit
from node.round.driver import RoundDriver
from node.round.peer import Peer
from node.round.progress import FINAL_ROUND
from topology.schedule import MixingSchedule

NAMES = ("site-00", "site-01", "site-02", "mallory")


class Still:
    ledger = None

    def __init__(self) -> None:
        self.x = torch.zeros(4)

    def get_state(self) -> AdapterState:
        return {"x": self.x.clone()}

    def set_state(self, state: Mapping[str, torch.Tensor]) -> None:
        self.x = state["x"].clone()

    def train_round(self, *, steps: int) -> TrainStats:
        return TrainStats(train_loss=0.0, epsilon=0.0, n_examples=0, steps=steps, seconds=0.0)

    def evaluate(self) -> EvalStats:
        return EvalStats(loss=0.0, accuracy=0.0)

    def state_dict(self) -> None:
        return None


def world() -> tuple[Peer, dict[str, EnvelopeSealer], ListAudit]:
    """site-00's peer on a path 00 - 01 - 02; mallory is a member with no edge at all."""
    ids = {n: generate_identity() for n in NAMES}
    roster = Roster(
        members=tuple(
            Member(name=n, peer_id=i.peer_id, sign_key=i.sign_key, box_key=i.box_key)
            for n, i in ids.items()
        ),
        edges=(("site-00", "site-01"), ("site-01", "site-02")),
    )
    sealers = {n: EnvelopeSealer(identity=ids[n], roster=roster) for n in NAMES}
    graph = nx.Graph([("site-00", "site-01"), ("site-01", "site-02")])
    audit = ListAudit()
    peer = Peer(
        name="site-00",
        learner=Still(),
        sealer=sealers["site-00"],
        schedule=MixingSchedule.from_graphs([graph]),
        local_steps=1,
        audit=audit,
    )
    return peer, sealers, audit


def update(sealers: dict[str, EnvelopeSealer], sender: str, round: int) -> bytes:
    return sealers[sender].seal(
        update_tensors={"x": torch.ones(4)}, round=round, recipient="site-00", epsilon=0.0
    )


def test_a_member_without_an_edge_cannot_move_the_round() -> None:
    peer, sealers, audit = world()
    assert not peer.receive(update(sealers, "mallory", 10**9))
    assert [e["reason"] for e in audit.events] == ["not_a_neighbour"]
    assert peer.furthest_neighbour_round() is None
    assert peer.sealer.state_dict() == {"v": 2, "last": {}}  # replay state untouched


def test_a_neighbour_far_ahead_informs_catch_up_without_moving_the_replay_state() -> None:
    peer, sealers, audit = world()
    assert not peer.receive(update(sealers, "site-01", 500))  # too early to buffer
    assert [e["reason"] for e in audit.events] == ["too_early"]
    assert peer.furthest_neighbour_round() == 500
    assert peer.sealer.state_dict() == {"v": 2, "last": {}}
    assert peer.receive(update(sealers, "site-01", 1))  # its older updates still count


def test_rounds_past_the_bound_never_reach_the_peer() -> None:
    """A neighbour's validly signed envelope claiming round 2^63 - 1 is refused as malformed
    by the wire, before the peer or catch-up sees it."""
    peer, sealers, audit = world()
    payload = encode_payload({"x": torch.ones(4)}, epsilon=0.0)
    neighbour = sealers["site-01"]
    header = msgpack.packb(
        {
            "v": 2,
            "sender": "site-01",
            "recipient": "site-00",
            "round": 2**63 - 1,
            "step": 0,
            "ts": time.time(),
            "codec": "raw",
            "size": len(payload),
            "roster": neighbour.roster.hash,
        },
        use_bin_type=True,
    )
    box = Box(neighbour.identity.box_private_key, PublicKey(peer.sealer.identity.box_key))
    ct = bytes(box.encrypt(payload))
    sig = neighbour.identity.sign(signed_message(header, ct))
    forged = msgpack.packb({"h": header, "c": ct, "s": sig}, use_bin_type=True)
    assert not peer.receive(forged)
    (event,) = audit.events
    assert event["reason"] == "invalid" and "round" in event["detail"]
    assert peer.furthest_neighbour_round() is None


def test_catching_up_to_the_highest_claim_stops_at_the_final_round() -> None:
    """A claim of 2^40 is capped below MAX_ROUND; the jump to it is one record, not one per
    skipped round, and a site that reaches FINAL_ROUND stops (audited) instead of sealing a
    round that could not be sealed."""
    peer, sealers, audit = world()
    peer.round = FINAL_ROUND - 10
    peer.receive(update(sealers, "site-01", MAX_ROUND))
    network = MemoryNetwork()
    transport = network.endpoint("site-00")
    network.endpoint("site-01")
    driver = RoundDriver(peer, transport, round_timeout_s=0.01)

    async def main() -> None:
        with trio.fail_after(30):
            await driver.run()

    trio.run(main)
    assert driver.state.skipped == [(FINAL_ROUND - 10, FINAL_ROUND - 1)]
    assert driver.state.completed == 0
    assert audit.events[-1]["event"] == "final_round_reached"
