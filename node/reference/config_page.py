"""The configuration reference page, rendered from node.reference.schema and the fields'
attribute docstrings: every key with its type, default and meaning."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from gossipmed.choice import Choice
from node.reference.fielddocs import field_docs, public_fields
from node.reference.schema import COMPONENTS, TABLES, Table

FILE_INTRO = {
    "site.toml": "one site's folder (`gossipmed init` writes it); `gossipmed run` reads it",
    "sim.toml": "`gossipmed simulate --config`; command-line flags override it",
    "consortium.toml": "the consortium file every site holds (`gossipmed consortium` writes it)",
}


def type_name(annotation: Any) -> str:
    """A TOML-minded name for a field's type."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f'"{a}"' for a in args)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        inner = " \\| ".join(type_name(a) for a in rest)
        return f"{inner} (optional)" if len(rest) < len(args) else inner
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list of {type_name(args[0])}"
        return "\\[" + ", ".join(type_name(a) for a in args) + "]"
    if annotation is Choice:
        return "name or table"
    if annotation is bytes:
        return "key (hex or base64)"
    if dataclasses.is_dataclass(annotation):
        return "table"
    return {int: "integer", float: "float", str: "string", bool: "boolean"}.get(
        annotation, getattr(annotation, "__name__", str(annotation))
    )


def default_text(field: dataclasses.Field[Any]) -> str:
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        return "required"
    if value is None:
        return "not set"
    if isinstance(value, Choice):
        return f'`"{value.name}"`'
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f'`"{value}"`'
    if isinstance(value, tuple):
        return "`[" + ", ".join(f'"{v}"' if isinstance(v, str) else str(v) for v in value) + "]`"
    if dataclasses.is_dataclass(value):
        return "see its table"
    return f"`{value}`"


def _cell(text: str) -> str:
    """One table cell: outside code spans, `[data] [dp]` must not read as a link."""
    parts = " ".join(text.split()).replace("|", "\\|").split("`")
    return "`".join(p if i % 2 else p.replace("[", "\\[") for i, p in enumerate(parts))


def table_rows(cls: type[Any], fields: list[dataclasses.Field[Any]]) -> list[str]:
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    rows = ["| Key | Type | Default | Meaning |", "| --- | --- | --- | --- |"]
    for f in fields:
        rows.append(
            f"| `{f.name}` | {type_name(hints[f.name])} | {default_text(f)} "
            f"| {_cell(docs.get(f.name, ''))} |"
        )
    return rows


def _table_section(table: Table) -> list[str]:
    files = " and ".join(f"`{f}`" for f in table.files)
    title = table.heading if table.section else f"{table.files[0]}: top level"
    if table.section == "gossip" and table.files == ("consortium.toml",):
        title = "consortium.toml: [gossip]"
    return [
        f"### {title} {{#{table.anchor}}}",
        "",
        f"In {files}. {table.summary}",
        "",
        *table_rows(table.cls, table.fields()),
        *(
            f"| `{key}` | {kind} | {default} | {_cell(meaning)} |"
            for key, kind, default, meaning in table.extra
        ),
        "",
    ]


def _components() -> list[str]:
    out = [
        "## Components {#components}",
        "",
        "`[gossip] aggregation`, `codec` and `drift` take a name, or an inline table with the "
        "name and parameters, e.g. "
        '`aggregation = { rule = "trimmed-mean", trim = 0.1 }`.',
        "",
    ]
    for component in COMPONENTS:
        out += [
            f"### {component.key} {{#component-{component.key}}}",
            "",
            f"The table form names the choice with `{component.name_key} = ...`.",
            "",
            "| Name | What it does | Parameters |",
            "| --- | --- | --- |",
        ]
        detailed = []
        for name, spec in component.registry.items():
            params = public_fields(spec.params)
            keys = ", ".join(f"`{p.name}`" for p in params) or "none"
            out.append(f"| `{name}` | {_cell(spec.summary)} | {keys} |")
            if params:
                detailed += [
                    f"#### {component.key} `{name}`",
                    "",
                    *table_rows(spec.params, params),
                    "",
                ]
        out += ["", *detailed]
    return out


def render_config_reference() -> str:
    by_file: dict[str, list[Table]] = {}
    for table in TABLES:
        by_file.setdefault(table.files[0], []).append(table)
    lines = [
        "# Configuration reference",
        "",
        "Generated from the configuration dataclasses when the site is built: every key a "
        "file accepts, with its type, default and meaning. Unknown keys are errors, so a "
        "misspelt privacy setting never falls back to a default.",
        "",
        "| File | Where it is used | Tables |",
        "| --- | --- | --- |",
    ]
    for file, intro in FILE_INTRO.items():
        tables = [t for t in TABLES if file in t.files]
        links = ", ".join(f"[{t.heading}](#{t.anchor})" for t in tables)
        lines.append(f"| `{file}` | {intro} | {links} |")
    lines.append("")
    titles = {
        "site.toml": "site.toml and shared learning tables",
        "sim.toml": "sim.toml",
        "consortium.toml": "consortium.toml",
    }
    for file, tables in by_file.items():
        lines += [f"## {titles[file]}", ""]
        for table in tables:
            lines += _table_section(table)
    lines += _components()
    return "\n".join(lines) + "\n"
