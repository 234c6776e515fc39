"""Examples -> fixed-length token tensors for causal-LM training and candidate scoring.

One JSONL record (one `Example`) is the privacy unit: it becomes exactly one row, so each
per-example gradient that DP-SGD clips is one record's, and a site's guarantee is about the
presence or absence of one record. (A patient with many records is protected only as far as
the sum of their records' contributions: deduplicate per patient before training if that
is the unit you need.)

Label tasks and plain text encode exactly as they always have (a frozen copy of the old
encoder checks this byte for byte):
  - label: `<s> text \\n prefix` answered by `" label</s>"`, every label a candidate;
  - plain text: `<s> text</s>`, every token a target.
Instruction records (prompt/response, chat turns) and multiple choice go through the
prompt template of `gossipmed.learn.templates`: the prompt is the rendered conversation,
the response its answer plus the end-of-turn token; a multiple-choice example's candidates
are its own options' texts.

Every sequence is padded on the right. Right padding plus causal attention means pad
tokens never influence real positions, so no attention mask and no position ids are passed
(this keeps `torch.func.vmap` free of data-dependent mask code), and no two examples ever
share a row. `loss_mask[t] = 1` marks positions whose token is a prediction target.

A prompt too long for `max_length` loses tokens from the end of its user content, never
from the template's tail; an example whose response alone does not fit is dropped.
`Encoder.fit` counts both; the counts describe a site's own records without noise, so
they are printed locally and never leave the site.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from gossipmed.errors import DataError
from gossipmed.learn.datasets import Example, TaskDataset
from gossipmed.learn.templates import PromptTemplate, template_for


@dataclass(frozen=True)
class EncodedSet:
    input_ids: torch.Tensor  # [N, L] int64
    loss_mask: torch.Tensor  # [N, L] float32
    labels: tuple[str | None, ...]  # per row, for accuracy

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def subset(self, index: torch.Tensor) -> EncodedSet:
        idx = index.tolist()
        return EncodedSet(
            self.input_ids[index], self.loss_mask[index], tuple(self.labels[i] for i in idx)
        )


@dataclass(frozen=True)
class FitCounts:
    """How many examples `max_length` changed: local to the site, never sent."""

    truncated: int = 0  # the prompt lost tokens (from the end of its user content)
    dropped: int = 0  # the response alone did not fit: left out of training/evaluation

    def __add__(self, other: FitCounts) -> FitCounts:
        return FitCounts(self.truncated + other.truncated, self.dropped + other.dropped)


def is_instruction(ex: Example) -> bool:
    """A record rendered through the prompt template (not a label or plain-text line)."""
    return bool(ex.options) or bool(ex.messages) or ex.response is not None


class Encoder:
    """Tokenizes prompts and their targets consistently for training, scoring and generation."""

    def __init__(self, tokenizer: object, *, dataset: TaskDataset, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.dataset = dataset
        self.max_length = max_length
        tok = tokenizer
        self.bos = int(tok.bos_token_id)  # type: ignore[attr-defined]
        self.eos = int(tok.eos_token_id)  # type: ignore[attr-defined]
        self.pad = int(tok.pad_token_id)  # type: ignore[attr-defined]
        self._cache: dict[str, tuple[int, ...]] = {}
        self.label_ids = {lab: [*self._ids(f" {lab}"), self.eos] for lab in dataset.labels}
        longest = max((len(v) for v in self.label_ids.values()), default=1)
        self._tail = self._ids(f"\n{dataset.label_prefix}") if dataset.labelled else []
        # One prompt budget for every candidate, so all labels are scored on the same text.
        self.prompt_budget = max_length - longest
        if self.prompt_budget - 1 - len(self._tail) < 2:
            raise DataError(f"max_length {max_length} cannot fit the longest label")
        self.instruction = any(map(is_instruction, dataset.train + dataset.test))
        if self.instruction and dataset.labelled:
            raise DataError(f"dataset {dataset.name} mixes label records and instruction records")
        self.template: PromptTemplate = template_for(
            tokenizer, self._ids, bos=self.bos, eos=self.eos
        )

    def prime(self, texts: Sequence[str]) -> None:
        """Tokenize the uncached texts in one batch call: the same ids as one call each (no
        padding, no special tokens), several times faster over a whole data set."""
        todo = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if not todo:
            return
        batch = self.tokenizer(todo, add_special_tokens=False)["input_ids"]  # type: ignore[operator]
        for text, ids in zip(todo, batch, strict=True):
            self._cache[text] = tuple(ids)

    def _ids(self, text: str) -> list[int]:
        cached = self._cache.get(text)
        if cached is None:
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]  # type: ignore[operator]
            cached = self._cache[text] = tuple(ids)
        return list(cached)

    # --- what generation and the task digest need -------------------------------------------
    @property
    def task_format(self) -> str:
        """'label', 'text' (plain), 'options' (multiple choice) or 'instruction'."""
        if self.dataset.labelled:
            return "label"
        if not self.instruction:
            return "text"
        return "options" if self.dataset.candidate_kind == "options" else "instruction"

    @property
    def response_terminator_ids(self) -> tuple[int, ...]:
        """Tokens that end an answer: the template's end-of-turn token (EOS for label tasks,
        plain text and the plain template), then EOS when that differs."""
        first = self.template.end_of_turn if self.instruction else self.eos
        return (first,) if first == self.eos else (first, self.eos)

    def render_prompt(self, example: Example, *, reserve: int | None = None) -> list[int]:
        """The tokens the model continues for `example`: BOS once, the task's template (or
        the label prompt, or the plain text), cut so `reserve` more tokens still fit in
        `max_length`. `reserve` defaults to the example's own longest target; a generator
        passes its token allowance. An `Example(text=..., label=None)` renders as the task's
        user turn. Label and plain-text prompts keep their fixed budget whatever `reserve`
        is. DataError when even BOS and the template's tail leave no room."""
        if not self._templated(example):
            return self.prompt_ids(example)
        budget = self.max_length - (self._reserve(example) if reserve is None else reserve)
        fitted = self.template.render(self._turns(example)).fit(budget)
        if fitted is None:
            raise DataError(f"max_length {self.max_length} leaves no room for this prompt")
        return fitted[0]

    # --- the old formats, unchanged ---------------------------------------------------------
    def prompt_ids(self, ex: Example) -> list[int]:
        """`<s> text \n prefix`; a long text is cut, never the label prefix after it."""
        if self._templated(ex):
            return self.render_prompt(ex)
        if self.dataset.labelled:
            keep = self.prompt_budget - 1 - len(self._tail)
            return [self.bos, *self._ids(ex.text)[:keep], *self._tail]
        return [self.bos, *self._ids(ex.text)[: self.max_length - 2]]

    def label_token_ids(self) -> tuple[tuple[int, ...], ...]:
        """Each candidate's target tokens (`" label</s>"`), in `dataset.labels` order."""
        return tuple(tuple(self.label_ids[lab]) for lab in self.dataset.labels)

    # --- instruction records and multiple choice --------------------------------------------
    def _templated(self, ex: Example) -> bool:
        return is_instruction(ex) or (self.instruction and not self.dataset.labelled)

    @staticmethod
    def _turns(ex: Example) -> tuple[tuple[str, str], ...]:
        return ex.messages if ex.messages else (("user", ex.text),)

    def option_token_ids(self, ex: Example) -> tuple[tuple[int, ...], ...]:
        """Each option's response tokens (text + end of turn), in the example's order."""
        return tuple(tuple(self.template.response_ids(text)) for _, text in ex.options)

    def answer_index(self, ex: Example) -> int:
        keys = [k for k, _ in ex.options]
        if ex.label not in keys:
            raise DataError(f"answer {ex.label!r} is not one of the options {keys}")
        return keys.index(ex.label)

    def target_ids(self, ex: Example) -> list[int]:
        """The tokens the loss covers after the prompt (empty for plain text)."""
        if ex.options:
            return list(self.option_token_ids(ex)[self.answer_index(ex)])
        if ex.response is not None:
            return self.template.response_ids(ex.response)
        if self.dataset.labelled:
            if ex.label not in self.label_ids:
                raise DataError(f"label {ex.label!r} is not a candidate of {self.dataset.name}")
            return list(self.label_ids[ex.label])
        return []

    def _reserve(self, ex: Example) -> int:
        """Room the prompt leaves: the longest candidate (all are scored after one prompt)."""
        if ex.options:
            return max(len(o) for o in self.option_token_ids(ex))
        if ex.response is not None:
            return len(self.target_ids(ex))
        return self.max_length - self.prompt_budget if self.dataset.labelled else 1

    # --- truncation and dropping -------------------------------------------------------------
    def _fit_one(self, ex: Example) -> bool | None:
        """Whether the prompt is cut, or None when the example cannot fit at all."""
        if self._templated(ex):
            budget = self.max_length - self._reserve(ex)
            fitted = self.template.render(self._turns(ex)).fit(budget)
            return None if fitted is None else fitted[1]
        if self.dataset.labelled:
            return len(self._ids(ex.text)) > self.prompt_budget - 1 - len(self._tail)
        return len(self._ids(ex.text)) > self.max_length - 2

    def fit(self, examples: Sequence[Example]) -> tuple[tuple[Example, ...], FitCounts]:
        """The examples that fit `max_length` (in order) and how many were cut or dropped."""
        kept: list[Example] = []
        truncated = dropped = 0
        self.prime([ex.text for ex in examples if not self._templated(ex)])
        for ex in examples:
            cut = self._fit_one(ex)
            if cut is None:
                dropped += 1
                continue
            truncated += int(cut)
            kept.append(ex)
        return tuple(kept), FitCounts(truncated=truncated, dropped=dropped)

    def fit_dataset(self, dataset: TaskDataset) -> tuple[TaskDataset, FitCounts]:
        """`dataset` without the examples that cannot fit; DataError if a split empties."""
        train, train_counts = self.fit(dataset.train)
        test, test_counts = self.fit(dataset.test)
        if not train or not test:
            raise DataError(
                f"no {'training' if not train else 'test'} example of {dataset.name} fits "
                f"data.max_length {self.max_length}: every response is longer"
            )
        if len(train) == len(dataset.train) and len(test) == len(dataset.test):
            return dataset, train_counts + test_counts
        return replace(dataset, train=train, test=test), train_counts + test_counts

    # --- rows -------------------------------------------------------------------------------
    def _row(
        self, prompt: list[int], target: list[int], *, loss_on: str
    ) -> tuple[list[int], list[float]]:
        ids = prompt + target
        if loss_on == "all" or not target:
            mask = [0.0] + [1.0] * (len(ids) - 1)
        else:
            mask = [0.0] * len(prompt) + [1.0] * len(target)
        return ids, mask

    def _stack(
        self, rows: Sequence[tuple[list[int], list[float]]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(ids) for ids, _ in rows)
        # right-padded in Python lists, then one tensor each (a tensor per row cost seconds)
        ids_t = torch.tensor([ids + [self.pad] * (width - len(ids)) for ids, _ in rows])
        mask_t = torch.tensor(
            [mask + [0.0] * (width - len(mask)) for _, mask in rows], dtype=torch.float32
        )
        return ids_t.to(torch.long), mask_t

    def encode(self, examples: Sequence[Example], *, loss_on: str = "label") -> EncodedSet:
        """One row per example; an example that cannot fit is a DataError (`fit` first)."""
        if not examples:
            raise DataError("nothing to encode")
        rows = []
        for ex in examples:
            if self._templated(ex):
                rows.append(self._row(self.render_prompt(ex), self.target_ids(ex), loss_on=loss_on))
            elif self.dataset.labelled:
                rows.append(self._row(self.prompt_ids(ex), self.target_ids(ex), loss_on=loss_on))
            else:
                ids = [*self.prompt_ids(ex), self.eos]
                rows.append(self._row(ids, [], loss_on="all"))
        ids_t, mask_t = self._stack(rows)
        return EncodedSet(ids_t, mask_t, tuple(ex.label for ex in examples))

    def encode_candidates(self, examples: Sequence[Example]) -> EncodedSet:
        """Every (example, candidate) pair, example-major, one row each: the reference the
        packed scorer is tested against. Shared labels: row = i * n_labels + j. Multiple
        choice: each example's own options in order, so rows per example vary."""
        rows = []
        labels: list[str | None] = []
        for ex in examples:
            prompt = self.prompt_ids(ex)
            if ex.options:
                for (key, _), toks in zip(ex.options, self.option_token_ids(ex), strict=True):
                    rows.append(self._row(prompt, list(toks), loss_on="label"))
                    labels.append(key)
                continue
            for lab in self.dataset.labels:
                rows.append(self._row(prompt, self.label_ids[lab], loss_on="label"))
                labels.append(lab)
        if not rows:
            raise DataError("these examples have no candidates")
        ids_t, mask_t = self._stack(rows)
        return EncodedSet(ids_t, mask_t, tuple(labels))
