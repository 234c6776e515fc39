"""The driver's view of its site hosts: call one host method on every host at once.

`LocalGroup` calls hosts in this process; node.sim.engine.ray_group calls Ray actors in
parallel. `RoutedPhases` is secure aggregation's phase network over any group: each phase,
every host produces its parties' messages, the driver hands each message's bytes to the host
of its recipient, and the next phase starts (gossipmed.mixing.secagg.harness.run_phases).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from gossipmed.mixing.secagg.harness import Wire
from node.sim.engine.host import SiteHost

PerHost = Sequence[Mapping[str, Any]]


class HostGroup(Protocol):
    sites: list[tuple[str, ...]]
    """Each host's sites, host by host."""

    def call(self, method: str, args: Mapping[str, Any] | PerHost = ...) -> list[Any]:
        """Run `method` on every host (the same keyword arguments for all, or one mapping per
        host); returns each host's result, in host order."""
        ...

    def describe(self) -> dict[str, Any]:
        """The engine, its workers and where each ran (for summary.json)."""
        ...

    def close(self, *, reuse: bool = True) -> None:
        """Stop the hosts (`reuse`: the run ended cleanly, they may serve another)."""
        ...


def host_args(args: Mapping[str, Any] | PerHost, hosts: int) -> PerHost:
    return [args] * hosts if isinstance(args, Mapping) else args


class LocalGroup:
    """Hosts in this process, called one after the other."""

    def __init__(self, hosts: Sequence[SiteHost]) -> None:
        self.hosts = list(hosts)
        self.sites = [h.sites for h in self.hosts]

    def call(self, method: str, args: Mapping[str, Any] | PerHost = {}) -> list[Any]:  # noqa: B006
        per_host = host_args(args, len(self.hosts))
        return [getattr(h, method)(**kw) for h, kw in zip(self.hosts, per_host, strict=True)]

    def describe(self) -> dict[str, Any]:
        return {
            "engine": "inprocess",
            "workers": [
                {"worker": k, **h.where(), "sites": list(h.sites)} for k, h in enumerate(self.hosts)
            ],
        }

    def close(self, *, reuse: bool = True) -> None:
        self.hosts = []


class RoutedPhases:
    """A PhaseNetwork whose parties live on a group's hosts."""

    def __init__(self, group: HostGroup) -> None:
        self.group = group
        self.host_of = {s: k for k, sites in enumerate(group.sites) for s in sites}

    def _split(self, wires: Sequence[Wire], *, to_recipient: bool) -> list[list[Wire]]:
        out: list[list[Wire]] = [[] for _ in self.group.sites]
        for wire in wires:
            out[self.host_of[wire[2] if to_recipient else wire[0]]].append(wire)
        return out

    def advertise(self) -> list[Wire]:
        return [w for part in self.group.call("secure_advertise") for w in part]

    def aggregate(self, wires: Sequence[Wire]) -> tuple[list[Wire], bool]:
        parts = self._split(wires, to_recipient=False)  # to the receiver whose exchange it is
        results = self.group.call("secure_aggregate", [{"wires": p} for p in parts])
        return [w for relayed, _ in results for w in relayed], all(done for _, done in results)

    def contribute(self, wires: Sequence[Wire]) -> list[Wire]:
        parts = self._split(wires, to_recipient=True)  # to the contributor it is for
        return [
            w
            for part in self.group.call("secure_contribute", [{"wires": p} for p in parts])
            for w in part
        ]
