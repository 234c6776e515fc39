"""The lockstep round loop, the same for every engine: the driver decides the faults and routes
bytes; the hosts run the `Peer` phases of their sites.

Per round: offline sites skip it; online sites train; then either the secure exchange (every
host's parties, phase by phase) or `gossip_steps` exchanges of sealed updates, each followed
by a mix step except the last; a dropped update never arrives, a straggler's lands after its
recipients mixed (stale on arrival); every site completes (or skips) the round; the global
consensus distance is measured in two passes (node.sim.engine.consensus). Updates are handed
to hosts in (sender, recipient) order, whatever host produced them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from gossipmed.metrics import MetricsWriter, RoundRecord
from gossipmed.mixing.secagg.harness import run_phases
from node.sim.engine.consensus import add_band_sums, mean_of, overall
from node.sim.engine.group import HostGroup, RoutedPhases
from node.sim.engine.host import SentWire
from node.sim.faults import FaultInjector
from topology.schedule import MixingSchedule

ProgressCallback = Callable[[str, int, int], None]
"""(run name, rounds done, rounds total)"""


@dataclass(frozen=True)
class RoundLoop:
    """One run's fixed choices."""

    names: list[str]
    schedule: MixingSchedule
    rounds: int
    gossip_steps: int
    secure: bool
    faults: FaultInjector | None  # None: no faults (the local-only baseline)
    run_name: str


def run_rounds(
    group: HostGroup,
    loop: RoundLoop,
    *,
    writer: MetricsWriter | None = None,
    on_progress: ProgressCallback | None = None,
) -> tuple[list[RoundRecord], float]:
    """Every round of one run; returns the records (site order within a round) and the last
    round's global consensus distance."""
    records: list[RoundRecord] = []
    order = {n: i for i, n in enumerate(loop.names)}
    faults = loop.faults
    late: list[tuple[str, bytes]] = []
    distance = 0.0
    for r in range(loop.rounds):
        online = [n for n in loop.names if not (faults and faults.offline(r, n))]
        up = frozenset(online)
        group.call("train", {"round": r, "online": online})
        if loop.secure and faults is not None:
            _secure_exchange(group, loop, round=r, online=online)
        exchanges = loop.gossip_steps if faults is not None and not loop.secure else 0
        for step in range(exchanges):
            if step > 0:
                group.call("mix_step", {"round": r, "step": step - 1, "online": online})
            sealed: list[SentWire] = [
                w
                for part in group.call("seal", {"round": r, "step": step, "online": online})
                for w in part
            ]
            sealed.sort(key=lambda w: (order[w[0]], w[1]))
            now: list[tuple[str, bytes]] = []
            for sender, recipient, data in sealed:
                if recipient not in up or (
                    faults and faults.dropped(r, sender, recipient, step=step)
                ):
                    continue
                if faults and faults.late(r, sender):
                    late.append((recipient, data))
                else:
                    now.append((recipient, data))
            _deliver(group, now)
        by_site = {
            rec.site: rec
            for part in group.call("complete", {"round": r, "online": online})
            for rec in part
        }
        _deliver(group, late)  # stragglers' envelopes land after their recipients mixed
        late = []
        per_site = _consensus_distances(group)
        distance = overall(list(per_site.values()))
        for name in loop.names:
            final = dataclasses.replace(
                by_site[name],
                consensus_distance=per_site[name],
                consensus_scope="global",
                run=loop.run_name,
            )
            records.append(final)
            if writer is not None:
                writer.write(final)
        if on_progress:
            on_progress(loop.run_name, r + 1, loop.rounds)
    return records, distance


def _deliver(group: HostGroup, wires: list[tuple[str, bytes]]) -> None:
    host_of = {s: k for k, sites in enumerate(group.sites) for s in sites}
    parts: list[list[tuple[str, bytes]]] = [[] for _ in group.sites]
    for recipient, data in wires:
        parts[host_of[recipient]].append((recipient, data))
    group.call("deliver", [{"wires": p} for p in parts])


def _consensus_distances(group: HostGroup) -> dict[str, float]:
    """Hosts return exact sums, the driver the mean, hosts their sites' distances to it."""
    parts = group.call("consensus_sums")
    count, sums = add_band_sums([(n, s) for n, s, _ in parts])
    mean = mean_of(count, sums, size=max(size for _, _, size in parts))
    distances = group.call("consensus_distances", {"mean": mean})
    return {
        s: d
        for sites, part in zip(group.sites, distances, strict=True)
        for s, d in zip(sites, part, strict=True)
    }


def _secure_exchange(group: HostGroup, loop: RoundLoop, *, round: int, online: list[str]) -> None:
    """Every online site's secure exchange: hosts open it, the driver says who trained and
    which masked inputs the faults lose, the phases run between hosts, each receiver gets its
    outcome with its bytes over every host."""
    faults = loop.faults
    assert faults is not None
    opened = group.call("secure_open", {"round": round, "online": online})
    fresh = sorted(s for sites, _ in opened for s in sites)
    schema = next((sch for _, sch in opened if sch is not None), None)
    sent: dict[str, int] = {}
    received: dict[str, int] = {}
    if schema is not None:
        up = frozenset(online)
        dropped = [
            (j, i)
            for i in online
            for j in sorted(loop.schedule.neighbours(round, i))
            if j in up and (faults.dropped(round, j, i) or faults.late(round, j))
        ]
        group.call(
            "secure_parties",
            {
                "round": round,
                "online": online,
                "fresh": fresh,
                "schema": schema,
                "dropped": dropped,
            },
        )
        run_phases(RoutedPhases(group))
        for part_sent, part_received in group.call("secure_counts"):
            for s, n in part_sent.items():
                sent[s] = sent.get(s, 0) + n
            for s, n in part_received.items():
                received[s] = received.get(s, 0) + n
    online_set = frozenset(online)
    group.call(
        "secure_accept",
        [
            {
                "round": round,
                "online": online,
                "sent": {s: sent.get(s, 0) for s in sites if s in online_set},
                "received": {s: received.get(s, 0) for s in sites if s in online_set},
                "ran": schema is not None,
            }
            for sites in group.sites
        ],
    )
