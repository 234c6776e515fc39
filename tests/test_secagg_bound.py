"""What one secure-aggregation contributor can do to a receiver (issue #20, finding 4).

The receiver only sees the sum, so the bound is on the sum: whatever one contributor sends,
the receiver either refuses the sum (SumOutOfRange, its state unchanged) or mixes a sum
within W x the public norm envelope, so its RMS after the exchange is at most
(1 - W) rms(own) + W rho. A contributor that keeps sending garbage is named by the receiver
within START_AFTER + 2 (n - 1) + 2 K_TRIALS exchanges, and honest exchanges never exclude
anyone.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import networkx as nx
import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gossipmed.consortium.settings import ConsortiumSettings
from gossipmed.errors import ConfigError
from gossipmed.mixing.secagg import Contributor, FixedPoint, instance_config
from gossipmed.mixing.secagg.errors import BelowThreshold, SumOutOfRange
from gossipmed.mixing.secagg.fixedpoint import decode, encode
from node.round.secure_mix import secure_mix
from node.sim.secure import SecureNetwork
from topology.schedule import MixingSchedule

ENVELOPE_RMS = 4.0  # the consortium's default norm envelope (secagg_rms)
SCHEMA = {"lora_A": (4, 16), "lora_B": (16, 4)}
COORDS = sum(math.prod(s) for s in SCHEMA.values())
SITES = 5  # K5: each receiver has n = 4 contributors, threshold 3, so n - 1 >= t
ATTACKER = "site-02"
RECEIVER = "site-00"


def _consortium() -> ConsortiumSettings:
    return ConsortiumSettings(secure_aggregation=True)


def _encoding(settings: ConsortiumSettings) -> Any:
    # The consortium's encoding as the simulator and the daemon take it; on 428312f, which
    # had no norm envelope, that was the free fixed point (range 32 per coordinate).
    envelope = getattr(settings, "envelope", None)
    return envelope if envelope is not None else settings.fixed_point


def _states(seed: int, rms: float = 0.01) -> dict[str, dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return {
        f"site-{i:02d}": {k: torch.randn(s, generator=gen) * rms for k, s in SCHEMA.items()}
        for i in range(SITES)
    }


def _rms(state: dict[str, torch.Tensor]) -> float:
    flat = torch.cat([t.double().reshape(-1) for t in state.values()])
    return float(flat.pow(2).mean().sqrt())


@contextmanager
def _dishonest(words: Callable[[FixedPoint], np.ndarray]) -> Iterator[None]:
    """ATTACKER replaces its encoded input by `words` (signed integers it chooses, in units
    of the fixed point) before masking it correctly: any masked input a member can send."""
    honest = Contributor._on_forwarded

    def forwarded(self: Contributor, msg: Any) -> Any:
        if self.name == ATTACKER:
            fp = self.config.fixed_point
            chosen = words(fp).astype(fp.signed, casting="unsafe")
            self._encoded = chosen.view(fp.word.newbyteorder("=")).copy()
        return honest(self, msg)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(Contributor, "_on_forwarded", forwarded)
        yield


def _network(
    seed: int = 0,
) -> tuple[SecureNetwork, MixingSchedule, list[tuple[str, dict[str, Any]]]]:
    schedule = MixingSchedule.from_graphs([nx.complete_graph(SITES)])
    net = SecureNetwork(
        sites=tuple(schedule.sites), roster_hash=b"k" * 32, fixed_point=_encoding(_consortium())
    )
    if hasattr(net, "suspect_rng"):  # seeded suspects, for a reproducible test only
        net.suspect_rng = random.Random(seed)
    return net, schedule, []


def _exchange(
    net: SecureNetwork,
    schedule: MixingSchedule,
    events: list[tuple[str, dict[str, Any]]],
    *,
    round: int,
    states: dict[str, dict[str, torch.Tensor]],
) -> dict[str, Any]:
    return net.exchange(
        round=round,
        schedule=schedule,
        states=states,
        dropped=lambda _j, _i: False,
        audit=lambda event, **fields: events.append((event, fields)),
    )


def _headroom(fraction: float) -> Callable[[FixedPoint], np.ndarray]:
    """All coordinates pushed to `fraction` of the largest sum the receiver's per-coordinate
    check allows: the attack that took a receiver's RMS from 0.0099 to 9.5 on 428312f."""

    def words(fp: FixedPoint) -> np.ndarray:
        per_coordinate = 0.8 * fp.range * fp.scale  # W = 4/5 under Metropolis-Hastings on K5
        l2 = getattr(fp, "l2", None)  # 428312f's encoding had no L2 bound
        if l2 is not None:
            per_coordinate = min(per_coordinate, 0.8 * l2 * fp.scale / math.sqrt(COORDS))
        return np.full(COORDS, fraction * per_coordinate, dtype=np.float64).round()

    return words


def _random_words(seed: int) -> Callable[[FixedPoint], np.ndarray]:
    def words(fp: FixedPoint) -> np.ndarray:
        gen = np.random.default_rng(seed)
        return gen.integers(0, 2**fp.modulus_bits, COORDS, dtype=np.uint64)

    return words


@settings(max_examples=8, deadline=None)
@given(
    fraction=st.floats(min_value=0.0, max_value=40.0),
    random=st.booleans(),
    seed=st.integers(0, 2**16),
)
@example(fraction=0.95, random=False, seed=0)
def test_one_contributor_cannot_push_the_receiver_beyond_the_envelope_in_one_exchange(
    fraction: float, random: bool, seed: int
) -> None:
    """Whatever one contributor sends, the receiver's RMS after one exchange is at most
    (1 - W) rms(own) + W rho, or the sum is refused and the state kept. On 428312f the
    headroom attack moved it from 0.01 to about 24 (the per-coordinate range was 32)."""
    net, schedule, events = _network()
    states = _states(seed)
    attack = _random_words(seed) if random else _headroom(fraction)
    with _dishonest(attack):
        outcomes = _exchange(net, schedule, events, round=0, states=states)
    own = states[RECEIVER]
    result = outcomes[RECEIVER].result
    if result is None:
        assert "SumOutOfRange" in (outcomes[RECEIVER].skipped or "")
        return
    mixed, _ = secure_mix(own, result)
    weight = result.weight_sum
    bound = (1 - weight) * _rms(own) + weight * ENVELOPE_RMS
    assert _rms(mixed) <= bound * (1 + 1e-6)


def test_the_headroom_attack_is_bounded_by_the_sum_not_by_one_share() -> None:
    """The docs' bound is W x the envelope, not w_j x it: one contributor using the honest
    contributors' unused headroom does reach far beyond its own share, and no further."""
    net, schedule, events = _network()
    states = _states(1)
    with _dishonest(_headroom(0.95)):
        outcomes = _exchange(net, schedule, events, round=0, states=states)
    result = outcomes[RECEIVER].result
    assert result is not None
    own_share = 0.2 * ENVELOPE_RMS  # w_j rho, what the old README promised
    rms_of_sum = _rms(result.tensors(dtype=torch.float64))
    assert own_share < rms_of_sum <= result.weight_sum * ENVELOPE_RMS


def _named(events: list[tuple[str, dict[str, Any]]]) -> dict[str, tuple[int, str]]:
    named: dict[str, tuple[int, str]] = {}
    for event, fields in events:
        if event == "secure_offender_named" and fields["site"] not in named:
            named[fields["site"]] = (fields["round"], fields["offender"])
    return named


def test_a_random_words_attacker_is_named_within_the_search_bound() -> None:
    """Every receiver the attacker contributes to names it within START_AFTER + 2 (n - 1) +
    2 K_TRIALS = 14 exchanges (two failing, at most two per honest suspect, two per trial of
    the attacker), then, in the next exchange, gets its sums again without it; no honest
    contributor is ever named. On 428312f every one of these exchanges failed SumOutOfRange
    and nobody was named."""
    from gossipmed.mixing.secagg.suspects import K_TRIALS, START_AFTER

    contributors = SITES - 1
    bound = START_AFTER + 2 * (contributors - 1) + 2 * K_TRIALS
    net, schedule, events = _network(seed=11)
    with _dishonest(_random_words(7)):
        for r in range(bound + 1):  # and one more, which sums the others again
            outcomes = _exchange(net, schedule, events, round=r, states=_states(r))
    honest_receivers = [s for s in schedule.sites if s != ATTACKER]
    named = _named(events)
    assert sorted(named) == honest_receivers
    for receiver in honest_receivers:
        round_named, offender = named[receiver]
        assert offender == ATTACKER
        assert round_named <= bound - 1
    assert all(outcomes[s].result is not None for s in honest_receivers)
    assert all(ATTACKER not in outcomes[s].result.contributors for s in honest_receivers)
    assert all(ATTACKER in outcomes[s].result.reconstructed for s in honest_receivers)


def test_honest_exchanges_never_exclude_anyone() -> None:
    net, schedule, events = _network()
    for r in range(3):
        outcomes = _exchange(net, schedule, events, round=r, states=_states(r, rms=3.0))
        assert all(o.result is not None for o in outcomes.values())
    assert not [e for e, _ in events if e.startswith("secure_suspect")]
    assert not _named(events)


# --- the encoding: exact bounds, narrow words -------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    rms=st.floats(min_value=1e-4, max_value=1e3),
    coords=st.integers(1, 2**22),
)
def test_the_consortium_encoding_uses_32_bit_words_that_never_wrap(rms: float, coords: int) -> None:
    fp = ConsortiumSettings(secure_aggregation=True, secagg_rms=rms).envelope.fixed_point(coords)
    assert fp.modulus_bits == 32 and fp.word.itemsize == 4
    assert fp.l2 == pytest.approx(rms * math.sqrt(coords))
    assert fp.range <= fp.l2 * (1 + 1e-12)
    # the largest honest sum (weights summing to at most 1, rounding) stays below 2**31
    assert fp.range * fp.scale * (1 + 1e-9) + 128 < 2**31
    assert 1 / fp.scale <= rms * 2**-24  # resolution: 24+ bits below the envelope


@settings(max_examples=30, deadline=None)
@given(
    scale=st.floats(min_value=0.0, max_value=1e6),
    weights=st.lists(st.floats(min_value=0.01, max_value=0.2), min_size=3, max_size=5),
    seed=st.integers(0, 2**16),
)
def test_honest_sums_always_pass_the_exact_checks(
    scale: float, weights: list[float], seed: int
) -> None:
    """However large the honest states (they are clipped), their sum is never refused."""
    fp = ConsortiumSettings(secure_aggregation=True, secagg_rms=0.05).envelope.fixed_point(COORDS)
    gen = torch.Generator().manual_seed(seed)
    total = np.zeros(COORDS, dtype=fp.word.newbyteorder("="))
    for w in weights:
        values = {k: torch.randn(s, generator=gen) * scale for k, s in SCHEMA.items()}
        np.add(total, encode(values, schema=SCHEMA, weight=w, fixed_point=fp), out=total)
    decode(total, weight_sum=math.fsum(weights), terms=len(weights), fixed_point=fp)


def test_the_l2_check_is_exact_to_one_unit() -> None:
    """A sum exactly at the L2 bound passes; one unit more on a coordinate is refused (the
    check is on integers, with no float rounding)."""
    from gossipmed.mixing.secagg.fixedpoint import l2_bound

    fp = FixedPoint(range=1.0, frac_bits=20, modulus_bits=32, l2=1.0)
    weight = next(w / 1000 for w in range(200, 800) if (l2_bound(w / 1000, 3, 4, fp) or 1) % 2 == 0)
    bound = l2_bound(weight, 3, 4, fp)
    assert bound is not None and bound % 2 == 0
    at = np.full(4, bound // 2, dtype=np.int32)  # sum of squares == bound**2 exactly
    decode(at.view(np.uint32), weight_sum=weight, terms=3, fixed_point=fp)
    over = at.copy()
    over[0] += 1
    with pytest.raises(SumOutOfRange, match="L2 norm"):
        decode(over.view(np.uint32), weight_sum=weight, terms=3, fixed_point=fp)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(-(2**62), 2**62), min_size=0, max_size=40))
def test_the_sum_of_squares_is_exact(values: list[int]) -> None:
    from gossipmed.mixing.secagg.fixedpoint import exact_sum_of_squares

    assert exact_sum_of_squares(np.array(values, dtype=np.int64)) == sum(v * v for v in values)


def test_weights_above_one_in_total_are_refused() -> None:
    """The no-wrap guarantee assumes W <= 1 (a row of a stochastic matrix, self excluded)."""
    with pytest.raises(ConfigError, match="sum to at most 1"):
        instance_config(
            receiver="r",
            neighbours=["a", "b", "c"],
            weights={"a": 0.5, "b": 0.5, "c": 0.5},
            sign_keys={n: b"k" * 32 for n in "abc"},
            schema=SCHEMA,
            roster_hash=b"h" * 32,
            round=0,
        )


# --- the search ------------------------------------------------------------------------


def _bound_failure(excluded: frozenset[str], offending: set[str]) -> object:
    """The outcome of an exchange: a bound failure iff an offending contributor took part."""
    return SumOutOfRange("bad") if offending - excluded else object()


@settings(max_examples=60, deadline=None)
@given(n=st.integers(3, 12), seed=st.integers(0, 2**32), data=st.data())
def test_a_persistent_offender_is_named_within_the_search_bound(
    n: int, seed: int, data: st.DataObject
) -> None:
    from gossipmed.mixing.secagg.suspects import K_TRIALS, START_AFTER, SuspectSearch

    t = data.draw(st.integers(2, n), label="threshold")
    names = [f"s{i:02d}" for i in range(n)]
    offender = data.draw(st.sampled_from(names), label="offender")
    search = SuspectSearch(rng=random.Random(seed))
    for _ in range(START_AFTER + 2 * (n - 1) + 2 * K_TRIALS):
        excluded = search.exclusion(names, t)
        assert len(excluded) <= 1
        if n - 1 < t:
            assert not excluded
        verdict = search.record(_bound_failure(excluded, {offender}))
        assert verdict.named in (None, offender)
    assert (search.named == offender) == (n - 1 >= t)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(4, 8),
    seed=st.integers(0, 2**32),
    attacks=st.lists(st.booleans(), max_size=40),
)
def test_an_attacker_that_never_fails_two_sums_in_a_row_starts_no_search(
    n: int, seed: int, attacks: list[bool]
) -> None:
    """Failing one sum, then behaving (in any pattern without two failures in a row),
    excludes nobody and names nobody: the framing attack of the review."""
    from gossipmed.mixing.secagg.suspects import SuspectSearch

    search = SuspectSearch(rng=random.Random(seed))
    names = [f"s{i}" for i in range(n)]
    previous = False
    for attack in attacks:
        attack = attack and not previous
        assert search.exclusion(names, 3) == frozenset()
        assert search.record(SumOutOfRange("bad") if attack else object()).named is None
        previous = attack


Exchange = tuple[frozenset[str], str]  # (excluded, "pass" | "fail" | "abort")


def _assert_named_on_consistent_evidence(history: list[Exchange], named: str) -> None:
    """The name rests on the last 2 K_TRIALS exchanges alone, with no abort among them: K
    pairs, each one sum that passed without `named` and one that failed with everybody in;
    and the search that led to it started only after START_AFTER failures in a row."""
    from gossipmed.mixing.secagg.suspects import K_TRIALS, START_AFTER

    window = history[-2 * K_TRIALS :]
    pairs = [window[k : k + 2] for k in range(0, len(window), 2)]
    assert len(pairs) == K_TRIALS
    for pair in pairs:
        assert sorted(pair, key=lambda e: e[1]) == [
            (frozenset(), "fail"),
            (frozenset({named}), "pass"),
        ], history
    before = [e for e in history[: -2 * K_TRIALS] if e[1] != "abort"]
    last_clean_pass = max(
        (k for k, (ex, out) in enumerate(before) if not ex and out == "pass"), default=-1
    )
    failures = [e for e in before[last_clean_pass + 1 :] if not e[0] and e[1] == "fail"]
    assert len(failures) >= START_AFTER


_OUTCOMES = {
    "pass": lambda: object(),
    "fail": lambda: SumOutOfRange("bad"),
    "abort": lambda: BelowThreshold("withheld shares"),
}


@settings(max_examples=80, deadline=None)
@given(
    n=st.integers(4, 8),
    seed=st.integers(0, 2**32),
    actions=st.lists(st.sampled_from(sorted(_OUTCOMES)), min_size=1, max_size=60),
)
def test_a_name_always_rests_on_consistent_evidence(n: int, seed: int, actions: list[str]) -> None:
    """Whatever the sums do (an attacker passing, failing or aborting them at will), a
    contributor is named only on K_TRIALS consistent, uninterrupted trials."""
    from gossipmed.mixing.secagg.suspects import SuspectSearch

    search = SuspectSearch(rng=random.Random(seed))
    names = [f"s{i}" for i in range(n)]
    history: list[Exchange] = []
    for action in actions:
        history.append((search.exclusion(names, 3), action))
        named = search.record(_OUTCOMES[action]()).named
        if named is not None:
            _assert_named_on_consistent_evidence(history, named)


@pytest.mark.parametrize("seed", range(8))
def test_an_attacker_that_aborts_its_wrong_guesses_gets_no_second_guess(seed: int) -> None:
    """The attacker (s0) plays each trial's second exchange perfectly (the first one's
    survivor list told it the order; here it reads the search's state, which knows no
    less). In a first exchange it attacks, and when the survivor list shows that the
    exchange excluded an honest suspect (a wrong guess: that sum would fail without the
    suspect), it withholds its unmask shares instead, so the exchange aborts below the
    threshold (n - 2 < t), hoping for a fresh guess. The abort ends the trial: any name
    still rests on K_TRIALS uninterrupted trials, each a blind guess (1/2)."""
    from gossipmed.mixing.secagg.suspects import SuspectSearch

    names = ["s0", "s1", "s2", "s3"]
    search = SuspectSearch(rng=random.Random(seed))
    history: list[Exchange] = []
    for _ in range(300):
        excluded = search.exclusion(names, 3)
        trial = search._trial
        knows_order = trial is not None and trial.step == 1 and trial.suspect != "s0"
        action = "fail"
        if "s0" in excluded or (knows_order and excluded):
            action = "pass"
        elif excluded:
            action = "abort"
        history.append((excluded, action))
        named = search.record(_OUTCOMES[action]()).named
        if named is not None:
            _assert_named_on_consistent_evidence(history, named)
            return


@settings(max_examples=40, deadline=None)
@given(
    outcomes=st.lists(st.sampled_from(["pass", "below"]), max_size=20),
    n=st.integers(3, 8),
)
def test_without_bound_failures_nobody_is_excluded(outcomes: list[str], n: int) -> None:
    from gossipmed.mixing.secagg.suspects import SuspectSearch

    """Passing sums and aborts that are not bound failures (dropouts) never start a search."""
    search = SuspectSearch()
    names = [f"s{i}" for i in range(n)]
    for o in outcomes:
        assert search.exclusion(names, 3) == frozenset()
        search.record(object() if o == "pass" else BelowThreshold("dropouts"))
    assert search.named is None


def test_a_wrong_name_is_withdrawn_when_sums_fail_without_it() -> None:
    """If a contributor is ever named wrongly (an attacker that guessed every trial right,
    or a second offender), the first sum that fails with it excluded withdraws the name."""
    from gossipmed.mixing.secagg.suspects import SuspectSearch

    names = ["a", "b", "c", "d"]
    search = SuspectSearch(rng=random.Random(3))
    while search.named is None:  # "a" offends until it is named
        search.record(_bound_failure(search.exclusion(names, 3), {"a"}))
    assert search.named == "a"
    assert search.exclusion(names, 3) == {"a"}
    assert search.record(object()).named is None  # it stays named while the sums pass
    assert search.exclusion(names, 3) == {"a"}
    assert search.record(SumOutOfRange("d attacks")).cleared == "a"
    assert search.named is None
    assert search.exclusion(names, 3) == frozenset()  # a new search needs failures again
