"""A base model loads only when its safetensors weights are exactly the parameters its
config.json describes: the shapes are compared on the meta device, from the headers alone,
before anything is allocated; a missing or misshapen weight is a one-line ModelError (exit 2),
never a silently random one. Tied weights (an LM head tied to the embeddings) and sharded
checkpoints are fine; a folder of pickled .bin weights only is refused (unverifiable)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_archs import ARCHITECTURES, build_tiny

from gossipmed.errors import ModelError
from gossipmed.learn.model import load_base_model
from gossipmed.learn.weights_check import (
    MAX_HEADER_BYTES,
    SAFETENSORS,
    SAFETENSORS_INDEX,
    check_weights,
    checkpoint_shapes,
)
from node.cli import main

MODEL_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", SAFETENSORS)


def copy_model(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for name in MODEL_FILES:
        shutil.copy(src / name, dst / name)
    return dst


def edit_config(folder: Path, **changes: object) -> None:
    path = folder / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def config_of(folder: Path) -> object:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(folder, local_files_only=True)


def test_a_config_of_4000_layers_with_weights_for_one_is_a_one_line_error_exit_2(
    tiny_base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = copy_model(tiny_base, tmp_path / "deep")
    edit_config(folder, num_hidden_layers=4000)
    with pytest.raises(ModelError, match="4000 layers") as info:
        load_base_model(folder)
    assert "\n" not in str(info.value)
    argv = ["train", "--dataset", "notes", "--steps", "1", "--base-model", str(folder), "--json"]
    assert main(argv) == 2
    errors = [ln for ln in capsys.readouterr().err.splitlines() if "error" in ln]
    assert len(errors) == 1 and "4000 layers" in errors[0]


def test_one_layer_more_than_the_weights_hold_is_named_missing(
    tiny_base: Path, tmp_path: Path
) -> None:
    folder = copy_model(tiny_base, tmp_path / "three")
    edit_config(folder, num_hidden_layers=3)
    with pytest.raises(ModelError, match=r"lacks \d+ of the \d+ weights.*layers\.1\."):
        load_base_model(folder)


def test_a_tied_lm_head_is_not_missing(tiny_base: Path) -> None:
    assert json.loads((tiny_base / "config.json").read_text())["tie_word_embeddings"]
    assert not any(k.startswith("lm_head") for k in checkpoint_shapes(tiny_base))
    model, _ = load_base_model(tiny_base)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_family_passes_whole_and_fails_with_one_weight_gone_or_reshaped(
    arch: str, tiny_base: Path, tmp_path: Path
) -> None:
    folder = build_tiny(arch, tiny_base, tmp_path / arch)
    check_weights(folder, config=config_of(folder))
    weights = load_file(folder / SAFETENSORS)
    layer_keys = sorted(k for k in weights if ".1." in k and k.endswith("weight"))
    victim = layer_keys[-1]

    reshaped = dict(weights)
    reshaped[victim] = torch.zeros(*weights[victim].shape[:-1], weights[victim].shape[-1] + 1)
    save_file(reshaped, folder / SAFETENSORS, metadata={"format": "pt"})
    with pytest.raises(ModelError, match=rf"weight {victim} has shape"):
        check_weights(folder, config=config_of(folder))

    del reshaped[victim]
    save_file(reshaped, folder / SAFETENSORS, metadata={"format": "pt"})
    with pytest.raises(ModelError, match=r"lacks 1 of the"):
        check_weights(folder, config=config_of(folder))


def test_a_sharded_checkpoint_is_checked_shard_by_shard(tiny_base: Path, tmp_path: Path) -> None:
    model, _ = load_base_model(tiny_base)
    folder = tmp_path / "sharded"
    model.save_pretrained(folder, max_shard_size="20KB")
    index = json.loads((folder / SAFETENSORS_INDEX).read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and not (folder / SAFETENSORS).exists()
    check_weights(folder, config=config_of(folder))
    last = folder / shards[-1]
    kept = dict(list(load_file(last).items())[1:])
    save_file(kept, last, metadata={"format": "pt"})
    with pytest.raises(ModelError, match="lacks 1 of the"):
        check_weights(folder, config=config_of(folder))


def test_pickled_weights_alone_are_refused_unread(tiny_base: Path, tmp_path: Path) -> None:
    folder = copy_model(tiny_base, tmp_path / "pickled")
    (folder / SAFETENSORS).unlink()
    torch.save({"model.embed_tokens.weight": torch.zeros(1)}, folder / "pytorch_model.bin")
    with pytest.raises(ModelError, match=r"pickled \.bin weights only"):
        load_base_model(folder)


def test_hostile_headers_are_refused_before_allocation(tiny_base: Path, tmp_path: Path) -> None:
    folder = copy_model(tiny_base, tmp_path / "hostile")
    weights = folder / SAFETENSORS
    weights.write_bytes((MAX_HEADER_BYTES + 1).to_bytes(8, "little") + b"{}")
    with pytest.raises(ModelError, match="header of"):
        load_base_model(folder)
    header = json.dumps({"w": {"dtype": "F32", "shape": [1 << 40], "data_offsets": [0, 4]}})
    weights.write_bytes(len(header).to_bytes(8, "little") + header.encode() + b"\0" * 4)
    with pytest.raises(ModelError, match="outside its data"):
        load_base_model(folder)
    weights.unlink()
    os.mkfifo(weights)
    with pytest.raises(ModelError, match="not a regular file"):
        load_base_model(folder)
