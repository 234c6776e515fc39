"""DP-SGD pieces: Poisson sampling, per-sample clipping + Gaussian noise, and accounting.

Accounting is Opacus' (RDP or PRV), never hand-rolled. Batches are drawn by Poisson sampling
(each record independently with probability q) because that is the subsampling the RDP/PRV
analyses assume; the noisy sum is divided by the *expected* batch size q*n, as in Opacus.
"""

from __future__ import annotations

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
    from opacus.accountants.utils import get_noise_multiplier

    if not (target_epsilon > 0 and math.isfinite(target_epsilon)):
        raise PrivacyError("target epsilon must be a positive number")
    if not 0 < delta < 1:
        raise PrivacyError("delta must be in (0, 1)")
    _check_mechanism(1.0, sample_rate, steps)
    if steps < 1:
        raise PrivacyError("steps must be >= 1 to calibrate noise")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(
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


def poisson_sample(n: int, *, sample_rate: float, generator: torch.Generator) -> torch.Tensor:
    """Indices of the records picked this step; each is in with probability `sample_rate`."""
    mask = torch.rand(n, generator=generator) < sample_rate
    return mask.nonzero().flatten()


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
    names = sorted(per_sample)
    if not names:
        raise PrivacyError("no trainable parameters to privatise")
    batch = per_sample[names[0]].shape[0]
    if batch:
        sq = torch.zeros(batch, dtype=torch.float64)
        for n in names:
            sq += per_sample[n].reshape(batch, -1).double().pow(2).sum(dim=1)
        norms = sq.sqrt()
        scale = (clip_norm / (norms + 1e-12)).clamp(max=1.0).float()
    else:
        norms = torch.zeros(0, dtype=torch.float64)
        scale = torch.zeros(0)
    out: dict[str, torch.Tensor] = {}
    std = noise_multiplier * clip_norm
    for n in names:
        g = per_sample[n]
        summed = torch.einsum("b,b...->...", scale, g) if batch else torch.zeros(g.shape[1:])
        noise = torch.randn(summed.shape, generator=generator, dtype=summed.dtype) * std
        out[n] = (summed + noise) / expected_batch
    return out, norms
