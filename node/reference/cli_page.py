"""The CLI reference page, rendered from the real argparse parsers (node.cli.build_parser):
every command and sub-command with its usage, description and options."""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from contextlib import contextmanager

from node.cli import build_parser

USAGE_WIDTH = "100"


@contextmanager
def _fixed_width() -> Iterator[None]:
    """argparse wraps usage to the terminal; the page must not depend on who builds it."""
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = USAGE_WIDTH
    try:
        yield
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old


def subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser]]:
    """(name, parser) of each sub-command, in the order `--help` lists them."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return list(action.choices.items())
    return []


def _help_of(subparsers: argparse._SubParsersAction, name: str) -> str:
    for choice in subparsers._choices_actions:
        if choice.dest == name:
            return choice.help or ""
    return ""


def _prose(text: str) -> str:
    """argparse text is plain: keep markdown from reading `<hash>` as HTML, `*` as emphasis or
    `[data] [dp]` as a link."""
    parts = text.split("`")
    for i in range(0, len(parts), 2):  # outside code spans only
        for plain, escaped in (("<", "&lt;"), (">", "&gt;"), ("*", "\\*"), ("[", "\\[")):
            parts[i] = parts[i].replace(plain, escaped)
    return "`".join(parts)


def _cell(text: str) -> str:
    return _prose(" ".join(text.split())).replace("|", "\\|")


def _flags(action: argparse.Action) -> str:
    if not action.option_strings:
        return f"`{action.metavar or action.dest}`"
    names = ", ".join(f"`{o}`" for o in action.option_strings)
    if action.nargs == 0:
        return names
    metavar = action.metavar or (
        "{" + ",".join(map(str, action.choices)) + "}" if action.choices else action.dest.upper()
    )
    if isinstance(metavar, tuple):
        metavar = " ".join(metavar)
    return f"{names} `{metavar}`"


def _options(parser: argparse.ArgumentParser) -> list[str]:
    formatter = parser._get_formatter()
    rows = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
            continue
        if action.help == argparse.SUPPRESS:
            continue
        text = formatter._expand_help(action) if action.help else ""
        choices = [str(c) for c in action.choices or ()]
        if choices and not all(c in text for c in choices):
            listed = ", ".join(f"`{c}`" for c in choices)
            text = f"{text}. Choices: {listed}." if text else f"Choices: {listed}."
        if action.required and action.option_strings:
            text = f"Required. {text}"
        rows.append(f"| {_flags(action)} | {_cell(text)} |")
    if not rows:
        return []
    return ["| Argument | Meaning |", "| --- | --- |", *rows, ""]


def _command(path: str, parser: argparse.ArgumentParser, summary: str, depth: int) -> list[str]:
    anchor = path.replace(" ", "-")
    out = [f"{'#' * depth} {path} {{#{anchor}}}", ""]
    if summary:
        out += [f"*{_cell(summary)}*", ""]
    out += ["```text", parser.format_usage().strip(), "```", ""]
    if parser.description:
        out += [_prose(parser.description.strip()), ""]
    out += _options(parser)
    if parser.epilog:
        out += ["```text", parser.epilog.strip("\n"), "```", ""]
    sub_action = next(
        (a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None
    )
    if sub_action is not None:
        for name, child in sub_action.choices.items():
            out += _command(f"{path} {name}", child, _help_of(sub_action, name), depth + 1)
    return out


def render_cli_reference() -> str:
    with _fixed_width():
        parser = build_parser()
        lines = [
            "# CLI reference",
            "",
            "Generated from the command's own argument parsers when the site is built; "
            "`gossipmed COMMAND --help` prints the same. Usage and configuration errors exit "
            "with status 2 and one line on stderr.",
            "",
            "```text",
            parser.format_usage().strip(),
            "```",
            "",
        ]
        if parser.description:
            lines += [_prose(parser.description.strip()), ""]
        top = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        lines += ["| Command | What it does |", "| --- | --- |"]
        for name in top.choices:
            lines.append(f"| [`{name}`](#gossipmed-{name}) | {_cell(_help_of(top, name))} |")
        lines.append("")
        for name, child in top.choices.items():
            lines += _command(f"gossipmed {name}", child, _help_of(top, name), 2)
    return "\n".join(lines) + "\n"
