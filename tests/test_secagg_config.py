"""Secure aggregation as a consortium option: settings, roster hash, config-time refusals."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from gossipmed.consortium.crypto import derive_identity
from gossipmed.consortium.roster import Member, Roster, load_roster, save_roster
from gossipmed.consortium.settings import ConsortiumSettings
from gossipmed.consortium.setup import build_consortium
from gossipmed.errors import ConfigError, RosterError
from node.round.config import GossipConfig
from node.round.secure_config import check_secure_gossip
from node.sim.config import sim_config_from_mapping

SECURE = ConsortiumSettings(secure_aggregation=True)


def member(name: str) -> Member:
    ident = derive_identity(b"secagg-config-test-secret-0123", name)
    return Member(
        name=name,
        peer_id=ident.peer_id,
        sign_key=ident.sign_key,
        box_key=ident.box_key,
        addrs=("/ip4/127.0.0.1/tcp/4001",),
    )


def test_secure_aggregation_forces_one_exchange_per_round() -> None:
    assert SECURE.gossip_steps == 1  # auto resolves to one
    assert ConsortiumSettings(secure_aggregation=True, gossip_steps=1).gossip_steps == 1
    with pytest.raises(ConfigError, match=r"one exchange per round.*reveal individual"):
        ConsortiumSettings(secure_aggregation=True, gossip_steps=3)


def test_the_norm_envelope_is_validated_and_only_applies_when_on() -> None:
    fp = ConsortiumSettings(secure_aggregation=True, secagg_rms=0.5).envelope.fixed_point(100)
    assert (fp.l2, fp.range, fp.modulus_bits) == (5.0, 5.0, 32)  # l2 = rho sqrt(d) < 16 rho
    for bad in (0.0, -1.0, float("inf"), True):
        with pytest.raises(ConfigError, match=r"secure aggregation: secagg_rms"):
            ConsortiumSettings(secure_aggregation=True, secagg_rms=bad)
    with pytest.raises(ConfigError, match="secagg_rms only apply"):
        ConsortiumSettings(secagg_rms=1.0)
    with pytest.raises(ConfigError, match="true or false"):
        ConsortiumSettings(secure_aggregation=1)  # type: ignore[arg-type]


def test_the_setting_enters_the_hash_only_when_on(tmp_path: Path) -> None:
    """Files written before the option existed keep their hash; turning it on (or changing
    the norm envelope) changes the hash, so differently configured sites refuse each other."""
    names = "abcde"
    members = tuple(member(n) for n in names)
    edges = tuple((a, b) for i, a in enumerate(names) for b in names[i + 1 :])
    base = Roster(members=members, edges=edges, topology="complete")
    assert "secure_aggregation" not in base.settings.to_mapping()
    on = dataclasses.replace(base, settings=SECURE)
    coarse = dataclasses.replace(
        base, settings=ConsortiumSettings(secure_aggregation=True, secagg_rms=0.25)
    )
    assert len({base.hash, on.hash, coarse.hash}) == 3
    path = tmp_path / "c.toml"
    save_roster(coarse, path)
    loaded = load_roster(path)
    assert loaded.settings == coarse.settings and loaded.hash == coarse.hash
    text = path.read_text().replace("gossip_steps = 1", "gossip_steps = 2")
    path.write_text(text)
    with pytest.raises(RosterError, match="one exchange per round"):
        load_roster(path)


def test_consortium_build_refuses_neighbourhoods_below_the_threshold() -> None:
    cards = [member(f"site-{i}") for i in range(6)]
    with pytest.raises(RosterError, match="too few at: site-0, site-1, site-2, site-3, site-4"):
        build_consortium(cards, topology="ring", settings=SECURE)
    roster = build_consortium(cards, topology="random-regular", degree=4, settings=SECURE)
    assert roster.settings.secure_aggregation and roster.secagg_short_sites() == []
    # a revocation that leaves a neighbourhood too small is warned about
    assert any("too few at" in w for w in roster.revoke("site-0").revoke("site-1").warnings())


@pytest.mark.parametrize(
    ("gossip", "reason"),
    [
        ({"aggregation": "median"}, "robust rules need each neighbour's individual update"),
        ({"aggregation": "trimmed-mean"}, "robust rules"),
        ({"aggregation": "clipped"}, "robust rules"),
        ({"aggregation": "cosine-clipped"}, "robust rules"),
        ({"codec": "topk"}, "top-k with error feedback"),
        ({"codec": "fp16"}, "fixed-point encoding, not a codec"),
        ({"codec": "bf16"}, "fixed-point encoding, not a codec"),
        ({"codec": "int8"}, "fixed-point encoding, not a codec"),
    ],
)
def test_what_needs_individual_updates_is_refused(gossip: dict[str, str], reason: str) -> None:
    config = GossipConfig.from_mapping(gossip)
    check_secure_gossip(ConsortiumSettings(), config)  # fine without secure aggregation
    with pytest.raises(ConfigError, match=reason):
        check_secure_gossip(SECURE, config)
    with pytest.raises(ConfigError, match=reason):
        sim_config_from_mapping({"consortium": {"secure_aggregation": True}, "gossip": gossip})


@pytest.mark.parametrize("rule", ["weighted", "bounded"])
def test_the_plain_weighted_rules_are_accepted(rule: str) -> None:
    check_secure_gossip(SECURE, GossipConfig.from_mapping({"aggregation": rule, "codec": "raw"}))


def test_the_simulator_refuses_multi_gossip_and_attacks_with_secure_aggregation() -> None:
    with pytest.raises(ConfigError, match="one exchange per round"):
        sim_config_from_mapping({"consortium": {"secure_aggregation": True, "gossip_steps": 4}})
    with pytest.raises(ConfigError, match="attack"):
        sim_config_from_mapping(
            {
                "consortium": {"secure_aggregation": True},
                "attack": {"kind": "sign-flip", "attackers": 1},
            }
        )


def test_consortium_build_cli_refuses_a_ring_and_writes_a_regular_graph(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from gossipmed.consortium.site import CARD_FILE
    from node.cli import main
    from node.daemon.cluster import init_site

    cards = []
    for i in range(6):
        site = tmp_path / f"site-{i}"
        init_site(site, name=f"site-{i}", listen=[f"/ip4/127.0.0.1/tcp/{4001 + i}"])
        cards.append(str(site / CARD_FILE))
    out = tmp_path / "consortium.toml"
    ring = ["consortium", "build", *cards, "--topology", "ring", "--secure-aggregation"]
    assert main([*ring, "--out", str(out)]) == 2
    assert "too few at: site-0, site-1, site-2, site-3, site-4, site-5" in capsys.readouterr().err
    assert not out.exists()
    regular = ["--topology", "random-regular", "--degree", "4", "--secure-aggregation"]
    assert main(["consortium", "build", *cards, *regular, "--out", str(out)]) == 0
    settings = load_roster(out).settings
    assert settings.secure_aggregation and settings.gossip_steps == 1
    assert settings.secagg_rms == 4.0  # the documented default envelope
    envelope = ["--secagg-rms", "0.05", "--force", "--out", str(out)]
    assert main(["consortium", "build", *cards, *regular, *envelope]) == 0
    assert load_roster(out).settings.secagg_rms == 0.05
