"""A site's own records: JSONL (`*.jsonl`) or plain text lines (`*.txt`).

Each JSONL line is one record, and one record is the privacy unit (DP protects the presence
of one line). A file holds one of these formats, never a mix:
  - `{"text": ..., "label": ...}`: text classification (`label` optional: without it,
    plain text the model learns to continue);
  - `{"prompt": ..., "response": ...}`: instruction tuning, the loss on the response;
  - `{"messages": [{"role": ..., "content": ...}, ...]}`: a conversation (roles system,
    user, assistant) ending with the assistant turn the model learns to give;
  - `{"question": ..., "options": {"A": ..., "B": ...}, "answer": "A"}`: multiple choice,
    scored by each option's likelihood, trained on the correct option's text.
How prompts are rendered: gossipmed.learn.templates. Every format may carry a `"site"`.

`path` is one file or a folder of `*.jsonl` / `*.txt` files. A file named `test.jsonl` or
`test.txt` is the held-out set; otherwise 10% is held out by a stable hash of the text (the
prompt, last user turn or question). An optional `"site"` key (or, in a folder, the file
name) gives the natural partition.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gossipmed.errors import DataError
from gossipmed.learn.config import DataConfig
from gossipmed.learn.datasets.bounded import read_lines
from gossipmed.learn.datasets.core import Example, TaskDataset, balanced_take, stable_fraction

TEST_FRACTION = 0.1
FORMATS = ("text", "prompt", "messages", "question")  # each named by its distinctive key
CHAT_ROLES = ("system", "user", "assistant")


def _string(rec: dict[str, Any], key: str, where: str, *, empty: bool = True) -> str:
    value = rec.get(key)
    if not isinstance(value, str):
        raise DataError(f'{where}: "{key}" must be a string')
    if not empty and not value.strip():
        raise DataError(f'{where}: "{key}" is empty')
    return value


def _site(rec: dict[str, Any], site: str | None) -> str | None:
    value = rec.get("site", site)
    return None if value is None else str(value)


def _text_record(rec: dict[str, Any], where: str, site: str | None) -> Example:
    text = _string(rec, "text", where)
    label = rec.get("label")
    if label is not None and not isinstance(label, str | int):
        raise DataError(f"{where}: label must be a string")
    return Example(text=text, label=None if label is None else str(label), site=_site(rec, site))


def _prompt_record(rec: dict[str, Any], where: str, site: str | None) -> Example:
    prompt = _string(rec, "prompt", where)
    response = _string(rec, "response", where, empty=False)
    return Example(text=prompt, label=None, site=_site(rec, site), response=response)


def _chat_record(rec: dict[str, Any], where: str, site: str | None) -> Example:
    turns = rec.get("messages")
    if not isinstance(turns, list) or len(turns) < 2:
        raise DataError(f'{where}: "messages" must be a list of at least two turns')
    parsed: list[tuple[str, str]] = []
    for k, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise DataError(f'{where}: messages[{k}] must be an object with "role" and "content"')
        role, content = turn.get("role"), turn.get("content")
        if role not in CHAT_ROLES:
            raise DataError(f"{where}: messages[{k}] role must be one of {CHAT_ROLES}")
        if not isinstance(content, str):
            raise DataError(f'{where}: messages[{k}] "content" must be a string')
        parsed.append((role, content))
    if parsed[-1][0] != "assistant":
        raise DataError(f"{where}: the last message must be the assistant's (the response)")
    if not parsed[-1][1].strip():
        raise DataError(f"{where}: the last (assistant) message is empty")
    users = [c for r, c in parsed[:-1] if r == "user"]
    if not users:
        raise DataError(f"{where}: messages need a user turn before the last assistant turn")
    return Example(
        text=users[-1],
        label=None,
        site=_site(rec, site),
        response=parsed[-1][1],
        messages=tuple(parsed[:-1]),
    )


def _choice_record(rec: dict[str, Any], where: str, site: str | None) -> Example:
    question = _string(rec, "question", where)
    options = rec.get("options")
    if not isinstance(options, dict) or len(options) < 2:
        raise DataError(f'{where}: "options" must be an object of at least two options')
    if not all(isinstance(v, str) and v.strip() for v in options.values()):
        raise DataError(f"{where}: every option must be a non-empty string")
    if len(set(options.values())) != len(options):
        raise DataError(f"{where}: two options have the same text")
    answer = rec.get("answer")
    if not isinstance(answer, str) or answer not in options:
        raise DataError(f'{where}: "answer" must be one of the option keys {list(options)}')
    return Example(
        text=question,
        label=answer,
        site=_site(rec, site),
        options=tuple((str(k), v) for k, v in options.items()),
    )


_PARSERS: dict[str, Callable[[dict[str, Any], str, str | None], Example]] = {
    "text": _text_record,
    "prompt": _prompt_record,
    "messages": _chat_record,
    "question": _choice_record,
}


def _format_of(rec: object, where: str) -> str:
    if not isinstance(rec, dict):
        raise DataError(f"{where}: expected a JSON object")
    found = [f for f in FORMATS if f in rec]
    if len(found) != 1:
        raise DataError(
            f'{where}: a record needs exactly one of "text", "prompt", "messages" or '
            f'"question" (found {found or "none"})'
        )
    return found[0]


def _read_file(path: Path, *, site: str | None) -> tuple[str, list[Example]]:
    """(the file's format, its records); DataError naming path:line for a bad record."""
    out: list[Example] = []
    fmt: str | None = None
    for lineno, raw in read_lines(path):  # a regular file, bounded while it is read
        line = raw.strip()
        if not line:
            continue
        if path.suffix != ".jsonl":
            out.append(Example(text=line, label=None, site=site))
            continue
        where = f"{path}:{lineno}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: invalid JSON ({exc.msg})") from exc
        this = _format_of(rec, where)
        if fmt is None:
            fmt = this
        elif this != fmt:
            raise DataError(
                f'{where}: a "{this}" record in a file of "{fmt}" records (one format per file)'
            )
        out.append(_PARSERS[this](rec, where, site))
    return fmt or "text", out


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
    formats: dict[str, Path] = {}
    for f in files:
        site = f.stem if root.is_dir() and f.stem != "test" else None
        fmt, records = _read_file(f, site=site)
        if records:
            formats.setdefault(fmt, f)
        if f.stem == "test":
            test += records
        else:
            train += records
    if len(formats) > 1:
        named = ", ".join(f'"{k}" in {p.name}' for k, p in formats.items())
        raise DataError(f"user data mixes record formats ({named}); use one format")
    if not any(f.stem == "test" for f in files):
        all_records, train, test = train, [], []
        for ex in all_records:
            (test if stable_fraction(f"user:{ex.text}") < TEST_FRACTION else train).append(ex)
    choice = "question" in formats
    labels = {ex.label for ex in train + test}
    if not choice and None in labels and len(labels) > 1:
        raise DataError("user data mixes labelled and unlabelled records")
    label_tuple = () if choice else tuple(sorted(x for x in labels if x is not None))
    sites = tuple(sorted({ex.site for ex in train if ex.site is not None}))
    return TaskDataset(
        name="user",
        label_prefix="Label:",
        labels=label_tuple,
        train=tuple(balanced_take(train, config.max_train_examples, seed=config.seed)),
        test=tuple(balanced_take(test, config.eval_size, seed=0)),
        natural_sites=sites if all(ex.site is not None for ex in train) else (),
    )
