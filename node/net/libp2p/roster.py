"""Who the transport talks to: members by site name and peer ID, the graph neighbours among
them, and the network addresses known to belong to members (never throttled).

Address keys group connections the way the outsider throttle does: one IPv4 address, or one
IPv6 /64 (one IPv6 host can hold a whole /64, so counting single IPv6 addresses would let one
attacker look like millions).
"""

from __future__ import annotations

import ipaddress
from collections import deque
from collections.abc import Collection, Iterable

import multiaddr
from libp2p.peer.id import ID

from gossipmed.errors import ConfigError
from node.net.libp2p.config import PeerInfo

SEEN_KEYS_PER_MEMBER = 4


def address_key(host: str) -> str | None:
    """The throttling key of a remote host address, or None if it is not an IP address."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def _keys_of(addrs: Iterable[str]) -> set[str]:
    keys = set()
    for addr in addrs:
        maddr = multiaddr.Multiaddr(addr)
        for proto in ("ip4", "ip6"):
            try:
                value = maddr.value_for_protocol(proto)
            except Exception:
                continue
            key = address_key(str(value)) if value else None
            if key is not None and not ipaddress.ip_network(key).network_address.is_unspecified:
                keys.add(key)
    return keys


class Roster:
    """Mutable view of the consortium for one transport (roster reloads edit it in place)."""

    def __init__(self) -> None:
        self.by_site: dict[str, PeerInfo] = {}
        self.site_by_peer: dict[ID, str] = {}
        self.neighbours: frozenset[str] = frozenset()
        self._seen: dict[str, deque[str]] = {}
        self._member_keys: frozenset[str] = frozenset()

    def set(self, site: str, info: PeerInfo) -> ID | None:
        """Add or replace `site`; returns the peer ID it no longer has, if it changed."""
        pid = ID.from_base58(info.peer_id)
        owner = self.site_by_peer.get(pid)
        if owner is not None and owner != site:
            raise ConfigError(f"peer ID {info.peer_id} is both {owner!r} and {site!r}")
        old = self.by_site.get(site)
        old_pid = ID.from_base58(old.peer_id) if old is not None else None
        if old_pid is not None and old_pid != pid:
            del self.site_by_peer[old_pid]
            self._seen.pop(site, None)
        self.by_site[site] = info
        self.site_by_peer[pid] = site
        self._refresh_keys()
        return old_pid if old_pid is not None and old_pid != pid else None

    def remove(self, site: str) -> ID | None:
        info = self.by_site.pop(site, None)
        self.neighbours = self.neighbours - {site}
        self._seen.pop(site, None)
        self._refresh_keys()
        if info is None:
            return None
        pid = ID.from_base58(info.peer_id)
        self.site_by_peer.pop(pid, None)
        return pid

    def set_neighbours(self, names: Collection[str]) -> None:
        unknown = sorted(set(names) - self.by_site.keys())
        if unknown:
            raise ConfigError(f"neighbours {unknown} are not roster members")
        self.neighbours = frozenset(names)

    def site_of(self, pid: ID) -> str | None:
        return self.site_by_peer.get(pid)

    def is_neighbour(self, site: str | None) -> bool:
        return site is not None and site in self.neighbours

    def saw(self, site: str, key: str | None) -> None:
        """`site` authenticated from address `key`: treat the address as a member's."""
        if key is None or site not in self.by_site:
            return
        seen = self._seen.setdefault(site, deque(maxlen=SEEN_KEYS_PER_MEMBER))
        if key in seen:
            return
        seen.append(key)
        self._refresh_keys()

    def is_member_address(self, key: str | None) -> bool:
        return key is not None and key in self._member_keys

    def _refresh_keys(self) -> None:
        keys = _keys_of(a for info in self.by_site.values() for a in info.addrs)
        for seen in self._seen.values():
            keys.update(seen)
        self._member_keys = frozenset(keys)
