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
from gossipmed.mixing.secagg.params import tolerated_collusion, tolerated_dropouts

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
