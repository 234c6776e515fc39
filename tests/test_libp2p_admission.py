"""Handshake slots under any interleaving of connections: the invariants of
node.net.libp2p.admission, checked after every step (issue #20 finding 5)."""

from __future__ import annotations

import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from libp2p_support import seed

from node.net.libp2p.admission import MEMBER_POOL, Admission, Pending
from node.net.libp2p.config import Libp2pLimits, PeerInfo
from node.net.libp2p.roster import Roster
from node.net.libp2p.transport import peer_id_from_seed

MEMBER_NAT = "192.0.2.7"  # a hospital NAT: a member and anything else behind it
KEYS = (MEMBER_NAT, "198.51.100.1", "198.51.100.2")
LIMITS = Libp2pLimits(
    handshakes=4,
    handshakes_per_address=2,
    member_handshakes=3,
    member_handshakes_per_address=4,
    outsider_burst=3,
    outsider_per_s=1.0,
)

step = st.one_of(
    st.tuples(st.just("connect"), st.sampled_from(KEYS)),
    st.tuples(st.sampled_from(["speak", "authenticate", "end", "fail"]), st.integers(0, 31)),
    st.tuples(st.just("tick"), st.floats(0.0, 3.0)),
)


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def cap_of(key: str) -> int:
    if key == MEMBER_NAT:
        return LIMITS.member_handshakes_per_address
    return LIMITS.handshakes_per_address


def check_counts(gate: Admission, live: list[Pending]) -> None:
    assert gate.reserved == sum(p.pool == MEMBER_POOL for p in live) <= LIMITS.member_handshakes
    assert gate.general == sum(p.pool != MEMBER_POOL for p in live) <= LIMITS.handshakes
    for key in KEYS:
        assert sum(p.key == key for p in live) <= cap_of(key)


@settings(max_examples=200, deadline=None)
@given(st.lists(step, max_size=60))
def test_a_silent_connection_never_keeps_a_speaking_one_or_a_member_out(steps: list) -> None:
    roster = Roster()
    roster.set("m", PeerInfo(peer_id_from_seed(seed("m")), [f"/ip4/{MEMBER_NAT}/tcp/4001"]))
    clock = Clock()
    gate = Admission(roster=roster, limits=LIMITS, clock=clock)
    live: list[Pending] = []
    live_order: list[Pending] = []  # every admitted connection, oldest first
    for op, arg in steps:
        if op == "tick":
            clock.now += arg
        elif op == "connect":
            member = arg == MEMBER_NAT
            pools = {MEMBER_POOL, "general"} if member else {"general"}
            own = [p for p in live if p.key == arg]
            # The slot a newcomer needs: one of its address's, if that is at its cap, else
            # one in the pools it may use; the silent ones there go first.
            rivals = own if len(own) >= cap_of(arg) else [p for p in live if p.pool in pools]
            silent_rivals = [p for p in rivals if not p.spoke and not p.authenticated]
            bucket_ok = member or not gate.buckets.empty(arg)
            new = gate.admit(arg, trio.CancelScope())
            gone = [p for p in live if p.evicted]
            live = [p for p in live if not p.evicted]
            for p in gone:
                assert p.scope.cancel_called and not p.authenticated
                assert member or not (p.member_address and p.spoke)
            if new is None:
                assert not gone
                # Refused only for an empty bucket or when no rival could give way.
                assert not bucket_ok or all(
                    p.authenticated or (not member and p.member_address and p.spoke) for p in rivals
                )
            else:
                assert bucket_ok and len(gone) <= 1
                if gone and silent_rivals:
                    assert gone[0] in silent_rivals
                    assert gone[0] is min(silent_rivals, key=live_order.index)
                elif gone:  # no silent rival: the oldest it may displace
                    displaceable = [
                        p
                        for p in rivals
                        if not p.authenticated and (member or not p.member_address)
                    ]
                    assert gone[0] is min(displaceable, key=live_order.index)
                live.append(new)
                live_order.append(new)
        elif live:
            p = live[arg % len(live)]
            if op == "speak":
                p.heard()
            elif op == "authenticate" and p.spoke:
                p.authenticated = True
            elif op in ("end", "fail"):
                gate.release(p)
                gate.release(p)  # idempotent
                if op == "fail":
                    gate.charge(p.key)
                live.remove(p)
        check_counts(gate, live)


def test_a_silent_connection_has_its_deadline_lifted_by_its_first_byte() -> None:
    scope = trio.CancelScope(deadline=1.0)
    p = Pending(key="k", pool="general", member_address=False, scope=scope)
    p.heard()
    assert p.spoke and scope.deadline == float("inf")
