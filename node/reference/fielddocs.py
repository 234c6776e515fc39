"""Per-field descriptions of config dataclasses, read from attribute docstrings.

A field is documented by the string literal directly below it, the convention that
mkdocstrings (griffe) and Sphinx already read:

    epsilon: float = 8.0
    \"\"\"The site's total privacy budget at `delta`.\"\"\"

One source serves the configuration reference, the Python API pages and any tool that writes
a commented config file, so a key's meaning is written once, next to its default.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
from typing import Any


def field_docs(cls: type[Any]) -> dict[str, str]:
    """{field name: its attribute docstring} for the fields of `cls` that have one."""
    source = textwrap.dedent(inspect.getsource(cls))
    node = ast.parse(source).body[0]
    if not isinstance(node, ast.ClassDef):
        raise TypeError(f"{cls.__qualname__} is not a class")
    out: dict[str, str] = {}
    body = node.body
    for stmt, following in zip(body, [*body[1:], None], strict=True):
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        if (
            isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            out[stmt.target.id] = inspect.cleandoc(following.value.value)
    return out


def public_fields(cls: type[Any]) -> list[dataclasses.Field[Any]]:
    """The fields a config file can set (init fields not starting with an underscore)."""
    return [f for f in dataclasses.fields(cls) if f.init and not f.name.startswith("_")]


def undocumented(cls: type[Any]) -> list[str]:
    docs = field_docs(cls)
    return [f.name for f in public_fields(cls) if not docs.get(f.name, "").strip()]
