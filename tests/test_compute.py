"""Device, base precision and micro-batch settings: validated, honoured, and never a reason
for the adapter that leaves a site to be anything but float32 on the CPU."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from gossipmed.errors import ConfigError, ModelError
from gossipmed.learn.compute import auto_microbatch, resolve_device
from gossipmed.learn.config import (
    AdapterConfig,
    ComputeConfig,
    DataConfig,
    DPConfig,
    LearningConfig,
    TrainConfig,
    learning_config_from_mapping,
)
from gossipmed.learn.model import AdapterModel, load_base_model
from gossipmed.learn.train import build_site_learners
from gossipmed.privacy.randomness import RandomSource
from node.cli import main


def test_auto_settings_read_from_toml_and_bad_values_are_refused() -> None:
    cfg = learning_config_from_mapping(
        {
            "adapter": {"target_modules": "auto"},
            "train": {"microbatch": "auto"},
            "compute": {"device": "cpu", "base_dtype": "bfloat16"},
        }
    )
    assert cfg.adapter.target_modules is None and cfg.train.microbatch is None
    assert cfg.compute == ComputeConfig(device="cpu", base_dtype="bfloat16")
    explicit = learning_config_from_mapping(
        {"adapter": {"target_modules": ["c_attn"]}, "train": {"microbatch": 8}}
    )
    assert explicit.adapter.target_modules == ("c_attn",) and explicit.train.microbatch == 8
    assert LearningConfig().compute == ComputeConfig(device="auto", base_dtype="float32")
    bad: list[dict[str, object]] = [
        {"compute": {"device": "gpu"}},
        {"compute": {"device": "cuda:x"}},
        {"compute": {"base_dtype": "int8"}},
        {"compute": {"precision": "float32"}},
        {"train": {"microbatch": 0}},
        {"train": {"microbatch": True}},
        {"adapter": {"target_modules": []}},
        {"adapter": {"target_modules": "q_proj"}},
        {"adapter": {"kind": "full"}, "compute": {"base_dtype": "bfloat16"}},
    ]
    for raw in bad:
        with pytest.raises(ConfigError):
            learning_config_from_mapping(raw)


def test_cuda_where_there_is_none_is_a_one_line_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for spec in ("cuda", "cuda:1"):
        with pytest.raises(ConfigError, match="no usable CUDA device"):
            resolve_device(spec)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    argv = ["train", "--dataset", "notes", "--steps", "1", "--device", "cuda", "--json"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "CUDA" in err


def test_auto_microbatch_keeps_the_tiny_base_whole_and_shrinks_for_big_shapes() -> None:
    from transformers import LlamaConfig

    cpu = torch.device("cpu")

    def mb(**shape: int) -> int:
        return auto_microbatch(LlamaConfig(**shape), seq_len=64, dtype=torch.float32, device=cpu)

    tiny = mb(hidden_size=128, intermediate_size=352, num_hidden_layers=2, num_attention_heads=4)
    smol = mb(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9)
    tinyllama = mb(
        hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32
    )
    assert tiny == 64  # the embedded base's results do not move
    assert smol == 8
    assert 1 <= tinyllama < smol


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_a_half_precision_base_keeps_a_float32_adapter_with_the_same_init(
    tiny_base: Path, dtype: str
) -> None:
    config = LearningConfig(
        data=DataConfig(
            dataset="notes", n_sites=2, partition="natural", max_train_examples=60, eval_size=6
        ),
        adapter=AdapterConfig(kind="lora", rank=2),
        dp=DPConfig(epsilon=8.0, planned_steps=10),
        train=TrainConfig(batch_size=8),
        base_model=str(tiny_base),
        compute=ComputeConfig(device="cpu", base_dtype=dtype),  # type: ignore[arg-type]
    )
    setup = build_site_learners(config, randomness=RandomSource.seeded(0))
    assert setup.model.base_dtype == getattr(torch, dtype)
    full = AdapterModel.from_pretrained(tiny_base, config.adapter)
    half_init = setup.model.initial_state
    assert all(torch.equal(half_init[k], v) for k, v in full.initial_state.items())
    site = setup.learners[0]
    stats = site.train_round(steps=2)
    assert stats.train_loss == stats.train_loss  # finite, not NaN
    state = site.get_state()
    assert all(v.dtype == torch.float32 and v.device.type == "cpu" for v in state.values())
    assert any(not torch.equal(state[k], half_init[k]) for k in state)
    report = site.evaluate_report()
    assert 0.0 <= report.accuracy <= 1.0


class _NeedsCode:
    """Any class outside torch's allow-list: unpickling it would run this module's code."""


def test_pickled_weights_are_refused_with_a_one_line_model_error(
    tiny_base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "pickled"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_base / name, folder / name)
    torch.save({"model.embed_tokens.weight": _NeedsCode()}, folder / "pytorch_model.bin")
    with pytest.raises(ModelError, match="pickled") as info:
        load_base_model(folder)
    assert "\n" not in str(info.value)
    argv = ["train", "--dataset", "notes", "--steps", "1", "--base-model", str(folder), "--json"]
    assert main(argv) == 2
    errors = [ln for ln in capsys.readouterr().err.splitlines() if "error" in ln]
    assert len(errors) == 1 and "pickled" in errors[0]


def test_train_cli_reports_its_compute_settings(
    tiny_base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["train", "--dataset", "notes", "--steps", "1", "--sites", "2", "--json"]
    argv += ["--eval-size", "6", "--max-train", "40", "--batch-size", "8"]
    argv += ["--base-model", str(tiny_base), "--device", "cpu", "--dtype", "bfloat16"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["device"] == "cpu" and out["base_dtype"] == "bfloat16"
    assert out["target_modules"] == ["q_proj", "v_proj"] and out["microbatch"] == 64
