"""Site identity: one Ed25519 signing key (which *is* the site's libp2p peer ID) and one
X25519 box key, stored as 0600 files that are never silently overwritten.

The peer ID is computed here without importing libp2p so the library stays pure; the daemon
rebuilds its libp2p key pair from `Identity.ed25519_seed` and must arrive at the same ID
(tests/test_crypto.py checks this against libp2p itself).
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from nacl.bindings import crypto_core_ed25519_is_valid_point
from nacl.public import PrivateKey
from nacl.signing import SigningKey

from gossipmed.errors import IdentityError
from gossipmed.wire.varint import encode_uvarint

KEY_BYTES = 32
SIGN_KEY_HEADER = "gossipmed-ed25519-seed-v1"
BOX_KEY_HEADER = "gossipmed-x25519-secret-v1"
KEY_FILE_MODE = 0o600

_BASE58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
# libp2p PublicKey protobuf: field 1 (Type) = 1 (Ed25519), field 2 (Data) = 32 bytes.
_LIBP2P_ED25519_PREFIX = b"\x08\x01\x12\x20"
_IDENTITY_MULTIHASH = b"\x00"


def base58btc_encode(data: bytes) -> str:
    """Bitcoin-alphabet base58, as used by libp2p peer IDs (leading zero bytes become '1')."""
    n = int.from_bytes(data, "big")
    out = []
    while n:
        n, rem = divmod(n, 58)
        out.append(_BASE58_ALPHABET[rem])
    pad = len(data) - len(data.lstrip(b"\x00"))
    return "1" * pad + "".join(reversed(out))


def peer_id_from_ed25519(public_key: bytes) -> str:
    """The libp2p peer ID of an Ed25519 public key (identity multihash, base58btc)."""
    if len(public_key) != KEY_BYTES:
        raise IdentityError(f"Ed25519 public key must be {KEY_BYTES} bytes, got {len(public_key)}")
    proto = _LIBP2P_ED25519_PREFIX + public_key
    return base58btc_encode(_IDENTITY_MULTIHASH + encode_uvarint(len(proto)) + proto)


@dataclass(frozen=True)
class Identity:
    """A site's secret keys; public halves and the peer ID are derived, never stored apart."""

    ed25519_seed: bytes
    x25519_secret: bytes

    def __post_init__(self) -> None:
        for label, key in (("Ed25519 seed", self.ed25519_seed), ("X25519 key", self.x25519_secret)):
            if not isinstance(key, bytes) or len(key) != KEY_BYTES:
                raise IdentityError(f"{label} must be {KEY_BYTES} bytes")

    def __repr__(self) -> str:  # never print secrets, even in tracebacks
        return f"Identity(peer_id={self.peer_id!r})"

    @property
    def signing_key(self) -> SigningKey:
        return SigningKey(self.ed25519_seed)

    @property
    def sign_key(self) -> bytes:
        """Ed25519 public key (32 bytes)."""
        return bytes(self.signing_key.verify_key)

    @property
    def box_private_key(self) -> PrivateKey:
        return PrivateKey(self.x25519_secret)

    @property
    def box_key(self) -> bytes:
        """X25519 public key (32 bytes)."""
        return bytes(self.box_private_key.public_key)

    @property
    def peer_id(self) -> str:
        return peer_id_from_ed25519(self.sign_key)

    def sign(self, message: bytes) -> bytes:
        """Detached 64-byte Ed25519 signature."""
        return self.signing_key.sign(message).signature


def generate_identity() -> Identity:
    """Fresh random keys; the Ed25519 public key is checked to be a valid curve point because
    libp2p refuses seeds that are not (it never happens for honest randomness, but a key the
    daemon cannot load would be discovered far too late)."""
    for _ in range(100):
        seed = os.urandom(KEY_BYTES)
        if crypto_core_ed25519_is_valid_point(bytes(SigningKey(seed).verify_key)):
            return Identity(ed25519_seed=seed, x25519_secret=bytes(PrivateKey.generate()))
    raise IdentityError("could not generate a valid Ed25519 key")  # pragma: no cover


def derive_identity(secret: bytes, label: str) -> Identity:
    """Deterministic identity from a shared secret and a label: for simulations and tests
    that need many reproducible sites. Never for a real site (use generate_identity)."""
    if len(secret) < 16:
        raise IdentityError("derive_identity needs a secret of at least 16 bytes")
    for counter in range(100):
        material = hashlib.blake2b(
            f"{label}\x00{counter}".encode(), key=secret[:64], digest_size=64
        ).digest()
        seed = material[:KEY_BYTES]
        if crypto_core_ed25519_is_valid_point(bytes(SigningKey(seed).verify_key)):
            return Identity(ed25519_seed=seed, x25519_secret=material[KEY_BYTES:])
    raise IdentityError("could not derive a valid Ed25519 key")  # pragma: no cover


def _write_key_file(path: Path, header: str, key: bytes) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_FILE_MODE)
    except FileExistsError as exc:
        raise IdentityError(f"refusing to overwrite existing key file {path}") from exc
    except OSError as exc:
        raise IdentityError(f"cannot create key file {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "w", encoding="ascii") as f:
        os.fchmod(f.fileno(), KEY_FILE_MODE)  # umask may have narrowed or O_CREAT ignored it
        f.write(f"{header}\n{key.hex()}\n")


def save_identity(identity: Identity, *, sign_key_path: Path, box_key_path: Path) -> None:
    """Write both key files (mode 0600). Refuses if either exists, so an identity that peers
    already trust is never replaced by accident."""
    for path in (sign_key_path, box_key_path):
        if path.exists():
            raise IdentityError(f"refusing to overwrite existing key file {path}")
    for path in (sign_key_path, box_key_path):
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    _write_key_file(sign_key_path, SIGN_KEY_HEADER, identity.ed25519_seed)
    _write_key_file(box_key_path, BOX_KEY_HEADER, identity.x25519_secret)


def _read_key_file(path: Path, header: str) -> bytes:
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="ascii")
    except FileNotFoundError as exc:
        raise IdentityError(f"key file {path} does not exist (run `gossipmed init`)") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise IdentityError(f"cannot read key file {path}: {exc}") from exc
    if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise IdentityError(
            f"key file {path} is readable by others (mode {stat.S_IMODE(mode):o}); "
            f"run `chmod 600 {path}`"
        )
    lines = text.split()
    if len(lines) != 2 or lines[0] != header:
        raise IdentityError(f"key file {path} is not a {header} file")
    try:
        key = bytes.fromhex(lines[1])
    except ValueError as exc:
        raise IdentityError(f"key file {path} does not hold hex key material") from exc
    if len(key) != KEY_BYTES:
        raise IdentityError(f"key file {path} holds {len(key)} bytes, expected {KEY_BYTES}")
    return key


def load_identity(*, sign_key_path: Path, box_key_path: Path) -> Identity:
    return Identity(
        ed25519_seed=_read_key_file(sign_key_path, SIGN_KEY_HEADER),
        x25519_secret=_read_key_file(box_key_path, BOX_KEY_HEADER),
    )
