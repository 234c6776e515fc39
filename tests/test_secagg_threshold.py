"""The threshold rule, as a property over every allowed neighbourhood size: a lying receiver
with one colluding contributor never unmasks an honest contributor (issue #20, finding 4).

The model of the attack: the receiver wants a victim's self-mask shares (from a survivor
list that includes it) and its mask-key shares (from a list that drops it). A contributor
reveals shares only against a list with `t` signatures of its members, and an honest one
signs one list; colluders sign anything and hold one share each of every secret. So with c
colluders among n contributors the receiver unmasks the victim iff c >= t (it reconstructs
from the colluders' shares alone) or the n - c honest contributors can be split into two
groups a, b with a + c >= t and b + c >= t.
"""

from __future__ import annotations

import pytest

from gossipmed.errors import ConfigError
from gossipmed.mixing.secagg import MAX_CONTRIBUTORS, MIN_THRESHOLD, threshold_for

ALLOWED = [n for n in range(1, MAX_CONTRIBUTORS + 1) if threshold_for(n) <= n]


def liar_unmasks(n: int, t: int, colluders: int) -> bool:
    """Whether a lying receiver with `colluders` of the n contributors can unmask an honest
    one (searched over every split of the honest signers, not from a formula)."""
    if colluders >= t:
        return True
    honest = n - colluders
    return any(
        a + colluders >= t and b + colluders >= t
        for a in range(honest + 1)
        for b in range(honest + 1 - a)
    )


def test_the_allowed_degrees_are_every_neighbourhood_from_three_up() -> None:
    assert list(range(MIN_THRESHOLD, MAX_CONTRIBUTORS + 1)) == ALLOWED


@pytest.mark.parametrize("n", ALLOWED)
def test_every_allowed_degree_tolerates_a_lying_receiver_with_one_colluder(n: int) -> None:
    t = threshold_for(n)
    assert t <= n
    assert not liar_unmasks(n, t, colluders=1)

    from gossipmed.mixing.secagg.params import tolerated_collusion, tolerated_dropouts

    tolerated = tolerated_collusion(n, t)
    assert tolerated >= 1
    assert not any(liar_unmasks(n, t, c) for c in range(tolerated + 1))
    assert tolerated == n - 1 or liar_unmasks(n, t, tolerated + 1)  # and no more
    assert tolerated_dropouts(n, t) == n - t


def test_a_strict_majority_alone_tolerates_no_colluder_at_odd_degrees() -> None:
    """The rule before issue #20: t = max(3, n // 2 + 1) fell to one colluder at n = 5, 7..."""
    odd = [n for n in ALLOWED if n % 2 == 1 and n >= 5]
    assert all(liar_unmasks(n, max(3, n // 2 + 1), colluders=1) for n in odd)


def test_an_instance_refuses_a_threshold_that_one_colluder_defeats() -> None:
    from nacl.signing import SigningKey

    from gossipmed.mixing.secagg import FixedPoint, InstanceConfig, InstanceId

    names = "bcdef"
    keys = {n: bytes(SigningKey.generate().verify_key) for n in names}

    def config(t: int) -> InstanceConfig:
        return InstanceConfig(
            instance=InstanceId(b"\x01" * 32, "a", 1),
            weights=dict.fromkeys(names, 0.1),
            sign_keys=keys,
            schema={"x": (2,)},
            threshold=t,
            fixed_point=FixedPoint(),
        )

    with pytest.raises(ConfigError):
        config(3)  # a strict majority of 5, but 2 x 3 < 5 + 2
    assert config(threshold_for(5)).threshold == 4


@pytest.mark.parametrize("n", [5, 7])
def test_a_lying_receiver_with_one_colluder_gets_no_victims_two_secrets(n: int) -> None:
    """The attack itself, against real Contributors: the liar holds every masked input, tells
    the victim and half the honest contributors that the victim survived and the other half
    that it dropped, and adds a colluder's signature to both lists and its held shares to
    what the honest ones reveal. With t = max(3, n // 2 + 1) it got t shares of both of the
    victim's secrets at n = 5 and 7, enough to open its masked input."""
    from test_secagg_adversary import ALL_KEYS, RECEIVER, Hood

    from gossipmed.mixing.secagg import (
        BelowThreshold,
        Phase,
        ProtocolViolation,
        SignedSurvivors,
        SurvivorList,
        UnmaskShares,
    )
    from gossipmed.mixing.secagg import primitives as pr

    names = "bcdefgh"[:n]
    colluder, victim = names[-2], names[-1]
    t = threshold_for(n)
    hood = Hood(names, t)
    hood.honest_until(Phase.MASK)  # every masked input is in the liar's hands
    inst, clients = hood.config.instance, hood.clients
    honest = [x for x in names if x not in (colluder, victim)]
    told = {
        tuple(names): [victim, *honest[: len(honest) // 2]],  # the victim survived
        tuple(x for x in names if x != victim): honest[len(honest) // 2 :],  # it dropped
    }
    revealed: list[UnmaskShares] = []
    for survivors, group in told.items():
        signatures = {
            colluder: pr.sign(ALL_KEYS[colluder], pr.survivors_transcript(inst, survivors))
        }
        for member in group:
            reply = clients[member].handle(RECEIVER, SurvivorList(inst, survivors))
            signatures[member] = reply.signature  # type: ignore[attr-defined]
        for member in group:
            try:
                reply = clients[member].handle(
                    RECEIVER, SignedSurvivors(inst, survivors, dict(signatures))
                )
            except (ProtocolViolation, BelowThreshold):
                continue
            assert isinstance(reply, UnmaskShares)
            revealed.append(reply)
    # the colluder adds the one share of each of the victim's secrets it holds
    self_shares = 1 + sum(victim in r.self_shares for r in revealed)
    pair_shares = 1 + sum(victim in r.pair_shares for r in revealed)
    assert min(self_shares, pair_shares) < t, (self_shares, pair_shares, t)
