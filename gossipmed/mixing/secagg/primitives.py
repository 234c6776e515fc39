"""Key agreement, key derivation, authenticated encryption, signatures and mask expansion.

Every derived secret is BLAKE2b-256 with a per-purpose personalisation over length-prefixed
parts that start with the instance id, so no key, mask or signature of one exchange (or one
purpose) is valid in another. Ephemeral X25519 keys come from libsodium's CSPRNG and exist
only for one instance; revealing one (a dropped party's mask key) reveals nothing long-term.

Masks are expanded with libsodium's `randombytes_buf_deterministic` (ChaCha20 keyed by a
32-byte seed) in chunks, each keyed by BLAKE2b(seed, chunk index): a cryptographic PRG that
runs at several hundred MB/s and needs only a chunk of scratch memory.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable

import numpy as np
from nacl import bindings
from nacl.exceptions import BadSignatureError, CryptoError
from nacl.public import PrivateKey
from nacl.signing import SigningKey, VerifyKey

from gossipmed.mixing.secagg.errors import ForgedMessage, MalformedMessage
from gossipmed.mixing.secagg.params import InstanceId

KEY_BYTES = 32
SIG_BYTES = 64
NONCE_BYTES = bindings.crypto_aead_chacha20poly1305_ietf_NPUBBYTES
TAG_BYTES = bindings.crypto_aead_chacha20poly1305_ietf_ABYTES
CHUNK_WORDS = 1 << 20
"""Mask words expanded per PRG call (8 MiB of uint64 scratch)."""

_KDF_LABELS = frozenset(
    {b"gm-sa-share-key", b"gm-sa-pair-mask", b"gm-sa-self-mask", b"gm-sa-commit", b"gm-sa-chunk"}
)


def _lp(part: bytes) -> bytes:
    return len(part).to_bytes(4, "big") + part


def kdf(label: bytes, *parts: bytes, key: bytes = b"") -> bytes:
    """BLAKE2b-256, personalised by `label`, over length-prefixed `parts` (unambiguous)."""
    if label not in _KDF_LABELS:
        raise ValueError(f"unknown KDF label {label!r}")
    h = hashlib.blake2b(digest_size=32, person=label, key=key)
    for part in parts:
        h.update(_lp(part))
    return h.digest()


def new_keypair() -> tuple[bytes, bytes]:
    """A fresh X25519 (secret, public) pair from libsodium's CSPRNG."""
    sk = PrivateKey.generate()
    return bytes(sk), bytes(sk.public_key)


def public_from_secret(secret: bytes) -> bytes:
    return bindings.crypto_scalarmult_base(secret)


def agree(secret: bytes, public: bytes) -> bytes:
    """X25519; a low-order public key (all-zero shared point) is refused as forged."""
    try:
        return bindings.crypto_scalarmult(secret, public)
    except CryptoError as exc:
        raise ForgedMessage("an ephemeral public key is a low-order point") from exc


def check_public_key(public: bytes) -> None:
    """Refuse keys that would make any agreement degenerate, before anyone relies on them."""
    if len(public) != KEY_BYTES:
        raise MalformedMessage("an ephemeral public key must be 32 bytes")
    agree(b"\x01" * KEY_BYTES, public)


def _names(*names: str) -> tuple[bytes, ...]:
    return tuple(n.encode() for n in names)


def share_key(
    instance: InstanceId,
    *,
    sender: str,
    recipient: str,
    shared: bytes,
    sender_pk: bytes,
    recipient_pk: bytes,
) -> bytes:
    """Directional key for the shares `sender` encrypts to `recipient` (through the relay)."""
    s, r = _names(sender, recipient)
    return kdf(b"gm-sa-share-key", instance.encode(), s, r, shared, sender_pk, recipient_pk)


def pair_seed(
    instance: InstanceId, *, a: str, b: str, shared: bytes, pk_a: bytes, pk_b: bytes
) -> bytes:
    """Seed of the pairwise mask between a and b; symmetric, so both derive the same."""
    if b < a:
        a, b, pk_a, pk_b = b, a, pk_b, pk_a
    na, nb = _names(a, b)
    return kdf(b"gm-sa-pair-mask", instance.encode(), na, nb, shared, pk_a, pk_b)


def self_seed(instance: InstanceId, *, name: str, b: bytes) -> bytes:
    return kdf(b"gm-sa-self-mask", instance.encode(), *_names(name), b)


def commitment(instance: InstanceId, *, name: str, b: bytes) -> bytes:
    """Binding, hiding (b is 256 random bits) commitment to the self-mask seed, so the
    receiver can tell a correctly reconstructed b from one built on a corrupted share."""
    return kdf(b"gm-sa-commit", instance.encode(), *_names(name), b)


def aad(instance: InstanceId, sender: str, recipient: str) -> bytes:
    return b"".join(_lp(p) for p in (instance.encode(), *_names(sender, recipient)))


def seal(key: bytes, associated: bytes, plaintext: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    ct = bindings.crypto_aead_chacha20poly1305_ietf_encrypt(plaintext, associated, nonce, key)
    return nonce + ct


def unseal(key: bytes, associated: bytes, sealed: bytes) -> bytes:
    nonce, ct = sealed[:NONCE_BYTES], sealed[NONCE_BYTES:]
    try:
        return bindings.crypto_aead_chacha20poly1305_ietf_decrypt(ct, associated, nonce, key)
    except CryptoError as exc:
        raise ForgedMessage("encrypted shares do not authenticate") from exc


# --- signatures (long-term Ed25519 identity keys) ------------------------------------------


def advertise_transcript(instance: InstanceId, name: str, c_pk: bytes, s_pk: bytes) -> bytes:
    return b"gossipmed/secagg/advertise/v1" + b"".join(
        _lp(p) for p in (instance.encode(), *_names(name), c_pk, s_pk)
    )


def survivors_transcript(instance: InstanceId, survivors: Iterable[str]) -> bytes:
    names = sorted(survivors)
    return b"gossipmed/secagg/survivors/v1" + b"".join(
        _lp(p) for p in (instance.encode(), len(names).to_bytes(4, "big"), *_names(*names))
    )


def sign(key: SigningKey, transcript: bytes) -> bytes:
    return bytes(key.sign(transcript).signature)


def verify(public: bytes, transcript: bytes, signature: bytes, *, who: str) -> None:
    try:
        VerifyKey(public).verify(transcript, signature)
    except (BadSignatureError, CryptoError, ValueError, TypeError) as exc:
        raise ForgedMessage(f"signature of {who!r} does not verify") from exc


# --- masks ---------------------------------------------------------------------------------


def apply_mask(out: np.ndarray, seed: bytes, *, negate: bool = False) -> None:
    """out += PRG(seed) (or -=), elementwise mod 2**bits of out's unsigned dtype, in place.

    Chunk i of the stream is ChaCha20 keyed by BLAKE2b(seed, i), so memory stays one chunk
    and the stream for a given seed is the same whatever the vector's length prefix."""
    word = out.dtype.newbyteorder("<")
    flat = out.reshape(-1)
    for index, start in enumerate(range(0, flat.size, CHUNK_WORDS)):
        stop = min(start + CHUNK_WORDS, flat.size)
        chunk_key = kdf(b"gm-sa-chunk", index.to_bytes(8, "big"), key=seed)
        stream = bindings.randombytes_buf_deterministic((stop - start) * word.itemsize, chunk_key)
        words = np.frombuffer(stream, dtype=word)
        view = flat[start:stop]
        if negate:
            np.subtract(view, words, out=view, casting="unsafe")
        else:
            np.add(view, words, out=view, casting="unsafe")


def expand_mask(seed: bytes, size: int, dtype: np.dtype[np.unsignedinteger]) -> np.ndarray:
    """PRG(seed) as `size` words (tests and analysis; the protocol applies masks in place)."""
    out = np.zeros(size, dtype=dtype)
    apply_mask(out, seed)
    return out
