"""One-line errors say which thing is wrong: the clashing site's name, the missing folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from node.cli import main


def test_two_cards_with_one_name_name_the_site(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    listen = ["--listen", "/ip4/127.0.0.1/tcp/0"]
    for folder in ("one", "two", "three"):
        name = "b" if folder == "three" else "st-marys"
        assert main(["init", str(tmp_path / folder), "--name", name, *listen, "--json"]) == 0
    capsys.readouterr()
    cards = [str(tmp_path / f / "card.toml") for f in ("one", "two", "three")]
    out = str(tmp_path / "consortium.toml")
    assert main(["consortium", "build", *cards, "--topology", "ring", "--out", out]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "same site name: 'st-marys'" in err


def test_a_missing_model_folder_is_named_as_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-such-model"
    assert main(["train", "--dataset", "notes", "--base-model", str(missing), "--no-dp"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"model folder {missing} does not exist" in err
    assert "config.json" not in err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["train", "--dataset", "notes", "--base-model", str(empty), "--no-dp"]) == 2
    assert "has no config.json" in capsys.readouterr().err
    shutil.rmtree(empty)
