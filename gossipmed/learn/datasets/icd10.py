"""ICD-10-CM code descriptions labelled by chapter (package `simple-icd-10-cm`, US CMS data).

Chapter 22 ("codes for special purposes", 6 codes) is dropped. The injury and external-cause
chapters hold most codes, so each chapter is capped to keep the task balanced.
"""

from __future__ import annotations

import functools

from gossipmed.errors import DataError
from gossipmed.learn.config import DataConfig
from gossipmed.learn.datasets.core import Example, TaskDataset, balanced_take, stable_fraction

TEST_FRACTION = 0.1

CHAPTER_LABELS: dict[str, str] = {
    "1": "infectious",
    "2": "neoplasm",
    "3": "blood",
    "4": "endocrine",
    "5": "mental",
    "6": "nervous",
    "7": "eye",
    "8": "ear",
    "9": "circulatory",
    "10": "respiratory",
    "11": "digestive",
    "12": "skin",
    "13": "musculoskeletal",
    "14": "genitourinary",
    "15": "pregnancy",
    "16": "perinatal",
    "17": "congenital",
    "18": "symptom",
    "19": "injury",
    "20": "external",
    "21": "health factor",
}


def is_icd10_test_code(code: str) -> bool:
    """True for codes in the held-out split (the base-model corpus leaves these out)."""
    return stable_fraction(f"icd10:{code}") < TEST_FRACTION


@functools.cache
def icd10_records() -> tuple[tuple[str, str, str], ...]:
    """(code, description, chapter number) for every category and subcategory code."""
    try:
        import simple_icd_10_cm as icd
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise DataError("package simple-icd-10-cm is not installed") from exc
    out = []
    for code in icd.get_all_codes(with_dots=True):
        if icd.is_chapter_or_block(code):
            continue
        chapter = icd.get_ancestors(code)[-1]
        out.append((code, icd.get_description(code), chapter))
    return tuple(out)


def load_icd10(config: DataConfig) -> TaskDataset:
    train: list[Example] = []
    test: list[Example] = []
    for code, description, chapter in icd10_records():
        label = CHAPTER_LABELS.get(chapter)
        if label is None:
            continue
        ex = Example(text=f"Diagnosis: {description}", label=label)
        (test if is_icd10_test_code(code) else train).append(ex)
    return TaskDataset(
        name="icd10",
        label_prefix="Chapter:",
        labels=tuple(CHAPTER_LABELS.values()),
        train=tuple(balanced_take(train, config.max_train_examples, seed=config.seed)),
        test=tuple(balanced_take(test, config.eval_size, seed=0)),
        natural_sites=(),
    )
