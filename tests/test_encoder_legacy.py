"""Label tasks and plain text encode exactly as before instruction formats existed: the
encoder is compared, tensor for tensor, with a frozen copy of the old one (legacy_encoder)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import legacy_encoder
import pytest
import torch

from gossipmed.learn.config import DataConfig
from gossipmed.learn.data import Encoder
from gossipmed.learn.datasets import TaskDataset, load_dataset
from gossipmed.learn.tokenizer import train_bpe_tokenizer


@cache
def _tokenizer() -> object:
    """A small BPE trained on the datasets' own texts, so words are whole tokens and
    truncation cuts mid-text (any tokenizer must give identical encodings)."""
    texts = [ex.text for name in ("icd10", "heart", "notes") for ex in _dataset(name).train]
    return train_bpe_tokenizer(texts[:1500], vocab_size=700)


@cache
def _dataset(name: str) -> TaskDataset:
    return load_dataset(DataConfig(dataset=name, max_train_examples=120, eval_size=40))  # type: ignore[arg-type]


def _user(tmp_path: Path, *, labelled: bool) -> TaskDataset:
    rows = [
        {"text": f"note {i} " + "word " * (i % 40), "label": "yes" if i % 3 else "no"}
        for i in range(60)
    ]
    if labelled:
        (tmp_path / "site.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    else:
        (tmp_path / "site.txt").write_text("\n".join(str(r["text"]) for r in rows))
    return load_dataset(DataConfig(dataset="user", path=str(tmp_path), n_sites=1))


def _assert_same(dataset: TaskDataset, max_length: int) -> None:
    tok = _tokenizer()
    new = Encoder(tok, dataset=dataset, max_length=max_length)
    old = legacy_encoder.Encoder(tok, dataset=dataset, max_length=max_length)
    examples = dataset.train + dataset.test
    kept, _ = new.fit(examples)
    assert kept == examples  # nothing of a label task or plain text is ever dropped
    for loss_on in ("label", "all"):
        a, b = new.encode(examples, loss_on=loss_on), old.encode(examples, loss_on=loss_on)
        assert a.input_ids.dtype == b.input_ids.dtype and a.loss_mask.dtype == b.loss_mask.dtype
        assert torch.equal(a.input_ids, b.input_ids)
        assert torch.equal(a.loss_mask, b.loss_mask)
        assert a.labels == b.labels
    for ex in examples:
        assert new.prompt_ids(ex) == old.prompt_ids(ex)
        assert new.render_prompt(ex) == old.prompt_ids(ex)
    if dataset.labelled:
        assert new.label_token_ids() == old.label_token_ids()
        a, b = new.encode_candidates(dataset.test), old.encode_candidates(dataset.test)
        assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.loss_mask, b.loss_mask)
        assert a.labels == b.labels
    assert new.response_terminator_ids == (old.eos,)


@pytest.mark.parametrize("name", ["icd10", "heart", "notes"])
@pytest.mark.parametrize("max_length", [24, 64])
def test_builtin_label_tasks_encode_byte_identically(name: str, max_length: int) -> None:
    _assert_same(_dataset(name), max_length)


@pytest.mark.parametrize("labelled", [True, False])
def test_user_labels_and_plain_text_encode_byte_identically(tmp_path: Path, labelled: bool) -> None:
    dataset = _user(tmp_path, labelled=labelled)
    assert dataset.labelled is labelled
    for max_length in (24, 64):
        _assert_same(dataset, max_length)


def test_truncation_is_counted_without_changing_label_encodings() -> None:
    dataset = _dataset("notes")
    short = Encoder(_tokenizer(), dataset=dataset, max_length=24)
    _, counts = short.fit(dataset.train)
    assert counts.dropped == 0 and 0 < counts.truncated <= len(dataset.train)
    _, roomy = Encoder(_tokenizer(), dataset=dataset, max_length=512).fit(dataset.train)
    assert roomy.truncated == 0
