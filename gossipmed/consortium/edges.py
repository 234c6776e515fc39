"""The roster's edges and who dials each one: an edge with an unreachable (outbound-only)
end is dialled by that end; an edge between two unreachable sites cannot work."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from gossipmed.consortium.member import Member
from gossipmed.errors import RosterError


def _name_pair(value: object, *, what: str) -> tuple[str, str]:
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise RosterError(what)
    a, b = value
    if not isinstance(a, str) or not isinstance(b, str):
        raise RosterError(what)
    return a, b


def normalise_edges(edges: Iterable[Sequence[str]]) -> tuple[tuple[str, str], ...]:
    out = set()
    for edge in edges:
        a, b = _name_pair(edge, what=f"edge {edge!r} must be a pair of member names")
        if a == b:
            raise RosterError(f"self loop on {a!r} is not allowed")
        out.add((a, b) if a < b else (b, a))
    return tuple(sorted(out))


def unreachable_edge_error(a: str, b: str) -> str:
    """One line for an edge neither end of which can dial the other."""
    return (
        f"sites {a!r} and {b!r} are both unreachable (reachable = false) and share an edge, so "
        f"neither can connect to the other: give each of them a reachable neighbour instead "
        f"(change the edges, e.g. --topology file) or make one of them reachable"
    )


def resolve_dialers(
    by_name: Mapping[str, Member],
    edges: Sequence[tuple[str, str]],
    dial: Iterable[Sequence[str]],
) -> tuple[tuple[str, str], ...]:
    """The complete `(dialler, other)` list: the given entries (each on an edge, at most one
    per edge) plus, for every edge with an unreachable end, that end; sorted."""
    edge_set = set(edges)
    chosen: dict[tuple[str, str], str] = {}
    for entry in dial:
        dialler, other = _name_pair(
            entry, what=f"dial entry {entry!r} must be a pair [dialler, other]"
        )
        key = (dialler, other) if dialler < other else (other, dialler)
        if key not in edge_set:
            raise RosterError(f"dial entry [{dialler}, {other}] is not an edge")
        if chosen.get(key, dialler) != dialler:
            raise RosterError(f"edge ({key[0]}, {key[1]}) has two dial entries")
        chosen[key] = dialler
    for a, b in edges:
        ra, rb = by_name[a].reachable, by_name[b].reachable
        if not ra and not rb:
            raise RosterError(unreachable_edge_error(a, b))
        if ra and rb:
            continue
        unreachable = a if not ra else b
        if chosen.get((a, b), unreachable) != unreachable:
            raise RosterError(
                f"dial entry of edge ({a}, {b}) names {chosen[(a, b)]!r}, but {unreachable!r} "
                "is unreachable: it must be the end that dials"
            )
        chosen[(a, b)] = unreachable
    return tuple(sorted((d, b if d == a else a) for (a, b), d in chosen.items()))
