"""What a site daemon derives from the consortium file: its own name, the gossip graph and
mixing schedule, and the exchanges per round.

Apart from node.daemon.site_daemon because the daemon derives these twice, at start and on
every SIGHUP reload, and both must read the same file the same way: every site of the
consortium derives the same graph and step count from it, or their rounds would not meet.
"""

from __future__ import annotations

import networkx as nx

from gossipmed.consortium.crypto import Identity
from gossipmed.consortium.roster import Roster
from gossipmed.consortium.settings import resolve_gossip_steps
from gossipmed.errors import ConfigError
from topology.mixing import mixing_matrix
from topology.schedule import MixingSchedule
from topology.spectral import lambda2


def own_name(roster: Roster, identity: Identity) -> str:
    for m in roster.members:
        if m.peer_id == identity.peer_id:
            if m.revoked:
                raise ConfigError(f"this site ({m.name}) is revoked in the consortium file")
            return m.name
    raise ConfigError(f"this site's peer ID {identity.peer_id} is not in the consortium file")


def roster_graph(roster: Roster) -> nx.Graph:
    """The gossip graph is the roster's: active members and the edges between them."""
    active = set(roster.active_names)
    graph = nx.Graph()
    graph.add_nodes_from(sorted(active))
    graph.add_edges_from((a, b) for a, b in roster.edges if a in active and b in active)
    return graph


def schedule_from_roster(roster: Roster) -> MixingSchedule:
    return MixingSchedule.from_graphs([roster_graph(roster)], rule=roster.settings.mixing)


def roster_gossip_steps(roster: Roster) -> int:
    """Exchanges per round from the consortium file; 'auto' (0) reads lambda2 off the roster
    graph, which every site of the consortium shares, so all sites pick the same number."""
    graph = roster_graph(roster)
    rule = roster.settings.mixing
    lam2 = lambda2(mixing_matrix(graph, rule=rule)) if graph.number_of_nodes() > 1 else 0.0
    return resolve_gossip_steps(roster.settings.gossip_steps, lam2=lam2)
