"""Built-in datasets: offline, labelled, with a fixed held-out split that ignores the seed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gossipmed.errors import ConfigError, DataError
from gossipmed.learn.config import DataConfig
from gossipmed.learn.datasets import load_dataset
from gossipmed.learn.datasets.icd10 import is_icd10_test_code


def test_icd10_is_balanced_chapter_classification_with_seed_free_test_set() -> None:
    a = load_dataset(DataConfig(dataset="icd10", max_train_examples=2100, eval_size=210, seed=1))
    b = load_dataset(DataConfig(dataset="icd10", max_train_examples=2100, eval_size=210, seed=2))
    assert len(a.labels) == 21
    assert {ex.label for ex in a.train} == set(a.labels)
    assert a.test == b.test  # held-out set never moves with the seed
    assert a.train != b.train
    counts = {lab: sum(ex.label == lab for ex in a.test) for lab in a.labels}
    assert min(counts.values()) == max(counts.values()) == 10


def test_icd10_test_codes_are_a_stable_tenth() -> None:
    codes = [f"X{i}" for i in range(5000)]
    share = sum(map(is_icd10_test_code, codes)) / len(codes)
    assert 0.08 < share < 0.12
    assert is_icd10_test_code("A00.1") == is_icd10_test_code("A00.1")


def test_heart_has_four_real_hospitals() -> None:
    d = load_dataset(DataConfig(dataset="heart"))
    assert set(d.natural_sites) == {"Cleveland", "Hungary", "VA Long Beach", "Switzerland"}
    assert {ex.site for ex in d.train} == set(d.natural_sites)
    assert len(d.train) + len(d.test) == 920
    assert set(d.labels) == {"healthy", "disease"}
    assert d.train[0].text.startswith("Patient: ")


def test_notes_generator_is_seeded_and_skewed_per_hospital() -> None:
    cfg = DataConfig(dataset="notes", n_sites=3, max_train_examples=600, alpha=0.3, seed=5)
    a, b = load_dataset(cfg), load_dataset(cfg)
    assert a == b
    c = load_dataset(DataConfig(dataset="notes", n_sites=3, max_train_examples=600, seed=6))
    assert a.train != c.train
    mixes = []
    for site in a.natural_sites:
        labels = [ex.label for ex in a.train if ex.site == site]
        mixes.append(max(labels.count(lab) for lab in a.labels) / len(labels))
    assert max(mixes) > 0.4  # a dominant label somewhere: label skew is real


def test_user_jsonl_and_plain_text(tmp_path: Path) -> None:
    rows = [{"text": f"note {i}", "label": "a" if i % 2 else "b"} for i in range(50)]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "test.jsonl").write_text(json.dumps({"text": "held out", "label": "a"}))
    d = load_dataset(DataConfig(dataset="user", path=str(tmp_path), n_sites=1))
    assert d.labels == ("a", "b") and len(d.train) == 50 and d.test[0].text == "held out"

    plain = tmp_path / "corpus.txt"
    plain.write_text("\n".join(f"line {i}" for i in range(200)))
    p = load_dataset(DataConfig(dataset="user", path=str(plain), n_sites=1))
    assert p.labels == () and not p.labelled and len(p.train) + len(p.test) == 200


def test_user_data_errors_are_typed(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    with pytest.raises(DataError, match="invalid JSON"):
        load_dataset(DataConfig(dataset="user", path=str(bad)))
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(DataConfig(dataset="user", path=str(tmp_path / "missing")))
    with pytest.raises(ConfigError):
        DataConfig(dataset="user")
