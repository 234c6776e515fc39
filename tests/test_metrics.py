"""Consensus distance and the JSONL metrics format."""

import json
import math
from pathlib import Path

import pytest
import torch

from gossipmed.metrics import (
    MetricsError,
    MetricsWriter,
    RoundRecord,
    consensus_distances,
    local_consensus_distance,
    read_metrics,
)


def _record(round: int, site: str) -> RoundRecord:
    return RoundRecord(
        round=round,
        site=site,
        train_loss=1.0,
        eval_loss=0.5,
        accuracy=0.75,
        consensus_distance=0.1,
        epsilon=2.0,
        bytes_sent=10,
        bytes_received=20,
        neighbours_heard=2,
        seconds=0.01,
    )


def test_consensus_distance_matches_its_definition() -> None:
    gen = torch.Generator().manual_seed(0)
    states = [
        {"a": torch.randn(3, generator=gen), "b": torch.randn(2, 2, generator=gen)}
        for _ in range(5)
    ]
    flat = torch.stack([torch.cat([s["a"], s["b"].reshape(-1)]).double() for s in states])
    centred = flat - flat.mean(0)
    expected_sites = centred.norm(dim=1)
    overall, per_site = consensus_distances(states)
    assert per_site == pytest.approx(expected_sites.tolist())
    assert overall == pytest.approx(math.sqrt(float((expected_sites**2).mean())))


def test_identical_states_are_at_consensus() -> None:
    s = {"w": torch.ones(4)}
    assert consensus_distances([s, s, s])[0] == 0.0
    assert local_consensus_distance(s, [s, s]) == 0.0
    assert local_consensus_distance({"w": torch.zeros(4)}, []) == 0.0


def test_local_distance_is_to_the_neighbourhood_mean() -> None:
    own, other = {"w": torch.tensor([0.0])}, {"w": torch.tensor([2.0])}
    assert local_consensus_distance(own, [other]) == pytest.approx(1.0)


def test_records_round_trip_and_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    with MetricsWriter(path) as w:
        w.write(_record(0, "site-00"))
        w.write(_record(0, "site-01"))
    with path.open("a") as fh:
        fh.write('{"round": 1, "si')  # crash mid-write
    records = read_metrics(path)
    assert records == [_record(0, "site-00"), _record(0, "site-01")]
    line = json.loads(path.read_text().splitlines()[0])
    for key in (
        "round",
        "site",
        "train_loss",
        "eval_loss",
        "accuracy",
        "consensus_distance",
        "epsilon",
        "bytes_sent",
        "bytes_received",
        "neighbours_heard",
        "seconds",
    ):
        assert key in line


def test_a_corrupt_middle_line_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('not json\n{"round": 0, "site": "a"}\n')
    with pytest.raises(MetricsError):
        read_metrics(path)


def test_non_private_epsilon_round_trips_as_json_null(tmp_path: Path) -> None:
    """Non-private learners report epsilon = inf; the JSONL stays strict JSON."""
    record = RoundRecord(
        round=0, site="a", train_loss=1.0, eval_loss=None, accuracy=None,
        consensus_distance=None, epsilon=math.inf, bytes_sent=0, bytes_received=0,
        neighbours_heard=0, seconds=0.1,
    )  # fmt: skip
    writer = MetricsWriter(tmp_path / "m.jsonl")
    writer.write(record)
    writer.close()
    line = (tmp_path / "m.jsonl").read_text()
    assert '"epsilon": null' in line
    assert read_metrics(tmp_path / "m.jsonl")[0].epsilon == math.inf


def test_a_diverged_round_is_written_with_nulls_and_says_which(tmp_path: Path) -> None:
    """A run whose states overflow (a scaling attacker got through) keeps its records."""
    record = RoundRecord(
        round=3, site="a", train_loss=math.nan, eval_loss=None, accuracy=0.1,
        consensus_distance=math.inf, epsilon=1.0, bytes_sent=0, bytes_received=0,
        neighbours_heard=0, seconds=0.1,
    )  # fmt: skip
    writer = MetricsWriter(tmp_path / "m.jsonl")
    writer.write(record)
    writer.close()
    doc = json.loads((tmp_path / "m.jsonl").read_text())
    assert doc["non_finite"] == ["train_loss", "consensus_distance"]
    back = read_metrics(tmp_path / "m.jsonl")[0]
    assert (back.train_loss, back.consensus_distance, back.accuracy) == (None, None, 0.1)
