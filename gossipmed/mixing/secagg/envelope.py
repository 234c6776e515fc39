"""The public formula that turns the consortium's norm envelope into the fixed point.

One consortium setting, `secagg_rms` (rho), is the largest root-mean-square value per
coordinate that one contribution may carry. With d the adapter's coordinates (its schema,
the same at every site):

    l2        = rho * sqrt(d)                 a contribution is scaled down to this L2 norm
    range     = min(l2, PEAK_TO_RMS * rho)    then each coordinate is clipped to +-range
    modulus   = 2**32
    frac_bits = the most with range * 2**frac_bits + MAX_CONTRIBUTORS < 2**31 (at most 52)

so every party derives the same encoding from the consortium file and the schema. Contributors'
weights sum to W <= 1, so an honest sum is within W * l2 in L2 norm and W * range per
coordinate, both checked exactly on the decoded sum, and it never wraps mod 2**32.

What this bounds, and what it does not: the receiver only sees the sum, so one contributor
can place the sum anywhere inside those bounds -- its own share and the honest contributors'
unused headroom together. The worst case is W * l2 (and W * range per coordinate), never
w_j * l2. A mixed state x_i <- (1 - W) x_i + s therefore has RMS at most
(1 - W) * rms(x_i) + W * rho: at most max(rms(x_i), rho), which does not compound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gossipmed.errors import ConfigError
from gossipmed.mixing.secagg.params import MAX_CONTRIBUTORS, FixedPoint

PEAK_TO_RMS = 16.0
"""Per-coordinate clip as a multiple of the RMS envelope: only outliers 16x the envelope are
clipped, and it keeps about 25 bits of resolution below rho in 32-bit words."""
MODULUS_BITS = 32
MAX_FRAC_BITS = 52


@dataclass(frozen=True)
class NormEnvelope:
    """The consortium's public norm envelope (`secagg_rms`); `fixed_point(d)` applies it."""

    rms: float

    def __post_init__(self) -> None:
        if isinstance(self.rms, bool) or not isinstance(self.rms, int | float):
            raise ConfigError("secagg_rms must be a number")
        if not math.isfinite(self.rms) or not 0 < self.rms <= 2.0**20:
            raise ConfigError("secagg_rms must be in (0, 2^20]")

    def fixed_point(self, coords: int) -> FixedPoint:
        """The encoding for an adapter of `coords` values (the formula in the module doc)."""
        if type(coords) is not int or coords <= 0:
            raise ConfigError("an adapter has a positive number of coordinates")
        l2 = self.rms * math.sqrt(coords)
        clip = min(l2, PEAK_TO_RMS * self.rms)
        room = 2.0 ** (MODULUS_BITS - 1) / 2 - MAX_CONTRIBUTORS  # half: keeps the slack
        frac_bits = min(MAX_FRAC_BITS, math.floor(math.log2(room / clip)))
        if frac_bits < 0:
            raise ConfigError(f"secagg_rms {self.rms} is too large for {MODULUS_BITS}-bit words")
        return FixedPoint(range=clip, frac_bits=frac_bits, modulus_bits=MODULUS_BITS, l2=l2)


def resolve(encoding: FixedPoint | NormEnvelope, coords: int) -> FixedPoint:
    """A fixed point as given, or the one an envelope yields for `coords` values."""
    return encoding.fixed_point(coords) if isinstance(encoding, NormEnvelope) else encoding
