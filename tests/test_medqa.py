"""The built-in medical QA sets: offline, deterministic, held out by concept, with fair options
and a topic skew key that is never the answer."""

from __future__ import annotations

from collections import Counter, defaultdict

import pytest

from gossipmed.errors import ConfigError
from gossipmed.learn.config import DataConfig, learning_config_from_mapping
from gossipmed.learn.datasets import load_dataset
from gossipmed.learn.datasets.hpo import hpo_terms, is_hpo_test_term
from gossipmed.learn.datasets.icd10 import icd10_records, is_icd10_test_code
from gossipmed.learn.datasets.medqa import medqa_items
from gossipmed.learn.datasets.medqa_items import (
    OPTION_KEYS,
    ConceptItem,
    icd_core,
    icd_siblings,
)
from gossipmed.learn.partition import partition


def _all(name: str) -> list[ConceptItem]:
    return [item for source in medqa_items(name) for item in source]


def _answer_text(item: ConceptItem) -> str:
    ex = item.example
    return dict(ex.options)[ex.label] if ex.options else str(ex.response)


def _descriptions() -> dict[str, str]:
    return {code: desc for code, desc, _ in icd10_records()}


def test_same_config_same_data_and_the_test_set_ignores_the_seed() -> None:
    cfg = DataConfig(dataset="medqa-mc", max_train_examples=400, eval_size=60, seed=1)
    a, b = load_dataset(cfg), load_dataset(cfg)
    c = load_dataset(DataConfig(dataset="medqa-mc", max_train_examples=400, eval_size=60, seed=2))
    assert a == b
    assert a.test == c.test and a.train != c.train
    assert (len(a.train), len(a.test)) == (400, 60)
    assert a.candidate_kind == "options" and a.labels == ()
    text = load_dataset(DataConfig(dataset="medqa-text", max_train_examples=50, eval_size=10))
    assert text.candidate_kind == "none"
    assert all(ex.response and ex.label is None for ex in text.train + text.test)


@pytest.mark.parametrize("name", ["medqa-mc", "medqa-text"])
def test_every_concept_falls_on_one_side(name: str) -> None:
    sides: dict[str, set[bool]] = defaultdict(set)
    for item in _all(name):
        sides[item.concept].add(item.held_out)
        kind, _, concept_id = item.concept.partition(":")
        split = is_hpo_test_term if kind == "hpo" else is_icd10_test_code
        assert item.held_out == split(concept_id)
    assert all(len(s) == 1 for s in sides.values())
    share = sum(True in s for s in sides.values()) / len(sides)
    assert 0.07 < share < 0.13
    data = load_dataset(DataConfig(dataset=name, max_train_examples=20000, eval_size=20000))
    assert not {ex.text for ex in data.train} & {ex.text for ex in data.test}


def test_options_hold_the_answer_exactly_once_in_balanced_positions() -> None:
    items = _all("medqa-mc")
    descriptions, terms = _descriptions(), hpo_terms()
    for item in items:
        ex = item.example
        kind, _, concept_id = item.concept.partition(":")
        answer = terms[concept_id].name if kind == "hpo" else descriptions[concept_id]
        texts = [t for _, t in ex.options]
        assert tuple(k for k, _ in ex.options) == OPTION_KEYS
        assert len({t.lower() for t in texts}) == len(OPTION_KEYS)
        assert texts.count(answer) == 1 and dict(ex.options)[ex.label] == answer
    positions = Counter(item.example.label for item in items)
    assert all(0.22 < positions[k] / len(items) < 0.28 for k in OPTION_KEYS)


def test_distractors_are_siblings_and_training_items_never_show_held_out_terms() -> None:
    terms = hpo_terms()
    by_name = {t.name: t for t in terms.values()}
    descriptions = _descriptions()
    for item in _all("medqa-mc"):
        kind, _, concept_id = item.concept.partition(":")
        answer = _answer_text(item)
        distractors = [t for _, t in item.example.options if t != answer]
        if kind == "hpo":
            parents = set(terms[concept_id].parents)
            for name in distractors:
                assert parents & set(by_name[name].parents), (concept_id, name)
                assert item.held_out or not is_hpo_test_term(by_name[name].id)
        else:
            siblings = {descriptions[c]: c for c in icd_siblings(concept_id)}
            assert set(distractors) <= set(siblings), concept_id
            assert item.held_out or not any(is_icd10_test_code(siblings[d]) for d in distractors)


def test_icd_distractors_are_never_laterality_or_encounter_variants() -> None:
    right = "Unspecified fracture of the lower end of right radius, initial encounter for closed"
    left = "Unspecified fracture of the lower end of left radius, subsequent encounter for open"
    assert icd_core(right) == icd_core(left)
    assert icd_core("Otitis media, bilateral") == icd_core("Otitis media, left")
    assert icd_core("Fracture of radius") != icd_core("Fracture of ulna")
    for item in _all("medqa-mc"):
        if item.concept.startswith("icd10:"):
            cores = {icd_core(t) for _, t in item.example.options}
            assert len(cores) == len(OPTION_KEYS), item.example.options


@pytest.mark.parametrize("name", ["medqa-mc", "medqa-text"])
def test_the_skew_key_is_the_topic_never_the_answer(name: str) -> None:
    for item in _all(name):
        ex = item.example
        assert ex.skew is not None and ex.partition_key == ex.skew
        assert ex.skew.startswith("hpo HP:" if item.concept.startswith("hpo:") else "icd10 ")
        assert ex.skew not in {t for _, t in ex.options} | {ex.response}


def test_counts_are_sane() -> None:
    hpo_mc, icd_mc = medqa_items("medqa-mc")
    to_term, to_definition = medqa_items("medqa-text")
    assert len(hpo_mc) > 10000 and len(icd_mc) > 8000
    assert len(to_term) == len(to_definition) > 15000
    assert len({i.concept for i in icd_mc}) > 4000  # several inclusion terms per code
    named = {i.example.text.split('"')[1] for i in to_definition}
    assert {i.example.response for i in to_term} == named
    mc = load_dataset(DataConfig(dataset="medqa-mc", max_train_examples=1000, eval_size=300))
    sources = Counter(ex.text.startswith("Which phenotype") for ex in mc.test)
    assert sources[True] == sources[False] == 150  # both sources in the held-out sample


def test_dirichlet_skews_the_topics_not_the_answer_letters() -> None:
    data = load_dataset(DataConfig(dataset="medqa-mc", max_train_examples=4000, eval_size=10))
    shards = partition(data.train, scheme="dirichlet", n_sites=8, alpha=0.1, seed=0)
    for shard in shards:
        topics = Counter(data.train[i].skew for i in shard)
        letters = Counter(data.train[i].label for i in shard)
        if len(shard) >= 200:
            assert topics.most_common(1)[0][1] / len(shard) > 0.1
            assert max(letters.values()) / len(shard) < 0.4
    top_share = [Counter(data.train[i].skew for i in s).most_common(1)[0][0] for s in shards]
    assert len(set(top_share)) > 1  # the sites do not all share one dominant topic


def test_max_length_defaults_per_dataset_and_is_validated() -> None:
    assert DataConfig(dataset="icd10").max_length == 64
    assert DataConfig(dataset="medqa-mc").max_length == 192
    assert DataConfig(dataset="medqa-text", max_length=96).max_length == 96
    raw = {"data": {"dataset": "medqa-text", "max_length": "auto"}}
    assert learning_config_from_mapping(raw).data.max_length == 192
    with pytest.raises(ConfigError, match="max_length"):
        DataConfig(dataset="medqa-mc", max_length="long")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="dataset"):
        DataConfig(dataset="medqa")  # type: ignore[arg-type]
