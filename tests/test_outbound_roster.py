"""Outbound-only sites in the consortium file: `reachable = false` on a card, the end that dials
each edge, both in the roster hash; old files load as all-reachable with their old hash."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from test_roster import as_version_2, member, ring

from gossipmed.consortium.member import load_card
from gossipmed.consortium.roster import Roster, load_roster, save_roster
from gossipmed.consortium.setup import build_consortium
from gossipmed.errors import RosterError
from node.cli import main


def with_unreachable(*names: str, edges: tuple[tuple[str, str], ...] | None = None) -> Roster:
    r = ring()
    members = tuple(replace(m, reachable=m.name not in names) for m in r.members)
    return Roster(members=members, edges=r.edges if edges is None else edges)


def test_the_unreachable_end_of_each_edge_dials_and_the_others_are_free() -> None:
    r = with_unreachable("a")  # ring a-b-c-d-a
    assert r.dial == (("a", "b"), ("a", "d"))
    assert r.dialer("b", "a") == "a" and r.dialer("a", "d") == "a"
    assert r.dialer("b", "c") is None


def test_an_all_reachable_roster_keeps_its_version_2_hash(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    save_roster(ring(), path)
    v3 = path.read_text()
    assert "version = 3" in v3
    path.write_text(as_version_2(v3))
    old = load_roster(path)
    assert all(m.reachable for m in old.members) and old.dial == ()
    assert old.hash == ring().hash == load_roster_text(tmp_path, v3).hash


def load_roster_text(tmp_path: Path, text: str) -> Roster:
    path = tmp_path / "other.toml"
    path.write_text(text)
    return load_roster(path)


def test_reachability_and_dialling_enter_the_hash_and_round_trip(tmp_path: Path) -> None:
    plain, one, other = ring(), with_unreachable("a"), with_unreachable("b")
    assert len({plain.hash, one.hash, other.hash}) == 3
    chosen = Roster(members=plain.members, edges=plain.edges, dial=(("b", "c"),))
    assert chosen.dialer("c", "b") == "b" and chosen.hash != plain.hash
    path = tmp_path / "c.toml"
    save_roster(one, path)
    back = load_roster(path)
    assert back == one and back.hash == one.hash
    assert not back.member("a").reachable
    assert 'dial = [\n  ["a", "b"],\n  ["a", "d"],\n]' in path.read_text()


def test_a_reachable_end_cannot_be_made_to_dial_an_unreachable_one() -> None:
    r = with_unreachable("a")
    with pytest.raises(RosterError, match="'a' is unreachable: it must be the end that dials"):
        Roster(members=r.members, edges=r.edges, dial=(("b", "a"),))
    with pytest.raises(RosterError, match="is not an edge"):
        Roster(members=r.members, edges=r.edges, dial=(("a", "c"),))
    with pytest.raises(RosterError, match="two dial entries"):
        Roster(members=ring().members, edges=r.edges, dial=(("b", "c"), ("c", "b")))


def test_older_files_cannot_carry_the_new_fields(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    save_roster(with_unreachable("a"), path)
    text = path.read_text()
    path.write_text(text.replace("version = 3", "version = 2"))
    with pytest.raises(RosterError, match="version-2 roster has no dial list"):
        load_roster(path)


def test_an_edge_between_two_unreachable_sites_is_refused_in_one_line() -> None:
    with pytest.raises(RosterError) as info:
        with_unreachable("a", "b")
    message = str(info.value)
    assert "\n" not in message
    assert "'a' and 'b' are both unreachable" in message
    assert "reachable neighbour" in message


def test_consortium_build_refuses_two_unreachable_neighbours(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cards = []
    for name in ("city", "north", "south"):
        site = tmp_path / name
        flags = ["--unreachable"] if name != "city" else []
        argv = ["init", str(site), "--name", name, "--listen", "/ip4/127.0.0.1/tcp/0", *flags]
        assert main(argv) == 0
        cards.append(site / "card.toml")
    assert "reachable = false" in (tmp_path / "north" / "card.toml").read_text()
    assert not load_card(tmp_path / "south" / "card.toml").reachable
    capsys.readouterr()
    out = tmp_path / "consortium.toml"
    code = main(["consortium", "build", *map(str, cards), "--topology", "ring", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and not out.exists()
    assert err.count("\n") == 1
    assert "'north' and 'south' are both unreachable" in err
    assert "give each of them a reachable neighbour" in err
    # a star around the reachable site works: each hospital dials the city
    code = main(["consortium", "build", *map(str, cards), "--topology", "star", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    roster = load_roster(out)
    assert roster.dial == (("north", "city"), ("south", "city"))


def test_build_consortium_names_the_first_stuck_edge_and_counts_the_rest() -> None:
    cards = [replace(member(n), reachable=n == "a") for n in "abcd"]
    with pytest.raises(RosterError, match=r"'b' and 'c' are both .* \(1 more such edges\)"):
        build_consortium(cards, topology="ring")


def test_marking_a_site_outbound_only_keeps_the_consortiums_settings_and_edges() -> None:
    from gossipmed.consortium.settings import ConsortiumSettings
    from gossipmed.consortium.setup import with_outbound_only
    from gossipmed.consortium.task import TaskDigest

    task = TaskDigest(max_length=32)
    r = replace(ring(), settings=ConsortiumSettings(task=task))
    marked = with_outbound_only(r, ["a"])
    assert marked.settings == r.settings and marked.edges == r.edges
    assert not marked.member("a").reachable and marked.dial == (("a", "b"), ("a", "d"))
    assert marked.hash != r.hash
    with pytest.raises(RosterError, match="no such site"):
        with_outbound_only(r, ["nobody"])
    with pytest.raises(RosterError):  # a-b would have no end that accepts a connection
        with_outbound_only(r, ["a", "b"])
