"""The built-in offline medical QA set, built from the ontologies the project already ships.

Two data sets, because one data set has one candidate kind:
  - `medqa-mc`: multiple choice (four options, chance 0.25), HPO definition -> term and
    ICD-10-CM inclusion term -> code description, half of each where the pool allows;
  - `medqa-text`: free text, HPO definition -> term and term -> definition, half of each.

Held out by concept (an HPO term or an ICD code, one stable hash each, the same split the
tiny base's corpus leaves out), so the test set never depends on the seed. `skew` is the
ICD chapter or the HPO top-level branch: `partition = "dirichlet"` gives each hospital its
own mix of topics, never of answer letters. This is not the USMLE "MedQA" benchmark.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

from gossipmed.errors import DataError
from gossipmed.learn.config import DataConfig
from gossipmed.learn.datasets.core import Example, TaskDataset, interleaved_take
from gossipmed.learn.datasets.medqa_items import (
    ConceptItem,
    hpo_choice_items,
    hpo_text_items,
    icd_choice_items,
)

ANSWER_PREFIX = "Answer:"


@functools.cache
def medqa_items(name: str) -> tuple[tuple[ConceptItem, ...], ...]:
    """The item sources of one QA data set, each in a fixed order."""
    if name == "medqa-mc":
        return tuple(hpo_choice_items()), tuple(icd_choice_items())
    if name == "medqa-text":
        items = tuple(hpo_text_items())
        return items[0::2], items[1::2]  # definition -> term; term -> definition
    raise DataError(f"unknown QA data set {name!r}")


def _side(items: Iterable[ConceptItem], *, held_out: bool) -> list[Example]:
    return [it.example for it in items if it.held_out == held_out]


def load_medqa(config: DataConfig) -> TaskDataset:
    sources = medqa_items(config.dataset)
    train = [_side(s, held_out=False) for s in sources]
    test = [_side(s, held_out=True) for s in sources]
    return TaskDataset(
        name=config.dataset,
        label_prefix=ANSWER_PREFIX,
        labels=(),  # per-example options or free text: no shared candidate set
        train=tuple(interleaved_take(train, config.max_train_examples, seed=config.seed)),
        test=tuple(interleaved_take(test, config.eval_size, seed=0)),
        natural_sites=(),
    )
