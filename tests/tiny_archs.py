"""Tiny random-init causal LMs of many architectures, saved as local Hugging Face folders.

Built from transformers config classes (nothing downloaded) with the toy base's tokenizer,
so the same data pipeline runs on every family. Seconds each; shapes are irrelevant here,
only the module structure (attention naming, fused qkv, Conv1D, embedding scaling) matters.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

SMALL = {"num_hidden_layers": 2, "num_attention_heads": 4}


def _configs() -> dict[str, Callable[..., Any]]:
    import transformers as t

    def llama_like(cls: Any, **kw: Any) -> Callable[..., Any]:
        return lambda **c: cls(
            hidden_size=32, intermediate_size=64, num_key_value_heads=2, **SMALL, **kw, **c
        )

    return {
        "llama": llama_like(t.LlamaConfig),
        "mistral": llama_like(t.MistralConfig, sliding_window=16),
        "qwen2": llama_like(t.Qwen2Config),
        "gemma": llama_like(t.GemmaConfig, head_dim=8),
        "phi3": lambda **c: t.Phi3Config(
            hidden_size=32, intermediate_size=64, num_key_value_heads=4, **SMALL, **c
        ),
        "gpt2": lambda **c: t.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=128, **c),
        "gpt_neox": lambda **c: t.GPTNeoXConfig(hidden_size=32, intermediate_size=64, **SMALL, **c),
        "opt": lambda **c: t.OPTConfig(
            hidden_size=32,
            ffn_dim=64,
            word_embed_proj_dim=32,
            max_position_embeddings=128,
            **SMALL,
            **c,
        ),
        "biogpt": lambda **c: t.BioGptConfig(
            hidden_size=32, intermediate_size=64, max_position_embeddings=128, **SMALL, **c
        ),
    }


ARCHITECTURES = tuple(_configs())


def build_tiny(arch: str, tokenizer_dir: Path, out: Path, *, seed: int = 0) -> Path:
    """Save a random-init `arch` model with the tokenizer of `tokenizer_dir` to `out`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    config = _configs()[arch](
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
