"""The consortium roster: validation, a content hash that pins keys and edges, revocation."""

from __future__ import annotations

import dataclasses
from dataclasses import replace
from pathlib import Path

import pytest

from gossipmed.consortium.crypto import derive_identity
from gossipmed.consortium.member import Member, load_card
from gossipmed.consortium.roster import NotAMember, RevokedMember, Roster, load_roster, save_roster
from gossipmed.consortium.settings import ConsortiumSettings
from gossipmed.errors import RosterError

SECRET = b"roster-test-secret-0123456789"


def member(name: str, *, addrs: tuple[str, ...] = ("/ip4/127.0.0.1/tcp/4001",)) -> Member:
    ident = derive_identity(SECRET, name)
    return Member(
        name=name,
        peer_id=ident.peer_id,
        sign_key=ident.sign_key,
        box_key=ident.box_key,
        addrs=addrs,
    )


def as_version_2(text: str) -> str:
    """A version-3 file of an all-reachable roster written as version 2 would have been."""
    lines = text.replace("version = 3", "version = 2").split("\n")
    start = next(i for i, line in enumerate(lines) if line.startswith("dial = ["))
    end = lines.index("]", start)
    kept = lines[: start - 2] + lines[end + 1 :]  # also the two comment lines above it
    return "\n".join(line for line in kept if not line.startswith("reachable = "))


def ring(names: str = "abcd") -> Roster:
    ms = tuple(member(n) for n in names)
    edges = tuple((names[i], names[(i + 1) % len(names)]) for i in range(len(names)))
    return Roster(members=ms, edges=edges, topology="ring", created="2025-01-01T00:00:00Z")


def test_hash_ignores_member_order_and_edge_direction() -> None:
    r = ring()
    shuffled = Roster(
        members=tuple(reversed(r.members)),
        edges=tuple((b, a) for a, b in reversed(r.edges)),
        topology="other-label",
        created="another day",
    )
    assert shuffled.hash == r.hash
    assert len(r.hash) == 32


def test_hash_changes_with_keys_edges_and_revocation_but_not_addresses() -> None:
    r = ring()
    assert r.revoke("b").hash != r.hash
    assert Roster(members=r.members, edges=(*r.edges, ("a", "c"))).hash != r.hash
    other_key = replace(member("a"), box_key=member("b").box_key)
    swapped = Roster(members=(other_key, *r.members[1:]), edges=r.edges)
    assert swapped.hash != r.hash
    moved = Roster(
        members=(member("a", addrs=("/ip4/10.0.0.1/tcp/9",)), *r.members[1:]), edges=r.edges
    )
    assert moved.hash == r.hash


def test_toml_round_trip_keeps_everything(tmp_path: Path) -> None:
    r = ring().revoke("c")
    path = tmp_path / "consortium.toml"
    save_roster(r, path)
    back = load_roster(path)
    assert back == r
    assert back.hash == r.hash
    assert back.member("c").revoked


def test_card_round_trips_and_may_not_claim_revocation(tmp_path: Path) -> None:
    m = member("st-marys")
    path = tmp_path / "card.toml"
    path.write_text(m.card_toml())
    assert load_card(path) == m
    path.write_text(m.card_toml() + "revoked = false\n")
    with pytest.raises(RosterError, match="unknown member key"):
        load_card(path)


def test_keys_may_be_given_in_base64(tmp_path: Path) -> None:
    import base64

    m = member("a")
    text = (
        f'name = "a"\npeer_id = "{m.peer_id}"\n'
        f'sign_key = "{base64.b64encode(m.sign_key).decode()}"\n'
        f'box_key = "{base64.b64encode(m.box_key).decode()}"\n'
    )
    path = tmp_path / "card.toml"
    path.write_text(text)
    assert load_card(path).sign_key == m.sign_key


@pytest.mark.parametrize(
    ("members", "edges", "match"),
    [
        (("a", "a"), (), "duplicate member name"),
        (("a", "b"), (("a", "z"),), "not a member"),
        (("a", "b"), (("a", "a"),), "self loop"),
        ((), (), "at least one member"),
    ],
)
def test_structural_problems_are_errors(
    members: tuple[str, ...], edges: tuple[tuple[str, str], ...], match: str
) -> None:
    with pytest.raises(RosterError, match=match):
        Roster(members=tuple(member(n) for n in members), edges=edges)


def test_duplicate_peer_ids_are_an_error() -> None:
    a = member("a")
    twin = Member(name="b", peer_id=a.peer_id, sign_key=a.sign_key, box_key=a.box_key)
    with pytest.raises(RosterError, match="duplicate peer_id"):
        Roster(members=(a, twin), edges=())


def test_peer_id_must_match_the_signing_key() -> None:
    with pytest.raises(RosterError, match="does not match"):
        replace(member("a"), peer_id=member("b").peer_id)


def test_unknown_roster_keys_and_versions_are_errors(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    save_roster(ring(), path)
    text = path.read_text()
    path.write_text("colour = 'blue'\n" + text)
    with pytest.raises(RosterError, match="unknown roster key"):
        load_roster(path)
    path.write_text(text.replace("version = 3", "version = 4"))
    with pytest.raises(RosterError, match="unsupported roster version"):
        load_roster(path)
    path.write_text("not [valid toml")
    with pytest.raises(RosterError, match="not valid TOML"):
        load_roster(path)


def test_membership_gate_distinguishes_unknown_and_revoked() -> None:
    r = ring().revoke("b")
    assert r.active_member("a").name == "a"
    with pytest.raises(NotAMember):
        r.active_member("mallory")
    with pytest.raises(RevokedMember):
        r.active_member("b")
    with pytest.raises(RevokedMember, match="already revoked"):
        r.revoke("b")


def test_revoked_members_drop_out_of_neighbourhoods() -> None:
    r = ring()
    assert r.neighbours("a") == ("b", "d")
    assert r.revoke("b").neighbours("a") == ("d",)


def test_disconnecting_revocation_is_allowed_but_warned() -> None:
    r = ring("abcd")  # a-b-c-d-a: removing b and d splits a from c
    assert r.warnings() == []
    split = r.revoke("b").revoke("d")
    assert split.components() == [["a"], ["c"]]
    assert any("disconnected" in w for w in split.warnings())


def test_a_version_1_roster_loads_with_the_default_gossip_settings(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    save_roster(ring(), path)
    text = as_version_2(path.read_text())
    old = text.replace("version = 2", "version = 1").split("[gossip]")[0]
    old += "\n" + text.split("[gossip]")[1].split("\n", 3)[3]  # members, without [gossip]
    path.write_text(old)
    loaded = load_roster(path)
    assert loaded.settings == ConsortiumSettings() and loaded.members == ring().members
    path.write_text(text.replace("version = 2", "version = 1"))
    with pytest.raises(RosterError, match="version-1 roster has no \\[gossip\\]"):
        load_roster(path)


def test_the_shared_gossip_settings_enter_the_hash_and_the_file(tmp_path: Path) -> None:
    """Sites configured differently must disagree on the hash, so they refuse each other."""
    base = ring()
    steps = dataclasses.replace(base, settings=ConsortiumSettings(gossip_steps=3))
    weights = dataclasses.replace(base, settings=ConsortiumSettings(mixing="best-constant"))
    assert len({base.hash, steps.hash, weights.hash}) == 3
    path = tmp_path / "c.toml"
    save_roster(steps, path)
    assert load_roster(path).settings.gossip_steps == 3
    assert load_roster(path).hash == steps.hash


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("gossip_steps = 65", "gossip_steps"),
        ('mixing = "loud"', "mixing"),
        ("colour = 1", "colour"),
    ],
)
def test_bad_gossip_settings_are_roster_errors(tmp_path: Path, table: str, message: str) -> None:
    path = tmp_path / "c.toml"
    save_roster(ring(), path)
    text = path.read_text().replace("[gossip]\n", f"[gossip]\n{table}\n")
    text = text.replace("gossip_steps = 0\n", "") if "gossip_steps" in table else text
    text = text.replace('mixing = "metropolis-hastings"\n', "") if "mixing" in table else text
    path.write_text(text)
    with pytest.raises(RosterError, match=message):
        load_roster(path)
