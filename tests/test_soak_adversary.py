"""Soak: a 4-site loopback cluster in which one member, "site-03", is dishonest and cycles
through the attacks of an attack review for a bounded time, against real daemons.

The dishonest member holds real keys and is every honest site's graph neighbour, so every
envelope it sends is authentic. It answers each exchange first, with the state it was sent
scaled by 1000 (poisoning), with NaN or with mis-shaped tensors, and in between it claims
rounds 2^40 and 2^40 - 1, sends garbage and envelopes for another site, floods envelopes
with bad signatures, replays, and holds silent TCP connections from the members' address.

The property, whatever it sends: every honest daemon is still alive and training, its model
is as good as in a clean run of the same consortium (within the margins below, which absorb
the DP noise drawn from the OS), and its ledger holds exactly one charge per round it
recorded as trained, plus at most one for a round the test's stop interrupted.
"""

from __future__ import annotations

import contextlib
import math
import signal
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest
import torch
import trio
from adversary import Adversary
from daemon_support import STARTUP_S, rounds_done
from nacl.public import Box, PublicKey

from gossipmed.consortium.roster import Roster, load_roster
from gossipmed.consortium.site import load_site
from gossipmed.errors import GossipmedError
from gossipmed.privacy.ledger import PrivacyLedger
from gossipmed.wire.update import MAX_ROUND
from node.daemon.cluster import (
    CONSORTIUM_FILE,
    create_cluster,
    start_daemon,
    toy_sections,
)
from node.daemon.ledger import ledger_path
from node.net.libp2p.transport import Libp2pTransport, PeerInfo

pytest_plugins = ["daemon_support"]  # fixtures: toy_base, processes
pytestmark = [pytest.mark.slow, pytest.mark.network]

SITES = 4  # site-03 is the dishonest member in the attacked run
HONEST = ("site-00", "site-01", "site-02")
ROUNDS = 6  # honest rounds compared with the clean run
STEPS = 2  # local DP steps per round (toy_sections' default)
ATTACK_LIMIT_S = 240.0  # bound on the attack phase (it normally ends after ROUNDS rounds)
ACCURACY_MARGIN = 0.2  # absolute; DP noise from the OS differs between the two runs
EVAL_LOSS_FACTOR = 1.5  # a poisoned model's loss explodes far beyond this
NORM_FACTOR = 2.0  # honest adapter norms stay within 2x of the clean run's (influence bound)


def sections(toy_base: Path, *, rounds: int) -> Callable[[int], dict[str, dict[str, Any]]]:
    # every run partitions the data for 4 sites, so site i trains on the same records in both
    return lambda i: toy_sections(
        index=i, nodes=SITES, base_model=toy_base, rounds=rounds, round_timeout_s=5.0
    )


def final_scores(site: Path) -> tuple[float, float, float]:
    """Accuracy, eval loss and adapter norm of the site's round ROUNDS - 1 (0-based)."""
    record = next(r for r in rounds_done(site) if r.round == ROUNDS - 1)
    assert record.accuracy is not None and record.eval_loss is not None
    assert record.state_norm is not None
    return record.accuracy, record.eval_loss, record.state_norm


# --- the dishonest member ---------------------------------------------------------------


def peek_update(adversary: Adversary, data: bytes) -> tuple[str, int, int, dict[str, Any]]:
    """Sender, round, step and tensors of an envelope sent to the adversary (it holds the box
    key, so it reads what its neighbours send it, as any member does)."""
    outer = msgpack.unpackb(data, raw=False)
    header = msgpack.unpackb(outer["h"], raw=False)
    sender = header["sender"]
    box = Box(
        adversary.identity.box_private_key, PublicKey(adversary.roster.member(sender).box_key)
    )
    payload = msgpack.unpackb(box.decrypt(outer["c"]), raw=False)
    tensors = {
        name: torch.frombuffer(bytearray(t["data"]), dtype=torch.float32).reshape(t["shape"])
        for name, t in payload["tensors"].items()
        if t["dtype"] == "float32"
    }
    return sender, int(header["round"]), int(header["step"]), tensors


def raw_envelope(
    adversary: Adversary, *, to: str, round: int, step: int = 0, tensors: dict[str, Any]
) -> bytes:
    """An envelope whose payload the honest encoder would refuse (NaN, wrong shapes)."""
    payload = msgpack.packb(
        {
            "v": 2,
            "epsilon": 0.0,
            "tensors": {
                name: {
                    "dtype": "float32",
                    "shape": list(t.shape),
                    "data": t.numpy().tobytes(),
                }
                for name, t in tensors.items()
            },
        },
        use_bin_type=True,
    )
    return adversary.envelope(to=to, round=round, step=step, payload=payload)


class Attacker:
    def __init__(self, adversary: Adversary, ports: dict[str, int]) -> None:
        self.adversary = adversary
        self.ports = ports
        self.last: dict[str, tuple[int, int, dict[str, Any]]] = {}  # per victim: latest seen
        self.sent = 0
        self.attacks_run: set[str] = set()

    async def send(self, to: str, data: bytes) -> None:
        with contextlib.suppress(GossipmedError, trio.TooSlowError):
            with trio.fail_after(10):
                await self.adversary.send(to, data)
                self.sent += 1

    async def mirror(self, nursery: trio.Nursery) -> None:
        """Answer every exchange first, before the honest answer could: mostly with the state
        it was sent scaled by 1000, every fourth time with NaN and every fourth with tensors
        of the wrong shape (only a fresh exchange reaches the decoder)."""
        transport = self.adversary.transport
        assert transport is not None
        answered = 0
        while True:
            sender, data = await transport.receive_from()
            try:
                name, r, s, tensors = peek_update(self.adversary, data)
            except Exception:
                continue  # not an envelope to us (never expected from honest sites)
            if name != sender:
                continue
            self.last[name] = (r, s, tensors)
            answered += 1
            if answered % 4 == 0:
                nan = {k: v * math.nan for k, v in tensors.items()}
                reply = raw_envelope(self.adversary, to=name, round=r, step=s, tensors=nan)
                self.attacks_run.add("non-finite")
            elif answered % 4 == 1:
                shapes = {"x": torch.ones(3, 3)}
                reply = raw_envelope(self.adversary, to=name, round=r, step=s, tensors=shapes)
                self.attacks_run.add("wrong shape")
            else:
                poisoned = {k: v * 1000.0 for k, v in tensors.items()}
                reply = self.adversary.envelope(to=name, round=r, step=s, tensors=poisoned)
                self.attacks_run.add("scaled by 1000")
            nursery.start_soon(self.send, name, reply)

    def silent_connections(self, site: str, count: int) -> list[socket.socket]:
        held = []
        for _ in range(count):
            with contextlib.suppress(OSError):
                held.append(socket.create_connection(("127.0.0.1", self.ports[site]), timeout=2))
        return held

    async def cycle(self, victim: str) -> None:
        """One pass of every other attack against one victim."""
        seen = self.last.get(victim)
        r = seen[0] if seen else 0
        tensors = seen[2] if seen else {"x": torch.ones(4)}
        a = self.adversary
        other = next(h for h in HONEST if h != victim)
        attacks: list[tuple[str, Callable[[], bytes]]] = [
            ("round 2^40", lambda: a.envelope(to=victim, round=MAX_ROUND, tensors=tensors)),
            ("round 2^40-1", lambda: a.envelope(to=victim, round=MAX_ROUND - 1, tensors=tensors)),
            ("next round", lambda: a.envelope(to=victim, round=r + 1, tensors=tensors)),
            ("garbage", lambda: b"\x93not an envelope" * 64),
            ("wrong recipient", lambda: a.envelope(to=other, round=r, tensors=tensors)),
        ]
        for what, make in attacks:
            await self.send(victim, make())
            self.attacks_run.add(what)
        # a flood of refused envelopes: bad signatures (the audit log must stay bounded)
        good = a.envelope(to=victim, round=r, tensors=tensors)
        outer = msgpack.unpackb(good, raw=False)
        outer["s"] = bytes([outer["s"][0] ^ 0xFF]) + outer["s"][1:]
        bad = msgpack.packb(outer, use_bin_type=True)
        for _ in range(20):
            await self.send(victim, bad)
        self.attacks_run.add("bad signatures")
        await self.send(victim, good)  # a replay of the same exchange follows it
        await self.send(victim, good)
        self.attacks_run.add("replay")
        held = self.silent_connections(victim, 20)
        self.attacks_run.add("silent connections")
        await trio.sleep(1.0)
        for sock in held:
            sock.close()


async def attack(
    *, eve: Adversary, roster: Roster, listen: str, ports: dict[str, int], done: Callable[[], bool]
) -> Attacker:
    members = {m.name: PeerInfo(m.peer_id, m.addrs) for m in roster.members if m.name != eve.name}
    async with Libp2pTransport.open(
        local_name=eve.name,
        seed=eve.identity.ed25519_seed,
        members=members,
        neighbours=list(HONEST),
        listen=[listen],
        max_bytes=1 << 24,
    ) as transport:
        eve.transport = transport
        attacker = Attacker(eve, ports)
        deadline = trio.current_time() + ATTACK_LIMIT_S
        async with trio.open_nursery() as nursery:
            nursery.start_soon(attacker.mirror, nursery)
            while not done() and trio.current_time() < deadline:
                for victim in HONEST:
                    await attacker.cycle(victim)
            nursery.cancel_scope.cancel()
        return attacker


# --- the test -----------------------------------------------------------------------------


def port_of(site: Path) -> int:
    return int(load_site(site).config.listen[0].rsplit("/", 1)[1])


def charged_steps(site: Path) -> int:
    ledger = PrivacyLedger.load(ledger_path(site))
    return sum(steps for _sigma, _q, steps in ledger.history)


def test_one_dishonest_member_cycling_through_every_attack_takes_no_honest_site_down(
    tmp_path: Path, toy_base: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    # the clean run: the same consortium with four honest sites
    clean = create_cluster(
        tmp_path / "clean",
        nodes=SITES,
        topology="complete",
        sections=sections(toy_base, rounds=ROUNDS),
    )
    clean_procs = [start_daemon(s) for s in clean]
    processes.extend(clean_procs)
    for p in clean_procs:
        assert p.wait(timeout=STARTUP_S + 120) == 0
    reference = {s.name: final_scores(s) for s in clean[:3]}

    # the attacked run: site-03's keys in the attacker's hands, no daemon of its own
    sites = create_cluster(
        tmp_path / "attacked",
        nodes=SITES,
        topology="complete",
        sections=sections(toy_base, rounds=0),
    )
    honest, eve_site = sites[:3], sites[3]
    procs = [start_daemon(s) for s in honest]
    processes.extend(procs)
    roster = load_roster(tmp_path / "attacked" / CONSORTIUM_FILE)
    eve = Adversary.from_site(eve_site)

    def done() -> bool:
        return all(len(rounds_done(s)) >= ROUNDS for s in honest) or any(
            p.poll() is not None for p in procs
        )

    attacker = trio.run(
        lambda: attack(
            eve=eve,
            roster=roster,
            listen=load_site(eve_site).config.listen[0],
            ports={s.name: port_of(s) for s in honest},
            done=done,
        )
    )
    assert attacker.attacks_run >= {
        "round 2^40",
        "scaled by 1000",
        "non-finite",
        "wrong shape",
        "silent connections",
    }
    assert attacker.sent > 0

    # every honest daemon is alive and has gone on training past the clean run's rounds
    assert [p.poll() for p in procs] == [None] * 3, "an honest daemon died"
    for s in honest:
        records = rounds_done(s)
        assert len(records) >= ROUNDS, f"{s.name} completed only {len(records)} rounds"
        assert max(r.round for r in records) < ROUNDS + 50, "a claim moved a site far ahead"
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        assert p.wait(timeout=60) == 0

    # the poison reached the mix and the bound scaled it down
    assert sum(r.bound_clipped for s in honest for r in rounds_done(s)) > 0
    for s in honest:
        accuracy, eval_loss, norm = final_scores(s)
        clean_accuracy, clean_loss, clean_norm = reference[s.name]
        assert accuracy >= clean_accuracy - ACCURACY_MARGIN, (s.name, accuracy, clean_accuracy)
        assert eval_loss <= clean_loss * EVAL_LOSS_FACTOR, (s.name, eval_loss, clean_loss)
        assert norm <= clean_norm * NORM_FACTOR, (s.name, norm, clean_norm)
        # budget is spent only on work that is kept: one charge per trained round recorded,
        # plus at most one round the SIGTERM interrupted after its charge
        trained = sum(r.trained for r in rounds_done(s))
        assert trained * STEPS <= charged_steps(s) <= (trained + 1) * STEPS, s.name
