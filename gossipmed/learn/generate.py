"""Text from a trained model: the task's prompt template, then one token at a time.

A consortium trains an adapter to answer in its task's format, so a prompt is rendered the
way training rendered it (`render_prompt`, the one place that knows the template) and
decoding stops at the terminator training taught the model to emit (`</s>` or the
template's end-of-turn token). Greedy decoding is the default because an answer that
changes from one call to the next is hard to check; sampling is opt-in and reproducible
from its seed (this randomness protects nothing, so a seed is fine here).

No KV cache: every step runs the whole sequence again. That keeps one code path for every
adapter kind (prompt tuning prepends its virtual tokens inside the forward) and costs
little at the lengths answers have; `MAX_NEW_TOKENS` bounds it.

Loading: a PEFT folder (what `train --out`, `simulate` and the daemon save) on its base, a
full-model folder (adapter kind `full`), or a checkpointed state rebuilt exactly as
training built it (`model_from_state`: the same adapter config, so FFA-LoRA's frozen A
comes back from the consortium's shared seed).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gossipmed.errors import ConfigError, ModelError
from gossipmed.learn.config import ComputeConfig, DataConfig, LearningConfig
from gossipmed.learn.data import Encoder
from gossipmed.learn.datasets import Example
from gossipmed.learn.decoding import Decoding

END_OF_TURN_TOKENS = ("<|eot_id|>", "<|im_end|>", "<end_of_turn>", "<|end|>")
"""End-of-turn tokens of common chat templates; each stops decoding when the tokenizer has it."""
PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"


@dataclass(frozen=True)
class Generation:
    prompt_ids: tuple[int, ...]
    new_ids: tuple[int, ...]  # the generated tokens, the terminator included when reached
    text: str  # the new tokens decoded, without the terminator
    stopped: str  # "terminator", "max_new_tokens" or "context" (the model's window is full)
    seed: int | None  # the seed a sampled run used (None: greedy)
    seconds: float


def render_prompt(encoder: Encoder, prompt: str, *, reserve: int | None = None) -> list[int]:
    """The task's template around the user's text, token for token as training renders a
    prompt (BOS, the text, the template's tail that the answer follows). An encoder that
    renders chat-template prompts for generation (`render_prompt`) is asked to leave
    `reserve` tokens of its max_length for the answer."""
    example = Example(text=prompt, label=None)
    render = getattr(encoder, "render_prompt", None)
    if callable(render):
        return list(render(example, reserve=reserve))
    return list(encoder.prompt_ids(example))


def task_encoder(tokenizer: Any, data: DataConfig) -> Encoder:
    """The encoder training builds for this task (its dataset gives the template's label
    prefix and the prompt budget)."""
    from gossipmed.learn.datasets import load_dataset

    return Encoder(tokenizer, dataset=load_dataset(data), max_length=data.max_length)


def stop_token_ids(tokenizer: Any, encoder: Encoder | None = None) -> frozenset[int]:
    """EOS, the end-of-turn tokens the tokenizer knows, and the task's own terminators."""
    ids = {int(tokenizer.eos_token_id)}
    ids.update(int(t) for t in getattr(encoder, "response_terminator_ids", ()))
    vocab = tokenizer.get_vocab() if callable(getattr(tokenizer, "get_vocab", None)) else {}
    ids.update(int(vocab[t]) for t in END_OF_TURN_TOKENS if t in vocab)
    return frozenset(ids)


def context_window(module: nn.Module) -> int | None:
    """Token positions the model can attend over, less prompt tuning's virtual tokens."""
    config = getattr(module, "config", None)
    limit = getattr(config, "max_position_embeddings", None)
    if not isinstance(limit, int):
        return None
    peft = getattr(module, "active_peft_config", None)
    if bool(getattr(peft, "is_prompt_learning", False)):
        limit -= int(getattr(peft, "num_virtual_tokens", 0) or 0)
    return limit


def _next_logits(module: nn.Module, ids: list[int], device: torch.device) -> torch.Tensor:
    x = torch.tensor([ids], dtype=torch.long, device=device)
    logits: torch.Tensor = module(input_ids=x).logits[0, -1]
    return logits.float().cpu()


def _sample(logits: torch.Tensor, decoding: Decoding, generator: torch.Generator) -> int:
    probs = torch.softmax(logits / decoding.temperature, dim=-1)
    if decoding.top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True, stable=True)
        before = torch.cumsum(sorted_p, dim=0) - sorted_p  # mass of the tokens ranked above
        sorted_p[before >= decoding.top_p] = 0.0  # the smallest set reaching top_p stays
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_p)
    return int(torch.multinomial(probs, 1, generator=generator))


@torch.no_grad()
def generate_ids(
    module: nn.Module,
    prompt_ids: Sequence[int],
    *,
    decoding: Decoding,
    stop_ids: Collection[int],
    device: torch.device | str = "cpu",
) -> tuple[list[int], str, int | None]:
    """(new token ids, why it stopped, the sampling seed used or None)."""
    if not prompt_ids:
        raise ConfigError("the prompt renders to no tokens")
    device = torch.device(device)
    window = context_window(module)
    if window is not None and len(prompt_ids) >= window:
        raise ConfigError(
            f"the prompt is {len(prompt_ids)} tokens; this model reads at most {window}"
        )
    budget = decoding.max_new_tokens
    if window is not None:
        budget = min(budget, window - len(prompt_ids))
    seed = None
    generator = None
    if decoding.sample:
        seed = decoding.seed if decoding.seed is not None else _fresh_seed()
        generator = torch.Generator().manual_seed(seed)
    ids, new = list(prompt_ids), []
    module.eval()
    for _ in range(budget):
        logits = _next_logits(module, ids, device)
        token = (
            _sample(logits, decoding, generator)
            if generator is not None
            else int(torch.argmax(logits))
        )
        new.append(token)
        ids.append(token)
        if token in stop_ids:
            return new, "terminator", seed
    stopped = "max_new_tokens" if budget == decoding.max_new_tokens else "context"
    return new, stopped, seed


def _fresh_seed() -> int:
    return int.from_bytes(os.urandom(8), "big") >> 1


def generate(
    module: nn.Module,
    tokenizer: Any,
    prompt_ids: Sequence[int],
    *,
    decoding: Decoding,
    device: torch.device | str = "cpu",
    encoder: Encoder | None = None,
) -> Generation:
    start = time.perf_counter()
    stops = stop_token_ids(tokenizer, encoder)
    new, stopped, seed = generate_ids(
        module, prompt_ids, decoding=decoding, stop_ids=stops, device=device
    )
    body = new[:-1] if stopped == "terminator" else new
    text = tokenizer.decode(body, skip_special_tokens=True)
    return Generation(
        prompt_ids=tuple(prompt_ids),
        new_ids=tuple(new),
        text=text,
        stopped=stopped,
        seed=seed,
        seconds=time.perf_counter() - start,
    )


# --- loading ------------------------------------------------------------------------------


@dataclass
class LoadedModel:
    module: nn.Module
    tokenizer: Any
    device: torch.device
    kind: str  # the adapter kind: lora (ffa_lora loads as lora: A is in the file), prompt, full


def model_from_state(
    config: LearningConfig, state: Mapping[str, torch.Tensor], *, progress: bool = False
) -> LoadedModel:
    """The model training built from `config` (base, adapter kind, shared seed, device and
    dtype), holding `state` (a checkpoint's trainable tensors)."""
    from gossipmed.learn.train import load_shared_model

    model = load_shared_model(config, progress=progress)
    model.load_state(state)
    return LoadedModel(
        module=model.module,
        tokenizer=model.tokenizer,
        device=model.device,
        kind=config.adapter.kind,
    )


def _peft_kind(folder: Path) -> str:
    try:
        doc = json.loads((folder / PEFT_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read {folder / PEFT_CONFIG}: {exc}") from exc
    peft_type = doc.get("peft_type") if isinstance(doc, dict) else None
    kinds = {"LORA": "lora", "PROMPT_TUNING": "prompt"}
    if peft_type not in kinds:
        raise ModelError(f"{folder}: unsupported adapter type {peft_type!r} (lora, prompt tuning)")
    return kinds[peft_type]


def base_of_adapter(folder: Path) -> Path | None:
    """The local base folder a PEFT adapter was saved from, when it still exists."""
    try:
        doc = json.loads((folder / PEFT_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    name = doc.get("base_model_name_or_path") if isinstance(doc, dict) else None
    if isinstance(name, str) and name and (Path(name) / "config.json").is_file():
        return Path(name)
    return None


def _load_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load a tokenizer from {path}: {exc}") from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.bos_token_id is None:
        tokenizer.bos_token = tokenizer.eos_token
    return tokenizer


def load_model_folder(folder: Path, *, base: Path, compute: ComputeConfig) -> LoadedModel:
    """A PEFT adapter folder on `base`, or a full-model folder (its own weights, the
    tokenizer from the folder when it has one, else from `base`). Weights load from
    safetensors only, never from pickles."""
    from gossipmed.learn.compute import resolve_device, torch_dtype
    from gossipmed.learn.model import load_base_model

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not folder.is_dir():
        raise ModelError(f"{folder} is not a folder (give the adapter folder a run saved)")
    device = resolve_device(compute.device)
    dtype = torch_dtype(compute.base_dtype)
    if (folder / PEFT_CONFIG).is_file():
        kind = _peft_kind(folder)
        if not (folder / PEFT_WEIGHTS).is_file():
            raise ModelError(f"{folder} has no {PEFT_WEIGHTS} (pickled adapters are refused)")
        from peft import PeftModel

        from gossipmed.learn.hf_quiet import peft_wrapping

        module, tokenizer = load_base_model(base, dtype=dtype)
        try:
            with peft_wrapping():
                module = PeftModel.from_pretrained(module, str(folder), is_trainable=False)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise ModelError(f"cannot load the adapter in {folder} on {base}: {exc}") from exc
        for p in module.parameters():  # peft casts the adapter to the base's dtype
            if p.dtype != dtype and p.is_floating_point():
                p.data = p.data.to(dtype)
    elif (folder / "config.json").is_file():
        kind = "full"
        has_tokenizer = any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer.model"))
        if has_tokenizer:
            module, tokenizer = load_base_model(folder, dtype=dtype)
        else:
            from transformers import AutoModelForCausalLM

            from gossipmed.learn.weights_check import checked_config

            config = checked_config(folder)
            try:
                module = AutoModelForCausalLM.from_pretrained(
                    folder,
                    config=config,
                    local_files_only=True,
                    use_safetensors=True,
                    attn_implementation="eager",
                    dtype=dtype,
                )
            except (OSError, ValueError, KeyError) as exc:
                raise ModelError(f"cannot load the model in {folder}: {exc}") from exc
            tokenizer = _load_tokenizer(base)
    else:
        raise ModelError(
            f"{folder} is neither an adapter folder ({PEFT_CONFIG}) nor a model folder "
            "(config.json)"
        )
    module.to(device)
    module.eval()
    return LoadedModel(module=module, tokenizer=tokenizer, device=device, kind=kind)
