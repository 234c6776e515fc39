"""Where the shared base runs, in which precision, and how many examples go through at once.

A hospital's model may be 0.1-8B parameters on a GPU server or a laptop CPU. The logical
(Poisson) batch is fixed by the privacy analysis; the micro-batch is only how many of its
examples share one forward/backward pass, so it is free to follow the memory at hand. The
automatic size comes from the base's shape: an estimate of the activations one example
keeps for backward, against a fixed budget (CPU) or a share of the free GPU memory.
"""

from __future__ import annotations

from typing import Any

import torch

from gossipmed.errors import ConfigError
from gossipmed.learn.config import AUTO

# Activations of one micro-batch may take about this much on a CPU host (the base's weights
# come on top): the SmolLM-135M shape then gets micro-batch 8 and peaks under 3 GB RSS at
# logical batch 128, private or not (docs/benchmarks/foundation-models.md).
CPU_ACTIVATION_BUDGET = 2 << 30
# On a GPU, this share of the memory left free once the base is loaded.
GPU_ACTIVATION_SHARE = 0.25
MAX_AUTO_MICROBATCH = 64


def resolve_device(spec: str) -> torch.device:
    """`auto`, `cpu`, `cuda`, `cuda:N` or `mps` -> a device that exists here, or ConfigError."""
    if spec == AUTO:
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ConfigError("compute.device is mps, but this machine has no usable MPS device")
        return torch.device("mps")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            built = torch.version.cuda or "no CUDA"
            raise ConfigError(
                f"compute.device is {spec}, but this machine has no usable CUDA device "
                f"(torch {torch.__version__}, built with {built}); use --device cpu"
            )
        index = int(spec.split(":", 1)[1]) if ":" in spec else 0
        count = torch.cuda.device_count()
        if index >= count:
            raise ConfigError(f"compute.device is {spec}, but only {count} CUDA device(s) exist")
        return torch.device("cuda", index)
    raise ConfigError(f"unknown compute.device {spec!r}")


def torch_dtype(name: str) -> torch.dtype:
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in dtypes:
        raise ConfigError(f"unknown compute.base_dtype {name!r}")
    return dtypes[name]


def _config_int(config: Any, *names: str) -> int | None:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def activation_bytes_per_example(config: Any, *, seq_len: int, dtype: torch.dtype) -> int:
    """Rough bytes one example keeps for backward through a decoder of this shape, in a
    per-sample-gradient (vmap) step, the hungrier of the two kinds (about twice a plain
    backward's).

    Per token and layer: ~27 hidden-sized tensors, 7 MLP-sized ones and 7 rows of attention
    probabilities per head (eager attention). Fitted to measured peak RSS of DP steps on the
    SmolLM-135M (~0.23 GB per example at 64 tokens) and Qwen2-0.5B shapes
    (docs/benchmarks/foundation-models.md); an estimate, not a bound."""
    hidden = _config_int(config, "hidden_size", "n_embd", "d_model") or 1024
    layers = _config_int(config, "num_hidden_layers", "n_layer", "num_layers") or 24
    heads = _config_int(config, "num_attention_heads", "n_head") or max(1, hidden // 64)
    inner = _config_int(config, "intermediate_size", "n_inner", "ffn_dim") or 4 * hidden
    per_token_layer = 27 * hidden + 7 * inner + 7 * heads * seq_len
    width = max(torch.finfo(dtype).bits // 8, 2)
    return int(per_token_layer * seq_len * layers * width)


# The target-position logits of one example in a per-sample step: the logits in the base's
# dtype, their float32 copy, the float32 log-softmax, and the gradient flowing back.
LOGIT_COPIES = 4


def response_logit_bytes(config: Any, *, response_tokens: int) -> int:
    """Bytes the vocabulary projection at the target positions keeps for one example.

    Negligible for a label (a few tokens), but a free-text response of a few hundred tokens
    against a 50-150k vocabulary holds more than the decoder's activations."""
    vocab = _config_int(config, "vocab_size", "n_vocab") or 32000
    return int(LOGIT_COPIES * max(0, response_tokens) * vocab * 4)


def activation_budget(device: torch.device) -> int:
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free * GPU_ACTIVATION_SHARE)
    return CPU_ACTIVATION_BUDGET


def auto_microbatch(
    config: Any,
    *,
    seq_len: int,
    dtype: torch.dtype,
    device: torch.device,
    response_tokens: int = 0,
) -> int:
    """The largest power of two (1..64) whose estimated activations, plus the logits at
    `response_tokens` target positions, fit the budget."""
    per_example = max(
        1,
        activation_bytes_per_example(config, seq_len=seq_len, dtype=dtype)
        + response_logit_bytes(config, response_tokens=response_tokens),
    )
    fits = max(1, activation_budget(device) // per_example)
    size = 1
    while size * 2 <= min(fits, MAX_AUTO_MICROBATCH):
        size *= 2
    return size
