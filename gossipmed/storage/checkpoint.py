"""Atomic checkpoint writes: temp file in the same directory, fsync, rename, fsync the dir.

A site that dies mid-write must find either the old checkpoint or the new one on restart,
never half of one; rename within one directory is atomic on POSIX. Files are 0600 and the
folders made for them 0700 (gossipmed.storage.files): a checkpoint is derived from patient records.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from gossipmed.errors import CheckpointError
from gossipmed.storage.atomic import atomic_write_bytes as atomic_write_bytes
from gossipmed.storage.atomic import atomic_write_json as atomic_write_json
from gossipmed.storage.files import private_dir

STATE_FILE = "state.safetensors"
META_FILE = "checkpoint.json"
CHECKPOINT_VERSION = 1


def save_state(directory: Path, state: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
    """Write a state (safetensors, never pickle) and its metadata; metadata goes last, so a
    checkpoint.json always describes a complete state file. `directory` is the site's own,
    so an existing one is tightened to 0700."""
    from safetensors.torch import save

    try:
        private_dir(directory, tighten=True)
    except OSError as exc:
        raise CheckpointError(f"cannot use {directory}: {exc.strerror or exc}") from exc
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    atomic_write_bytes(directory / STATE_FILE, save(tensors))
    atomic_write_json(directory / META_FILE, {"v": CHECKPOINT_VERSION, **meta})


def load_state(directory: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read back what save_state wrote (safetensors is safe on untrusted bytes)."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        meta = json.loads((directory / META_FILE).read_text(encoding="utf-8"))
        state = load((directory / STATE_FILE).read_bytes())
    except (OSError, json.JSONDecodeError, SafetensorError) as exc:
        raise CheckpointError(f"cannot read checkpoint in {directory}: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("v") != CHECKPOINT_VERSION:
        raise CheckpointError(f"checkpoint in {directory} has an unknown version")
    return dict(state), meta
