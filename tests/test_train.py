"""SiteLearner: the Learner protocol over one shared model, DP charged, budget enforced."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from gossipmed.errors import PrivacyBudgetExceeded
from gossipmed.learn.config import AdapterConfig, DataConfig, DPConfig, LearningConfig, TrainConfig
from gossipmed.learn.learner import Learner
from gossipmed.learn.model import expected_schema
from gossipmed.learn.train import build_site_learners
from gossipmed.privacy.randomness import RandomSource
from node.cli import main

SEEDED = RandomSource.seeded(0)


def _config(base: Path, *, dp: bool = True, epsilon: float = 8.0, seed: int = 0) -> LearningConfig:
    return LearningConfig(
        data=DataConfig(
            dataset="notes", n_sites=3, partition="natural", max_train_examples=150, eval_size=12
        ),
        adapter=AdapterConfig(kind="lora", rank=2),
        dp=DPConfig(enabled=dp, epsilon=epsilon, planned_steps=20),
        train=TrainConfig(batch_size=8, seed=seed),
        base_model=str(base),
    )


@pytest.mark.slow
def test_sites_share_one_model_but_keep_their_own_state(tiny_base: Path, tmp_path: Path) -> None:
    setup = build_site_learners(_config(tiny_base), randomness=SEEDED, ledger_dir=tmp_path)
    a, b, c = setup.learners
    learner: Learner = a  # satisfies the protocol
    assert [x.name for x in setup.learners] == ["hospital-0", "hospital-1", "hospital-2"]
    init = learner.get_state()
    stats = a.train_round(steps=3)
    assert stats.steps == 3 and stats.epsilon > 0 and math.isfinite(stats.train_loss)
    after_a = a.get_state()
    assert any(not torch.equal(after_a[k], init[k]) for k in init)
    b.train_round(steps=3)
    assert all(torch.equal(a.get_state()[k], after_a[k]) for k in init)  # B never leaked into A
    assert expected_schema(b.get_state()) == expected_schema(after_a)
    c.set_state(after_a)
    assert all(torch.equal(c.get_state()[k], after_a[k]) for k in init)
    report = a.evaluate()
    assert 0.0 <= report.accuracy <= 1.0 and report.loss > 0
    assert (tmp_path / "hospital-0.ledger.json").is_file()


@pytest.mark.slow
def test_rounds_are_deterministic_given_seeded_generators(tiny_base: Path) -> None:
    """Reproducible only when the caller injects seeded randomness (simulations, tests)."""
    states = []
    for source in (RandomSource.seeded(5), RandomSource.seeded(5), RandomSource.seeded(6)):
        setup = build_site_learners(_config(tiny_base), randomness=source)
        setup.learners[1].train_round(steps=2)
        states.append(setup.learners[1].get_state())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert any(not torch.equal(states[0][k], states[2][k]) for k in states[0])


@pytest.mark.slow
def test_os_randomness_differs_between_starts(tiny_base: Path) -> None:
    """The config's seed does not fix the DP draws of a real site: every start is fresh."""
    states = []
    for _ in range(2):
        setup = build_site_learners(_config(tiny_base), randomness=RandomSource.from_os())
        setup.learners[1].train_round(steps=2)
        states.append(setup.learners[1].get_state())
    assert any(not torch.equal(states[0][k], states[1][k]) for k in states[0])


@pytest.mark.slow
def test_spent_budget_refuses_the_round_and_keeps_the_state(tiny_base: Path) -> None:
    setup = build_site_learners(_config(tiny_base, epsilon=0.5), randomness=SEEDED)
    site = setup.learners[0]
    with pytest.raises(PrivacyBudgetExceeded):
        for _ in range(200):
            site.train_round(steps=5)
    assert site.ledger is not None and site.ledger.epsilon <= 0.5
    before = site.get_state()
    with pytest.raises(PrivacyBudgetExceeded):
        site.train_round(steps=5)
    assert all(torch.equal(site.get_state()[k], before[k]) for k in before)


@pytest.mark.slow
def test_pooled_baseline_trains_on_all_data(tiny_base: Path) -> None:
    cfg = _config(tiny_base, dp=False)
    pooled = build_site_learners(cfg, randomness=SEEDED, pooled=True)
    split = build_site_learners(cfg, randomness=SEEDED, model=pooled.model)
    assert len(pooled.learners) == 1
    assert len(pooled.learners[0].train_data) == sum(len(x.train_data) for x in split.learners)
    assert pooled.learners[0].train_round(steps=1).epsilon == math.inf  # non-private


@pytest.mark.slow
def test_train_cli_reports_and_saves_a_peft_adapter(
    tiny_base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["train", "--dataset", "notes", "--sites", "2", "--steps", "4", "--epsilon", "8"]
    argv += ["--eval-size", "12", "--max-train", "100", "--batch-size", "8"]
    argv += ["--base-model", str(tiny_base), "--out", str(tmp_path / "run"), "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert 0 < out["epsilon"] <= 8 and 0 <= out["accuracy_after"] <= 1
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").is_file()
    assert (tmp_path / "run" / "site-0.ledger.json").is_file()


@pytest.mark.slow
def test_train_cli_draws_fresh_noise_at_every_start(tiny_base: Path, tmp_path: Path) -> None:
    """Issue 13.1: the same command and --seed twice must not give the same noisy adapter."""
    from safetensors.torch import load_file

    common = ["train", "--dataset", "notes", "--epsilon", "8", "--steps", "5", "--seed", "0"]
    common += ["--sites", "2", "--eval-size", "6", "--max-train", "60", "--batch-size", "8"]
    common += ["--base-model", str(tiny_base), "--json"]
    for run in ("A", "B"):
        assert main([*common, "--out", str(tmp_path / run)]) == 0
    a, b = (load_file(tmp_path / r / "adapter" / "adapter_model.safetensors") for r in "AB")
    assert a.keys() == b.keys() and a
    assert any(not torch.equal(a[k], b[k]) for k in a)
