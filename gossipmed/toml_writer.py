"""Writing the TOML files gossipmed reads back (configs, rosters, site files).

tomllib reads TOML but nothing in the standard library writes it; the files here need only
scalars, strings, lists, inline tables and one level of tables, so a small exact writer beats
a dependency. Every value written reads back as the same value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from gossipmed.errors import ConfigError


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"cannot write {value} to TOML")
        return repr(value)
    if isinstance(value, str):
        out = ['"']
        for ch in value:
            if ch in '"\\':
                out.append("\\" + ch)
            elif ord(ch) < 0x20 or ord(ch) == 0x7F:
                out.append(f"\\u{ord(ch):04x}")
            else:
                out.append(ch)
        out.append('"')
        return "".join(out)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        items = (f"{k} = {toml_value(v)}" for k, v in value.items() if v is not None)
        return "{ " + ", ".join(items) + " }"
    raise ConfigError(f"cannot write {type(value).__name__} to TOML")


def toml_document(mapping: Mapping[str, Any]) -> str:
    """Top-level keys first, then one `[table]` per mapping value (None values left out)."""
    lines: list[str] = []
    for key, value in mapping.items():
        if value is not None and not isinstance(value, Mapping):
            lines.append(f"{key} = {toml_value(value)}")
    for key, value in mapping.items():
        if isinstance(value, Mapping):
            lines.append(f"\n[{key}]")
            lines.extend(f"{k} = {toml_value(v)}" for k, v in value.items() if v is not None)
    return "\n".join(lines).lstrip("\n") + "\n"
