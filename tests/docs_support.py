"""Reading the docs as the docs tests see them: which pages, their fenced blocks, the
`gossipmed ...` command lines in shell blocks, and `[section] key` references in prose."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

SHELL_LANGUAGES = frozenset({"bash", "sh", "shell", "console", "zsh", ""})
"""Blocks whose `gossipmed` lines are checked; output belongs in `text` blocks."""
FENCE = re.compile(
    r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^\n`]*)\n"
    r"(?P<body>.*?)^(?P=indent)(?P=fence)[ \t]*$",
    re.MULTILINE | re.DOTALL,
)
# `[dp] epsilon`: a table name in brackets, one space, a key. Task-list boxes ([ ] / [x]) and
# links ([text](url)) do not match: a key must follow.
CONFIG_REF = re.compile(r"(?<![\[\w])\[(?P<section>[a-z_]+)\] (?P<key>[a-z_][a-z0-9_]*)\b")
CODE_SPAN = re.compile(r"`([^`\n]+)`")
SPAN_REF = re.compile(r"\[(?P<section>[a-z_]+)\] (?P<key>[a-z_][a-z0-9_]*)(?:\s*=.*)?")
PROSE_WORDS = frozenset(
    {"table", "tables", "section", "sections", "key", "keys", "has", "is", "are", "and", "or"}
    | {"of", "in", "to", "with", "for", "the", "a", "settings", "entries", "values", "as"}
)
SHELL_OPERATORS = frozenset({"|", "||", "&&", ";", "&", "(", ")"})
COMMAND_PREFIXES = frozenset({"nohup", "sudo", "exec", "time", "env", "timeout"})
REDIRECTION = re.compile(r"(?<!\S)\d*(?:>>?|<)(?:&\d+|\s*[^\s;&|]+)")
TASK_BOX = re.compile(r"^\s*[-*+]\s+$")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int
    language: str
    body: str


def doc_pages() -> list[Path]:
    """Every page the docs tests read: docs/**/*.md and the README."""
    return [*sorted(DOCS.rglob("*.md")), ROOT / "README.md"]


def fenced_blocks(path: Path, text: str | None = None) -> Iterator[Block]:
    text = path.read_text(encoding="utf-8") if text is None else text
    for m in FENCE.finditer(text):
        language = (m.group("info").split() or [""])[0].strip("{}.").lower()
        indent = len(m.group("indent"))
        body = "\n".join(line[indent:] for line in m.group("body").splitlines())
        yield Block(path, text.count("\n", 0, m.start()) + 2, language, body)


def prose(text: str) -> str:
    """The page without its fenced blocks (blank lines keep line numbers)."""
    return FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)


def logical_lines(body: str, *, console: bool) -> Iterator[tuple[int, str]]:
    """(offset, line) with backslash continuations joined; for console blocks only the
    `$ ` prompt lines, without the prompt."""
    pending, start = "", 0
    for i, raw in enumerate(body.splitlines()):
        line = raw.rstrip()
        if not pending:
            start = i
            if console:
                if not line.lstrip().startswith("$ "):
                    continue
                line = line.lstrip()[2:]
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        yield start, pending + line
        pending = ""
    if pending:
        yield start, pending


def gossipmed_commands(line: str) -> Iterator[list[str]]:
    """The argument lists of every `gossipmed ...` command in one shell line (pipelines,
    `&&`, `;` and a trailing `&` split it; leading VAR=value and nohup/sudo are skipped)."""
    lexer = shlex.shlex(REDIRECTION.sub(" ", line), posix=True, punctuation_chars=";&|()")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    command: list[str] = []
    for token in [*lexer, ";"]:
        if token in SHELL_OPERATORS or set(token) <= set(";&|()"):
            words = _strip_prefixes(command)
            if words and Path(words[0]).name == "gossipmed":
                yield words[1:]
            command = []
        else:
            command.append(token)


def _strip_prefixes(words: list[str]) -> list[str]:
    i = 0
    while i < len(words) and (
        re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[i]) or words[i] in COMMAND_PREFIXES
    ):
        i += 1
        if i < len(words) and words[i - 1] == "timeout":
            i += 1
    return words[i:]


def config_references(text: str) -> Iterator[tuple[int, str, str]]:
    """(line, section, key) of every `[section] key` in the page's prose: a code span that is
    exactly a reference (`[dp] epsilon`, `[dp] epsilon = 3`), or the bare form in running text
    unless the next word is ordinary prose ("the [gossip] table"). Other code spans, such as
    quoted error messages, are not references."""
    body = prose(text)
    for m in CODE_SPAN.finditer(body):
        ref = SPAN_REF.fullmatch(m.group(1).strip())
        if ref:
            yield body.count("\n", 0, m.start()) + 1, ref.group("section"), ref.group("key")
    running = CODE_SPAN.sub(lambda m: " " * len(m.group(0)), body)
    for m in CONFIG_REF.finditer(running):
        if m.group("key") in PROSE_WORDS:
            continue
        if TASK_BOX.match(running[running.rfind("\n", 0, m.start()) + 1 : m.start()]):
            continue  # `- [x] done` is a task list, not a table
        yield running.count("\n", 0, m.start()) + 1, m.group("section"), m.group("key")
