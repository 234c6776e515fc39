"""t-out-of-n Shamir secret sharing of 32-byte secrets over GF(2**521 - 1).

2**521 - 1 is the Mersenne prime M521 (a Lucas-Lehmer test in the test suite proves it), far
above any 256-bit secret, so a secret is one field element and t - 1 shares of it are
uniformly distributed and independent of it. Coefficients come from `secrets.randbelow`.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence

from gossipmed.mixing.secagg.errors import MalformedMessage

PRIME = 2**521 - 1
SHARE_BYTES = 66
SECRET_BYTES = 32


def split(secret: bytes, *, xs: Sequence[int], threshold: int) -> dict[int, int]:
    """Shares of `secret` at the evaluation points `xs` (distinct, in [1, PRIME))."""
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"secrets are {SECRET_BYTES} bytes")
    if not 1 <= threshold <= len(xs) or len(set(xs)) != len(xs):
        raise ValueError("need distinct evaluation points and 1 <= threshold <= len(xs)")
    if any(not 0 < x < PRIME for x in xs):
        raise ValueError("evaluation points must be in [1, PRIME)")
    coeffs = [int.from_bytes(secret, "big")]
    coeffs += [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    shares = {}
    for x in xs:
        y = 0
        for c in reversed(coeffs):
            y = (y * x + c) % PRIME
        shares[x] = y
    return shares


def reconstruct(points: Mapping[int, int]) -> bytes:
    """The polynomial's value at 0 from exactly as many points as its threshold.

    Wrong or too few shares give a wrong secret, not an error: callers check the result
    against a public key or commitment. A value too large for 32 bytes is certainly wrong and
    comes back as b"", which matches no key or commitment."""
    if not points or any(not 0 < x < PRIME or not 0 <= y < PRIME for x, y in points.items()):
        raise ValueError("shares must be field elements at distinct non-zero points")
    total = 0
    for xi, yi in points.items():
        num, den = 1, 1
        for xj in points:
            if xj != xi:
                num = num * xj % PRIME
                den = den * (xj - xi) % PRIME
        total = (total + yi * num * pow(den, -1, PRIME)) % PRIME
    if total >= 1 << (8 * SECRET_BYTES):
        return b""  # not a 32-byte secret: matches no key or commitment
    return total.to_bytes(SECRET_BYTES, "big")


def share_to_bytes(value: int) -> bytes:
    return value.to_bytes(SHARE_BYTES, "big")


def share_from_bytes(data: bytes, *, what: str) -> int:
    if type(data) is not bytes or len(data) != SHARE_BYTES:
        raise MalformedMessage(f"{what} must be {SHARE_BYTES} bytes")
    value = int.from_bytes(data, "big")
    if value >= PRIME:
        raise MalformedMessage(f"{what} is not a field element")
    return value
