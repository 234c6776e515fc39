"""Hostile input on `/gossipmed/update/1.0.0` from outside libp2p hosts: an outsider (valid
key, not a member) and a roster member gone bad ("mallory", no gossip edges) send garbage,
a huge length prefix and a well-formed envelope with a bad signature. The daemon audits
each, stays up, and its rounds with its real neighbour go on."""

from __future__ import annotations

import subprocess
from pathlib import Path

import msgpack
import pytest
import torch
import trio
from daemon_support import STARTUP_S, completed

from gossipmed.audit import read_audit
from gossipmed.crypto import generate_identity
from gossipmed.envelope import EnvelopeSealer
from gossipmed.errors import TransportError
from gossipmed.metrics import METRICS_FILE, read_metrics
from gossipmed.roster import Member, Roster, load_roster, save_roster
from node.cluster import (
    CONSORTIUM_FILE,
    create_cluster,
    site_status,
    start_daemon,
    toy_sections,
    wait_until,
)
from node.framing import encode_uvarint
from node.libp2p_transport import PROTOCOL_ID, Libp2pTransport, PeerInfo

pytest_plugins = ["daemon_support"]  # fixtures: toy_base, processes
pytestmark = [pytest.mark.slow, pytest.mark.network]


async def attack(*, victim: Member, roster: Roster, mallory_identity: object) -> list[str]:
    """Returns what each attempt looked like from the attacker's side."""
    from libp2p.peer.id import ID

    seen: list[str] = []
    target = {"site-00": PeerInfo(victim.peer_id, victim.addrs)}
    outsider = generate_identity()
    async with Libp2pTransport.open(
        local_name="outsider",
        seed=outsider.ed25519_seed,
        peers=target,
        listen=["/ip4/127.0.0.1/tcp/0"],
        max_bytes=1 << 20,
    ) as t:
        try:
            await t.send("site-00", b"\x00garbage from a stranger")
            seen.append("outsider: delivered")
        except TransportError:
            seen.append("outsider: refused")

    mallory = mallory_identity
    assert hasattr(mallory, "ed25519_seed")
    async with Libp2pTransport.open(
        local_name="mallory",
        seed=mallory.ed25519_seed,
        peers=target,
        listen=["/ip4/127.0.0.1/tcp/0"],
        max_bytes=1 << 20,
    ) as t:
        await t.send("site-00", b"\x93not an envelope at all")  # framed, acked, then dropped
        seen.append("garbage: acked")

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

        sealer = EnvelopeSealer(identity=mallory, roster=roster)  # type: ignore[arg-type]
        envelope = sealer.seal(
            update_tensors={"x": torch.zeros(4)},
            round=1,
            recipient="site-00",
            epsilon=0.0,
        )
        outer = msgpack.unpackb(envelope, raw=False)
        outer["s"] = bytes([outer["s"][0] ^ 0xFF]) + outer["s"][1:]
        await t.send("site-00", msgpack.packb(outer, use_bin_type=True))
        seen.append("bad signature: acked")
    return seen


def test_daemon_survives_garbage_huge_prefix_and_bad_signature(
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
    mallory = generate_identity()
    roster = load_roster(root / CONSORTIUM_FILE)
    mallory_card = Member(
        name="mallory", peer_id=mallory.peer_id, sign_key=mallory.sign_key, box_key=mallory.box_key
    )
    roster = Roster(members=(*roster.members, mallory_card), edges=roster.edges)
    save_roster(roster, root / CONSORTIUM_FILE)  # a member, but nobody's neighbour
    processes.extend(start_daemon(s) for s in sites)
    wait_until(
        lambda: completed(sites[0]) >= 1 or any(p.poll() is not None for p in processes),
        timeout=STARTUP_S,
        what="site-00 to complete a round",
    )

    seen = trio.run(
        lambda: attack(victim=roster.member("site-00"), roster=roster, mallory_identity=mallory)
    )
    assert seen[0] == "outsider: refused"
    assert seen[1] == "garbage: acked"
    assert not seen[2].startswith("huge prefix: reply b'\\x00'")  # never acknowledged
    assert seen[3] == "bad signature: acked"

    entries = read_audit(sites[0] / "audit.jsonl")
    reasons = [e["reason"] for e in entries if e["outcome"] == "rejected"]
    assert any("not in the roster" in r for r in reasons), reasons
    assert any(r.startswith("transport: bad frame") for r in reasons), reasons
    assert any("signature from 'mallory' does not verify" in r for r in reasons), reasons
    assert sum(r.startswith("invalid") for r in reasons) >= 2, reasons  # garbage + signature

    # still up, and still gossiping with its real neighbour
    attacked_at = len(read_metrics(sites[0] / METRICS_FILE))
    wait_until(
        lambda: (
            sum(
                1 for r in read_metrics(sites[0] / METRICS_FILE)[attacked_at:] if r.neighbours_heard
            )
            >= 2
            or processes[0].poll() is not None
        ),
        timeout=60,
        what="two more rounds with site-01",
    )
    assert processes[0].poll() is None
    assert site_status(sites[0])["up"]
