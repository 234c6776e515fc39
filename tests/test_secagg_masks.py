"""What the receiver sees of one contributor is uniform noise mod 2^B, and masks never repeat.

Each uniformity test plays the curious receiver with everything it can legitimately obtain:
the masked input alone; the masked input of a party it declared dropped after receiving it
(it then holds that party's pairwise mask key, so only the self-mask protects the value);
the masked input of a survivor (it then holds the self-mask seed, so only the pairwise masks
protect it); and two exchanges' masked inputs of the same party (their difference would be
y1 - y2 if masks were reused). Each has a twin that breaks the masking and shows the check
then fails.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from nacl.signing import SigningKey

from gossipmed.mixing.secagg import (
    AdvertiseKeys,
    AggregateResult,
    ContributionGuard,
    Contributor,
    FixedPoint,
    InstanceConfig,
    InstanceId,
    MaskedInput,
    Message,
    ReusedInstance,
    UnmaskShares,
    run_instance,
)
from gossipmed.mixing.secagg import primitives as pr
from gossipmed.mixing.secagg.fixedpoint import encode
from gossipmed.mixing.secagg.shamir import reconstruct, share_from_bytes

ROSTER = b"\x17" * 32
COORDS = 1 << 14
SCHEMA = {"w": (COORDS,)}
FP = FixedPoint()
NAMES = ["b", "c", "d", "e"]
KEYS = {n: SigningKey.generate() for n in [*NAMES, "f"]}
TARGET = "c"
CHI2_LIMIT = 600.0  # 255 degrees of freedom: P(chi2 > 600) ~ 1e-29 for uniform bytes


def looks_uniform(words: np.ndarray) -> bool:
    """Chi-square of each byte lane of the words against uniform bytes."""
    lanes = words.astype(words.dtype.newbyteorder("<")).view(np.uint8).reshape(words.size, -1)
    expected = words.size / 256
    for lane in lanes.T:
        counts = np.bincount(lane, minlength=256)
        if float(((counts - expected) ** 2 / expected).sum()) > CHI2_LIMIT:
            return False
    return True


def _config(receiver: str = "a", round: int = 1, step: int = 0) -> InstanceConfig:
    names = [n for n in [*NAMES, "f"] if n != receiver][:4] if receiver != "a" else NAMES
    return InstanceConfig(
        instance=InstanceId(ROSTER, receiver, round, step),
        weights={n: 0.2 for n in names},
        sign_keys={n: bytes(KEYS[n].verify_key) for n in names},
        schema=SCHEMA,
        threshold=3,
        fixed_point=FP,
    )


def _values(x: float) -> dict[str, dict[str, torch.Tensor]]:
    return {n: {"w": torch.full((COORDS,), x)} for n in [*NAMES, "f"]}


def _encoded(x: float) -> np.ndarray:
    return encode({"w": torch.full((COORDS,), x)}, schema=SCHEMA, weight=0.2, fixed_point=FP)


class _Capture:
    """A tap that records every message and can lose the target's masked input."""

    def __init__(self, *, lose_target_input: bool = False) -> None:
        self.lose = lose_target_input
        self.messages: list[tuple[str, str, Message]] = []

    def __call__(self, sender: str, recipient: str, message: Message) -> bool:
        self.messages.append((sender, recipient, message))
        return not (self.lose and isinstance(message, MaskedInput) and sender == TARGET)

    def masked(self, name: str) -> np.ndarray:
        for _, _, m in self.messages:
            if isinstance(m, MaskedInput) and m.sender == name:
                return np.frombuffer(m.masked, dtype=FP.word).copy()
        raise AssertionError(f"no masked input from {name}")

    def adverts(self) -> dict[str, AdvertiseKeys]:
        return {m.sender: m for _, _, m in self.messages if isinstance(m, AdvertiseKeys)}

    def recover(self, config: InstanceConfig, party: str, kind: str) -> bytes:
        points = {}
        for _, _, m in self.messages:
            if isinstance(m, UnmaskShares):
                shares = m.pair_shares if kind == "pair" else m.self_shares
                points[config.share_x(m.sender)] = share_from_bytes(shares[party], what=kind)
        assert len(points) >= config.threshold
        return reconstruct(dict(list(points.items())[: config.threshold]))


def _run(config: InstanceConfig, x: float, tap: _Capture) -> AggregateResult | None:
    """The receiver's result; None when broken masking made the sum fail its range check
    (the tap has still seen every message up to the unmask phase)."""
    result = run_instance(
        config,
        signing_keys=KEYS,
        values=_values(x),
        tap=tap,
        guards={n: ContributionGuard.after_training(config.instance.round) for n in KEYS},
    )
    return result if isinstance(result, AggregateResult) else None


def _no_self_mask(
    encoded: np.ndarray, self_seed: bytes, pair_seeds: list[tuple[bytes, bool]]
) -> np.ndarray:
    for seed, negate in pair_seeds:
        pr.apply_mask(encoded, seed, negate=negate)
    return encoded


def _no_pair_masks(
    encoded: np.ndarray, self_seed: bytes, pair_seeds: list[tuple[bytes, bool]]
) -> np.ndarray:
    pr.apply_mask(encoded, self_seed)
    return encoded


def _no_masks(
    encoded: np.ndarray, self_seed: bytes, pair_seeds: list[tuple[bytes, bool]]
) -> np.ndarray:
    return encoded


def _reused_mask(
    encoded: np.ndarray, self_seed: bytes, pair_seeds: list[tuple[bytes, bool]]
) -> np.ndarray:
    pr.apply_mask(encoded, b"\x99" * 32)  # the same mask in every exchange
    return encoded


Masking = Callable[[np.ndarray, bytes, list[tuple[bytes, bool]]], np.ndarray] | None


def _break(monkeypatch: pytest.MonkeyPatch, masking: Masking) -> None:
    if masking is not None:
        monkeypatch.setattr(Contributor, "_mask", staticmethod(masking))


# --- what the receiver sees ----------------------------------------------------------------


def _masked_input(monkeypatch: pytest.MonkeyPatch, masking: Masking) -> np.ndarray:
    _break(monkeypatch, masking)
    tap = _Capture()
    _run(_config(), 0.5, tap)
    return tap.masked(TARGET)


def _dropped_party_residual(monkeypatch: pytest.MonkeyPatch, masking: Masking) -> np.ndarray:
    """The receiver keeps TARGET's masked input, declares it dropped, rebuilds its pairwise
    masks from the revealed key shares and removes them: only PRG(b) should remain."""
    _break(monkeypatch, masking)
    config = _config()
    tap = _Capture(lose_target_input=True)
    result = _run(config, 0.5, tap)
    if masking is None:
        assert result is not None and result.reconstructed == (TARGET,)
    y = tap.masked(TARGET)
    s_sk = tap.recover(config, TARGET, "pair")
    adverts = tap.adverts()
    assert pr.public_from_secret(s_sk) == adverts[TARGET].s_pk
    for other in sorted(set(config.contributors) - {TARGET}):
        shared = pr.agree(s_sk, adverts[other].s_pk)
        seed = pr.pair_seed(
            config.instance,
            a=TARGET,
            b=other,
            shared=shared,
            pk_a=adverts[TARGET].s_pk,
            pk_b=adverts[other].s_pk,
        )
        pr.apply_mask(y, seed, negate=other < TARGET)
    return y


def _survivor_residual(monkeypatch: pytest.MonkeyPatch, masking: Masking) -> np.ndarray:
    """The receiver rebuilds a survivor's self-mask seed (as it must) and removes PRG(b):
    only the pairwise masks should remain."""
    _break(monkeypatch, masking)
    config = _config()
    tap = _Capture()
    result = _run(config, 0.5, tap)
    assert masking is not None or (result is not None and TARGET in result.contributors)
    y = tap.masked(TARGET)
    b = tap.recover(config, TARGET, "self")
    pr.apply_mask(y, pr.self_seed(config.instance, name=TARGET, b=b), negate=True)
    return y


def _difference_across_exchanges(monkeypatch: pytest.MonkeyPatch, masking: Masking) -> np.ndarray:
    _break(monkeypatch, masking)
    first, second = _Capture(), _Capture()
    _run(_config(round=1), 0.5, first)
    _run(_config(round=2), 0.25, second)
    diff = first.masked(TARGET)
    np.subtract(diff, second.masked(TARGET), out=diff)
    return diff


def test_the_check_rejects_structured_words() -> None:
    assert not looks_uniform(_encoded(0.5))
    assert not looks_uniform(_encoded(0.5) - _encoded(0.25))
    rng_words = np.frombuffer(pr.expand_mask(b"\x01" * 32, COORDS, FP.word).tobytes(), FP.word)
    assert looks_uniform(rng_words)


def test_a_masked_input_is_uniform(monkeypatch: pytest.MonkeyPatch) -> None:
    assert looks_uniform(_masked_input(monkeypatch, None))


def test_without_any_mask_the_masked_input_check_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not looks_uniform(_masked_input(monkeypatch, _no_masks))


def test_a_party_declared_dropped_after_sending_stays_hidden_by_its_self_mask(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert looks_uniform(_dropped_party_residual(monkeypatch, None))


def test_without_the_self_mask_a_dropped_party_is_exposed(monkeypatch: pytest.MonkeyPatch) -> None:
    residual = _dropped_party_residual(monkeypatch, _no_self_mask)
    assert not looks_uniform(residual)
    assert np.array_equal(residual, _encoded(0.5))  # the receiver reads x outright


def test_a_survivor_stays_hidden_by_its_pairwise_masks(monkeypatch: pytest.MonkeyPatch) -> None:
    assert looks_uniform(_survivor_residual(monkeypatch, None))


def test_without_pairwise_masks_a_survivor_is_exposed(monkeypatch: pytest.MonkeyPatch) -> None:
    residual = _survivor_residual(monkeypatch, _no_pair_masks)
    assert not looks_uniform(residual)
    assert np.array_equal(residual, _encoded(0.5))


def test_two_exchanges_of_one_party_differ_by_uniform_noise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert looks_uniform(_difference_across_exchanges(monkeypatch, None))


def test_with_a_reused_mask_the_difference_reveals_y1_minus_y2(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    diff = _difference_across_exchanges(monkeypatch, _reused_mask)
    assert not looks_uniform(diff)
    assert np.array_equal(diff, _encoded(0.5) - _encoded(0.25))


# --- masks never repeat --------------------------------------------------------------------


def _mask_of(config: InstanceConfig, x: float = 0.5) -> np.ndarray:
    tap = _Capture()
    assert _run(config, x, tap) is not None
    mask = tap.masked(TARGET)
    np.subtract(mask, _encoded(x), out=mask)
    return mask


def test_masks_never_repeat_across_exchanges_rounds_receivers_or_restarts() -> None:
    masks = [
        _mask_of(_config(round=1)),
        _mask_of(_config(round=1)),  # the same exchange run again by a restarted site
        _mask_of(_config(round=2)),
        _mask_of(_config(round=1, step=1)),
        _mask_of(_config(receiver="f", round=1)),  # TARGET contributing to another receiver
    ]
    heads = [m[:256].tobytes() for m in masks]
    assert len(set(heads)) == len(heads)
    # not even a shared 64-bit word between any two masks
    words = np.concatenate([m[:4096] for m in masks])
    assert np.unique(words).size == words.size


def test_a_restarted_site_with_its_guard_refuses_to_contribute_again() -> None:
    config = _config(round=5)
    guard = ContributionGuard.after_training(5)
    Contributor(
        config, name=TARGET, signing_key=KEYS[TARGET], values=_values(0.5)[TARGET], guard=guard
    )
    restored = ContributionGuard()
    restored.load_state_dict(guard.state_dict())  # what the checkpoint carried over
    restored.note_trained(5)  # the restarted site trained round 5 again
    with pytest.raises(ReusedInstance):
        Contributor(
            config,
            name=TARGET,
            signing_key=KEYS[TARGET],
            values=_values(0.5)[TARGET],
            guard=restored,
        )
    with pytest.raises(ReusedInstance):
        restored.admit(_config(round=4).instance)  # earlier rounds too
    restored.admit(_config(round=5, step=1).instance)  # a later exchange is fine
    restored.admit(_config(receiver="f", round=5).instance)  # guards are per receiver


def test_a_refused_value_does_not_burn_the_exchange() -> None:
    config = _config(round=9)
    guard = ContributionGuard.after_training(9)
    with pytest.raises(ValueError):
        Contributor(
            config, name=TARGET, signing_key=KEYS[TARGET], values={"w": torch.zeros(3)}, guard=guard
        )
    assert guard.last("a") is None
