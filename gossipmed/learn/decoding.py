"""How `gossipmed generate` chooses tokens: a frozen, validated config (no torch here, so the
command line can show its defaults without loading a model)."""

from __future__ import annotations

from dataclasses import dataclass

from gossipmed.errors import ConfigError

DEFAULT_MAX_NEW_TOKENS = 64
MAX_NEW_TOKENS = 1024
"""Hard cap: without a cache each step re-reads the sequence, so cost grows quadratically."""


@dataclass(frozen=True)
class Decoding:
    """How tokens are chosen. Greedy unless `sample`; a sampled run repeats given `seed`."""

    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    sample: bool = False
    seed: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if type(self.max_new_tokens) is not int or not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS:
            raise ConfigError(f"max_new_tokens must be in 1..{MAX_NEW_TOKENS}")
        if not (isinstance(self.temperature, int | float) and 0 < self.temperature <= 100):
            raise ConfigError("temperature must be in (0, 100]")
        if not (isinstance(self.top_p, int | float) and 0 < self.top_p <= 1):
            raise ConfigError("top_p must be in (0, 1]")
        if self.seed is not None and (type(self.seed) is not int or not 0 <= self.seed < 2**63):
            raise ConfigError("seed must be an integer in [0, 2^63)")
        if not self.sample and (
            self.seed is not None or self.temperature != 1.0 or self.top_p != 1.0
        ):
            raise ConfigError("seed, temperature and top_p apply only when sampling (--sample)")
