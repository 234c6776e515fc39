"""A base model folder's weights must be the ones its config describes, checked before loading.

`from_pretrained` fills any weight the checkpoint lacks with random values and only logs it,
so a config.json describing 4,000 layers next to weights for one built a model that was
random almost everywhere, then died in the allocator. Here the model is built on the meta
device (shapes only, no memory) and its parameters are compared with the safetensors
headers (the 8-byte length and the JSON that follows; no tensor data is read), before
anything is allocated. Missing or mismatched weights are a one-line ModelError.

Only parameters are required, matched by transformers' own load-time renaming: parameters
tied to another (an LM head tied to the embeddings) are present when any of their names is;
buffers (rotary tables, attention masks) are rebuilt from the config, and a checkpoint that
stores them anyway, or holds other extra tensors, is accepted as transformers accepts it.

Only safetensors can be checked this way: a .bin checkpoint is a pickle whose shapes are
known only after unpickling (and allocating) it, so a folder with .bin weights only is
refused; `transformers` would load it with weights_only, but unchecked.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from gossipmed.errors import ModelError

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
MAX_HEADER_BYTES = 16 * 1024 * 1024  # JSON of one file's tensor table (real ones: ~100 KB)
MAX_INDEX_BYTES = 16 * 1024 * 1024
MAX_SHARDS = 4096
_SHARD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}\.safetensors")
_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip

Shape = tuple[int, ...]


def _read_bounded(path: Path, *, offset: int, size: int, what: str) -> bytes:
    """`size` bytes at `offset` of a regular file (O_NONBLOCK: a FIFO cannot hang us)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ModelError(f"cannot open {what} {path}: {exc.strerror}") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ModelError(f"{what} {path} is not a regular file")
        if offset + size > st.st_size:
            raise ModelError(f"{what} {path} is truncated")
        data = os.pread(fd, size, offset)
    finally:
        os.close(fd)
    if len(data) != size:
        raise ModelError(f"{what} {path} is truncated")
    return data


def file_size(path: Path) -> int:
    return os.stat(path).st_size


def safetensors_header(path: Path) -> dict[str, Shape]:
    """name -> shape from one .safetensors file's header, each entry checked to fit the file."""
    size = int.from_bytes(_read_bounded(path, offset=0, size=8, what="weights file"), "little")
    if size > MAX_HEADER_BYTES:
        raise ModelError(f"weights file {path}: header of {size} bytes (limit {MAX_HEADER_BYTES})")
    raw = _read_bounded(path, offset=8, size=size, what="weights file")
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"weights file {path}: header is not JSON") from exc
    if not isinstance(doc, dict):
        raise ModelError(f"weights file {path}: header is not a JSON object")
    data_bytes = file_size(path) - 8 - size
    out: dict[str, Shape] = {}
    for name, entry in doc.items():
        if name == "__metadata__":
            continue
        out[name] = _entry_shape(entry, name=name, path=path, data_bytes=data_bytes)
    return out


def _entry_shape(entry: object, *, name: str, path: Path, data_bytes: int) -> Shape:
    bad = ModelError(f"weights file {path}: tensor {name[:80]!r} has an invalid header entry")
    if not isinstance(entry, dict):
        raise bad
    shape, offsets, dtype = entry.get("shape"), entry.get("data_offsets"), entry.get("dtype")
    if (
        not isinstance(shape, list)
        or not all(type(d) is int and d >= 0 for d in shape)
        or not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(type(o) is int for o in offsets)
        or dtype not in _DTYPE_BYTES
    ):
        raise bad
    start, end = offsets
    if not 0 <= start <= end <= data_bytes or end - start != math.prod(shape) * _DTYPE_BYTES[dtype]:
        raise ModelError(f"weights file {path}: tensor {name[:80]!r} lies outside its data")
    return tuple(shape)


def checkpoint_shapes(folder: Path) -> dict[str, Shape]:
    """Every tensor the folder's safetensors checkpoint holds (one file or an index of shards)."""
    single, index = folder / SAFETENSORS, folder / SAFETENSORS_INDEX
    if index.exists():
        return _sharded_shapes(folder, index)
    if single.exists():
        return safetensors_header(single)
    if any(folder.glob("*.bin")):
        raise ModelError(
            f"{folder} has pickled .bin weights only: their shapes cannot be checked against "
            "config.json before they are unpickled; convert them to model.safetensors"
        )
    raise ModelError(f"{folder} has no {SAFETENSORS} or {SAFETENSORS_INDEX}")


def _sharded_shapes(folder: Path, index: Path) -> dict[str, Shape]:
    raw = _read_bounded(
        index, offset=0, size=min(file_size(index), MAX_INDEX_BYTES + 1), what="index"
    )
    if len(raw) > MAX_INDEX_BYTES:
        raise ModelError(f"{index} is larger than {MAX_INDEX_BYTES} bytes")
    try:
        weight_map = json.loads(raw).get("weight_map")
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError) as exc:
        raise ModelError(f"{index} is not a safetensors index") from exc
    if not isinstance(weight_map, dict):
        raise ModelError(f"{index} has no weight_map")
    shards = set(weight_map.values())
    if len(shards) > MAX_SHARDS or not all(
        isinstance(s, str) and _SHARD_NAME.fullmatch(s) for s in shards
    ):
        raise ModelError(f"{index} names invalid shard files")
    out: dict[str, Shape] = {}
    for shard in sorted(shards):
        out.update(safetensors_header(folder / shard))
    return out


def expected_shapes(model: Any) -> tuple[list[tuple[str, ...]], dict[str, Shape]]:
    """The model's parameters as groups of names that share one tensor (tied weights: any one
    name in the checkpoint provides the group), and each name's shape."""
    groups: dict[int, list[str]] = {}
    shapes: dict[str, Shape] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(name)
        shapes[name] = tuple(p.shape)
    return [tuple(g) for g in groups.values()], shapes


def _renamer(model: Any) -> Callable[[str], tuple[str, bool]]:
    """checkpoint key -> (the model's name for it, whether it maps 1:1 so shapes compare),
    by transformers' own load-time renaming (legacy names such as GPT-NeoX's `embed_out`,
    the base-model prefix); only the prefix where that machinery is absent."""
    prefix = str(getattr(model, "base_model_prefix", "") or "")
    meta = dict.fromkeys(model.state_dict())
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import (
            WeightConverter,
            WeightRenaming,
            rename_source_key,
        )
    except ImportError:  # pragma: no cover - an older transformers

        def by_prefix(key: str) -> tuple[str, bool]:
            if prefix and key not in meta and f"{prefix}.{key}" in meta:
                return f"{prefix}.{key}", True
            if prefix and key.startswith(prefix + ".") and key not in meta:
                return key[len(prefix) + 1 :], True
            return key, True

        return by_prefix
    transforms = get_model_conversion_mapping(model)
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]

    def rename(key: str) -> tuple[str, bool]:
        name, converted = rename_source_key(
            key, renamings, converters, base_model_prefix=prefix, meta_state_dict=meta
        )
        return name, converted is None  # a converter may merge or split tensors

    return rename


def compare(
    model: Any, found: Mapping[str, Shape], *, folder: Path, ignore: tuple[str, ...] = ()
) -> None:
    """ModelError naming the first weights that are missing or shaped differently."""
    rename = _renamer(model)
    present: dict[str, tuple[str, Shape | None]] = {}
    for stored, stored_shape in found.items():
        name, one_to_one = rename(stored)
        present[name] = (stored, stored_shape if one_to_one else None)
    groups, shapes = expected_shapes(model)
    missing: list[str] = []
    for group in groups:
        hits = [n for n in group if n in present]
        if not hits:
            if not any(re.search(pat, n) for n in group for pat in ignore):
                missing.append(group[0])
            continue
        key, shape = present[hits[0]]
        if shape is not None and shape != shapes[hits[0]]:
            raise ModelError(
                f"{folder}: weight {key} has shape {list(shape)} in the checkpoint but "
                f"{list(shapes[hits[0]])} in config.json"
            )
    if missing:
        raise ModelError(
            f"{folder}: the checkpoint lacks {len(missing)} of the {len(groups)} weights "
            f"config.json describes (first: {', '.join(missing[:3])}); they would be random"
        )


def check_weights(folder: Path, *, config: Any) -> None:
    """Build `config`'s causal LM on the meta device and compare it with the checkpoint."""
    import torch
    from transformers import AutoModelForCausalLM

    found = checkpoint_shapes(folder)
    layers = getattr(config, "num_hidden_layers", None)
    if isinstance(layers, int) and layers > len(found):  # each layer has at least one weight
        raise ModelError(
            f"{folder}: config.json describes {layers} layers but the checkpoint holds only "
            f"{len(found)} tensors"
        )
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    except (ValueError, TypeError, KeyError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelError(f"cannot build the model config.json describes: {first[:200]}") from exc
    ignore = tuple(getattr(model, "_keys_to_ignore_on_load_missing", None) or ())
    compare(model, found, folder=folder, ignore=ignore)


def checked_config(folder: Path) -> Any:
    """The folder's config, once its checkpoint is known to hold exactly its weights."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelError(f"cannot read {folder / 'config.json'}: {first[:200]}") from exc
    check_weights(folder, config=config)
    return config
