"""`gossipmed init` and `gossipmed consortium`, and the site.toml they rely on."""

from __future__ import annotations

import json
import stat
import tomllib
from pathlib import Path

import pytest

from gossipmed.consortium.member import load_card
from gossipmed.consortium.roster import load_roster
from gossipmed.consortium.site import SiteConfig, load_site
from gossipmed.errors import ConfigError
from node.cli import main


def init(tmp_path: Path, name: str, *extra: str) -> Path:
    site = tmp_path / name
    assert (
        main(["init", str(site), "--name", name, "--listen", "/ip4/127.0.0.1/tcp/0", *extra]) == 0
    )
    return site


def test_init_creates_private_keys_a_site_file_and_prints_the_card(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site_dir = init(tmp_path, "st-marys")
    printed = tomllib.loads(capsys.readouterr().out)
    site = load_site(site_dir)
    identity = site.identity()
    assert site.config.name == "st-marys"
    assert site.config.listen == ("/ip4/127.0.0.1/tcp/0",)
    for path in (site.sign_key_path, site.box_key_path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert printed == {
        "name": "st-marys",
        "peer_id": identity.peer_id,
        "sign_key": identity.sign_key.hex(),
        "box_key": identity.box_key.hex(),
        "addrs": ["/ip4/127.0.0.1/tcp/0"],
    }
    assert load_card(site_dir / "card.toml").peer_id == identity.peer_id


def test_init_refuses_to_overwrite_an_identity(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site_dir = init(tmp_path, "a")
    before = (site_dir / "keys" / "ed25519.key").read_bytes()
    assert main(["init", str(site_dir), "--name", "a"]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert (site_dir / "keys" / "ed25519.key").read_bytes() == before


def test_init_json_and_input_validation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    init(tmp_path, "a", "--json")
    assert json.loads(capsys.readouterr().out)["name"] == "a"
    assert main(["init", str(tmp_path / "b"), "--name", "b", "--listen", "not-an-addr"]) == 2
    assert main(["init", str(tmp_path / "c"), "--name", "bad name!"]) == 2
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_site_file_rejects_unknown_keys(tmp_path: Path) -> None:
    site_dir = init(tmp_path, "a")
    path = site_dir / "site.toml"
    path.write_text("listen_port = 4001\n" + path.read_text())  # a top-level key
    with pytest.raises(ConfigError, match=r"unknown key.*listen_port"):
        load_site(site_dir)


def test_site_config_round_trips_through_toml() -> None:
    config = SiteConfig(name="a", listen=("/ip4/1.2.3.4/tcp/9",), consortium="../c.toml")
    assert SiteConfig.from_mapping(tomllib.loads(config.to_toml())) == config
    with pytest.raises(ConfigError):
        SiteConfig(name="a", listen=())


def build(tmp_path: Path, names: list[str], *flags: str) -> tuple[Path, int]:
    cards = [str(init(tmp_path, n) / "card.toml") for n in names]
    out = tmp_path / "consortium.toml"
    return out, main(["consortium", "build", *cards, "--out", str(out), *flags])


def test_build_maps_graph_nodes_to_cards_sorted_by_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, rc = build(tmp_path, ["delta", "alpha", "charlie", "bravo"], "--topology", "ring")
    assert rc == 0
    roster = load_roster(out)
    assert [m.name for m in roster.members] == ["alpha", "bravo", "charlie", "delta"]
    # ring over sorted names: 0-1-2-3-0
    assert set(roster.edges) == {
        ("alpha", "bravo"),
        ("bravo", "charlie"),
        ("charlie", "delta"),
        ("alpha", "delta"),
    }
    assert roster.hash_hex in capsys.readouterr().out


def test_build_refuses_to_overwrite_and_reports_topology_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, rc = build(tmp_path, ["a", "b", "c"], "--topology", "complete")
    assert rc == 0
    cards = [str(tmp_path / n / "card.toml") for n in "abc"]
    assert main(["consortium", "build", *cards, "--topology", "ring", "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err
    args = ["consortium", "build", *cards, "--topology", "random-regular", "--degree", "5"]
    assert main([*args, "--out", str(tmp_path / "x.toml")]) == 2


def test_show_json_gives_members_edges_and_hash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, _ = build(tmp_path, ["a", "b", "c"], "--topology", "complete")
    capsys.readouterr()
    assert main(["consortium", "show", str(out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["hash"] == load_roster(out).hash_hex
    assert [m["name"] for m in doc["members"]] == ["a", "b", "c"]
    assert len(doc["edges"]) == 3
    assert main(["consortium", "show", str(out)]) == 0
    assert doc["hash"] in capsys.readouterr().out


def test_revoke_rewrites_the_file_with_a_new_hash_and_warns_on_a_split(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, _ = build(tmp_path, ["a", "b", "c", "d"], "--topology", "ring")
    old = load_roster(out).hash_hex
    capsys.readouterr()
    assert main(["consortium", "revoke", str(out), "b", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    roster = load_roster(out)
    assert roster.member("b").revoked and doc["old_hash"] == old and doc["hash"] != old
    assert main(["consortium", "revoke", str(out), "d"]) == 0  # a-b-c-d-a minus b, d
    assert "disconnected" in capsys.readouterr().err
    assert main(["consortium", "revoke", str(out), "zed"]) == 2
    assert "not a member" in capsys.readouterr().err
