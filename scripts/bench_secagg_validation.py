"""Is real input validation for secure aggregation affordable at our adapter sizes?

Measures, on this machine, the primitives that proof-carrying secure aggregation would need,
with what the project may use (pynacl's libsodium bindings, hashlib, numpy; no native crypto
may be added), then extrapolates per contribution for a LoRA adapter of the tiny base
(8,192 values) and of the SmolLM-135M shape (460,800 values):

- an Ed25519 scalar multiplication with a variable base (crypto_scalarmult_ed25519_noclamp)
  and a point addition: the unit cost of a Pedersen vector commitment sum_i x_i G_i + r H,
  which ACORN-style (Bell et al., 2023) and Bulletproofs-style range/L2 proofs are built on;
- a fixed-base multiplication (crypto_scalarmult_ed25519_base_noclamp), for comparison;
- BLAKE2b over a 32-byte block: the unit of hash-based commitments (Merkle trees, Ligero /
  Brakedown-style proofs);
- a modular multiply-add per element in numpy (p = 2^61 - 1): the unit of Prio-style
  fully-linear proofs over secret shares (which need at least two non-colluding verifiers).

    python scripts/bench_secagg_validation.py [--repeats N]

Extrapolations are stated as formulas on the measured units (see docs/secagg-input-validation.md):
they are lower bounds for what a proof needs, not measurements of a proof system.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import time
from collections.abc import Callable

import numpy as np
from nacl import bindings as sodium

SIZES = {"tiny base LoRA (q/v, r=8)": 8_192, "SmolLM-135M LoRA (q/v, r=8)": 460_800}
BITS = 32  # an L-infinity range proof over our 32-bit words
P61 = (1 << 61) - 1


def _per_call(fn: Callable[[], object], calls: int, repeats: int) -> float:
    """Best-of-`repeats` seconds per call (the best run is the least disturbed by load)."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - started) / calls)
    return best


def _scalar() -> bytes:
    return sodium.crypto_core_ed25519_scalar_reduce(os.urandom(64))


def measure(repeats: int) -> dict[str, float]:
    point = sodium.crypto_scalarmult_ed25519_base_noclamp(_scalar())
    other = sodium.crypto_scalarmult_ed25519_base_noclamp(_scalar())
    scalar = _scalar()
    block = os.urandom(32)
    units = {
        "ed25519 variable-base scalar mult": _per_call(
            lambda: sodium.crypto_scalarmult_ed25519_noclamp(scalar, point), 400, repeats
        ),
        "ed25519 fixed-base scalar mult": _per_call(
            lambda: sodium.crypto_scalarmult_ed25519_base_noclamp(scalar), 400, repeats
        ),
        "ed25519 point addition": _per_call(
            lambda: sodium.crypto_core_ed25519_add(point, other), 4000, repeats
        ),
        "blake2b of a 32-byte block": _per_call(
            lambda: hashlib.blake2b(block, digest_size=32).digest(), 20000, repeats
        ),
    }
    gen = np.random.default_rng(0)
    a = gen.integers(0, P61, 1_000_000, dtype=np.uint64)
    b = gen.integers(0, P61, 1_000_000, dtype=np.uint64)

    def field_mac() -> object:
        # (a * b) mod p with 61-bit operands needs 128-bit products: split b into 30/31 bits
        lo, hi = b & np.uint64((1 << 31) - 1), b >> np.uint64(31)
        part = (a * lo) % np.uint64(P61)
        high = (((a * hi) % np.uint64(P61)) * np.uint64(1 << 31)) % np.uint64(P61)
        return (part + high) % np.uint64(P61)

    units["field multiply-add mod 2^61-1 (numpy, per element)"] = (
        _per_call(field_mac, 3, repeats) / a.size
    )
    return units


def extrapolate(units: dict[str, float]) -> list[tuple[str, str, float]]:
    mult = units["ed25519 variable-base scalar mult"]
    add = units["ed25519 point addition"]
    rows = []
    for label, d in SIZES.items():
        rows.append((label, "Pedersen vector commitment (d mults + d adds)", d * (mult + add)))
        rows.append(
            (
                label,
                f"range proof, {BITS}-bit L-inf (>= 2 x {BITS} x d mults, prover)",
                2 * BITS * d * (mult + add),
            )
        )
        rows.append(
            (
                label,
                "receiver verifying 4 such proofs (4 x 2 x 32 x d mults)",
                4 * 2 * BITS * d * (mult + add),
            )
        )
        rows.append((label, "hash commitment (d / 8 blocks of 32 bytes)", d / 8 * units[_HASH]))
        rows.append(
            (
                label,
                "Prio-style FLP, ~10 field ops per element (per verifier)",
                10 * d * units[_FIELD],
            )
        )
    return rows


_HASH = "blake2b of a 32-byte block"
_FIELD = "field multiply-add mod 2^61-1 (numpy, per element)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}"
    )
    print(f"load average before: {os.getloadavg()}")
    units = measure(args.repeats)
    print("\nmeasured units (best of repeats):")
    for name, seconds in units.items():
        print(f"  {name:55s} {seconds * 1e6:10.3f} us")
    print("\nextrapolated per contribution per round (single thread):")
    for label, what, seconds in extrapolate(units):
        print(f"  {label:30s} {what:62s} {seconds:12.3f} s")
    print(f"\nload average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
