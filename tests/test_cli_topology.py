"""`gossipmed topology` as a user and a script see it: numbers, JSON, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from node.cli import main


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "node.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def topology_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, object]:
    assert main(["topology", *args, "--json"]) == 0
    doc: dict[str, object] = json.loads(capsys.readouterr().out)
    return doc


def test_ring_of_16_matches_the_closed_form(capsys: pytest.CaptureFixture[str]) -> None:
    doc = topology_json(capsys, "ring", "--nodes", "16")
    for key in ("kind", "nodes", "edges", "min_degree", "max_degree", "diameter"):
        assert key in doc
    assert doc["lambda2"] == pytest.approx(0.9493, abs=1e-3)
    assert doc["predicted_rounds"] == 133
    assert doc["spectral_gap"] == pytest.approx(1 - 0.9493, abs=1e-3)


def test_torus_and_complete(capsys: pytest.CaptureFixture[str]) -> None:
    assert topology_json(capsys, "torus", "--nodes", "16")["lambda2"] == pytest.approx(0.6)
    complete = topology_json(capsys, "complete", "--nodes", "16")
    assert complete["lambda2"] == pytest.approx(0.0, abs=1e-9)
    assert complete["predicted_rounds"] == 1


def test_auto_gossip_steps_is_the_fewest_exchanges_with_lambda2_to_the_k_under_0_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert topology_json(capsys, "torus", "--nodes", "16")["auto_gossip_steps"] == 4  # 0.6^4
    assert topology_json(capsys, "ring", "--nodes", "8")["auto_gossip_steps"] == 8  # 0.805^8
    assert topology_json(capsys, "ring", "--nodes", "16")["auto_gossip_steps"] == 16  # capped
    assert topology_json(capsys, "complete", "--nodes", "16")["auto_gossip_steps"] == 1


def test_random_regular_is_reproducible_run_to_run(tmp_path: Path) -> None:
    outs = []
    for i in range(2):
        saved = tmp_path / f"g{i}.json"
        proc = run_cli(
            "topology", "random-regular", "--nodes", "16", "--degree", "4", "--seed", "11",
            "--json", "--save", str(saved),
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        outs.append((proc.stdout, saved.read_text()))
    assert outs[0] == outs[1]


def test_plot_writes_a_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ring.png"
    assert main(["topology", "ring", "--nodes", "8", "--plot", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "plot written" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "content"),
    [
        (["ring", "--nodes", "0"], None),
        (["random-regular", "--nodes", "7", "--degree", "3"], None),
        (["file", "--file", "{file}"], "a b\nb b\n"),
        (["file", "--file", "{file}"], "a b\nc d\n"),
        (["ring", "--nodes", "many"], None),
        (["no-such-kind", "--nodes", "4"], None),
    ],
)
def test_bad_input_gives_one_line_error_and_exit_2(
    tmp_path: Path, args: list[str], content: str | None
) -> None:
    graph_file = tmp_path / "graph.txt"
    if content is not None:
        graph_file.write_text(content)
    proc = run_cli("topology", *[a.replace("{file}", str(graph_file)) for a in args])
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "error" in proc.stderr


def test_version_and_help() -> None:
    assert run_cli("--version").stdout.startswith("gossipmed ")
    helptext = run_cli("--help").stdout
    assert "topology" in helptext
