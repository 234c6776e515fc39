"""Accounting (Opacus RDP/PRV), noise calibration, Poisson sampling and clipping."""

from __future__ import annotations

import json

import pytest
import torch

from gossipmed.errors import PrivacyError
from gossipmed.privacy.dp import calibrate_noise, clip_and_noise, epsilon_for, poisson_sample
from node.cli import main


def test_reference_point_rdp(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["privacy", "--noise", "1.0", "--sample-rate", "0.01", "--steps", "1000"]
    argv += ["--delta", "1e-5", "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["epsilon"] == pytest.approx(2.10, abs=0.01)


def test_cli_calibrates_noise(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["privacy", "--target-epsilon", "2.1", "--sample-rate", "0.01", "--steps", "1000"]
    argv += ["--json"]
    assert main(argv) == 0
    sigma = json.loads(capsys.readouterr().out)["noise_multiplier"]
    assert sigma == pytest.approx(1.0, abs=0.01)


def test_prv_is_tighter_than_rdp() -> None:
    kw = {"noise_multiplier": 1.0, "sample_rate": 0.01, "steps": 1000, "delta": 1e-5}
    assert epsilon_for(accountant="prv", **kw) < epsilon_for(accountant="rdp", **kw)


def test_calibrated_noise_meets_target() -> None:
    sigma = calibrate_noise(target_epsilon=3.0, delta=1e-5, sample_rate=0.02, steps=300)
    eps = epsilon_for(noise_multiplier=sigma, sample_rate=0.02, steps=300, delta=1e-5)
    assert eps <= 3.0 + 1e-6
    assert eps > 2.9


def test_bad_inputs_raise_privacy_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(PrivacyError):
        epsilon_for(noise_multiplier=0.0, sample_rate=0.01, steps=10, delta=1e-5)
    assert main(["privacy", "--noise", "1", "--sample-rate", "1.5", "--steps", "10"]) == 2


def test_poisson_sampling_rate() -> None:
    g = torch.Generator().manual_seed(0)
    sizes = [len(poisson_sample(1000, sample_rate=0.05, generator=g)) for _ in range(200)]
    mean = sum(sizes) / len(sizes)
    assert 45 < mean < 55
    assert len(set(sizes)) > 5  # the batch size really varies


def test_clipping_bounds_each_example_and_noise_has_the_right_scale() -> None:
    g = torch.Generator().manual_seed(0)
    per_sample = {"w": torch.tensor([[3.0, 4.0], [0.03, 0.04]])}  # norms 5 and 0.05
    grad, norms = clip_and_noise(
        per_sample, clip_norm=0.1, noise_multiplier=1e-9, expected_batch=1.0, generator=g
    )
    assert norms.tolist() == pytest.approx([5.0, 0.05])
    assert grad["w"].tolist() == pytest.approx([0.06 + 0.03, 0.08 + 0.04], abs=1e-6)
    empty = {"w": torch.zeros(0, 10000)}
    noisy, _ = clip_and_noise(
        empty, clip_norm=0.5, noise_multiplier=2.0, expected_batch=4.0, generator=g
    )
    assert noisy["w"].std().item() == pytest.approx(2.0 * 0.5 / 4.0, rel=0.05)
