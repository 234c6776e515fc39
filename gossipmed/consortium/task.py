"""The task every site of a consortium trains: what its records look like and how they become
tokens. Sites that encode differently train one adapter on different objectives; averaging
them silently blends the two, so the task is part of the consortium's shared settings.

    format            label (text -> one of a shared label set), text (plain text),
                      instruction (prompt/response or chat records), multiple_choice
                      (a question with its own options)
    template          how a record becomes a prompt: "label" (`<s> text \\n Prefix:`),
                      "text" (`<s> text`) or "chat" (the chat template instruction and
                      multiple-choice records use), with its version: a site running another
                      version of the template renders other tokens
    max_length        data.max_length: truncation changes what is learned
    scoring           shared (one candidate set), options (per-example candidates) or none
                      (free text: loss and perplexity)

Template and scoring follow from the format; the digest still carries them, so a site whose
software renders another template version computes another digest and is refused.
`DEFAULT_TASK` is today's label task at max_length 64: a consortium file only records its
task (and its hash only covers it) when it differs, so every file written before stays valid.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

from gossipmed.errors import ConfigError

if TYPE_CHECKING:
    from gossipmed.learn.config import LearningConfig
    from gossipmed.learn.datasets import TaskDataset

FORMATS = ("label", "text", "instruction", "multiple_choice")
_TEMPLATE = {"label": "label", "text": "text", "instruction": "chat", "multiple_choice": "chat"}
_SCORING = {"label": "shared", "text": "none", "instruction": "none", "multiple_choice": "options"}
SCORING_MODES = ("shared", "options", "none")
TEMPLATES = ("label", "text", "chat")
BUILT_IN_FORMATS = {
    "icd10": "label",
    "heart": "label",
    "notes": "label",
    "medqa-mc": "multiple_choice",
    "medqa-text": "instruction",
}
"""Built-in datasets whose format is known without reading them (tested against loading)."""
DEFAULT_MAX_LENGTH = 64
MAX_LENGTH_RANGE = (8, 4096)


def template_version(template: str) -> int:
    """The version of the code that renders `template`. The label and text templates are
    frozen (version 1); the chat template carries its own version."""
    if template != "chat":
        return 1
    try:
        from gossipmed.learn import templates  # type: ignore[attr-defined,unused-ignore]
    except ImportError:
        return 1
    return int(getattr(templates, "TEMPLATE_VERSION", 1))


@dataclass(frozen=True)
class TaskDigest:
    format: str = "label"
    template: str = "label"
    template_version: int = 1
    max_length: int = DEFAULT_MAX_LENGTH
    scoring: str = "shared"

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ConfigError(f"task format must be one of {', '.join(FORMATS)}")
        if self.template not in set(_TEMPLATE.values()):
            raise ConfigError(
                f"task template must be one of {', '.join(sorted(set(_TEMPLATE.values())))}"
            )
        if type(self.template_version) is not int or self.template_version < 1:
            raise ConfigError("task template_version must be an integer >= 1")
        lo, hi = MAX_LENGTH_RANGE
        if type(self.max_length) is not int or not lo <= self.max_length <= hi:
            raise ConfigError(f"task max_length must be in {lo}..{hi}")
        if self.scoring not in SCORING_MODES:
            raise ConfigError(f"task scoring must be one of {', '.join(SCORING_MODES)}")
        if (self.template, self.scoring) != (_TEMPLATE[self.format], _SCORING[self.format]):
            raise ConfigError(
                f"a {self.format} task uses template {_TEMPLATE[self.format]!r} and scoring "
                f"{_SCORING[self.format]!r}"
            )

    @classmethod
    def of(cls, format: str, *, max_length: int = DEFAULT_MAX_LENGTH) -> TaskDigest:
        """The digest this software computes for `format` (its template at today's version)."""
        if format not in FORMATS:
            raise ConfigError(f"task format must be one of {', '.join(FORMATS)}")
        template = _TEMPLATE[format]
        return cls(
            format=format,
            template=template,
            template_version=template_version(template),
            max_length=max_length,
            scoring=_SCORING[format],
        )

    @classmethod
    def from_mapping(cls, raw: Any, *, where: str) -> TaskDigest:
        if isinstance(raw, TaskDigest):
            return raw
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{where} task must be a table")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"{where} task has unknown keys: {', '.join(unknown)}")
        try:
            return cls(**dict(raw))
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None

    def to_mapping(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        return (
            f"{self.format} (template {self.template} v{self.template_version}, "
            f"max_length {self.max_length}, scoring {self.scoring})"
        )


DEFAULT_TASK = TaskDigest()


def dataset_format(dataset: TaskDataset) -> str:
    """The format of a loaded dataset, from what its records carry."""
    kind = dataset.candidate_kind
    if kind == "shared":
        return "label"
    if kind == "options":
        return "multiple_choice"
    if any(ex.response is not None or ex.messages for ex in (*dataset.train, *dataset.test)):
        return "instruction"
    return "text"


def site_task(learning: LearningConfig) -> TaskDigest:
    """The digest of the task this site's own configuration trains (reads user data, not a
    built-in dataset whose format is known)."""
    data = learning.data
    format = BUILT_IN_FORMATS.get(data.dataset)
    if format is None:
        from gossipmed.learn.datasets import load_dataset

        format = dataset_format(load_dataset(data))
    return TaskDigest.of(format, max_length=data.max_length)


def check_site_task(consortium: TaskDigest, learning: LearningConfig) -> None:
    """Refuse a site whose own configuration trains another task than the consortium's."""
    own = site_task(learning)
    if own != consortium:
        raise ConfigError(
            f"this site's task is {own.describe()}, but the consortium's is "
            f"{consortium.describe()}: every site must train the same task (fix [data] in "
            "site.toml, or rebuild the consortium file with `consortium build --task ...`)"
        )
