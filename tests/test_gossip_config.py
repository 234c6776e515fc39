"""One gossip configuration for `simulate` and `run`: per-site choices in `[gossip]` (rule and
its parameters, codec, drift, timeouts), consortium-wide ones in the consortium file (or the
simulator's `[consortium]`), choices listed from the registries, old keys named clearly."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from gossipmed.errors import ConfigError
from gossipmed.mixing.drift import DRIFT
from gossipmed.mixing.rules import RULES
from gossipmed.wire.compression import ENCODERS
from node.cli import main
from node.round.config import GossipConfig
from node.sim.config import sim_config_from_mapping

QUICK = ["--problem", "quadratic", "--nodes", "4", "--rounds", "2", "--json"]


def test_simulate_help_lists_every_rule_codec_and_drift_mode(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["simulate", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for name in (*RULES.names(), *ENCODERS.names(), *DRIFT.names()):
        assert name in text, name


def test_a_sim_toml_that_sets_min_cosine_runs_records_it_and_feeds_back(tmp_path: Path) -> None:
    cfg = tmp_path / "sim.toml"
    cfg.write_text(
        '[sim]\nproblem = "quadratic"\nrounds = 2\n[data]\nn_sites = 4\n'
        '[gossip]\naggregation = { rule = "cosine-clipped", min_cosine = 0.1 }\n'
    )
    out = tmp_path / "run"
    assert main(["simulate", "--config", str(cfg), "--json", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    rule = {"rule": "cosine-clipped", "min_cosine": 0.1}
    assert summary["config"]["gossip"]["aggregation"] == rule
    assert summary["gossip"]["aggregation"] == {**rule}  # radius None (median) is left out
    assert summary["robustness"]["aggregation_params"] == {"min_cosine": 0.1}
    resolved = tomllib.loads((out / "config.toml").read_text())
    assert resolved["gossip"]["aggregation"] == rule
    again = tmp_path / "again"
    assert (
        main(["simulate", "--config", str(out / "config.toml"), "--json", "--out", str(again)]) == 0
    )
    assert (again / "config.toml").read_text() == (out / "config.toml").read_text()


def test_flags_choose_the_rule_its_parameters_and_the_codec(tmp_path: Path) -> None:
    args = [
        "--aggregation",
        "trimmed-mean",
        "--rule-param",
        "trim=0.3",
        "--codec",
        "topk",
        "--topk-fraction",
        "0.05",
    ]
    assert main(["simulate", *QUICK, *args, "--out", str(tmp_path)]) == 0
    gossip = tomllib.loads((tmp_path / "config.toml").read_text())["gossip"]
    assert gossip["aggregation"] == {"rule": "trimmed-mean", "trim": 0.3}
    assert gossip["codec"] == {"name": "topk", "fraction": 0.05}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rule-param", "min_cosine=0.1"], "bounded' has no parameter min_cosine"),
        (["--aggregation", "clipped", "--rule-param", "radius=-1"], "radius"),
        (["--codec", "int8", "--topk-fraction", "0.1"], "int8' has no parameter fraction"),
        (["--aggregation", "mean-of-nothing"], "invalid choice"),
    ],
)
def test_bad_choices_and_parameters_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert main(["simulate", *QUICK, *args, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


@pytest.mark.parametrize(
    ("section", "key", "new"),
    [
        ("sim", "aggregation", "[gossip] aggregation"),
        ("sim", "gossip_steps", "[consortium] gossip_steps"),
        ("sim", "mixing", "[consortium] mixing"),
        ("sim", "topk_fraction", "[gossip] codec"),
        ("sim", "attack", "[attack] kind"),
        ("faults", "round_timeout", "[gossip] round_timeout_s"),
    ],
)
def test_a_key_of_the_old_layout_names_its_new_place(section: str, key: str, new: str) -> None:
    with pytest.raises(ConfigError, match=f"\\[{section}\\] {key} has moved") as caught:
        sim_config_from_mapping({section: {key: 1}})
    assert new in str(caught.value)


def test_gossip_config_round_trips_through_its_toml_shape() -> None:
    config = GossipConfig(
        aggregation={"rule": "clipped", "radius": 2.5},
        codec={"name": "topk", "fraction": 0.1, "refresh_every": 4},
        drift="d2",
        round_timeout_s=12.0,
    )
    assert GossipConfig.from_mapping(config.to_mapping()) == config
    assert GossipConfig().to_mapping()["aggregation"] == "bounded"  # defaults stay plain names
