"""Shared fixtures. `tiny_base` is a toy base model built once per test session in a tmp dir
(seconds, not the real cached base), so tests never touch ~/.cache or the network."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

TOY_BASE_SPEC = {
    "vocab_size": 512,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_layers": 1,
    "num_heads": 2,
    "seq_len": 32,
    "steps": 30,
    "batch_size": 16,
    "max_docs": 3000,
}


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of a toy Llama base (HF folder: config, weights, tokenizer)."""
    from gossipmed.learn.base_model import BaseSpec, build_base

    out = tmp_path_factory.mktemp("base") / "tiny"
    return build_base(BaseSpec(**TOY_BASE_SPEC), out)  # type: ignore[arg-type]
