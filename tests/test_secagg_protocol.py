"""The secure-aggregation protocol version enters the consortium hash (issue #20): sites
running different secure-aggregation rules (threshold, fresh training) compute different
hashes and refuse each other's frames; a roster without secure aggregation hashes exactly as
it did before the version existed."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch
from nacl.signing import SigningKey

from gossipmed.consortium import roster as roster_module
from gossipmed.consortium.crypto import derive_identity
from gossipmed.consortium.member import Member
from gossipmed.consortium.roster import Roster
from gossipmed.consortium.settings import ConsortiumSettings
from gossipmed.mixing.secagg import FixedPoint
from gossipmed.mixing.secagg.params import PROTOCOL_VERSION
from node.round.secure_session import SecureSession
from topology.schedule import MixingSchedule

SECRET = b"secagg-protocol-test-secret"
NAMES = "abcde"
# 428312f's hashes of `_complete()`: plain, and with secure aggregation (rules of version 1)
PLAIN_HASH_AT_428312F = "c61ee188eba282b2fbac7daec72b621753b6f4cbfd02441949cb9f5e39d1b64b"
SECURE_HASH_AT_428312F = "5347e9df28e746507efb541eee9cf22cd57875cf89093cdade540f7803f8d6ee"


def _member(name: str) -> Member:
    ident = derive_identity(SECRET, name)
    return Member(
        name=name,
        peer_id=ident.peer_id,
        sign_key=ident.sign_key,
        box_key=ident.box_key,
        addrs=("/ip4/127.0.0.1/tcp/4001",),
    )


def _complete(*, secure: bool = False) -> Roster:
    roster = Roster(
        members=tuple(_member(n) for n in NAMES),
        edges=tuple(itertools.combinations(NAMES, 2)),
        topology="complete",
        created="2026-12-07T00:00:00Z",
    )
    if not secure:
        return roster
    settings = ConsortiumSettings(secure_aggregation=True, gossip_steps=1)
    return dataclasses.replace(roster, settings=settings)


def test_a_roster_without_secure_aggregation_hashes_as_before() -> None:
    assert _complete().hash_hex == PLAIN_HASH_AT_428312F


def test_the_protocol_version_enters_the_hash_with_secure_aggregation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert PROTOCOL_VERSION >= 2
    current = _complete(secure=True).hash
    assert current.hex() != SECURE_HASH_AT_428312F
    monkeypatch.setattr(roster_module, "PROTOCOL_VERSION", PROTOCOL_VERSION - 1)
    older = _complete(secure=True).hash
    assert older != current
    assert _complete().hash_hex == PLAIN_HASH_AT_428312F  # still not in a plain roster


def test_sites_running_different_protocol_versions_refuse_each_others_frames(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    new = _complete(secure=True)
    assert new.hash  # computed (and cached) under this build's version
    monkeypatch.setattr(roster_module, "PROTOCOL_VERSION", PROTOCOL_VERSION - 1)
    old = _complete(secure=True)
    schedule = MixingSchedule.from_graphs([_graph()])
    keys = {n: SigningKey.generate() for n in NAMES}
    public = {n: bytes(k.verify_key) for n, k in keys.items()}

    def session(name: str, roster: Roster) -> SecureSession:
        return SecureSession(
            name=name,
            signing_key=keys[name],
            sign_keys=public,
            roster_hash=roster.hash,
            schedule=schedule,
            schema={"x": (3,)},
            fixed_point=FixedPoint(),
            timeout_s=10.0,
        )

    receiver, sender = session("a", new), session("b", old)
    receiver.open(0)
    sender.open(0)
    frames = dict(sender.begin(0, {"x": torch.zeros(3)}))
    assert receiver.handle("b", frames["a"]) == []
    assert receiver.refused == 1
    same = session("c", new)
    same.open(0)
    kept = dict(same.begin(0, {"x": torch.zeros(3)}))
    assert receiver.handle("c", kept["a"]) == [] and receiver.refused == 1  # kept, not refused


def _graph() -> object:
    import networkx as nx

    graph = nx.complete_graph(len(NAMES))
    return nx.relabel_nodes(graph, dict(enumerate(NAMES)))
