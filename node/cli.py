"""`gossipmed` console entry point.

Each subcommand lives in its own `node/commands/*.py` module exposing
`register(subparsers) -> None`; modules are discovered, so adding a command never edits this
file. Command modules must import heavy libraries (torch, transformers, libp2p) inside their
handlers, not at module level, so `gossipmed --help` and light commands stay fast.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

import node.commands
from gossipmed import __version__
from gossipmed.errors import GossipmedError
from topology.errors import TopologyError

EXIT_USAGE = 2


def _command_modules() -> list[str]:
    names = [m.name for m in pkgutil.iter_modules(node.commands.__path__)]
    return [f"node.commands.{n}" for n in sorted(names)]


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on usage errors already; keep the message to one line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(EXIT_USAGE)


def build_parser(*, command: str | None = None) -> argparse.ArgumentParser:
    """The whole CLI, or with `command` only that command's parser: a command module's
    `register` may import what its options list (simulate's choices come from registries
    that import torch), and `gossipmed status` should not pay for simulate's."""
    parser = _Parser(
        prog="gossipmed",
        description=(
            "Serverless, differentially private gossip learning of clinical language-model "
            "adapters. Each hospital runs one peer; peers average signed, encrypted adapter "
            "updates with their graph neighbours until they agree."
        ),
        epilog="Run `gossipmed COMMAND --help` for the options of one command.",
    )
    parser.add_argument("--version", action="version", version=f"gossipmed {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    modules = _command_modules()
    if f"node.commands.{command}" in modules:
        modules = [f"node.commands.{command}"]
    for mod_name in modules:
        importlib.import_module(mod_name).register(sub)
    return parser


def _command_of(argv: Sequence[str]) -> str | None:
    """The command word when it comes first (module name = command name); None otherwise,
    so `--help`, `--version` and a mistyped command get the whole CLI."""
    return argv[0] if argv and not argv[0].startswith("-") else None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(command=_command_of(argv))
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # usage errors (2) and --help (0): returned, not raised
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.func(args) or 0)
    except (GossipmedError, TopologyError) as exc:
        msg = " ".join(str(exc).split())
        sys.stderr.write(f"gossipmed {args.command}: error: {msg}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    except Exception as exc:  # a taken port is any command's setting to fix, not a crash
        from node.addresses import address_in_use

        busy = address_in_use(exc)
        if busy is None:
            raise
        sys.stderr.write(f"gossipmed {args.command}: error: a port is already in use: {busy}\n")
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
