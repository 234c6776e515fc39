"""Where a site's DP randomness (Poisson sampling and Gaussian noise) comes from.

The noise is what protects a site's records from its neighbours: a neighbour who can
reproduce the draws subtracts the noise and reads the clipped gradient. A real site
(`gossipmed train`, the daemon) therefore seeds its generator from the OS CSPRNG at every
start, never from a config value. Only a simulation or a test, which must be reproducible and
protects nobody, passes a seed. The learning library never picks: its callers pass a
`RandomSource` (keyword-only, no default).

A torch CPU generator (Mersenne Twister, 63-bit seed here) is used either way, so the draws
are the same on every device. Its output is not cryptographic, but the attacker sees only
noisy sums, never raw draws; the seed is what must not be guessable. Known and not addressed
here: floating-point Gaussian samples leak through their low-order bits (Mironov 2012,
"On significance of the least significant bits for differential privacy"); torch's sampler
has no snapping or discrete-Gaussian defence.
"""

from __future__ import annotations

import hashlib
import secrets

import torch


def site_seed(seed: int, site: int) -> int:
    """Public, reproducible per-site seed: simulations and tests only."""
    digest = hashlib.blake2b(f"gossipmed-site:{seed}:{site}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


class RandomSource:
    """Hands out one DP generator per site. Build it with `from_os()` or `seeded(seed)`."""

    def __init__(self, *, seed: int | None) -> None:
        self._seed = seed

    @classmethod
    def from_os(cls) -> RandomSource:
        """Fresh, unpredictable generators (63 bits from `secrets` each): real sites."""
        return cls(seed=None)

    @classmethod
    def seeded(cls, seed: int) -> RandomSource:
        """Reproducible generators derived from a public seed: simulations and tests only."""
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError("seed must be an int")
        return cls(seed=seed)

    @property
    def reproducible(self) -> bool:
        return self._seed is not None

    def generator(self, site: int) -> torch.Generator:
        """The generator of site `site` (its index in the partition)."""
        if self._seed is None:
            return torch.Generator().manual_seed(secrets.randbits(63))
        return torch.Generator().manual_seed(site_seed(self._seed, site))

    def __repr__(self) -> str:
        return "RandomSource.from_os()" if self._seed is None else "RandomSource.seeded(...)"
