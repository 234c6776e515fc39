"""Issue #20 finding 1 against real daemons on loopback: one member's validly signed envelope
of round 2**40 (MAX_ROUND) ends no daemon and moves no site that hears another neighbour.

On 428312f each daemon that heard it jumped to round 2**40, sealed that round's updates (so
its neighbours jumped too) and exited 1 when sealing round 2**40 + 1 failed. Here a 3-ring's
third member is the adversary (tests/adversary.py, over its own libp2p transport); the two
honest daemons hear it and each other.
"""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path
from typing import Any

import pytest
import trio
from adversary import Adversary
from daemon_support import STARTUP_S, rounds_done

from gossipmed.consortium.audit import read_audit
from gossipmed.consortium.site import load_site
from gossipmed.errors import TransportError
from gossipmed.wire.update import MAX_ROUND
from node.daemon.cluster import create_cluster, start_daemon, wait_until
from node.net.libp2p.config import PeerInfo
from node.net.libp2p.transport import Libp2pTransport
from node.sim.quadratic import QuadraticFactory

pytest_plugins = ["daemon_support"]  # fixture: processes
pytestmark = [pytest.mark.slow, pytest.mark.network]

TIMEOUT_S = 0.5
CLAIMS = 12  # envelopes of round 2**40 to each honest site, one every PAUSE_S
PAUSE_S = 0.3


def attack(mallory: Adversary, victims: list[str]) -> None:
    roster = mallory.roster
    members = {
        m.name: PeerInfo(peer_id=m.peer_id, addrs=m.addrs)
        for m in roster.members
        if m.name != mallory.name
    }
    state = QuadraticFactory(n_sites=3, seed=0, lr=0.1).site_learners()[0].get_state()

    async def main() -> None:
        with trio.fail_after(120):
            async with Libp2pTransport.open(
                local_name=mallory.name,
                seed=mallory.identity.ed25519_seed,
                members=members,
                neighbours=roster.neighbours(mallory.name),
                listen=["/ip4/127.0.0.1/tcp/0"],
                max_bytes=1 << 20,
            ) as transport:
                mallory.transport = transport
                for _ in range(CLAIMS):
                    for to in victims:
                        data = mallory.envelope(to=to, round=MAX_ROUND, tensors=state)
                        with trio.move_on_after(5), contextlib.suppress(TransportError):
                            await mallory.send(to, data)
                    await trio.sleep(PAUSE_S)

    trio.run(main)


def test_a_claim_of_round_2_40_ends_no_daemon_and_moves_no_site(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    def sections(i: int) -> dict[str, dict[str, Any]]:
        return {
            "daemon": {"rounds": 0, "site_index": i, "problem": "quadratic"},
            "gossip": {"round_timeout_s": TIMEOUT_S},
        }

    sites = create_cluster(tmp_path / "c", nodes=3, topology="ring", sections=sections)
    honest, mallory_dir = sites[:2], sites[2]
    processes.extend(start_daemon(s) for s in honest)

    def exited() -> bool:
        return any(p.poll() is not None for p in processes)

    wait_until(
        lambda: all(len(rounds_done(s)) >= 2 for s in honest) or exited(),
        timeout=STARTUP_S,
        what="the honest daemons to complete 2 rounds",
    )
    # a slow-starting site may already have caught up with its honest neighbour (a skipped
    # round before the attack is that, not the claim)
    before = {s.name: [r.round for r in rounds_done(s)] for s in honest}
    highest_before = max(max(rounds) for rounds in before.values())
    mallory = Adversary.from_site(mallory_dir)
    attack(mallory, [s.name for s in honest])
    assert len(mallory.sent) >= len(honest)  # the claims did reach the daemons
    after = {s.name: len(rounds_done(s)) for s in honest}
    wait_until(
        lambda: all(len(rounds_done(s)) >= after[s.name] + 3 for s in honest) or exited(),
        timeout=60,
        what="3 more rounds at each honest site",
    )
    assert not exited(), [p.returncode for p in processes]
    final = {s.name: rounds_done(s) for s in honest}  # one snapshot: the daemons run on
    records_since = sum(len(final[s.name]) - len(before[s.name]) for s in honest)
    for s in honest:
        refused = [
            e
            for e in read_audit(load_site(s).audit_path)
            if e.get("sender") == mallory.name and e.get("round") == MAX_ROUND
        ]
        assert refused, f"{s.name} never audited the claim"
        rounds = [r.round for r in final[s.name]]
        assert rounds == sorted(set(rounds)), s.name
        # every round since is one an honest site could have reached (each honest round
        # needs a record somewhere): nowhere near 2**40
        assert max(rounds) <= highest_before + records_since, (s.name, rounds)
        assert all(r.trained for r in final[s.name]), s.name
