"""Secure aggregation building blocks: Shamir over M521, key derivation, PRG, AEAD."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
from nacl.signing import SigningKey

from gossipmed.mixing.secagg import primitives as pr
from gossipmed.mixing.secagg.errors import ForgedMessage, MalformedMessage
from gossipmed.mixing.secagg.params import InstanceId
from gossipmed.mixing.secagg.shamir import (
    PRIME,
    SHARE_BYTES,
    reconstruct,
    share_from_bytes,
    share_to_bytes,
    split,
)

INST = InstanceId(b"\x01" * 32, "site-a", 7, 0)


def test_the_field_prime_is_the_mersenne_prime_m521() -> None:
    # Lucas-Lehmer: 2^p - 1 (p an odd prime) is prime iff s_{p-2} == 0 for s_0 = 4,
    # s_{k+1} = s_k^2 - 2 mod 2^p - 1. A proof, not a probabilistic test.
    p = 521
    assert all(p % d for d in range(2, 23))
    assert 2**p - 1 == PRIME
    s = 4
    for _ in range(p - 2):
        s = (s * s - 2) % PRIME
    assert s == 0
    # The test can fail: a composite Mersenne number (2^11 - 1 = 23 x 89) is rejected.
    m, s = 2**11 - 1, 4
    for _ in range(11 - 2):
        s = (s * s - 2) % m
    assert s != 0
    assert PRIME > 2**256  # any 32-byte secret is one field element


def test_any_threshold_subset_reconstructs_and_fewer_do_not() -> None:
    secret = bytes(range(32))
    shares = split(secret, xs=[1, 2, 3, 4, 5], threshold=3)
    for xs in itertools.combinations(shares, 3):
        assert reconstruct({x: shares[x] for x in xs}) == secret
    for xs in itertools.combinations(shares, 2):
        assert reconstruct({x: shares[x] for x in xs}) != secret


def test_a_corrupted_share_gives_a_different_secret() -> None:
    secret = b"\xff" * 32
    shares = split(secret, xs=[1, 2, 3], threshold=3)
    shares[2] = (shares[2] + 1) % PRIME
    assert reconstruct(shares) != secret


def test_shares_are_fresh_randomness_each_time() -> None:
    secret = b"\x00" * 32
    first = split(secret, xs=[1, 2, 3], threshold=3)
    second = split(secret, xs=[1, 2, 3], threshold=3)
    assert first[1] != second[1]  # coefficients from secrets.randbelow, never a fixed seed


def test_share_bytes_round_trip_and_refuse_non_field_elements() -> None:
    value = PRIME - 1
    assert share_from_bytes(share_to_bytes(value), what="s") == value
    with pytest.raises(MalformedMessage):
        share_from_bytes(PRIME.to_bytes(SHARE_BYTES, "big"), what="s")
    with pytest.raises(MalformedMessage):
        share_from_bytes(b"\x00" * (SHARE_BYTES - 1), what="s")


def test_split_refuses_bad_parameters() -> None:
    with pytest.raises(ValueError):
        split(b"\x00" * 31, xs=[1, 2, 3], threshold=2)
    with pytest.raises(ValueError):
        split(b"\x00" * 32, xs=[1, 1, 2], threshold=2)
    with pytest.raises(ValueError):
        split(b"\x00" * 32, xs=[1, 2], threshold=3)
    with pytest.raises(ValueError):
        split(b"\x00" * 32, xs=[0, 1, 2], threshold=2)


def test_derived_seeds_are_bound_to_the_instance_the_pair_and_the_purpose() -> None:
    shared, pk_a, pk_b = b"\x05" * 32, b"\x06" * 32, b"\x07" * 32
    base = pr.pair_seed(INST, a="x", b="y", shared=shared, pk_a=pk_a, pk_b=pk_b)
    # symmetric in the pair, as both ends must derive the same seed
    assert base == pr.pair_seed(INST, a="y", b="x", shared=shared, pk_a=pk_b, pk_b=pk_a)
    others = [
        pr.pair_seed(
            InstanceId(b"\x02" * 32, "site-a", 7, 0),
            a="x",
            b="y",
            shared=shared,
            pk_a=pk_a,
            pk_b=pk_b,
        ),
        pr.pair_seed(
            InstanceId(b"\x01" * 32, "site-b", 7, 0),
            a="x",
            b="y",
            shared=shared,
            pk_a=pk_a,
            pk_b=pk_b,
        ),
        pr.pair_seed(
            InstanceId(b"\x01" * 32, "site-a", 8, 0),
            a="x",
            b="y",
            shared=shared,
            pk_a=pk_a,
            pk_b=pk_b,
        ),
        pr.pair_seed(
            InstanceId(b"\x01" * 32, "site-a", 7, 1),
            a="x",
            b="y",
            shared=shared,
            pk_a=pk_a,
            pk_b=pk_b,
        ),
        pr.pair_seed(INST, a="x", b="z", shared=shared, pk_a=pk_a, pk_b=pk_b),
        pr.self_seed(INST, name="x", b=shared),
        pr.commitment(INST, name="x", b=shared),
        pr.share_key(
            INST, sender="x", recipient="y", shared=shared, sender_pk=pk_a, recipient_pk=pk_b
        ),
        pr.share_key(
            INST, sender="y", recipient="x", shared=shared, sender_pk=pk_b, recipient_pk=pk_a
        ),
    ]
    assert len({base, *others}) == len(others) + 1


def test_the_prg_is_deterministic_per_seed_and_consistent_across_chunks() -> None:
    seed = b"\x09" * 32
    size = pr.CHUNK_WORDS + 17  # crosses a chunk boundary
    a = pr.expand_mask(seed, size, np.dtype(np.uint64))
    b = pr.expand_mask(seed, size, np.dtype(np.uint64))
    assert np.array_equal(a, b)
    shorter = pr.expand_mask(seed, 100, np.dtype(np.uint64))
    assert np.array_equal(a[:100], shorter)
    other = pr.expand_mask(b"\x0a" * 32, 100, np.dtype(np.uint64))
    assert not np.array_equal(shorter, other)
    # the second chunk is not a repeat of the first
    assert not np.array_equal(a[:17], a[pr.CHUNK_WORDS :])


def test_apply_mask_adds_and_negate_removes_it_modulo_the_word() -> None:
    for dtype in (np.uint32, np.uint64):
        x = np.arange(1000, dtype=dtype)
        y = x.copy()
        pr.apply_mask(y, b"\x03" * 32)
        assert not np.array_equal(x, y)
        pr.apply_mask(y, b"\x03" * 32, negate=True)
        assert np.array_equal(x, y)


def test_agreement_is_symmetric_and_refuses_low_order_points() -> None:
    a_sk, a_pk = pr.new_keypair()
    b_sk, b_pk = pr.new_keypair()
    assert pr.agree(a_sk, b_pk) == pr.agree(b_sk, a_pk)
    assert pr.public_from_secret(a_sk) == a_pk
    with pytest.raises(ForgedMessage):
        pr.check_public_key(b"\x00" * 32)
    with pytest.raises(ForgedMessage):
        pr.agree(a_sk, (1).to_bytes(32, "little"))  # the identity: order 1
    pr.check_public_key(b_pk)


def test_sealed_shares_open_only_with_the_right_key_and_binding() -> None:
    key = b"\x11" * 32
    aad = pr.aad(INST, "x", "y")
    sealed = pr.seal(key, aad, b"secret shares")
    assert pr.unseal(key, aad, sealed) == b"secret shares"
    with pytest.raises(ForgedMessage):
        pr.unseal(key, pr.aad(INST, "y", "x"), sealed)  # other direction
    with pytest.raises(ForgedMessage):
        pr.unseal(b"\x12" * 32, aad, sealed)
    rng = random.Random(5)
    for _ in range(20):
        tampered = bytearray(sealed)
        tampered[rng.randrange(len(tampered))] ^= 1 << rng.randrange(8)
        with pytest.raises(ForgedMessage):
            pr.unseal(key, aad, bytes(tampered))


def test_signatures_bind_instance_and_keys() -> None:
    key = SigningKey.generate()
    public = bytes(key.verify_key)
    transcript = pr.advertise_transcript(INST, "x", b"\x01" * 32, b"\x02" * 32)
    sig = pr.sign(key, transcript)
    pr.verify(public, transcript, sig, who="x")
    for other in (
        pr.advertise_transcript(INST, "x", b"\x02" * 32, b"\x01" * 32),
        pr.advertise_transcript(
            InstanceId(b"\x01" * 32, "site-a", 8, 0), "x", b"\x01" * 32, b"\x02" * 32
        ),
        pr.survivors_transcript(INST, ["x"]),
    ):
        with pytest.raises(ForgedMessage):
            pr.verify(public, other, sig, who="x")
