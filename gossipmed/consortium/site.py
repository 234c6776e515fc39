"""`site.toml`: where one site keeps its name, listen addresses and key files.

Deliberately minimal; the daemon extends it (data, model, privacy). Unknown keys are errors,
not silently ignored, because a misspelt security setting must never fall back to a default.
Relative paths are resolved against the site directory so a site folder can be moved whole.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from gossipmed.consortium.crypto import Identity, load_identity
from gossipmed.consortium.member import check_site_name
from gossipmed.consortium.roster import Roster, load_roster
from gossipmed.errors import ConfigError, RosterError
from gossipmed.toml_writer import toml_value

_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
SITE_FILE = "site.toml"
CARD_FILE = "card.toml"
DEFAULT_LISTEN = ("/ip4/0.0.0.0/tcp/4001",)
EXTENSION_SECTIONS = frozenset({"daemon", "gossip", "data", "adapter", "dp", "train", "compute"})
"""Tables that other readers of site.toml own (node.daemon.config validates their keys);
SiteConfig skips them, but a misspelt table name is still an unknown key."""


@dataclass(frozen=True)
class SiteConfig:
    name: str
    """The site's name in the consortium (1-64 letters, digits, '.', '_' or '-')."""
    listen: tuple[str, ...] = DEFAULT_LISTEN
    """libp2p multiaddrs the site listens on."""
    sign_key_file: str = "keys/ed25519.key"
    """The site's Ed25519 signing key (relative to the site folder)."""
    box_key_file: str = "keys/x25519.key"
    """The site's X25519 encryption key (relative to the site folder)."""
    consortium: str = ""
    """Path of the consortium file; empty until the site joins one."""
    consortium_hash: str = ""
    """Pin: refuse a consortium file with another content hash (the 64 hex digits `gossipmed
    consortium show` prints)."""
    audit_log: str = "audit.jsonl"
    """Where the site appends its audit records (JSON lines)."""

    def __post_init__(self) -> None:
        try:
            check_site_name(self.name)
        except RosterError as exc:
            raise ConfigError(str(exc)) from exc
        if not isinstance(self.listen, tuple) or not self.listen:
            raise ConfigError("listen must be a non-empty list of multiaddrs")
        for addr in self.listen:
            if not isinstance(addr, str) or not addr.startswith("/"):
                raise ConfigError(f"listen address {addr!r} is not a multiaddr (/ip4/...)")
        if not isinstance(self.consortium_hash, str) or (
            self.consortium_hash and not _HEX64.fullmatch(self.consortium_hash)
        ):
            raise ConfigError("consortium_hash must be the 64 hex digits `consortium show` prints")
        for f in ("sign_key_file", "box_key_file", "consortium", "audit_log"):
            if not isinstance(getattr(self, f), str):
                raise ConfigError(f"{f} must be a string path")
        for f in ("sign_key_file", "box_key_file", "audit_log"):
            if not getattr(self, f):
                raise ConfigError(f"{f} must not be empty")

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> SiteConfig:
        known = {f.name for f in fields(cls)}
        data = {
            k: v for k, v in data.items() if not (k in EXTENSION_SECTIONS and isinstance(v, dict))
        }
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"unknown key(s) in {SITE_FILE}: {', '.join(unknown)} "
                f"(known: {', '.join(sorted(known))})"
            )
        if "name" not in data:
            raise ConfigError(f"{SITE_FILE} needs a name")
        kwargs = dict(data)
        if "listen" in kwargs:
            if not isinstance(kwargs["listen"], list):
                raise ConfigError("listen must be a list of multiaddrs")
            kwargs["listen"] = tuple(kwargs["listen"])
        return cls(**kwargs)

    def to_toml(self) -> str:
        lines = ["# gossipmed site configuration (paths relative to this folder)"]
        for f in fields(self):
            value = getattr(self, f.name)
            lines.append(f"{f.name} = {toml_value(list(value) if f.name == 'listen' else value)}")
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Site:
    """A site folder: its directory and parsed config, with path helpers."""

    directory: Path
    config: SiteConfig

    def path(self, relative: str) -> Path:
        p = Path(relative).expanduser()
        return p if p.is_absolute() else self.directory / p

    @property
    def sign_key_path(self) -> Path:
        return self.path(self.config.sign_key_file)

    @property
    def box_key_path(self) -> Path:
        return self.path(self.config.box_key_file)

    @property
    def audit_path(self) -> Path:
        return self.path(self.config.audit_log)

    def identity(self) -> Identity:
        return load_identity(sign_key_path=self.sign_key_path, box_key_path=self.box_key_path)

    def roster(self) -> Roster:
        """The consortium file, refused when it is not the one site.toml pins (a substituted
        file would change members, keys and settings)."""
        if not self.config.consortium:
            raise ConfigError(f"{self.directory / SITE_FILE} names no consortium file yet")
        path = self.path(self.config.consortium)
        roster = load_roster(path)
        pin = self.config.consortium_hash
        if pin and roster.hash_hex != pin.lower():
            raise ConfigError(
                f"{path} has hash {roster.hash_hex[:16]}..., but {SITE_FILE} pins "
                f"{pin[:16]}...: refusing a consortium file this site did not agree to"
            )
        return roster


def load_site(directory: Path) -> Site:
    path = Path(directory) / SITE_FILE
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"{path} not found (create it with `gossipmed init`)") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    try:
        config = SiteConfig.from_mapping(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    return Site(directory=Path(directory), config=config)
