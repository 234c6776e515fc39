"""A consortium member as its card and the roster describe it: name, peer ID, public keys,
addresses and reachability. Validated on construction, so a Member is always well formed."""

from __future__ import annotations

import base64
import binascii
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gossipmed.consortium.crypto import KEY_BYTES, peer_id_from_ed25519
from gossipmed.errors import IdentityError, RosterError
from gossipmed.toml_writer import toml_value

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # fullmatch: `$` would let "a\n" through


def check_site_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise RosterError(
            f"invalid site name {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def decode_key(value: object, *, what: str) -> bytes:
    """32-byte public key from hex (64 chars) or base64 (44 chars)."""
    if isinstance(value, bytes):
        raw = value
    elif isinstance(value, str):
        try:
            raw = bytes.fromhex(value) if len(value) == 2 * KEY_BYTES else base64.b64decode(value)
        except (ValueError, binascii.Error) as exc:
            raise RosterError(f"{what} is neither hex nor base64") from exc
    else:
        raise RosterError(f"{what} must be a hex or base64 string")
    if len(raw) != KEY_BYTES:
        raise RosterError(f"{what} must be {KEY_BYTES} bytes, got {len(raw)}")
    return raw


@dataclass(frozen=True)
class Member:
    """One site as the consortium knows it; a site's *card* is a Member that is not revoked."""

    name: str
    """The site's name."""
    peer_id: str
    """The libp2p peer ID, derived from sign_key (checked)."""
    sign_key: bytes
    """Ed25519 public key (hex or base64)."""
    box_key: bytes
    """X25519 public key (hex or base64)."""
    addrs: tuple[str, ...] = ()
    """Multiaddrs where the site can be dialled."""
    revoked: bool = False
    """true: the site is out; its messages are refused."""
    reachable: bool = True
    """false: the site accepts no inbound connections and dials out only."""

    def __post_init__(self) -> None:
        check_site_name(self.name)
        for what, key in (("sign_key", self.sign_key), ("box_key", self.box_key)):
            if not isinstance(key, bytes) or len(key) != KEY_BYTES:
                raise RosterError(f"{self.name}: {what} must be {KEY_BYTES} raw bytes")
        try:
            expected = peer_id_from_ed25519(self.sign_key)
        except IdentityError as exc:
            raise RosterError(str(exc)) from exc
        if self.peer_id != expected:
            raise RosterError(
                f"{self.name}: peer_id {self.peer_id!r} does not match its sign_key "
                f"(expected {expected})"
            )
        if not isinstance(self.addrs, tuple) or not all(
            isinstance(a, str) and a.startswith("/") for a in self.addrs
        ):
            raise RosterError(f"{self.name}: addrs must be a list of multiaddr strings")
        if not isinstance(self.revoked, bool):
            raise RosterError(f"{self.name}: revoked must be true or false")
        if not isinstance(self.reachable, bool):
            raise RosterError(f"{self.name}: reachable must be true or false")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, allow_revoked: bool = True) -> Member:
        allowed = {"name", "peer_id", "sign_key", "box_key", "addrs", "reachable"}
        if allow_revoked:
            allowed.add("revoked")
        unknown = set(data) - allowed
        if unknown:
            raise RosterError(f"unknown member key(s): {', '.join(sorted(unknown))}")
        missing = {"name", "peer_id", "sign_key", "box_key"} - set(data)
        if missing:
            raise RosterError(f"member is missing: {', '.join(sorted(missing))}")
        name = check_site_name(data["name"])
        addrs = data.get("addrs", [])
        if not isinstance(addrs, list):
            raise RosterError(f"{name}: addrs must be a list")
        return cls(
            name=name,
            peer_id=str(data["peer_id"]),
            sign_key=decode_key(data["sign_key"], what=f"{name}: sign_key"),
            box_key=decode_key(data["box_key"], what=f"{name}: box_key"),
            addrs=tuple(addrs),
            revoked=data.get("revoked", False),
            reachable=data.get("reachable", True),
        )

    def to_mapping(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "peer_id": self.peer_id,
            "sign_key": self.sign_key.hex(),
            "box_key": self.box_key.hex(),
            "addrs": list(self.addrs),
            "reachable": self.reachable,
            "revoked": self.revoked,
        }

    def card_toml(self) -> str:
        """The public card a site hands to whoever builds the consortium file."""
        m = self.to_mapping()
        del m["revoked"]
        if self.reachable:
            del m["reachable"]  # cards of reachable sites read as they always did
        return "".join(f"{k} = {toml_value(v)}\n" for k, v in m.items())


def load_card(path: Path) -> Member:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise RosterError(f"cannot read card {path}: {exc.strerror}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise RosterError(f"card {path} is not valid TOML: {exc}") from exc
    try:
        return Member.from_mapping(data, allow_revoked=False)
    except RosterError as exc:
        raise RosterError(f"card {path}: {exc}") from exc
