"""The public parameters of one exchange: which instance, who contributes with what weight,
the threshold, the fixed-point encoding and the tensor schema.

Everything here is public and the same at every party of the neighbourhood (it follows from
the consortium file), so each party derives it locally; nothing in it is taken from a
message. The instance id is bound into every key, mask, ciphertext and signature, so an
artefact of one exchange is useless in any other.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gossipmed.errors import ConfigError

ROSTER_HASH_BYTES = 32
SIGN_KEY_BYTES = 32
MAX_NAME_LEN = 64
MAX_CONTRIBUTORS = 128
"""Largest neighbourhood one instance accepts; bounds every list a message may carry."""
MIN_THRESHOLD = 3
MAX_COORDS = 2**31 - 1
MAX_ROUND = 2**63 - 1
MAX_STEP = 2**32 - 1
WEIGHT_SUM_SLACK = 1e-9
"""Float slack on sum(w) <= 1; the fixed point's headroom (MAX_CONTRIBUTORS units) covers it."""
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # fullmatch: `$` would let "a\n" through
_INSTANCE_DOMAIN = b"gossipmed/secagg/instance/v1"


class Phase(enum.IntEnum):
    """Protocol phases in order; a receiver collects one client message kind in each."""

    ADVERTISE = 0  # AdvertiseKeys -> KeyRoster
    SHARE = 1  # SharedKeys -> ForwardedShares
    MASK = 2  # MaskedInput -> SurvivorList
    CONSISTENCY = 3  # ListSignature -> SignedSurvivors
    UNMASK = 4  # UnmaskShares -> the sum
    DONE = 5
    ABORTED = 6


def valid_name(name: object) -> bool:
    return isinstance(name, str) and _NAME_RE.fullmatch(name) is not None


PROTOCOL_VERSION = 2
"""The secure-aggregation rules a site runs (threshold rule, fresh-training-only); it enters
the consortium hash when secure aggregation is on, so sites running different rules refuse
each other's envelopes and frames. 1: t = max(3, n // 2 + 1); 2: t = max(3, (n + 1) // 2 + 1)
and contributions only after fresh training."""


def threshold_for(contributors: int, *, minimum: int = MIN_THRESHOLD) -> int:
    """The default threshold: t = max(3, (n + 1) // 2 + 1), so that 2t >= n + 2 at every n.

    A lying receiver unmasks a victim by getting two survivor lists signed, one with the
    victim (its self-mask shares) and one without (its mask-key shares); shares are revealed
    only against a list with `t` signatures, and every honest contributor signs one list. With
    c colluding contributors both lists need t signatures: 2(t - c) <= n - c, so the attack
    needs c >= 2t - n; and c >= t could reconstruct outright. The rule keeps 2t - n >= 2, so
    every allowed degree tolerates at least one colluder (`tolerated_collusion`); a strict
    majority alone (n // 2 + 1) tolerates none at odd n >= 5. It tolerates n - t dropouts
    (1 of 4 or 5, 2 of 6 or 7, 3 of 8). It exceeds n (the neighbourhood cannot run secure
    aggregation) exactly when n < max(3, minimum).
    """
    if minimum < MIN_THRESHOLD:
        raise ConfigError(f"the secure-aggregation threshold is at least {MIN_THRESHOLD}")
    return max(minimum, (contributors + 1) // 2 + 1)


def tolerated_collusion(contributors: int, threshold: int) -> int:
    """How many contributors may collude with a lying receiver without unmasking an honest
    contributor's input: fewer than 2t - n (two signed lists) and fewer than t (the shares)."""
    return max(0, min(threshold - 1, 2 * threshold - contributors - 1))


def tolerated_dropouts(contributors: int, threshold: int) -> int:
    """How many contributors may drop out and the receiver still get a sum."""
    return max(0, contributors - threshold)


def check_threshold(
    graph_neighbours: Mapping[str, Sequence[str]], *, minimum: int = MIN_THRESHOLD
) -> list[str]:
    """Sites whose neighbourhood is too small to reach its threshold (sorted); an empty list
    means every site can be the receiver of a secure exchange. `consortium build` should
    refuse secure aggregation on a graph for which this is not empty, naming the sites."""
    if minimum < MIN_THRESHOLD:
        raise ConfigError(f"the secure-aggregation threshold is at least {MIN_THRESHOLD}")
    short = []
    for site, neighbours in graph_neighbours.items():
        distinct = set(neighbours)
        if site in distinct:
            raise ConfigError(f"site {site!r} lists itself as a neighbour")
        n = len(distinct)
        if n > MAX_CONTRIBUTORS or threshold_for(n, minimum=minimum) > n:
            short.append(site)
    return sorted(short)


@dataclass(frozen=True)
class InstanceId:
    """One run of the protocol: receiver `receiver` aggregates its neighbourhood in exchange
    `step` of round `round`, under the roster whose hash is `roster_hash`."""

    roster_hash: bytes
    receiver: str
    round: int
    step: int = 0

    def __post_init__(self) -> None:
        if type(self.roster_hash) is not bytes or len(self.roster_hash) != ROSTER_HASH_BYTES:
            raise ConfigError(f"roster_hash must be {ROSTER_HASH_BYTES} bytes")
        if not valid_name(self.receiver):
            raise ConfigError(f"invalid receiver name {str(self.receiver)[:80]!r}")
        if type(self.round) is not int or not 0 <= self.round <= MAX_ROUND:
            raise ConfigError(f"round must be an int in [0, {MAX_ROUND}]")
        if type(self.step) is not int or not 0 <= self.step <= MAX_STEP:
            raise ConfigError(f"step must be an int in [0, {MAX_STEP}]")

    def encode(self) -> bytes:
        """Canonical bytes, prefixed to every key-derivation and signature transcript."""
        name = self.receiver.encode()
        return b"".join(
            (
                _INSTANCE_DOMAIN,
                self.roster_hash,
                len(name).to_bytes(2, "big"),
                name,
                self.round.to_bytes(8, "big"),
                self.step.to_bytes(8, "big"),
            )
        )

    def to_wire(self) -> dict[str, Any]:
        return {
            "roster": self.roster_hash,
            "receiver": self.receiver,
            "round": self.round,
            "step": self.step,
        }


@dataclass(frozen=True)
class FixedPoint:
    """Public fixed-point encoding: x is clipped to [-range, range] per coordinate and, when
    `l2` is set, scaled down to L2 norm at most `l2`; then weighted, multiplied by
    2**frac_bits and rounded to the nearest integer mod 2**modulus_bits.

    The contributors' weights of one exchange sum to at most 1 (InstanceConfig checks it: they
    are a row of a stochastic mixing matrix without the receiver's own weight), so an honest
    sum lies within range * 2**frac_bits + MAX_CONTRIBUTORS per coordinate. Validation
    guarantees that this never wraps mod 2**modulus_bits and converts to float64 exactly, so
    the receiver's bound checks on the decoded sum are exact (see fixedpoint.decode).
    """

    range: float = 32.0
    frac_bits: int = 32
    modulus_bits: int = 64
    l2: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.range, int | float) or not math.isfinite(self.range):
            raise ConfigError("fixed-point range must be a finite number")
        if not self.range > 0:
            raise ConfigError("fixed-point range must be positive")
        if self.l2 is not None and (
            not isinstance(self.l2, int | float) or not math.isfinite(self.l2) or self.l2 <= 0
        ):
            raise ConfigError("fixed-point l2 must be a positive finite number")
        if type(self.frac_bits) is not int or not 0 <= self.frac_bits <= 52:
            raise ConfigError("fixed-point frac_bits must be an int in [0, 52]")
        if self.modulus_bits not in (32, 64):
            raise ConfigError("fixed-point modulus_bits must be 32 or 64")
        worst = self.range * self.scale * (1 + WEIGHT_SUM_SLACK) + MAX_CONTRIBUTORS
        if worst >= 2.0 ** (self.modulus_bits - 1) or worst > 2.0**53:
            raise ConfigError(
                f"fixed point range {self.range} x 2^{self.frac_bits} is too large for "
                f"mod 2^{self.modulus_bits}; lower frac_bits"
            )

    @property
    def scale(self) -> float:
        return 2.0**self.frac_bits

    @property
    def word(self) -> np.dtype[Any]:
        """Little-endian unsigned word of the masked vectors on the wire."""
        return np.dtype("<u8") if self.modulus_bits == 64 else np.dtype("<u4")

    @property
    def signed(self) -> np.dtype[Any]:
        return np.dtype(np.int64) if self.modulus_bits == 64 else np.dtype(np.int32)

    def error_bound(self, terms: int) -> float:
        """Per-coordinate bound on |decoded sum - exact float64 sum of w_j * clip(x_j)| for
        `terms` contributions: half a unit per term from rounding, plus float64's relative
        2**-53 on each product (doubled to cover the reference sum's own rounding)."""
        return terms * (0.5 + self.range * self.scale * 2.0**-52) / self.scale


@dataclass(frozen=True)
class InstanceConfig:
    """Everything one party must know, in advance, about one exchange.

    weights: contributor -> its public mixing weight w_ij in (0, 1] (Metropolis-Hastings);
    sign_keys: contributor -> its long-term Ed25519 public key (from the roster);
    schema: tensor name -> shape; the masked vector is the tensors flattened in name order.
    """

    instance: InstanceId
    weights: Mapping[str, float]
    sign_keys: Mapping[str, bytes]
    schema: Mapping[str, tuple[int, ...]]
    threshold: int
    fixed_point: FixedPoint = field(default_factory=FixedPoint)

    def __post_init__(self) -> None:
        if not isinstance(self.instance, InstanceId):
            raise ConfigError("instance must be an InstanceId")
        if not isinstance(self.fixed_point, FixedPoint):
            raise ConfigError("fixed_point must be a FixedPoint")
        weights = {str(k): v for k, v in self.weights.items()}
        names = sorted(weights)
        if not 0 < len(names) <= MAX_CONTRIBUTORS:
            raise ConfigError(f"a neighbourhood has 1 to {MAX_CONTRIBUTORS} contributors")
        for name in names:
            if not valid_name(name):
                raise ConfigError(f"invalid contributor name {name[:80]!r}")
            w = weights[name]
            if not isinstance(w, int | float) or not math.isfinite(w) or not 0 < w <= 1:
                raise ConfigError(f"weight of {name!r} must be in (0, 1], got {w!r}")
        if math.fsum(float(weights[n]) for n in names) > 1.0 + WEIGHT_SUM_SLACK:
            raise ConfigError("the contributors' weights must sum to at most 1")
        if self.instance.receiver in weights:
            raise ConfigError("the receiver cannot be one of its own contributors")
        keys = dict(self.sign_keys)
        if sorted(keys) != names:
            raise ConfigError("sign_keys must name exactly the contributors")
        for name, key in keys.items():
            if type(key) is not bytes or len(key) != SIGN_KEY_BYTES:
                raise ConfigError(f"sign key of {name!r} must be {SIGN_KEY_BYTES} bytes")
        schema: dict[str, tuple[int, ...]] = {}
        for tname, shape in self.schema.items():
            if not isinstance(tname, str) or not 0 < len(tname) <= 256:
                raise ConfigError("tensor names must be non-empty strings of <= 256 chars")
            dims = tuple(shape)
            if any(type(d) is not int or d < 0 for d in dims):
                raise ConfigError(f"tensor {tname!r}: shape must be non-negative ints")
            schema[tname] = dims
        coords = sum(math.prod(s) for s in schema.values())
        if not 0 < coords <= MAX_COORDS:
            raise ConfigError(f"the schema must hold 1 to {MAX_COORDS} values")
        t = self.threshold
        if type(t) is not int or not MIN_THRESHOLD <= t <= len(names) or 2 * t < len(names) + 2:
            raise ConfigError(
                f"threshold {t!r} must be an int with {MIN_THRESHOLD} <= t <= n and 2t >= n + 2, "
                f"so that a lying receiver with one colluder cannot unmask anyone "
                f"(n = {len(names)} contributors)"
            )
        object.__setattr__(self, "weights", {n: float(weights[n]) for n in names})
        object.__setattr__(self, "sign_keys", {n: keys[n] for n in names})
        object.__setattr__(self, "schema", {n: schema[n] for n in sorted(schema)})

    @property
    def contributors(self) -> tuple[str, ...]:
        return tuple(self.weights)

    @property
    def coords(self) -> int:
        return sum(math.prod(s) for s in self.schema.values())

    @property
    def masked_bytes(self) -> int:
        """Exact length of every masked input: from the schema, never from a message."""
        return self.coords * self.fixed_point.word.itemsize

    def share_x(self, name: str) -> int:
        """The Shamir evaluation point of a contributor: its 1-based rank in the sorted
        neighbourhood, the same at every party whatever subset the relay shows it."""
        return self.contributors.index(name) + 1
