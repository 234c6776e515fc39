"""How much each site's secure-aggregation neighbourhood can take: dropouts and collusion.

A site's exchange needs `threshold_for(n)` of its n active neighbours to complete it. A
neighbour whose privacy budget is spent stops running rounds (it must not contribute
training-free states), so to its neighbours it is a permanent dropout: where a site
tolerates no dropout, one spent neighbour ends that site's secure sums for good.
"""

from __future__ import annotations

from dataclasses import dataclass

from gossipmed.consortium.roster import Roster
from gossipmed.mixing.secagg.params import (
    threshold_for,
    tolerated_collusion,
    tolerated_dropouts,
)


@dataclass(frozen=True)
class SecureMargin:
    """One active site's neighbourhood under secure aggregation."""

    site: str
    neighbours: int
    threshold: int
    collusion: int  # colluding neighbours a lying receiver may have without unmasking anyone
    dropouts: int  # silent (dead, late or spent) neighbours the exchange survives

    @property
    def runnable(self) -> bool:
        return self.threshold <= self.neighbours


def secure_margins(roster: Roster) -> list[SecureMargin]:
    """Per active site (sorted), with neighbours counted among active members; empty when
    secure aggregation is off."""
    if not roster.settings.secure_aggregation:
        return []
    active = set(roster.active_names)
    out = []
    for site in sorted(active):
        n = len([m for m in roster.neighbours(site) if m in active])
        t = threshold_for(n)
        out.append(
            SecureMargin(
                site=site,
                neighbours=n,
                threshold=t,
                collusion=tolerated_collusion(n, t) if t <= n else 0,
                dropouts=tolerated_dropouts(n, t),
            )
        )
    return out


def spent_neighbour_warnings(roster: Roster) -> list[str]:
    """One line naming the sites that one spent (or otherwise silent) neighbour would leave
    below their threshold; empty when there are none or secure aggregation is off."""
    fragile = [m for m in secure_margins(roster) if m.runnable and m.dropouts == 0]
    if not fragile:
        return []
    names = ", ".join(f"{m.site} ({m.neighbours} of {m.threshold} needed)" for m in fragile)
    return [
        "one neighbour whose privacy budget is spent (it stops running rounds) or that is "
        f"down would leave these sites below their secure-aggregation threshold: {names}"
    ]
