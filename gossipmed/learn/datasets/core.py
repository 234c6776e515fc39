"""Dataset types, the loader registry and the helpers every source shares."""

from __future__ import annotations

import functools
import hashlib
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from gossipmed.errors import DataError
from gossipmed.learn.config import DataConfig


@dataclass(frozen=True)
class Example:
    """One JSONL record: the privacy unit (DP protects the presence of one example).

    Label tasks and plain text use `text` and `label` exactly as before. Instruction and QA
    records keep the user content in `text` and add what follows:
      - `response`: the free-text answer (prompt/response records, the last assistant turn
        of a chat record);
      - `messages`: a chat record's (role, content) turns before that last assistant turn
        (`text` is then the last user turn's content);
      - `options` and `label`: multiple choice, (key, option text) pairs in display order,
        with `label` the correct key;
      - `skew`: the key a Dirichlet partition skews on when it is not the answer (an ICD
        chapter or HPO branch), so a site's share depends on the topic, not on the answer.
    """

    text: str
    label: str | None  # None for plain (unlabelled) text and free-text responses
    site: str | None = None  # natural site (hospital) when the source has one
    response: str | None = None
    messages: tuple[tuple[str, str], ...] = ()
    options: tuple[tuple[str, str], ...] = ()
    skew: str | None = None

    @property
    def partition_key(self) -> str | None:
        """What a Dirichlet partition splits on: the skew key, else the label."""
        return self.skew if self.skew is not None else self.label


@dataclass(frozen=True)
class TaskDataset:
    name: str
    label_prefix: str  # e.g. "Chapter:"; the label follows after one space
    labels: tuple[str, ...]  # candidate answers (empty for plain text)
    train: tuple[Example, ...]
    test: tuple[Example, ...]
    natural_sites: tuple[str, ...]  # empty when the source has no natural split

    def __post_init__(self) -> None:
        if not self.train:
            raise DataError(f"dataset {self.name} has no training examples")
        if not self.test:
            raise DataError(f"dataset {self.name} has no test examples")

    @property
    def labelled(self) -> bool:
        return bool(self.labels)

    @property
    def candidate_kind(self) -> str:
        """'shared' (one label set for every example), 'options' (per-example multiple
        choice) or 'none' (free text or plain text: scored by loss and perplexity)."""
        if self.labels:
            return "shared"
        if any(ex.options for ex in self.train + self.test):
            return "options"
        return "none"


def stable_fraction(key: str) -> float:
    """A uniform number in [0, 1) fixed by `key` alone (used for seed-free test splits)."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def balanced_take(examples: Sequence[Example], n: int, *, seed: int) -> list[Example]:
    """Up to `n` examples, round-robin over labels so rare classes are not drowned out."""
    by_label: dict[str | None, list[Example]] = defaultdict(list)
    for ex in examples:
        by_label[ex.label].append(ex)
    pools = [by_label[k] for k in sorted(by_label, key=lambda x: "" if x is None else x)]
    return interleaved_take(pools, n, seed=seed)


def interleaved_take(sources: Sequence[Sequence[Example]], n: int, *, seed: int) -> list[Example]:
    """Up to `n` examples, round-robin over the sources (each shuffled by `seed`), so a
    small sample still holds every kind (label, question type)."""
    rng = random.Random(seed)
    pools = [list(s) for s in sources]
    for pool in pools:
        rng.shuffle(pool)
    out: list[Example] = []
    depth = 0
    while len(out) < n and any(depth < len(p) for p in pools):
        for pool in pools:
            if depth < len(pool) and len(out) < n:
                out.append(pool[depth])
        depth += 1
    rng.shuffle(out)
    return out


def load_dataset(config: DataConfig) -> TaskDataset:
    """Load the configured dataset (no network). A built-in set is generated once per process
    and configuration (a simulation and its baselines ask three times; building the ICD-10
    set takes seconds); a site's own file is read at every call."""
    if config.dataset == "user":
        from gossipmed.learn.datasets.user import load_user

        return load_user(config)
    return _load_builtin(config)


@functools.lru_cache(maxsize=4)
def _load_builtin(config: DataConfig) -> TaskDataset:
    if config.dataset == "icd10":
        from gossipmed.learn.datasets.icd10 import load_icd10

        return load_icd10(config)
    if config.dataset == "heart":
        from gossipmed.learn.datasets.heart import load_heart

        return load_heart(config)
    if config.dataset == "notes":
        from gossipmed.learn.datasets.notes import load_notes

        return load_notes(config)
    if config.dataset in ("medqa-mc", "medqa-text"):
        from gossipmed.learn.datasets.medqa import load_medqa

        return load_medqa(config)
    raise DataError(f"unknown dataset {config.dataset!r}")
