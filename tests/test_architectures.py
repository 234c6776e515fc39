"""Any causal-LM family: LoRA attaches to the right projections by default, per-sample
gradients are exact, the saved adapter reloads with PEFT, and the state crosses an envelope."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from tiny_archs import ARCHITECTURES, build_tiny

from gossipmed.errors import ModelError
from gossipmed.learn.config import AdapterConfig
from gossipmed.learn.model import AdapterModel
from node.cli import main

EXPECTED_TARGETS = {
    "llama": ("q_proj", "v_proj"),
    "mistral": ("q_proj", "v_proj"),
    "qwen2": ("q_proj", "v_proj"),
    "gemma": ("q_proj", "v_proj"),
    "phi3": ("qkv_proj",),  # fused, no peft default: found by the scan
    "gpt2": ("c_attn",),  # Conv1D
    "gpt_neox": ("query_key_value",),
    "opt": ("q_proj", "v_proj"),
    "biogpt": ("q_proj", "v_proj"),  # no peft default: found by the scan
}


@pytest.fixture(scope="module")
def arch_dirs(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("archs")
    return {a: build_tiny(a, tiny_base, root / a) for a in ARCHITECTURES}


def _perturbed(path: Path, kind: str = "lora") -> AdapterModel:
    model = AdapterModel.from_pretrained(path, AdapterConfig(kind=kind, rank=4))  # type: ignore[arg-type]
    g = torch.Generator().manual_seed(1)  # off the init: LoRA B = 0 would hide A's gradient
    state = model.read_state()
    model.load_state({k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in state.items()})
    return model


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 500, (5, 12), generator=g)
    mask = torch.zeros(5, 12)
    mask[:, 6:] = 1.0
    mask[2, 9:] = 0.0  # ragged targets
    return ids, mask


def test_every_family_is_covered() -> None:
    assert set(ARCHITECTURES) == set(EXPECTED_TARGETS)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_lora_attaches_by_default_and_per_sample_grads_are_exact(
    arch_dirs: dict[str, Path], arch: str
) -> None:
    model = _perturbed(arch_dirs[arch])
    assert model.target_modules == EXPECTED_TARGETS[arch]
    assert model.names and all(".lora_" in n for n in model.names)
    ids, mask = _batch()
    grads, losses = model.per_sample_grads(ids, mask, microbatch=2)
    for i in range(ids.shape[0]):
        loop, loss = model.mean_grad(ids[i : i + 1], mask[i : i + 1])
        assert losses[i].item() == pytest.approx(loss, rel=1e-4)
        for name in model.names:
            torch.testing.assert_close(grads[name][i], loop[name], rtol=1e-4, atol=1e-6)
    assert all(grads[n].abs().sum() > 0 for n in model.names)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_saved_adapter_reloads_with_peft_to_identical_logits(
    arch_dirs: dict[str, Path], arch: str, tmp_path: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = _perturbed(arch_dirs[arch])
    ids, _ = _batch()
    with torch.no_grad():
        ours = model.module(input_ids=ids).logits
    model.save(tmp_path / "adapter")
    base = AutoModelForCausalLM.from_pretrained(arch_dirs[arch], local_files_only=True)
    loaded = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    with torch.no_grad():
        theirs = loaded(input_ids=ids).logits
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_adapter_state_crosses_a_real_envelope(arch_dirs: dict[str, Path], arch: str) -> None:
    from gossipmed.consortium.crypto import derive_identity
    from gossipmed.consortium.member import Member
    from gossipmed.consortium.roster import Roster
    from gossipmed.wire.envelope import EnvelopeSealer

    ids = {n: derive_identity(b"architecture-test-secret-0123", n) for n in ("a", "b")}
    roster = Roster(
        members=tuple(
            Member(name=n, peer_id=i.peer_id, sign_key=i.sign_key, box_key=i.box_key)
            for n, i in ids.items()
        ),
        edges=(("a", "b"),),
    )
    a = EnvelopeSealer(identity=ids["a"], roster=roster)
    b = EnvelopeSealer(identity=ids["b"], roster=roster)
    model = _perturbed(arch_dirs[arch])
    state = model.read_state()
    sealed = a.seal_many(update_tensors=state, round=1, step=0, recipients=["b"], epsilon=0)
    update = b.open(sealed["b"], expected_schema=model.schema())
    assert update.tensors.keys() == state.keys()
    assert all(torch.equal(update.tensors[k], state[k]) for k in state)


@pytest.mark.parametrize("arch", ["gpt2", "phi3"])
def test_ffa_lora_freezes_a_on_fused_projections_too(arch_dirs: dict[str, Path], arch: str) -> None:
    model = AdapterModel.from_pretrained(arch_dirs[arch], AdapterConfig(kind="ffa_lora", rank=4))
    assert model.names and all(".lora_B." in n for n in model.names)


def test_explicit_targets_override_the_default_and_unknown_ones_are_named(
    arch_dirs: dict[str, Path],
) -> None:
    mlp = AdapterModel.from_pretrained(
        arch_dirs["gpt2"], AdapterConfig(kind="lora", rank=2, target_modules=("c_fc",))
    )
    assert mlp.target_modules == ("c_fc",)
    assert all(".c_fc." in n for n in mlp.names)
    with pytest.raises(ModelError, match=r"\['q_proj'\] not found.*c_attn"):
        AdapterModel.from_pretrained(
            arch_dirs["gpt2"], AdapterConfig(kind="lora", target_modules=("q_proj",))
        )


@pytest.mark.slow
def test_train_cli_runs_gpt2_without_extra_flags_and_takes_target_modules(
    arch_dirs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["train", "--dataset", "notes", "--epsilon", "8", "--steps", "2", "--sites", "2"]
    argv += ["--eval-size", "6", "--max-train", "40", "--batch-size", "8", "--json"]
    argv += ["--base-model", str(arch_dirs["gpt2"])]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["target_modules"] == ["c_attn"] and out["device"] == "cpu"
    assert main([*argv, "--target-modules", "c_attn,c_proj", "--microbatch", "3"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["target_modules"] == ["c_attn", "c_proj"] and out["microbatch"] == 3
    assert main([*argv, "--target-modules", "q_proj"]) == 2
    errors = [ln for ln in capsys.readouterr().err.splitlines() if "error" in ln]
    assert len(errors) == 1 and "q_proj" in errors[0] and "c_attn" in errors[0]


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2"])
def test_train_cli_dp_on_icd10_needs_no_model_flags(
    arch_dirs: dict[str, Path], arch: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # issue #14's must-show, `gossipmed train --base-model DIR --dataset icd10 --epsilon 8
    # --steps 5`, on tiny folders of the three families; only the data is cut down for speed
    argv = ["train", "--base-model", str(arch_dirs[arch]), "--dataset", "icd10"]
    argv += ["--epsilon", "8", "--steps", "5", "--max-train", "400", "--eval-size", "21"]
    argv += ["--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["target_modules"] == list(EXPECTED_TARGETS[arch])
    assert out["steps"] == 5 and out["device"] == "cpu" and out["base_dtype"] == "float32"
    assert 0 < out["epsilon"] <= 8.0 and out["microbatch"] >= 1
    assert all(math.isfinite(out[k]) for k in ("loss_before", "loss_after"))
