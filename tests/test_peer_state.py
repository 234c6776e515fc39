"""A site's checkpoint: components looped over by name, vouched for by digest, refused when
it comes from an older format or holds NaN, never written non-finite."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from gossipmed.errors import CheckpointError
from gossipmed.storage.checkpoint import save_state
from gossipmed.storage.peer_state import component_file, read_checkpoint, save_checkpoint
from node.cli import main
from node.daemon.cluster import create_cluster

STATE = {"x": torch.arange(4, dtype=torch.float32)}


class Counter:
    """A component with a state between rounds."""

    def __init__(self, value: int = 0) -> None:
        self.value = value

    def state_dict(self) -> dict[str, Any] | None:
        return {"value": self.value}

    def load_state_dict(self, state: Any, *, schema: Any) -> None:
        self.value = int(state["value"])


def save(directory: Path, **components: Counter) -> None:
    save_checkpoint(
        directory,
        site="a",
        round=4,
        epsilon=1.5,
        state=STATE,
        replay_state={"v": 2, "last": {"b": [4, 0]}},
        components=components,
    )


def test_every_component_comes_back_with_the_state_and_the_replay_guard(tmp_path: Path) -> None:
    save(tmp_path, counter=Counter(7))
    back = read_checkpoint(tmp_path, site="a")
    assert (back.round, back.epsilon) == (4, 1.5)
    assert torch.equal(back.state["x"], STATE["x"])
    assert back.replay_state == {"v": 2, "last": {"b": [4, 0]}}
    assert back.components == {"counter": {"value": 7}}


def test_a_component_file_the_metadata_does_not_vouch_for_is_ignored(tmp_path: Path) -> None:
    save(tmp_path, counter=Counter(7))
    stale = (tmp_path / component_file("counter")).read_bytes()
    save(tmp_path, counter=Counter(8))
    (tmp_path / component_file("counter")).write_bytes(stale)  # a crash between the two writes
    assert read_checkpoint(tmp_path, site="a").components == {}


def test_a_non_finite_state_is_never_written_nor_resumed(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="non-finite"):
        save_checkpoint(
            tmp_path,
            site="a",
            round=1,
            epsilon=0.0,
            state={"x": torch.tensor([1.0, float("nan")])},
            replay_state=None,
            components={},
        )
    save_state(
        tmp_path, {"x": torch.tensor([float("inf")])}, {"format": 2, "round": 1, "site": "a"}
    )
    with pytest.raises(CheckpointError, match="NaN or Inf"):
        read_checkpoint(tmp_path, site="a")


def test_a_checkpoint_of_another_site_is_refused(tmp_path: Path) -> None:
    save(tmp_path)
    with pytest.raises(CheckpointError, match="not b's"):
        read_checkpoint(tmp_path, site="b")


def test_a_checkpoint_from_before_the_redesign_is_refused_with_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Format 1 kept the replay guard as flattened exchange indices; reading it as (round,
    step) would misjudge freshness, so the daemon refuses to start instead of guessing."""
    sites = create_cluster(
        tmp_path / "c",
        nodes=2,
        topology="ring",
        sections=lambda i: {"daemon": {"problem": "quadratic", "site_index": i, "rounds": 1}},
    )
    old_meta = {
        "round": 3,
        "site": "site-00",
        "epsilon": 0.0,
        "replay_guard": {"v": 1, "last_round": {"site-01": 3}},
        "option_state": {},
    }
    save_state(sites[0] / "state", {"x": torch.zeros(256)}, old_meta)
    assert main(["run", "--site", str(sites[0])]) == 2
    err = capsys.readouterr().err
    assert "older gossipmed" in err and err.count("\n") == 1
