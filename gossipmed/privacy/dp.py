"""DP-SGD pieces: Poisson sampling, per-sample clipping + Gaussian noise, and accounting.

Accounting is Opacus' (RDP or PRV), never hand-rolled. Batches are drawn by Poisson sampling
(each record independently with probability q) because that is the subsampling the RDP/PRV
analyses assume; the noisy sum is divided by the *expected* batch size q*n, as in Opacus.
Clipping (`clip_sum`) runs per micro-batch and its sums add up; noise (`add_noise`) is added
once per logical batch. The generator for sampling and noise is always the caller's
(gossipmed.privacy.randomness): seeded from the OS for a real site, from a seed only in simulations.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Mapping, Sequence

import torch

from gossipmed.errors import PrivacyError

HistoryEntry = tuple[float, float, int]  # (noise_multiplier, sample_rate, steps)


def _accountant(name: str, history: Sequence[HistoryEntry]) -> object:
    from opacus.accountants import PRVAccountant, RDPAccountant

    if name == "rdp":
        acc: RDPAccountant | PRVAccountant = RDPAccountant()
    elif name == "prv":
        acc = PRVAccountant()
    else:
        raise PrivacyError(f"unknown accountant {name!r} (use rdp or prv)")
    acc.history = [(float(s), float(q), int(t)) for s, q, t in history]
    return acc


def _check_mechanism(noise_multiplier: float, sample_rate: float, steps: int) -> None:
    if not (noise_multiplier > 0 and math.isfinite(noise_multiplier)):
        raise PrivacyError("noise multiplier must be a positive number")
    if not 0 < sample_rate <= 1:
        raise PrivacyError("sample rate must be in (0, 1]")
    if steps < 0:
        raise PrivacyError("steps must be >= 0")


def epsilon_of(history: Sequence[HistoryEntry], *, delta: float, accountant: str = "rdp") -> float:
    """Epsilon at `delta` after all mechanisms in `history` (0 for an empty history)."""
    if not 0 < delta < 1:
        raise PrivacyError("delta must be in (0, 1)")
    live = [(s, q, t) for s, q, t in history if t > 0]
    if not live:
        return 0.0
    for s, q, t in live:
        _check_mechanism(s, q, t)
    acc = _accountant(accountant, live)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        eps = float(acc.get_epsilon(delta=delta))  # type: ignore[attr-defined]
    return eps


def epsilon_for(
    *,
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    delta: float,
    accountant: str = "rdp",
) -> float:
    _check_mechanism(noise_multiplier, sample_rate, steps)
    return epsilon_of([(noise_multiplier, sample_rate, steps)], delta=delta, accountant=accountant)


def calibrate_noise(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str = "rdp",
) -> float:
    """Smallest noise multiplier (Opacus' search) whose epsilon after `steps` is <= target."""
    if not (target_epsilon > 0 and math.isfinite(target_epsilon)):
        raise PrivacyError("target epsilon must be a positive number")
    if not 0 < delta < 1:
        raise PrivacyError("delta must be in (0, 1)")
    _check_mechanism(1.0, sample_rate, steps)
    if steps < 1:
        raise PrivacyError("steps must be >= 1 to calibrate noise")
    return _search_noise(target_epsilon, delta, sample_rate, steps, accountant)


@functools.lru_cache(maxsize=256)
def _search_noise(
    target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str
) -> float:
    """Opacus' search, remembered per process and across runs (gossipmed.privacy.noise_cache,
    where every remembered value is re-checked with the accountant before use): a
    deterministic function of public numbers that costs seconds at a high sample rate."""
    from opacus.accountants import create_accountant
    from opacus.accountants.utils import get_noise_multiplier

    from gossipmed.privacy.noise_cache import (
        cache_file,
        cache_key,
        remember_noise,
        remembered_noise,
    )

    def spends(sigma: float) -> float:
        counter = create_accountant(mechanism=accountant)
        counter.history = [(sigma, sample_rate, steps)]  # as Opacus' own search sets it
        return float(counter.get_epsilon(delta=delta))

    key = cache_key(
        target_epsilon=target_epsilon,
        delta=delta,
        sample_rate=sample_rate,
        steps=steps,
        accountant=accountant,
    )
    path = cache_file()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hit = remembered_noise(key, spends=spends, target_epsilon=target_epsilon, path=path)
        if hit is not None:
            return hit
        try:
            sigma = float(
                get_noise_multiplier(
                    target_epsilon=target_epsilon,
                    target_delta=delta,
                    sample_rate=sample_rate,
                    steps=steps,
                    accountant=accountant,
                )
            )
        except ValueError as exc:
            raise PrivacyError(f"cannot reach epsilon {target_epsilon}: {exc}") from exc
    remember_noise(key, sigma, path=path)
    return sigma


def poisson_sample(n: int, *, sample_rate: float, generator: torch.Generator) -> torch.Tensor:
    """Indices of the records picked this step; each is in with probability `sample_rate`."""
    mask = torch.rand(n, generator=generator) < sample_rate
    return mask.nonzero().flatten()


def clip_sum(
    per_sample: Mapping[str, torch.Tensor], *, clip_norm: float
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """(sum over the leading batch dim of each example's gradient clipped to `clip_norm`,
    per-example norms before clipping). Norms are taken over all tensors together, in float64
    where the device has it; the sums are float32 on the gradients' device."""
    names = sorted(per_sample)
    if not names:
        raise PrivacyError("no trainable parameters to privatise")
    first = per_sample[names[0]]
    batch, device = int(first.shape[0]), first.device
    if not batch:
        zeros = {n: torch.zeros(per_sample[n].shape[1:], device=device) for n in names}
        return zeros, torch.zeros(0, dtype=torch.float64)
    wide = torch.float32 if device.type == "mps" else torch.float64
    sq = torch.zeros(batch, dtype=wide, device=device)
    for n in names:
        sq += torch.linalg.vector_norm(per_sample[n].reshape(batch, -1), dim=1, dtype=wide) ** 2
    norms = sq.sqrt()
    scale = (clip_norm / (norms + 1e-12)).clamp(max=1.0).float()
    summed = {n: torch.einsum("b,b...->...", scale, per_sample[n].float()) for n in names}
    return summed, norms.double()


def add_noise(
    summed: Mapping[str, torch.Tensor],
    *,
    clip_norm: float,
    noise_multiplier: float,
    expected_batch: float,
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    """(clipped sum + N(0, (noise_multiplier * clip_norm)^2)) / expected batch, per tensor.

    Noise is drawn once per logical batch, tensor by tensor in sorted-name order, on the CPU
    from `generator` (whose seed is the caller's: the OS for a real site), then moved to the
    gradients' device: the draws do not depend on the device or the micro-batch size."""
    if not expected_batch > 0:
        raise PrivacyError("expected batch must be > 0")
    std = noise_multiplier * clip_norm
    out: dict[str, torch.Tensor] = {}
    for n in sorted(summed):
        s = summed[n]
        noise = torch.randn(s.shape, generator=generator, dtype=torch.float32) * std
        out[n] = (s.float() + noise.to(s.device)) / expected_batch
    return out


def clip_and_noise(
    per_sample: Mapping[str, torch.Tensor],
    *,
    clip_norm: float,
    noise_multiplier: float,
    expected_batch: float,
    generator: torch.Generator,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Privatised mean gradient from per-sample gradients (leading dim = batch).

    Returns (gradient, per-sample norms before clipping). The batch may be empty (Poisson
    sampling); the result is then pure noise, as the accountant assumes.
    """
    summed, norms = clip_sum(per_sample, clip_norm=clip_norm)
    noisy = add_noise(
        summed,
        clip_norm=clip_norm,
        noise_multiplier=noise_multiplier,
        expected_batch=expected_batch,
        generator=generator,
    )
    return noisy, norms
