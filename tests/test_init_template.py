"""`gossipmed init` writes a complete, commented site.toml: every table the daemon reads, at
the defaults, and a consortium path, so the site runs once the consortium file is in place."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from gossipmed.learn.config import learning_config_from_mapping
from node.cli import main
from node.daemon.config import DaemonSection, load_daemon_settings
from node.round.config import GossipConfig


def init(tmp_path: Path, name: str) -> Path:
    site = tmp_path / name
    assert main(["init", str(site), "--name", name, "--listen", "/ip4/127.0.0.1/tcp/0"]) == 0
    return site


def test_init_writes_every_table_at_its_default_with_comments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = init(tmp_path, "st-marys")
    text = (site / "site.toml").read_text()
    doc = tomllib.loads(text)
    assert doc["consortium"] == "consortium.toml"
    assert {"daemon", "gossip", "data", "adapter", "dp", "train", "compute"} <= set(doc)
    settings = load_daemon_settings(site)  # the daemon reads it as it is
    # the file states the defaults: reading it changes nothing a missing table would give
    assert settings.daemon == DaemonSection()
    assert settings.gossip == GossipConfig.from_mapping({})
    assert settings.learning == learning_config_from_mapping({})
    lines = text.splitlines()
    for i, line in enumerate(lines):  # each table opens with what it is for
        if line.startswith("["):
            assert lines[i + 1].startswith("# "), line
    assert sum(line.startswith("#") for line in lines) > 30


def test_the_site_loads_its_consortium_once_the_file_is_in_place(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sites = [init(tmp_path, n) for n in ("alpha", "beta")]
    cards = [str(s / "card.toml") for s in sites]
    out = str(sites[0] / "consortium.toml")
    assert main(["consortium", "build", *cards, "--topology", "ring", "--out", out]) == 0
    roster = load_daemon_settings(sites[0]).site.roster()
    assert [m.name for m in roster.members] == ["alpha", "beta"]
