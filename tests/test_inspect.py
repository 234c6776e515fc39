"""`gossipmed inspect`: table, --json and a PNG, for run, site and cluster directories."""

import json
import shutil
from pathlib import Path

import pytest

from node.cli import main


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("inspect") / "run"
    assert (
        main(
            [
                "simulate",
                "--problem",
                "quadratic",
                "--nodes",
                "8",
                "--topology",
                "ring",
                "--rounds",
                "12",
                "--no-train",
                "--baselines",
                "--json",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    return out


def test_table_shows_rounds_baselines_and_lambda2(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["inspect", str(run_dir)]) == 0
    text = capsys.readouterr().out
    assert "consensus D" in text and "local-only" in text and "centralized" in text
    assert "lambda2 0.805" in text  # MH ring of 8: 1/3 + 2/3 cos(2 pi / 8)


def test_json_has_per_round_final_and_contraction(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["inspect", str(run_dir), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["per_round"]["gossip"]) == 12
    row = data["per_round"]["gossip"][3]
    for key in (
        "accuracy_mean",
        "accuracy_min",
        "accuracy_max",
        "consensus_distance",
        "contraction",
        "epsilon_max",
        "bytes_sent",
    ):
        assert key in row
    assert data["contraction"]["measured"] == pytest.approx(
        data["contraction"]["expected"], rel=0.1
    )  # lambda2 ** gossip_steps: training is off in this run


def test_plot_writes_a_png(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "curves.png"
    assert main(["inspect", str(run_dir), "--plot", str(out), "--json"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 20_000


def test_a_cluster_of_site_directories_is_read_like_a_run(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    for site in ("site-00", "site-01"):
        (tmp_path / site).mkdir()
        (tmp_path / site / "metrics.jsonl").write_text(
            "\n".join(line for line in lines if f'"site": "{site}"' in line) + "\n"
        )
    assert main(["inspect", str(tmp_path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["per_round"]["gossip"][0]["sites"] == 2


def test_missing_metrics_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["inspect", str(tmp_path)]) == 2
    assert "metrics.jsonl" in capsys.readouterr().err
    shutil.rmtree(tmp_path)
