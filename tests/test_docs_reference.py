"""The generated reference is complete: every config key has a description (its attribute
docstring), every key and every command appears on the rendered pages, and every entry of
the declared public API exists."""

from __future__ import annotations

import argparse
import importlib
from dataclasses import dataclass

import pytest

from node.cli import build_parser
from node.reference.api_page import public_names, render_api_reference
from node.reference.cli_page import render_cli_reference, subcommands
from node.reference.config_page import render_config_reference
from node.reference.fielddocs import field_docs, undocumented
from node.reference.schema import TABLES, config_classes


@pytest.mark.parametrize("cls", list(config_classes()), ids=lambda c: c.__qualname__)
def test_every_config_field_has_a_description(cls: type) -> None:
    missing = undocumented(cls)
    assert not missing, (
        f"{cls.__module__}.{cls.__qualname__}: add a docstring line below each of "
        f"{', '.join(missing)} (what the key means, for the configuration reference)"
    )


def test_a_field_without_a_docstring_is_found() -> None:
    @dataclass(frozen=True)
    class Example:
        documented: int = 1
        """Meaning."""
        bare: int = 2  # a comment is not a description

    assert field_docs(Example) == {"documented": "Meaning."}
    assert undocumented(Example) == ["bare"]


def test_the_configuration_page_lists_every_key_of_every_table() -> None:
    page = render_config_reference()
    for table in TABLES:
        assert f"{{#{table.anchor}}}" in page
        for field in table.fields():
            assert f"| `{field.name}` |" in page, (table.section, field.name)
            assert field_docs(table.cls)[field.name].split()[0] in page


def _command_paths(parser: argparse.ArgumentParser, path: str) -> list[str]:
    out = [path]
    for name, child in subcommands(parser):
        out += _command_paths(child, f"{path} {name}")
    return out


def test_the_cli_page_documents_every_command_and_option() -> None:
    page = render_cli_reference()
    paths = _command_paths(build_parser(), "gossipmed")
    assert len(paths) > 10
    for path in paths[1:]:
        assert f"{path} {{#{path.replace(' ', '-')}}}" in page, path
    simulate = dict(subcommands(build_parser()))["simulate"]
    for action in simulate._actions:
        for flag in action.option_strings:
            if flag.startswith("--") and flag != "--help":
                assert f"`{flag}`" in page, flag


def test_every_public_api_entry_exists_and_is_on_the_api_page() -> None:
    page = render_api_reference()
    for name in public_names():
        try:
            importlib.import_module(name)
        except ModuleNotFoundError:
            module, _, attr = name.rpartition(".")
            assert hasattr(importlib.import_module(module), attr), name
        assert f"::: {name}\n" in page
