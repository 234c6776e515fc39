"""Hostile input on `/gossipmed/update/1.0.0` from outside libp2p hosts, against a real daemon:

- an outsider (valid key, not a member) is refused after the handshake;
- "mallory", a member with no gossip edge to the victim, is refused at the stream, whatever
  she sends (issue #13 finding 4: update streams only from graph neighbours);
- "eve", a graph neighbour gone bad, sends garbage, a huge length prefix and a well-formed
  envelope with a bad signature: each is audited with its reason.

The daemon stays up, and its rounds with its honest neighbour go on."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import msgpack
import pytest
import torch
import trio
from daemon_support import STARTUP_S, completed

from gossipmed.consortium.audit import read_audit
from gossipmed.consortium.crypto import generate_identity
from gossipmed.consortium.member import Member
from gossipmed.consortium.roster import Roster, load_roster, save_roster
from gossipmed.errors import TransportError
from gossipmed.metrics import METRICS_FILE, read_metrics
from gossipmed.wire.envelope import EnvelopeSealer
from node.daemon.cluster import (
    CONSORTIUM_FILE,
    create_cluster,
    site_status,
    start_daemon,
    toy_sections,
    wait_until,
)
from node.net.framing import encode_uvarint
from node.net.libp2p.transport import PROTOCOL_ID, Libp2pTransport, PeerInfo

pytest_plugins = ["daemon_support"]  # fixtures: toy_base, processes
pytestmark = [pytest.mark.slow, pytest.mark.network]


async def attack(*, victim: Member, roster: Roster, identities: dict[str, Any]) -> list[str]:
    """Returns what each attempt looked like from the attacker's side."""
    from libp2p.peer.id import ID

    seen: list[str] = []
    target = {"site-00": PeerInfo(victim.peer_id, victim.addrs)}

    def transport(name: str, seed: bytes) -> Any:
        return Libp2pTransport.open(
            local_name=name,
            seed=seed,
            members=target,
            neighbours=["site-00"],  # each attacker believes it may send
            listen=["/ip4/127.0.0.1/tcp/0"],
            max_bytes=1 << 20,
        )

    async def try_send(t: Any, data: bytes, what: str) -> None:
        try:
            await t.send("site-00", data)
            seen.append(f"{what}: acked")
        except TransportError:
            seen.append(f"{what}: refused")

    async with transport("outsider", generate_identity().ed25519_seed) as t:
        await try_send(t, b"\x00garbage from a stranger", "outsider")

    async with transport("mallory", identities["mallory"].ed25519_seed) as t:
        await try_send(t, b"\x93not an envelope at all", "mallory")

    eve = identities["eve"]
    async with transport("eve", eve.ed25519_seed) as t:
        await try_send(t, b"\x93not an envelope at all", "garbage")  # framed, acked, dropped
        stream = await t.host.new_stream(ID.from_base58(victim.peer_id), [PROTOCOL_ID])
        try:
            await stream.write(encode_uvarint(1 << 40) + b"x" * 64)
            with trio.fail_after(10):
                reply = await stream.read(1)
            seen.append(f"huge prefix: reply {reply!r}")
        except trio.TooSlowError:
            seen.append("huge prefix: no reply")
        except Exception:
            seen.append("huge prefix: stream reset")
        sealer = EnvelopeSealer(identity=eve, roster=roster)
        envelope = sealer.seal(
            update_tensors={"x": torch.zeros(4)}, round=1, recipient="site-00", epsilon=0.0
        )
        outer = msgpack.unpackb(envelope, raw=False)
        outer["s"] = bytes([outer["s"][0] ^ 0xFF]) + outer["s"][1:]
        await try_send(t, msgpack.packb(outer, use_bin_type=True), "bad signature")
    return seen


def test_daemon_survives_outsiders_non_neighbours_and_a_hostile_neighbour(
    tmp_path: Path, toy_base: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    root = tmp_path / "cluster"
    sites = create_cluster(
        root,
        nodes=2,
        topology="ring",
        sections=lambda i: toy_sections(
            index=i, nodes=2, base_model=toy_base, rounds=0, round_timeout_s=10.0
        ),
    )
    identities = {n: generate_identity() for n in ("mallory", "eve")}
    roster = load_roster(root / CONSORTIUM_FILE)
    cards = tuple(
        Member(name=n, peer_id=i.peer_id, sign_key=i.sign_key, box_key=i.box_key)
        for n, i in identities.items()
    )
    roster = Roster(
        members=(*roster.members, *cards),
        edges=(*roster.edges, ("eve", "site-00")),  # mallory: a member, nobody's neighbour
        settings=roster.settings,
    )
    save_roster(roster, root / CONSORTIUM_FILE)
    processes.extend(start_daemon(s) for s in sites)
    wait_until(
        lambda: completed(sites[0]) >= 1 or any(p.poll() is not None for p in processes),
        timeout=STARTUP_S,
        what="site-00 to complete a round",
    )

    seen = trio.run(
        lambda: attack(victim=roster.member("site-00"), roster=roster, identities=identities)
    )
    assert seen[0] == "outsider: refused"
    assert seen[1] == "mallory: refused"
    assert seen[2] == "garbage: acked"
    assert not seen[3].startswith("huge prefix: reply b'\\x00'")  # never acknowledged
    assert seen[4] == "bad signature: acked"

    entries = read_audit(sites[0] / "audit.jsonl")
    rejected = [e for e in entries if e["outcome"] == "rejected"]
    reasons = [e["reason"] for e in rejected]
    assert any("not in the roster" in r or "outsider" in r for r in reasons), reasons
    assert any(e["sender"] == "mallory" and "not a neighbour" in e["reason"] for e in rejected), (
        reasons
    )
    assert any(r.startswith("transport: bad frame") for r in reasons), reasons
    assert any("signature from 'eve' does not verify" in r for r in reasons), reasons
    assert sum(r.startswith("invalid") for r in reasons) >= 2, reasons  # garbage + signature

    # still up, and still gossiping with its honest neighbour
    attacked_at = len(read_metrics(sites[0] / METRICS_FILE))
    wait_until(
        lambda: (
            sum(
                1 for r in read_metrics(sites[0] / METRICS_FILE)[attacked_at:] if r.neighbours_heard
            )
            >= 2
            or processes[0].poll() is not None
        ),
        timeout=90,
        what="two more rounds with site-01",
    )
    assert processes[0].poll() is None
    assert site_status(sites[0])["up"]
