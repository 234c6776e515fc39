"""Site identity: the peer ID we compute must be libp2p's, and key files must stay private."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import base58
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID

from gossipmed.consortium.crypto import (
    Identity,
    base58btc_encode,
    derive_identity,
    generate_identity,
    load_identity,
    peer_id_from_ed25519,
    save_identity,
)
from gossipmed.errors import IdentityError


def _paths(tmp_path: Path) -> dict[str, Path]:
    return {
        "sign_key_path": tmp_path / "keys" / "ed25519.key",
        "box_key_path": tmp_path / "keys" / "x25519.key",
    }


@settings(max_examples=50, deadline=None, derandomize=True)
@given(seed=st.binary(min_size=32, max_size=32))
def test_peer_id_equals_libp2p_for_the_same_ed25519_seed(seed: bytes) -> None:
    identity = Identity(ed25519_seed=seed, x25519_secret=b"\x01" * 32)
    libp2p_id = ID.from_pubkey(create_new_key_pair(seed).public_key).to_base58()
    assert identity.peer_id == libp2p_id
    assert identity.peer_id.startswith("12D3KooW")


def test_generated_identity_loads_into_libp2p_with_the_same_peer_id() -> None:
    identity = generate_identity()
    key_pair = create_new_key_pair(identity.ed25519_seed)
    assert key_pair.public_key.to_bytes() == identity.sign_key
    assert ID.from_pubkey(key_pair.public_key).to_base58() == identity.peer_id


@settings(max_examples=200, deadline=None, derandomize=True)
@given(data=st.binary(max_size=64))
def test_base58_matches_the_reference_encoder(data: bytes) -> None:
    assert base58btc_encode(data) == base58.b58encode(data).decode()


def test_peer_id_rejects_a_key_of_the_wrong_length() -> None:
    with pytest.raises(IdentityError):
        peer_id_from_ed25519(b"\x00" * 31)


def test_signature_verifies_under_the_public_key() -> None:
    from nacl.signing import VerifyKey

    identity = generate_identity()
    sig = identity.sign(b"hello")
    assert len(sig) == 64
    VerifyKey(identity.sign_key).verify(b"hello", sig)


def test_save_then_load_round_trips_with_mode_0600(tmp_path: Path) -> None:
    identity = generate_identity()
    save_identity(identity, **_paths(tmp_path))
    for path in _paths(tmp_path).values():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_identity(**_paths(tmp_path)) == identity


def test_save_refuses_to_overwrite_an_existing_identity(tmp_path: Path) -> None:
    first = generate_identity()
    save_identity(first, **_paths(tmp_path))
    with pytest.raises(IdentityError, match="refusing to overwrite"):
        save_identity(generate_identity(), **_paths(tmp_path))
    assert load_identity(**_paths(tmp_path)) == first


def test_load_refuses_a_key_file_readable_by_others(tmp_path: Path) -> None:
    save_identity(generate_identity(), **_paths(tmp_path))
    os.chmod(_paths(tmp_path)["sign_key_path"], 0o644)
    with pytest.raises(IdentityError, match="readable by others"):
        load_identity(**_paths(tmp_path))


@pytest.mark.parametrize(
    "content",
    ["", "not a key\n", "gossipmed-ed25519-seed-v1\nzz\n", "gossipmed-ed25519-seed-v1\n00\n"],
)
def test_load_rejects_malformed_key_files(tmp_path: Path, content: str) -> None:
    save_identity(generate_identity(), **_paths(tmp_path))
    path = _paths(tmp_path)["sign_key_path"]
    path.write_text(content)
    with pytest.raises(IdentityError):
        load_identity(**_paths(tmp_path))


def test_load_reports_a_missing_key_file(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match="does not exist"):
        load_identity(**_paths(tmp_path))


def test_derived_identities_are_deterministic_and_distinct() -> None:
    secret = b"s" * 32
    assert derive_identity(secret, "a") == derive_identity(secret, "a")
    assert derive_identity(secret, "a").peer_id != derive_identity(secret, "b").peer_id


def test_repr_never_shows_secret_material() -> None:
    identity = generate_identity()
    assert identity.ed25519_seed.hex() not in repr(identity)
    assert identity.x25519_secret.hex() not in repr(identity)
