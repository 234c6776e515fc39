"""A component chosen by name, with its parameters: one mechanism for every pluggable part.

A config file says either `aggregation = "weighted"` or
`aggregation = { rule = "cosine-clipped", min_cosine = 0.1 }`. The registry entry (`Spec`)
names the parameters' dataclass, so a parameter is validated once, when the config loads,
by the component's own rules; an unknown key is an error naming the component's keys.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from gossipmed.errors import ConfigError
from gossipmed.registry import Registry

T = TypeVar("T")


@dataclass(frozen=True)
class NoParams:
    """For components without knobs."""


@dataclass(frozen=True)
class Spec(Generic[T]):
    """A registry entry: how to build the component from its parameters."""

    name: str
    build: Callable[[Any], T]
    params: type[Any] = NoParams
    summary: str = ""


@dataclass(frozen=True)
class Choice:
    """A validated choice: the component's name and an instance of its parameters type."""

    name: str
    params: Any = field(default_factory=NoParams)

    def param_values(self) -> dict[str, Any]:
        return {
            f.name: getattr(self.params, f.name)
            for f in dataclasses.fields(self.params)
            if getattr(self.params, f.name) is not None
        }

    def to_toml(self, *, name_key: str) -> str | dict[str, Any]:
        """The plain name when every parameter is at its default, else an inline table of
        the parameters that are not."""
        defaults = type(self.params)()
        changed = {k: v for k, v in self.param_values().items() if getattr(defaults, k) != v}
        return {name_key: self.name, **changed} if changed else self.name


def parse_choice(
    registry: Registry[Spec[Any]], value: object, *, key: str, name_key: str
) -> Choice:
    """`value` from a config file (a name or a table) -> a validated Choice."""
    spec_of = _prefixed(registry, key)
    if isinstance(value, Choice):
        spec = spec_of(value.name)
        if not isinstance(value.params, spec.params):
            raise ConfigError(f"{key}: parameters of {value.name!r} must be {spec.params.__name__}")
        return value
    if isinstance(value, str):
        spec = spec_of(value)
        return Choice(name=spec.name, params=spec.params())
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key} must be a name or a table with `{name_key} = ...`")
    table = dict(value)
    name = table.pop(name_key, None)
    if not isinstance(name, str):
        raise ConfigError(f'{key} table needs `{name_key} = "..."` ({registry.choices()})')
    spec = spec_of(name)
    known = {f.name for f in dataclasses.fields(spec.params)}
    unknown = sorted(set(table) - known)
    if unknown:
        accepted = ", ".join(sorted(known)) or "none"
        raise ConfigError(
            f"{key}: {name!r} has no parameter {', '.join(unknown)} (it takes: {accepted})"
        )
    try:
        params = spec.params(**table)
    except ConfigError as exc:
        raise ConfigError(f"{key}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{key}: {exc}") from None
    return Choice(name=name, params=params)


def default_choice(registry: Registry[Spec[Any]], name: str) -> Choice:
    """`name` with every parameter at its default."""
    spec = registry.get(name)
    return Choice(name=spec.name, params=spec.params())


def _prefixed(registry: Registry[Spec[Any]], key: str) -> Callable[[str], Spec[Any]]:
    def get(name: str) -> Spec[Any]:
        try:
            return registry.get(name)
        except ConfigError as exc:
            raise ConfigError(f"{key}: {exc}") from None

    return get


def build(registry: Registry[Spec[T]], choice: Choice) -> T:
    return registry.get(choice.name).build(choice.params)


def require_number(value: object, *, what: str, lo: float, hi: float) -> None:
    """For parameter dataclasses: a real number (not a bool) within [lo, hi]."""
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not lo <= float(value) <= hi:  # type: ignore[arg-type]
        raise ConfigError(f"{what} must be a number in [{lo:g}, {hi:g}]")
