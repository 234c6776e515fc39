"""Creating a site and a consortium: what `gossipmed init` and `consortium build` do.

Library functions, so the commands, `cluster up` and tests share one implementation and
nobody drives a command line from code.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from pathlib import Path

from gossipmed.consortium.crypto import generate_identity, save_identity
from gossipmed.consortium.edges import unreachable_edge_error
from gossipmed.consortium.member import Member
from gossipmed.consortium.roster import Roster
from gossipmed.consortium.settings import ConsortiumSettings
from gossipmed.consortium.site import CARD_FILE, DEFAULT_LISTEN, SITE_FILE, Site, SiteConfig
from gossipmed.errors import ConfigError, IdentityError, RosterError
from gossipmed.storage.files import open_private, private_dir
from topology.graphs import build_graph


def create_site(
    site_dir: Path,
    *,
    name: str,
    listen: Sequence[str] = DEFAULT_LISTEN,
    reachable: bool = True,
) -> Member:
    """A new site folder: site.toml, its identity (key files 0600, never overwritten) and its
    public card (card.toml), which is returned. `reachable=False`: the site accepts no
    inbound connections and dials its neighbours itself."""
    config = SiteConfig(name=name, listen=tuple(listen))
    site = Site(directory=site_dir, config=config)
    site_file, card_file = site_dir / SITE_FILE, site_dir / CARD_FILE
    for path in (site_file, site.sign_key_path, site.box_key_path):
        if path.exists():
            raise IdentityError(
                f"{path} already exists: refusing to overwrite a site identity "
                "(peers trust its keys); pick another folder"
            )
    private_dir(site_dir, tighten=True)
    identity = generate_identity()
    save_identity(identity, sign_key_path=site.sign_key_path, box_key_path=site.box_key_path)
    with open_private(site_file, "x") as f:
        f.write(config.to_toml())
    card = Member(
        name=config.name,
        peer_id=identity.peer_id,
        sign_key=identity.sign_key,
        box_key=identity.box_key,
        addrs=tuple(listen),
        reachable=reachable,
    )
    with open_private(card_file, "w") as f:
        f.write(card.card_toml())
    return card


def build_consortium(
    cards: Sequence[Member],
    *,
    topology: str,
    degree: int | None = None,
    p: float | None = None,
    seed: int = 0,
    graph_file: Path | None = None,
    settings: ConsortiumSettings | None = None,
) -> Roster:
    """The roster of these sites: sorted by name, node i of the graph = i-th card; for
    topology "file", the graph's nodes are the site names. Refuses a disconnected graph."""
    cards = sorted(cards, key=lambda c: c.name)
    names = [c.name for c in cards]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise RosterError(
            f"two cards have the same site name: {', '.join(repr(n) for n in clashes)} "
            "(every site needs its own name)"
        )
    if topology == "file":
        if graph_file is None:
            raise ConfigError("topology 'file' needs a graph file")
        graph = build_graph("file", path=graph_file)
        node_names = {str(n) for n in graph.nodes}
        if node_names != set(names):
            raise RosterError(
                f"graph nodes {sorted(node_names)} are not the card names {sorted(names)}"
            )
        edges = [(str(a), str(b)) for a, b in graph.edges]
    else:
        graph = build_graph(topology, nodes=len(cards), degree=degree, p=p, seed=seed)
        edges = [(names[a], names[b]) for a, b in graph.edges]
    by_name = {c.name: c for c in cards}
    stuck = sorted(
        tuple(sorted((a, b)))
        for a, b in edges
        if not by_name[a].reachable and not by_name[b].reachable
    )
    if stuck:
        more = f" ({len(stuck) - 1} more such edges)" if len(stuck) > 1 else ""
        raise RosterError(unreachable_edge_error(*stuck[0]) + more)
    created = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    roster = Roster(
        members=tuple(cards),
        edges=tuple(edges),
        topology=topology,
        created=created,
        settings=settings if settings is not None else ConsortiumSettings(),
    )
    if roster.warnings():
        raise RosterError("; ".join(roster.warnings()))
    return roster


def with_outbound_only(roster: Roster, names: Sequence[str]) -> Roster:
    """The same consortium (edges, settings, task) with these sites' cards saying they accept
    no inbound connection, as their `init --outbound-only` would have: rebuilding from the
    cards alone would drop the settings and leave every site refusing the new file."""
    unknown = sorted(set(names) - {m.name for m in roster.members})
    if unknown:
        raise RosterError(f"no such site in the consortium: {', '.join(unknown)}")
    members = tuple(
        dataclasses.replace(m, reachable=False) if m.name in names else m for m in roster.members
    )
    edges = roster.edges
    stuck = [(a, b) for a, b in edges if not any(m.reachable for m in members if m.name in (a, b))]
    if stuck:
        raise RosterError(unreachable_edge_error(*stuck[0]))
    rebuilt = Roster(
        members=members,
        edges=edges,
        topology=roster.topology,
        created=roster.created,
        settings=roster.settings,
    )
    if rebuilt.warnings():
        raise RosterError("; ".join(rebuilt.warnings()))
    return rebuilt
