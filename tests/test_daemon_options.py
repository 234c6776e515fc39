"""The daemon takes the simulator's codec and drift options from site.toml's [gossip] table
(and the exchanges per round from the consortium file), composes them with the simulator's
code, and checkpoints their state so a resume continues exactly. Daemons here solve the
synthetic quadratic problem (no model, milliseconds a round) and run in this process: real
libp2p transport on 127.0.0.1, real envelopes, real checkpoints.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import trio

from gossipmed.consortium.audit import read_audit
from gossipmed.consortium.settings import AUTO_GOSSIP_STEPS, ConsortiumSettings
from gossipmed.errors import ConfigError
from gossipmed.metrics import METRICS_FILE, RoundRecord, read_metrics
from gossipmed.mixing.drift import D2Learner
from gossipmed.storage.checkpoint import META_FILE
from gossipmed.storage.peer_state import component_file
from gossipmed.wire.compression import TopkEncoder
from node.commands.status import print_status
from node.daemon.cluster import LOOPBACK, create_cluster, free_port, init_site, write_site_toml
from node.daemon.config import STATE_DIR, load_daemon_settings
from node.daemon.site_daemon import SiteDaemon, resume_keyframes

FEEDBACK_FILE = component_file("encoder")  # the top-k residual
DRIFT_FILE = component_file("learner")  # D²'s memory

ROUNDS = 4
RUN_TIMEOUT_S = 60.0  # the whole in-process cluster, startup included


def quadratic(
    i: int,
    *,
    rounds: int = ROUNDS,
    codec: str = "raw",
    topk_fraction: float | None = None,
    **gossip: Any,
) -> dict[str, dict[str, Any]]:
    topk = codec == "topk" and topk_fraction is not None
    codec_table: Any = {"name": codec, "fraction": topk_fraction} if topk else codec
    return {
        "daemon": {"rounds": rounds, "site_index": i, "problem": "quadratic", "seed": 3},
        "gossip": {"round_timeout_s": 20.0, "codec": codec_table, **gossip},
        "train": {"lr": 0.1},
    }


def make_cluster(
    root: Path, *, nodes: int = 3, gossip_steps: int = AUTO_GOSSIP_STEPS, **options: Any
) -> list[Path]:
    def sections(i: int) -> dict[str, dict[str, Any]]:
        return quadratic(i, **options)

    settings = ConsortiumSettings(gossip_steps=gossip_steps)
    return create_cluster(root, nodes=nodes, topology="ring", sections=sections, settings=settings)


def run_in_process(sites: list[Path]) -> list[SiteDaemon]:
    """Every site's daemon in one trio loop until each has run its rounds."""
    daemons = [SiteDaemon(load_daemon_settings(s)) for s in sites]

    async def main() -> None:
        with trio.fail_after(RUN_TIMEOUT_S):
            async with trio.open_nursery() as nursery:
                for d in daemons:
                    nursery.start_soon(d.run)

    trio.run(main)
    return daemons


def records(site: Path) -> list[RoundRecord]:
    return read_metrics(site / METRICS_FILE)


def everyone_heard_everyone(sites: list[Path]) -> bool:
    recs = [r for s in sites for r in records(s)]
    return all(r.neighbours_heard == r.neighbours_expected for r in recs)


def total_bytes_sent(sites: list[Path]) -> int:
    return sum(r.bytes_sent for s in sites for r in records(s))


# --- site.toml ------------------------------------------------------------------------------


def site_with_tables(
    root: Path, gossip: dict[str, Any], daemon: dict[str, Any] | None = None
) -> Path:
    site = root / "site"
    listen = [f"/ip4/{LOOPBACK}/tcp/{free_port()}"]
    init_site(site, name="site", listen=listen)
    write_site_toml(
        site,
        name="site",
        listen=listen,
        consortium="consortium.toml",
        sections={"daemon": {"problem": "quadratic", **(daemon or {})}, "gossip": gossip},
    )
    return site


TOPK = {"name": "topk"}


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("codec", "zip", "gossip.codec"),
        ("drift", "x", "gossip.drift"),
        ("codec", {**TOPK, "fraction": 0}, "fraction"),
        ("codec", {**TOPK, "fraction": 1.5}, "fraction"),
        ("codec", {**TOPK, "fraction": "all"}, "fraction"),
        ("codec", {**TOPK, "refresh_every": -1}, "refresh_every"),
        ("aggregation", {"rule": "cosine-clipped", "min_cosine": 2.0}, "min_cosine"),
        ("aggregation", {"rule": "clipped", "min_cosine": 0.1}, "min_cosine"),
    ],
)
def test_a_bad_option_value_is_a_config_error_naming_the_key(
    tmp_path: Path, key: str, value: Any, named: str
) -> None:
    site = site_with_tables(tmp_path, {key: value})
    with pytest.raises(ConfigError, match=f"gossip\\.{key}") as caught:
        load_daemon_settings(site)
    assert named in str(caught.value)


def test_unknown_gossip_keys_stay_errors(tmp_path: Path) -> None:
    site = site_with_tables(tmp_path, {"codecs": "int8"})
    with pytest.raises(ConfigError, match="unknown keys: codecs"):
        load_daemon_settings(site)


@pytest.mark.parametrize(
    ("key", "new"),
    [("codec", "[gossip] codec"), ("gossip_steps", "consortium file"), ("aggregation", "[gossip]")],
)
def test_a_key_of_the_old_daemon_table_names_its_new_place(
    tmp_path: Path, key: str, new: str
) -> None:
    site = site_with_tables(tmp_path, {}, daemon={key: "raw" if key != "gossip_steps" else 1})
    with pytest.raises(ConfigError, match=f"\\[daemon\\] {key} has moved") as caught:
        load_daemon_settings(site)
    assert new in str(caught.value) and "\n" not in str(caught.value)


def test_options_default_to_the_simulators_and_are_read_from_site_toml(tmp_path: Path) -> None:
    from node.round.config import GossipConfig

    plain = load_daemon_settings(site_with_tables(tmp_path / "a", {})).gossip
    assert plain == GossipConfig()  # the simulator's defaults
    assert (plain.codec.name, plain.drift.name, plain.aggregation.name) == (
        "raw",
        "none",
        "bounded",
    )
    table = {
        "codec": {"name": "topk", "fraction": 0.1, "refresh_every": 5},
        "drift": "d2",
        "aggregation": {"rule": "cosine-clipped", "min_cosine": 0.1},
    }
    chosen = load_daemon_settings(site_with_tables(tmp_path / "b", table)).gossip
    assert (chosen.codec.name, chosen.codec.params.fraction) == ("topk", 0.1)
    assert (chosen.codec.params.refresh_every, chosen.drift.name) == (5, "d2")
    assert chosen.aggregation.params.min_cosine == 0.1
    assert chosen.to_mapping()["aggregation"] == {"rule": "cosine-clipped", "min_cosine": 0.1}


# --- clusters -------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.network
def test_compressed_codecs_send_fewer_bytes_than_raw_on_a_real_cluster(tmp_path: Path) -> None:
    sent = {}
    for codec in ("raw", "int8", "topk"):
        sites = make_cluster(tmp_path / codec, codec=codec, topk_fraction=0.05)
        daemons = run_in_process(sites)
        assert [len(records(s)) for s in sites] == [ROUNDS] * 3
        assert everyone_heard_everyone(sites), codec  # receivers decoded every envelope
        assert all(d.status()["gossip"]["codec"]["name"] == codec for d in daemons)
        sent[codec] = total_bytes_sent(sites)
    assert sent["int8"] < sent["raw"] / 2
    assert sent["topk"] < sent["raw"] / 2


@pytest.mark.network
def test_a_d2_cluster_completes_its_rounds_and_checkpoints_the_drift_state(
    tmp_path: Path,
) -> None:
    sites = make_cluster(tmp_path, drift="d2")
    daemons = run_in_process(sites)
    assert [len(records(s)) for s in sites] == [ROUNDS] * 3
    assert everyone_heard_everyone(sites)
    assert all(isinstance(d.peer.learner, D2Learner) for d in daemons)
    for s in sites:
        meta = json.loads((s / STATE_DIR / META_FILE).read_text())
        assert set(meta["components"]) == {"learner"}  # D²'s memory, vouched by digest
        assert (s / STATE_DIR / DRIFT_FILE).is_file()


@pytest.mark.network
def test_auto_gossip_steps_exchange_twice_per_round_on_a_four_site_ring(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """lambda2 of a 4-ring is 1/3, so auto picks 2 exchanges (1/9 <= 0.2): twice the bytes,
    and sites end closer together than with one exchange per round."""
    spread, sent = {}, {}
    for steps in (1, AUTO_GOSSIP_STEPS):
        sites = make_cluster(tmp_path / str(steps), nodes=4, gossip_steps=steps)
        daemons = run_in_process(sites)
        assert [len(records(s)) for s in sites] == [ROUNDS] * 4
        assert everyone_heard_everyone(sites)
        k = daemons[0].peer.gossip_steps
        assert k == (2 if steps == AUTO_GOSSIP_STEPS else 1)
        assert daemons[0].status()["gossip_steps"] == k
        print_status(daemons[0].status())
        assert f"exchanges per round {k}, codec raw" in capsys.readouterr().out
        accepted = [e for e in read_audit(sites[0] / "audit.jsonl") if e["outcome"] == "accepted"]
        assert len(accepted) == 2 * ROUNDS * k  # two neighbours, k envelopes each per round
        states = torch.stack([d.learner.get_state()["x"] for d in daemons])
        spread[k] = float((states - states.mean(0)).norm())
        sent[k] = total_bytes_sent(sites)
    assert sent[2] == 2 * sent[1]
    assert spread[2] < spread[1] / 2


@pytest.mark.network
def test_a_dead_neighbour_costs_one_give_up_per_round_not_per_exchange(tmp_path: Path) -> None:
    """site-02 never starts. In exchanges after the first, the others neither wait for it nor
    keep retrying it until the deadline: one delivery given up per round, as with one
    exchange, and every round still mixes the live neighbour three times."""

    def sections(i: int) -> dict[str, dict[str, Any]]:
        s = quadratic(i, rounds=3)
        s["gossip"]["round_timeout_s"] = 1.5
        return s

    settings = ConsortiumSettings(gossip_steps=3)
    sites = create_cluster(tmp_path, nodes=3, topology="ring", sections=sections, settings=settings)
    daemons = run_in_process(sites[:2])
    assert [d.state.failures for d in daemons] == [3, 3]
    for site in sites[:2]:
        assert [(r.neighbours_heard, r.neighbours_expected) for r in records(site)] == [(1, 2)] * 3
        accepted = [e for e in read_audit(site / "audit.jsonl") if e["outcome"] == "accepted"]
        assert len(accepted) == 3 * 3


# --- resume: one daemon's wiring built twice on the same state folder ------------------------


@pytest.fixture
def lone_daemon() -> Iterator[Callable[[Path], SiteDaemon]]:
    """A site's daemon without its transport: rounds run locally (no neighbour heard)."""
    made: list[SiteDaemon] = []

    def make(site: Path) -> SiteDaemon:
        made.append(SiteDaemon(load_daemon_settings(site)))
        return made[-1]

    yield make
    for d in made:
        d.metrics.close()


def train_and_seal(daemon: SiteDaemon, r: int) -> dict[str, bytes]:
    """What the daemon's round driver does before the first exchange of round r."""
    daemon.peer.train(r)
    envelopes = daemon.peer.seal_outgoing(r, 0)
    daemon.mark_sealed(r, 0)
    return envelopes


def run_rounds(daemon: SiteDaemon, rounds: range) -> None:
    for r in rounds:
        train_and_seal(daemon, r)
        daemon.peer.complete_round(r)


def encoder(daemon: SiteDaemon) -> TopkEncoder:
    assert isinstance(daemon.peer.encoder, TopkEncoder)
    return daemon.peer.encoder


def same(a: dict[str, torch.Tensor] | None, b: dict[str, torch.Tensor] | None) -> bool:
    assert a is not None and b is not None
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def topk_site(tmp_path: Path) -> Path:
    return make_cluster(tmp_path, codec="topk", topk_fraction=0.05, rounds=0)[0]


def test_the_topk_residual_is_checkpointed_and_restored_on_restart(
    topk_site: Path, lone_daemon: Callable[[Path], SiteDaemon]
) -> None:
    first = lone_daemon(topk_site)
    run_rounds(first, range(2))  # a keyframe, then a delta that leaves a residual behind
    feedback = encoder(first).feedback
    assert feedback.residual_norm() > 0
    assert (topk_site / STATE_DIR / FEEDBACK_FILE).is_file()

    second = lone_daemon(topk_site)
    restored = encoder(second).feedback
    assert second.restored == ("encoder",)
    assert same(restored.residual, feedback.residual) and same(restored.last, feedback.last)
    assert encoder(second).keyframes_due == 0  # nothing of round 2 left: the deltas go on
    assert not encoder(second).is_keyframe(2, 0)
    assert second.status()["restored"] == ["encoder"]


def test_a_resume_after_envelopes_of_its_round_left_sends_keyframes(
    topk_site: Path, lone_daemon: Callable[[Path], SiteDaemon]
) -> None:
    first = lone_daemon(topk_site)
    run_rounds(first, range(2))
    train_and_seal(first, 2)  # sealed (and maybe sent) round 2, then killed before mixing

    second = lone_daemon(topk_site)
    assert second.peer.round == 2
    assert encoder(second).keyframes_due == resume_keyframes(second.peer.gossip_steps)
    for r in (2, 3):  # round 2 may be refused as a replay; round 3 is new to everyone
        train_and_seal(second, r)
        assert encoder(second).last_codec == "raw", f"round {r} was not a keyframe"
        second.peer.complete_round(r)
    train_and_seal(second, 4)
    assert encoder(second).last_codec == "topk"


def test_option_files_the_checkpoint_does_not_vouch_for_are_ignored(
    topk_site: Path, lone_daemon: Callable[[Path], SiteDaemon]
) -> None:
    first = lone_daemon(topk_site)
    run_rounds(first, range(2))
    path = topk_site / STATE_DIR / FEEDBACK_FILE
    stale = path.read_bytes()
    later = lone_daemon(topk_site)
    run_rounds(later, range(2, 3))  # a later round rewrites the file
    path.write_bytes(stale)  # as if a crash left the older file next to the newer metadata

    second = lone_daemon(topk_site)
    assert second.restored == ()
    assert encoder(second).is_keyframe(3, 0)  # a fresh residual: a keyframe, which owes nothing


def test_a_resumed_topk_sender_continues_exactly_like_an_uninterrupted_one(
    tmp_path: Path, lone_daemon: Callable[[Path], SiteDaemon]
) -> None:
    options: dict[str, Any] = {"codec": "topk", "topk_fraction": 0.05, "rounds": 0}
    straight = make_cluster(tmp_path / "straight", **options)[0]
    resumed = make_cluster(tmp_path / "resumed", **options)[0]

    uninterrupted = lone_daemon(straight)
    run_rounds(uninterrupted, range(4))
    run_rounds(lone_daemon(resumed), range(2))
    after = lone_daemon(resumed)
    run_rounds(after, range(2, 4))

    assert same(encoder(after).feedback.residual, encoder(uninterrupted).feedback.residual)
    assert same(after.learner.get_state(), uninterrupted.learner.get_state())


def run_pair_rounds(a: SiteDaemon, b: SiteDaemon, rounds: range) -> None:
    """Two ring neighbours exchange envelopes by hand (the third site stays silent)."""
    for r in rounds:
        from_a, from_b = train_and_seal(a, r), train_and_seal(b, r)
        assert b.peer.receive(from_a[b.name])
        assert a.peer.receive(from_b[a.name])
        a.peer.complete_round(r)
        b.peer.complete_round(r)


def test_a_resumed_d2_site_continues_exactly_and_would_not_without_its_drift_state(
    tmp_path: Path, lone_daemon: Callable[[Path], SiteDaemon]
) -> None:
    def pair(name: str) -> list[Path]:
        return make_cluster(tmp_path / name, drift="d2", rounds=0)[:2]

    straight, resumed, forgetful = pair("straight"), pair("resumed"), pair("forgetful")
    a, b = (lone_daemon(s) for s in straight)
    run_pair_rounds(a, b, range(4))
    finals = []
    for sites, keep_drift_state in ((resumed, True), (forgetful, False)):
        first, neighbour = (lone_daemon(s) for s in sites)
        run_pair_rounds(first, neighbour, range(2))
        if not keep_drift_state:
            (sites[0] / STATE_DIR / DRIFT_FILE).unlink()
        restarted = lone_daemon(sites[0])  # killed after round 1; its neighbour runs on
        assert restarted.restored == (("learner",) if keep_drift_state else ())
        run_pair_rounds(restarted, neighbour, range(2, 4))
        finals.append(restarted.learner.get_state())

    assert same(finals[0], a.learner.get_state())
    assert not same(finals[1], a.learner.get_state())
