"""The items of the built-in medical QA set, each tied to the one concept it is about.

Multiple choice: an HPO definition asks for its term, with `is_a` siblings as distractors;
an ICD-10-CM inclusion term asks for its code's description, with sibling codes as
distractors after dropping near-duplicates (the same description up to laterality or the
encounter suffix). Free text: an HPO definition asks for its term, and a term for its
definition. simple-icd-10-cm ships no definitions, so ICD gives multiple choice only.

Every item carries its concept (an HPO id or an ICD code) and whether that concept is held
out, so all items of one concept fall on the same side. Distractors of training items are
drawn from training concepts only: a held-out term's name is never shown in training.
Distractors and the answer's position come from a generator seeded by the item alone, so
the items never depend on the run's seed.
"""

from __future__ import annotations

import functools
import random
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from gossipmed.learn.datasets.core import Example
from gossipmed.learn.datasets.hpo import (
    HpoTerm,
    hpo_ancestors,
    hpo_branch,
    hpo_children,
    hpo_terms,
    is_hpo_test_term,
)
from gossipmed.learn.datasets.icd10 import icd10_records, is_icd10_test_code

OPTION_KEYS = ("A", "B", "C", "D")  # four options: chance is 0.25
# Longer definitions (4 % of those HPO has) are left out so every item fits the QA set's
# default max_length with room for the options, whatever the tokenizer.
MAX_DEFINITION_WORDS = 60


@dataclass(frozen=True)
class ConceptItem:
    concept: str  # "hpo:HP:0001250" or "icd10:A00.0"
    held_out: bool
    example: Example


def _choice_example(
    *, question: str, answer: str, pool: Sequence[str], skew: str, seed: str
) -> Example | None:
    """Four options: the answer and three of `pool`, in an order fixed by `seed`."""
    distractors = sorted(set(pool))
    if len(distractors) < len(OPTION_KEYS) - 1:
        return None
    rng = random.Random(f"medqa:{seed}")
    texts = [answer, *rng.sample(distractors, len(OPTION_KEYS) - 1)]
    rng.shuffle(texts)
    options = tuple(zip(OPTION_KEYS, texts, strict=True))
    label = OPTION_KEYS[texts.index(answer)]
    return Example(text=question, label=label, options=options, skew=skew)


# ---- HPO ---------------------------------------------------------------------------------


def _usable_definition(term: HpoTerm) -> str | None:
    d = term.definition
    return d if d and len(d.split()) <= MAX_DEFINITION_WORDS else None


def hpo_skew(term_id: str) -> str:
    return f"hpo {hpo_branch(term_id)}"


def hpo_siblings(term: HpoTerm) -> list[HpoTerm]:
    """Other children of the term's parents that are neither above nor below it and that
    cannot be read as the same phenotype (a name equal to the term's name or a synonym)."""
    terms = hpo_terms()
    same = {term.name.lower(), *(s.lower() for s in term.synonyms)}
    above = hpo_ancestors(term.id)
    out = []
    for sid in sorted({s for p in term.parents for s in hpo_children().get(p, ())}):
        sib = terms[sid]
        if sid == term.id or sid in above or term.id in hpo_ancestors(sid):
            continue
        if sib.name.lower() in same:
            continue
        out.append(sib)
    return out


def hpo_choice_items() -> Iterator[ConceptItem]:
    for term in hpo_terms().values():
        definition = _usable_definition(term)
        if definition is None:
            continue
        held_out = is_hpo_test_term(term.id)
        pool = [s.name for s in hpo_siblings(term) if held_out or not is_hpo_test_term(s.id)]
        example = _choice_example(
            question=f"Which phenotype matches this definition? {definition}",
            answer=term.name,
            pool=pool,
            skew=hpo_skew(term.id),
            seed=f"hpo:{term.id}",
        )
        if example is not None:
            yield ConceptItem(f"hpo:{term.id}", held_out, example)


def hpo_text_items() -> Iterator[ConceptItem]:
    for term in hpo_terms().values():
        definition = _usable_definition(term)
        if definition is None:
            continue
        held_out = is_hpo_test_term(term.id)
        skew = hpo_skew(term.id)
        for text, response in (
            (f"Name the phenotype with this definition: {definition}", term.name),
            (f'Define the phenotype "{term.name}".', definition),
        ):
            example = Example(text=text, label=None, response=response, skew=skew)
            yield ConceptItem(f"hpo:{term.id}", held_out, example)


# ---- ICD-10-CM ---------------------------------------------------------------------------

_ENCOUNTER = re.compile(r",?\s*\b(initial|subsequent) encounter\b.*$|,?\s*\bsequela\b.*$")
_LATERALITY = re.compile(r"\b(right|left|bilateral|unilateral|unspecified (side|laterality))\b")


def icd_core(description: str) -> str:
    """A description without laterality and encounter: two codes with the same core differ
    only in what an inclusion term rarely says, so one cannot be a distractor of the other."""
    s = _ENCOUNTER.sub("", description.lower())
    s = _LATERALITY.sub(" ", s)
    return " ".join(re.sub(r"[^a-z0-9]+", " ", s).split())


@functools.cache
def _icd_tables() -> tuple[dict[str, tuple[str, str]], Counter[str], dict[str, tuple[str, ...]]]:
    import simple_icd_10_cm as icd

    records = {code: (desc, chapter) for code, desc, chapter in icd10_records()}
    descriptions = Counter(desc.lower() for desc, _ in records.values())
    inclusions = {code: tuple(icd.get_inclusion_term(code)) for code in records}
    return records, descriptions, inclusions


@functools.cache
def icd_siblings(code: str) -> tuple[str, ...]:
    """Codes under the same parent, the code itself excluded."""
    import simple_icd_10_cm as icd

    parent = icd.get_parent(code)
    records = _icd_tables()[0]
    children = icd.get_children(parent) if parent else []
    return tuple(c for c in children if c != code and c in records)


def icd_distractor_pool(code: str, question: str, *, training: bool) -> list[str]:
    """Sibling descriptions that are not near-duplicates of the answer or of each other and
    that do not themselves include the question's term."""
    records, descriptions, inclusions = _icd_tables()
    answer_core = icd_core(records[code][0])
    cores = {answer_core}
    pool = []
    for sib in icd_siblings(code):
        if training and is_icd10_test_code(sib):
            continue
        desc = records[sib][0]
        core = icd_core(desc)
        if core in cores or descriptions[desc.lower()] > 1:
            continue
        if question.lower() in {desc.lower(), *(t.lower() for t in inclusions[sib])}:
            continue
        cores.add(core)
        pool.append(desc)
    return pool


def icd_choice_items() -> Iterator[ConceptItem]:
    records, descriptions, inclusions = _icd_tables()
    term_codes = Counter(t.lower() for terms in inclusions.values() for t in terms)
    for code, terms in inclusions.items():
        answer, chapter = records[code]
        if descriptions[answer.lower()] > 1:  # an answer two codes share is no answer
            continue
        held_out = is_icd10_test_code(code)
        for n, term in enumerate(terms):
            if term_codes[term.lower()] > 1 or term.lower() == answer.lower():
                continue
            example = _choice_example(
                question=f'Which ICD-10-CM diagnosis includes "{term}"?',
                answer=answer,
                pool=icd_distractor_pool(code, term, training=not held_out),
                skew=f"icd10 chapter {chapter}",
                seed=f"icd10:{code}:{n}",
            )
            if example is not None:
                yield ConceptItem(f"icd10:{code}", held_out, example)
