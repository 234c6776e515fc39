"""A site's own records: JSONL lines `{"text": ..., "label": ...}` or plain text lines.

`path` is one file or a folder of `*.jsonl` / `*.txt` files. A file named `test.jsonl` or
`test.txt` is the held-out set; otherwise 10% is held out by a stable hash of the text. An
optional `"site"` key (or, in a folder, the file name) gives the natural partition.
"""

from __future__ import annotations

import json
from pathlib import Path

from gossipmed.errors import DataError
from gossipmed.learn.config import DataConfig
from gossipmed.learn.datasets.bounded import read_lines
from gossipmed.learn.datasets.core import Example, TaskDataset, balanced_take, stable_fraction

TEST_FRACTION = 0.1


def _read_file(path: Path, *, site: str | None) -> list[Example]:
    out: list[Example] = []
    for lineno, raw in read_lines(path):  # a regular file, bounded while it is read
        line = raw.strip()
        if not line:
            continue
        if path.suffix != ".jsonl":
            out.append(Example(text=line, label=None, site=site))
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from exc
        if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
            raise DataError(f'{path}:{lineno}: expected an object with a "text" string')
        label = rec.get("label")
        if label is not None and not isinstance(label, str | int):
            raise DataError(f"{path}:{lineno}: label must be a string")
        rec_site = rec.get("site", site)
        out.append(
            Example(
                text=rec["text"],
                label=None if label is None else str(label),
                site=None if rec_site is None else str(rec_site),
            )
        )
    return out


def load_user(config: DataConfig) -> TaskDataset:
    assert config.path is not None  # checked by DataConfig
    root = Path(config.path)
    if root.is_dir():
        files = sorted(p for p in root.iterdir() if p.suffix in (".jsonl", ".txt"))
    elif root.exists() or root.is_symlink():
        files = [root]  # whatever it is, the reader refuses anything but a regular file
    else:
        raise DataError(f"user data path {root} does not exist")
    train: list[Example] = []
    test: list[Example] = []
    for f in files:
        site = f.stem if root.is_dir() and f.stem != "test" else None
        records = _read_file(f, site=site)
        if f.stem == "test":
            test += records
        else:
            train += records
    if not any(f.stem == "test" for f in files):
        all_records, train, test = train, [], []
        for ex in all_records:
            (test if stable_fraction(f"user:{ex.text}") < TEST_FRACTION else train).append(ex)
    labels = {ex.label for ex in train + test}
    if None in labels and len(labels) > 1:
        raise DataError("user data mixes labelled and unlabelled records")
    label_tuple = tuple(sorted(x for x in labels if x is not None))
    sites = tuple(sorted({ex.site for ex in train if ex.site is not None}))
    return TaskDataset(
        name="user",
        label_prefix="Label:",
        labels=label_tuple,
        train=tuple(balanced_take(train, config.max_train_examples, seed=config.seed)),
        test=tuple(balanced_take(test, config.eval_size, seed=0)),
        natural_sites=sites if all(ex.site is not None for ex in train) else (),
    )
