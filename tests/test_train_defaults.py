"""`gossipmed train` is private by default, with the lone-site settings of the local-only
benchmark, and `--repeat N` reports how much one DP draw varies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from node.cli import build_parser, main
from node.commands.train import _config


def config_of(*argv: str) -> object:
    return _config(build_parser().parse_args(["train", "--dataset", "icd10", *argv]))


def test_train_is_private_by_default_with_the_lone_site_settings() -> None:
    config = config_of()
    assert config.dp.enabled and config.dp.epsilon == 8.0  # type: ignore[attr-defined]
    # BENCHMARKS.md, local-only baseline: Adam lr 0.01, expected batch 128, 150 steps
    assert config.train.lr == 0.01 and config.train.batch_size == 128  # type: ignore[attr-defined]
    assert config.train.optimizer == "adam"  # type: ignore[attr-defined]
    assert config.dp.planned_steps == 150  # type: ignore[attr-defined]
    assert config.data.n_sites == 4 and config.data.max_train_examples == 8000  # type: ignore[attr-defined]


def test_no_dp_opts_out_and_epsilon_still_sets_the_budget() -> None:
    assert not config_of("--no-dp").dp.enabled  # type: ignore[attr-defined]
    private = config_of("--epsilon", "3")
    assert private.dp.enabled and private.dp.epsilon == 3.0  # type: ignore[attr-defined]


def test_repeat_refuses_out_and_nonpositive_counts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["train", "--dataset", "notes", "--base-model", str(tmp_path / "none")]
    assert main([*base, "--repeat", "2", "--out", str(tmp_path / "o")]) == 2
    assert "--repeat" in capsys.readouterr().err
    assert main([*base, "--repeat", "0"]) == 2
    assert "--repeat" in capsys.readouterr().err


@pytest.mark.slow
def test_repeat_reports_the_mean_and_spread_of_the_draws(
    tiny_base: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["train", "--dataset", "notes", "--sites", "2", "--steps", "1", "--repeat", "2"]
    argv += ["--eval-size", "12", "--max-train", "60", "--batch-size", "8"]
    argv += ["--base-model", str(tiny_base), "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    draws = out["accuracy_after_draws"]
    spread = out["accuracy_after_spread"]
    assert out["repeat"] == 2 and len(draws) == 2
    assert out["epsilon"] is not None and 0 < out["epsilon"] <= 8  # private by default
    assert spread["min"] == min(draws) and spread["max"] == max(draws)
    assert spread["mean"] == pytest.approx(sum(draws) / 2)
    assert spread["std"] >= 0
    assert out["accuracy_after"] == draws[-1]
