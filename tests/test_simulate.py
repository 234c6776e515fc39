"""`gossipmed simulate`: the run directory, reproducibility, baselines and the CLI."""

import json
import tomllib
from pathlib import Path

import pytest

from gossipmed.metrics import read_metrics
from node.cli import main
from node.sim.config import load_toml, sim_config_from_mapping

QUICK = ["--problem", "quadratic", "--nodes", "6", "--topology", "ring", "--rounds", "5"]


def _metrics_without_timing(path: Path) -> list[dict[str, object]]:
    return [
        {k: v for k, v in json.loads(line).items() if k != "seconds"}
        for line in path.read_text().splitlines()
    ]


def test_run_directory_has_config_metrics_adapters_and_summary(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["simulate", *QUICK, "--baselines", "--json", "--out", str(out)]) == 0
    records = read_metrics(out / "metrics.jsonl")
    assert len(records) == 6 * 5
    assert {r.site for r in records} == {f"site-{i:02d}" for i in range(6)}
    assert all(r.consensus_scope == "global" for r in records)
    assert len(read_metrics(out / "baselines/local-only/metrics.jsonl")) == 6 * 5
    assert {r.site for r in read_metrics(out / "baselines/centralized/metrics.jsonl")} == {
        "central"
    }
    assert sorted(p.name for p in (out / "adapters").iterdir()) == [
        f"site-{i:02d}" for i in range(6)
    ]
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["final"]) == {"gossip", "local", "central"}
    assert summary["topology"]["kind"] == "ring"
    # the resolved config reproduces the run
    reloaded = sim_config_from_mapping(load_toml(out / "config.toml"))
    assert reloaded.sim.rounds == 5 and reloaded.nodes == 6 and reloaded.sim.baselines
    assert tomllib.loads((out / "config.toml").read_text())["sim"]["problem"] == "quadratic"


def test_same_seed_same_metrics(tmp_path: Path) -> None:
    for name in ("a", "b"):
        assert (
            main(
                [
                    "simulate",
                    *QUICK,
                    "--drop",
                    "0.3",
                    "--json",
                    "--seed",
                    "4",
                    "--out",
                    str(tmp_path / name),
                ]
            )
            == 0
        )
    assert _metrics_without_timing(tmp_path / "a/metrics.jsonl") == _metrics_without_timing(
        tmp_path / "b/metrics.jsonl"
    )


def test_gossip_beats_local_only_on_skewed_sites(tmp_path: Path) -> None:
    assert (
        main(
            [
                "simulate",
                "--problem",
                "quadratic",
                "--nodes",
                "8",
                "--topology",
                "hypercube",
                "--rounds",
                "15",
                "--lr",
                "0.05",
                "--local-steps",
                "2",
                "--baselines",
                "--json",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    final = json.loads((tmp_path / "summary.json").read_text())["final"]
    assert final["gossip"]["accuracy_mean"] > final["local"]["accuracy_mean"] + 0.05
    assert final["gossip"]["eval_loss_mean"] < final["local"]["eval_loss_mean"]


def test_config_file_is_read_and_flags_override_it(tmp_path: Path) -> None:
    cfg = tmp_path / "sim.toml"
    cfg.write_text(
        '[sim]\nproblem = "quadratic"\nrounds = 3\ntopology = "complete"\n[data]\nn_sites = 4\n'
    )
    out = tmp_path / "run"
    assert (
        main(["simulate", "--config", str(cfg), "--rounds", "2", "--json", "--out", str(out)]) == 0
    )
    records = read_metrics(out / "metrics.jsonl")
    assert {r.round for r in records} == {0, 1} and len({r.site for r in records}) == 4


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--topology", "moebius"], "topology"), (["--churn", "1.5"], "offline_prob")],
)
def test_bad_settings_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert main(["simulate", *QUICK, *args, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_pretrain_flag_selects_full_parameter_gossip(tmp_path: Path) -> None:
    from node.cli import build_parser
    from node.commands.simulate import build_config

    args = build_parser().parse_args(
        ["simulate", "--pretrain", "--dataset", "notes", "--out", str(tmp_path)]
    )
    config = build_config(args)
    assert config.learning.adapter.kind == "full"
    assert config.learning.train.loss_on == "all"
