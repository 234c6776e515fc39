"""Every `gossipmed ...` line in a shell block of the docs and the README parses with the real
argument parser, and every `[section] key` the prose names exists in the config schema; a
renamed flag or key fails here instead of in a reader's terminal. Other tools' commands
(ray, ssh, systemctl, ...) are not checked."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
from docs_support import (
    ROOT,
    SHELL_LANGUAGES,
    config_references,
    doc_pages,
    fenced_blocks,
    gossipmed_commands,
    logical_lines,
)

from node.cli import build_parser
from node.daemon.config import MOVED as DAEMON_MOVED
from node.reference.cli_page import subcommands
from node.reference.schema import section_keys
from node.sim.config import MOVED as SIM_MOVED

PENDING_COMMANDS = {"generate": "instruction tuning adds `gossipmed generate`"}
"""Commands the docs already show and another change adds: unchecked only while the parser
does not have them yet, fully checked from then on."""


def command_errors(path: Path, text: str) -> list[str]:
    """One line per command that the parser refuses, naming the page and line."""
    parser = build_parser()
    registered = {name for name, _child in subcommands(parser)}
    errors = []
    for block in fenced_blocks(path, text):
        if block.language not in SHELL_LANGUAGES:
            continue
        console = block.language == "console"
        for offset, line in logical_lines(block.body, console=console):
            for argv in gossipmed_commands(line):
                if argv and argv[0] in PENDING_COMMANDS and argv[0] not in registered:
                    continue
                stderr, stdout = io.StringIO(), io.StringIO()
                try:
                    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout):
                        parser.parse_args(argv)
                except SystemExit as exc:
                    if exc.code not in (0, None):  # --help and --version exit 0
                        message = stderr.getvalue().strip().splitlines()[-1:] or [""]
                        where = f"{path.relative_to(ROOT)}:{block.line + offset}"
                        errors.append(f"{where}: `gossipmed {' '.join(argv)}`: {message[0]}")
    return errors


def known_keys() -> dict[str, set[str]]:
    """The schema's keys, plus the keys of the old layout that a page may name as refused."""
    keys = section_keys()
    for section, key in (*SIM_MOVED, *DAEMON_MOVED):
        keys.setdefault(section, set()).add(key)
    return keys


def config_reference_errors(path: Path, text: str) -> list[str]:
    keys = known_keys()
    errors = []
    for line, section, key in config_references(text):
        where = f"{path.relative_to(ROOT)}:{line}"
        if section not in keys:
            errors.append(f"{where}: [{section}] is not a config table")
        elif key not in keys[section]:
            errors.append(f"{where}: [{section}] has no key {key!r}")
    return errors


def test_every_gossipmed_line_in_the_docs_parses() -> None:
    errors = [e for page in doc_pages() for e in command_errors(page, page.read_text())]
    assert not errors, "\n".join(errors)


def test_every_config_reference_in_the_docs_exists() -> None:
    errors = [e for page in doc_pages() for e in config_reference_errors(page, page.read_text())]
    assert not errors, "\n".join(errors)


PAGE = ROOT / "docs" / "example.md"


@pytest.mark.parametrize(
    "block",
    [
        "```bash\ngossipmed simulate --no-such-flag\n```\n",
        "```bash\ngossipmed simulate --topology no-such-graph\n```\n",
        "```bash\ngossipmed no-such-command\n```\n",
        "```console\n$ gossipmed simulate \\\n    --rounds many\n```\n",
        "```bash\nexport X=1; nohup gossipmed run >log 2>&1 &\n```\n",
    ],
)
def test_a_command_the_parser_refuses_is_reported(block: str) -> None:
    errors = command_errors(PAGE, f"# Page\n\nText.\n\n{block}")
    assert len(errors) == 1 and errors[0].startswith("docs/example.md:")


def test_commands_that_parse_and_other_tools_are_not_reported() -> None:
    page = (
        "```bash\n"
        "gossipmed simulate --nodes 4 --rounds 2 --out runs/a && gossipmed inspect runs/a\n"
        "HF_HUB_OFFLINE=1 gossipmed --help | head\n"
        "ray start --head --no-such-ray-flag\n"
        "ssh host gossipmed-like --anything\n"
        "```\n"
        "```text\ngossipmed simulate: error: output that is not a command\n```\n"
    )
    assert command_errors(PAGE, page) == []


def test_unknown_config_tables_and_keys_are_reported_known_ones_not() -> None:
    page = (
        "Set `[dp] epsilon` and [gossip] round_timeout_s; the consortium file's "
        "`[gossip] mixing`.\n"
        "Not `[dp] epsilonn`, nor `[privacy] epsilon`.\n"
        "- [x] a task list box is not a table, nor is the [gossip] table, nor\n"
        "`[gossip] has unknown keys: codecs`, an error message; `[sim] aggregation` moved.\n"
        "```toml\n[dp]\nepsilon = 3\n```\n"
    )
    errors = config_reference_errors(PAGE, page)
    assert errors == [
        "docs/example.md:2: [dp] has no key 'epsilonn'",
        "docs/example.md:2: [privacy] is not a config table",
    ]
