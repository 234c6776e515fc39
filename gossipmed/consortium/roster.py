"""The consortium roster: who is a member, with which keys, and who gossips with whom.

Every envelope carries the roster's content hash, so two sites only talk when they agree on
exactly the same membership, keys and edges. Revocation therefore produces a *new* roster
(new hash): a revoked site cannot keep talking under the old one to sites that updated.

What the hash covers: the format version, every member's name, peer ID, keys and revoked
flag, the edge list, and the gossip settings every site must share (the `[gossip]` table:
gossipmed.consortium.settings; a version-1 file has none and loads with the defaults).
With secure aggregation on, the hash also covers the secure-aggregation protocol version
(gossipmed.mixing.secagg.params.PROTOCOL_VERSION: threshold rule, fresh training only), so
sites running different rules refuse each other; a roster without it hashes as before.
Addresses and the `topology`/`created` labels are deliberately left out: addresses are
routing hints that may change without invalidating in-flight updates.

Outbound-only sites (version 3): a card may say `reachable = false` (a hospital whose firewall
allows only outbound connections). The file then records, per edge with such an end, which
end dials (`dial = [[dialler, other], ...]`): the unreachable end dials and keeps the
connection open, the other end never dials it. An edge between two unreachable sites cannot
work and is refused. Reachability and dialling enter the hash; a roster in which every member
is reachable and no edge has a fixed dialler hashes exactly as version 2 did, so upgrading
the software does not change an existing consortium's hash. Files of versions 1 and 2 load
as all-reachable.

Members and cards live in gossipmed.consortium.member; edges and who dials them in
gossipmed.consortium.edges.

Validation policy: structural problems (duplicate names or peer IDs, a peer ID that does not
match its key, edges naming non-members, self loops) are errors. A graph that is disconnected
among non-revoked members is only a *warning* (`Roster.warnings()`): revoking a compromised
member must always be possible, even when that splits the graph; `consortium build` refuses
to create a disconnected roster in the first place.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from gossipmed.consortium.edges import normalise_edges, resolve_dialers
from gossipmed.consortium.member import Member
from gossipmed.consortium.settings import ConsortiumSettings
from gossipmed.errors import ConfigError, RosterError
from gossipmed.mixing.secagg.params import MIN_THRESHOLD, PROTOCOL_VERSION, check_threshold
from gossipmed.toml_writer import toml_value

ROSTER_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
HASH_VERSION_ALL_REACHABLE = 2  # the canonical form when no outbound-only fields are in use
ROSTER_HASH_BYTES = 32
_HASH_PERSON = b"gossipmed-roster"


class NotAMember(RosterError):
    """The claimed sender (or a requested name) is not in the roster."""


class RevokedMember(RosterError):
    """The party is in the roster but has been revoked."""


class RosterMismatch(RosterError):
    """An envelope was made under a different roster (hash) than this site's."""


@dataclass(frozen=True)
class Roster:
    members: tuple[Member, ...]
    """The `[[members]]` tables, one per site."""
    edges: tuple[tuple[str, str], ...]
    """Who gossips with whom: a list of [a, b] site-name pairs."""
    topology: str = "custom"
    """The graph kind the edges were made from (informational)."""
    created: str = ""
    """When the roster was created (informational)."""
    settings: ConsortiumSettings = field(default_factory=ConsortiumSettings)
    """The `[gossip]` table every site must share."""
    dial: tuple[tuple[str, str], ...] = ()
    """(dialler, other) per edge whose connection only one end opens; completed on
    construction with the unreachable end of every edge that has one."""
    _by_name: dict[str, Member] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        members = tuple(sorted(self.members, key=lambda m: m.name))
        object.__setattr__(self, "members", members)
        object.__setattr__(self, "edges", normalise_edges(self.edges))
        if not members:
            raise RosterError("a roster needs at least one member")
        by_name: dict[str, Member] = {}
        peer_ids: set[str] = set()
        for m in members:
            if m.name in by_name:
                raise RosterError(f"duplicate member name {m.name!r}")
            if m.peer_id in peer_ids:
                raise RosterError(f"duplicate peer_id {m.peer_id} ({m.name})")
            by_name[m.name] = m
            peer_ids.add(m.peer_id)
        for a, b in self.edges:
            for end in (a, b):
                if end not in by_name:
                    raise RosterError(f"edge ({a}, {b}) names {end!r}, which is not a member")
        object.__setattr__(self, "dial", resolve_dialers(by_name, self.edges, self.dial))
        object.__setattr__(self, "_by_name", by_name)

    @property
    def outbound_only(self) -> bool:
        """Whether any member is unreachable or any edge has a fixed dialler (version 3)."""
        return bool(self.dial) or not all(m.reachable for m in self.members)

    @cached_property
    def hash(self) -> bytes:
        """BLAKE2b-256 over a canonical JSON encoding of version, members and edges."""
        extended = self.outbound_only
        canonical: dict[str, Any] = {
            "v": ROSTER_VERSION if extended else HASH_VERSION_ALL_REACHABLE,
            "members": [
                {
                    "name": m.name,
                    "peer_id": m.peer_id,
                    "sign_key": m.sign_key.hex(),
                    "box_key": m.box_key.hex(),
                    "revoked": m.revoked,
                    **({"reachable": m.reachable} if extended else {}),
                }
                for m in self.members
            ],
            "edges": [list(e) for e in self.edges],
            "gossip": self.settings.to_mapping(),
        }
        if extended:
            canonical["dial"] = [list(d) for d in self.dial]
        if self.settings.secure_aggregation:  # sites running other secagg rules disagree
            canonical["secagg_protocol"] = PROTOCOL_VERSION
        blob = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hashlib.blake2b(
            blob.encode("ascii"), digest_size=ROSTER_HASH_BYTES, person=_HASH_PERSON
        ).digest()

    @property
    def hash_hex(self) -> str:
        return self.hash.hex()

    def get(self, name: str) -> Member | None:
        return self._by_name.get(name)

    def member_by_peer_id(self, peer_id: str) -> Member | None:
        """The member with this peer ID (peer IDs are unique in a roster), or None."""
        return self._by_peer_id.get(peer_id)

    @cached_property
    def _by_peer_id(self) -> dict[str, Member]:
        return {m.peer_id: m for m in self.members}

    def member(self, name: str) -> Member:
        m = self._by_name.get(name)
        if m is None:
            raise NotAMember(f"{name!r} is not a member of this consortium")
        return m

    def active_member(self, name: str) -> Member:
        """The member, or NotAMember / RevokedMember: the gate for every envelope."""
        m = self.member(name)
        if m.revoked:
            raise RevokedMember(f"{name!r} has been revoked from this consortium")
        return m

    @property
    def active_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.members if not m.revoked)

    def dialer(self, a: str, b: str) -> str | None:
        """The end of edge (a, b) that opens its connection; None when either end may."""
        for d, other in self.dial:
            if {d, other} == {a, b}:
                return d
        return None

    def neighbours(self, name: str) -> tuple[str, ...]:
        """Non-revoked graph neighbours of `name` (sorted)."""
        self.member(name)
        out = set()
        for a, b in self.edges:
            if name in (a, b):
                other = b if a == name else a
                if not self._by_name[other].revoked:
                    out.add(other)
        return tuple(sorted(out))

    def components(self) -> list[list[str]]:
        """Connected components of the graph restricted to non-revoked members."""
        active = set(self.active_names)
        adj: dict[str, set[str]] = {n: set() for n in active}
        for a, b in self.edges:
            if a in active and b in active:
                adj[a].add(b)
                adj[b].add(a)
        seen: set[str] = set()
        comps = []
        for start in sorted(active):
            if start in seen:
                continue
            stack, comp = [start], []
            seen.add(start)
            while stack:
                n = stack.pop()
                comp.append(n)
                for nb in adj[n] - seen:
                    seen.add(nb)
                    stack.append(nb)
            comps.append(sorted(comp))
        return comps

    def warnings(self) -> list[str]:
        out = []
        comps = self.components()
        if len(comps) > 1:
            out.append(
                f"graph among non-revoked members is disconnected ({len(comps)} components: "
                + "; ".join(", ".join(c) for c in comps)
                + "); those parts will not converge to one model"
            )
        if not self.active_names:
            out.append("every member is revoked")
        short = self.secagg_short_sites()
        if short:
            out.append(
                f"secure aggregation needs at least {MIN_THRESHOLD} neighbours per site (more "
                f"than half of them, never below {MIN_THRESHOLD}, must contribute); too "
                f"few at: {', '.join(short)}"
            )
        return out

    def secagg_short_sites(self) -> list[str]:
        """With secure aggregation on, the active sites whose neighbourhood cannot reach the
        threshold (gossipmed.mixing.secagg.check_threshold); empty when it is off."""
        if not self.settings.secure_aggregation:
            return []
        active = set(self.active_names)
        return check_threshold(
            {n: [m for m in self.neighbours(n) if m in active] for n in sorted(active)}
        )

    def revoke(self, name: str) -> Roster:
        m = self.member(name)
        if m.revoked:
            raise RevokedMember(f"{name!r} is already revoked")
        members = tuple(replace(x, revoked=True) if x.name == name else x for x in self.members)
        return replace(self, members=members)

    def to_mapping(self) -> dict[str, Any]:
        return {
            "version": ROSTER_VERSION,
            "topology": self.topology,
            "created": self.created,
            "hash": self.hash_hex,
            "members": [m.to_mapping() for m in self.members],
            "edges": [list(e) for e in self.edges],
            "dial": [list(d) for d in self.dial],
            "gossip": self.settings.to_mapping(),
        }

    def to_toml(self) -> str:
        lines = [
            "# gossipmed consortium roster. Edit with `gossipmed consortium`; any change",
            "# (including revocation) changes the hash, and every site needs the new file.",
            f"version = {ROSTER_VERSION}",
            f"topology = {toml_value(self.topology)}",
            f"created = {toml_value(self.created)}",
            f"# content hash (informational; recomputed on load): {self.hash_hex}",
            "edges = [",
            *(f"  {toml_value(list(e))}," for e in self.edges),
            "]",
            "# [dialler, other]: the other end never dials the dialler (an unreachable site);",
            "# edges not listed here are dialled by whichever end needs the connection",
            "dial = [",
            *(f"  {toml_value(list(d))}," for d in self.dial),
            "]",
            "",
            "# gossip settings every site must share (they enter the hash)",
            "[gossip]",
            *(f"{k} = {toml_value(v)}" for k, v in self.settings.to_mapping().items()),
        ]
        for m in self.members:
            lines.append("")
            lines.append("[[members]]")
            lines.extend(f"{k} = {toml_value(v)}" for k, v in m.to_mapping().items())
        return "\n".join(lines) + "\n"

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Roster:
        known = {"version", "topology", "created", "members", "edges", "gossip", "dial"}
        unknown = set(data) - known
        if unknown:
            raise RosterError(f"unknown roster key(s): {', '.join(sorted(unknown))}")
        version = data.get("version")
        if version not in READABLE_VERSIONS or type(version) is not int:
            raise RosterError(
                f"unsupported roster version {version!r} (this gossipmed reads "
                f"{', '.join(map(str, READABLE_VERSIONS))})"
            )
        if version == 1 and "gossip" in data:
            raise RosterError("a version-1 roster has no [gossip] table; set version = 2")
        if version < 3 and "dial" in data:
            raise RosterError(f"a version-{version} roster has no dial list; set version = 3")
        try:
            settings = ConsortiumSettings.from_mapping(data.get("gossip", {}), where="[gossip]")
        except ConfigError as exc:
            raise RosterError(str(exc)) from None
        members = data.get("members")
        edges = data.get("edges", [])
        dial = data.get("dial", [])
        if not isinstance(dial, list):
            raise RosterError("dial must be a list of [dialler, other] pairs")
        if not isinstance(members, list) or not all(isinstance(m, dict) for m in members):
            raise RosterError("roster needs a [[members]] array of tables")
        if not isinstance(edges, list):
            raise RosterError("edges must be a list of [a, b] pairs")
        topology, created = data.get("topology", "custom"), data.get("created", "")
        if not isinstance(topology, str) or not isinstance(created, str):
            raise RosterError("topology and created must be strings")
        if version < 3 and any("reachable" in m for m in members):
            raise RosterError(f"a version-{version} roster has no reachable field; set version = 3")
        return cls(
            members=tuple(Member.from_mapping(m) for m in members),
            edges=normalise_edges(edges),
            topology=topology,
            created=created,
            settings=settings,
            dial=tuple(tuple(d) if isinstance(d, list) else d for d in dial),
        )


def load_roster(path: Path) -> Roster:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise RosterError(f"cannot read roster {path}: {exc.strerror}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise RosterError(f"roster {path} is not valid TOML: {exc}") from exc
    try:
        return Roster.from_mapping(data)
    except RosterError as exc:
        raise RosterError(f"roster {path}: {exc}") from exc


def save_roster(roster: Roster, path: Path) -> None:
    """Atomic replace, so a site never reads a half-written roster (0600, like every file a
    site writes)."""
    from gossipmed.storage.atomic import atomic_write_bytes

    atomic_write_bytes(path, roster.to_toml().encode("utf-8"))
