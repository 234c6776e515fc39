"""Every output shows what a task measures: accuracy and its per-token-normalised variant for
label and multiple-choice tasks, response loss and perplexity for free text (which has no
accuracy), and no `--json` output ever prints NaN or Infinity."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from gossipmed.metrics import METRICS_FILE, MetricsWriter, RoundRecord
from gossipmed.strict_json import dumps
from node.cli import main
from node.report.dashboard import DirectoryView, site_snapshot
from node.report.evaluation import describe, report_metrics

ROOT = Path(__file__).resolve().parents[1]


def _strict(text: str) -> Any:
    def refuse(name: str) -> None:
        raise AssertionError(f"{name} in JSON output")

    return json.loads(text, parse_constant=refuse)


def rec(site: str, r: int, **kw: Any) -> RoundRecord:
    fields: dict[str, Any] = dict(
        round=r,
        site=site,
        train_loss=1.0,
        eval_loss=3.0 - 0.1 * r,
        accuracy=None,
        consensus_distance=1.0 / (r + 1),
        epsilon=0.5 * r,
        bytes_sent=1000,
        bytes_received=900,
        neighbours_heard=2,
        seconds=0.1,
        neighbours_expected=2,
        eval_perplexity=20.0 - r,
    )
    fields.update(kw)
    return RoundRecord(**fields)


def _run(folder: Path, *records: RoundRecord) -> Path:
    folder.mkdir(parents=True)
    with MetricsWriter(folder / METRICS_FILE) as writer:
        for r in records:
            writer.write(r)
    return folder


def test_an_evaluation_reads_as_accuracy_or_else_loss_and_perplexity() -> None:
    labelled = {"accuracy": 0.41, "accuracy_norm": 0.38, "eval_loss": 1.2, "eval_perplexity": 3}
    assert describe(labelled) == "accuracy 0.410 (normalised 0.380), eval loss 1.200"
    free = {"accuracy": float("nan"), "eval_loss": 2.5, "eval_perplexity": 12.18}
    assert describe(free) == "eval loss 2.500, perplexity 12.18"
    assert describe(rec("a", 0, eval_loss=None, eval_perplexity=None)) == ""

    class Report:  # today's EvalReport: NaN accuracy for free text, `perplexity`
        loss, perplexity, accuracy = 2.0, 7.4, float("nan")

    assert report_metrics(Report()) == {
        "accuracy": None,
        "accuracy_norm": None,
        "eval_loss": 2.0,
        "eval_perplexity": 7.4,
    }


def test_inspect_falls_back_to_loss_and_perplexity_for_free_text(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _run(tmp_path / "free", *(rec(s, r) for r in range(3) for s in "ab"))
    assert main(["inspect", str(run)]) == 0
    text = capsys.readouterr().out
    per_round, final_table = text.split("final")
    assert "eval loss" in per_round and "perplexity" in per_round and "acc mean" not in per_round
    assert "perplexity" in final_table
    assert main(["inspect", str(run), "--json"]) == 0
    final = _strict(capsys.readouterr().out)["final"]["gossip"]
    assert final["round"] == 2 and final["accuracy_mean"] is None  # round 3 is the last eval
    assert final["eval_loss_mean"] == pytest.approx(2.8)
    assert final["eval_perplexity_mean"] == pytest.approx(18.0)


def test_inspect_shows_the_normalised_accuracy_when_there_is_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _run(
        tmp_path / "mc",
        *(
            rec(s, r, accuracy=0.3 + 0.1 * r, accuracy_norm=0.25 + 0.1 * r)
            for r in range(2)
            for s in "ab"
        ),
    )
    assert main(["inspect", str(run)]) == 0
    text = capsys.readouterr().out
    assert "acc mean" in text and "acc norm" in text.split("final")[1] and "0.350" in text
    assert main(["inspect", str(run), "--json"]) == 0
    assert _strict(capsys.readouterr().out)["final"]["gossip"]["accuracy_norm_mean"] == (
        pytest.approx(0.35)
    )


def test_inspect_plots_perplexity_when_there_is_no_accuracy(tmp_path: Path) -> None:
    run = _run(tmp_path / "free", *(rec("a", r) for r in range(3)))
    assert main(["inspect", str(run), "--plot", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").stat().st_size > 0


def test_the_dashboard_charts_loss_when_no_round_has_an_accuracy(tmp_path: Path) -> None:
    free = DirectoryView(_run(tmp_path / "free", rec("a", 0), rec("a", 1)), live=False)
    snap = free.snapshot()
    assert snap["score"] == {"column": "eval_loss", "label": "eval loss"}
    card = snap["sites"][0]
    assert card["eval_loss"] == pytest.approx(2.9) and card["eval_perplexity"] == 19.0
    scored = DirectoryView(
        _run(tmp_path / "mc", rec("a", 0, accuracy=0.5, accuracy_norm=0.4)), live=False
    ).snapshot()
    assert scored["score"]["column"] == "accuracy" and scored["sites"][0]["accuracy_norm"] == 0.4
    status = {"site": "a", "round": 1, "peers": []}
    assert site_snapshot(status, snap["history"])["score"]["column"] == "eval_loss"
    page = (ROOT / "node/report/dashboard/dashboard.js").read_text()
    assert "score.column" in page  # the page draws what the snapshot names


def test_status_prints_the_new_metrics_and_skips_unmeasured_ones(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from node.commands.status import print_status

    last = rec("a", 4, accuracy=None, accuracy_norm=None).to_json()
    print_status(
        {"site": "a", "pid": 1, "round": 5, "phase": "idle", "completed": 5, "last_metrics": last}
    )
    text = capsys.readouterr().out
    assert "eval_perplexity 16" in text and "accuracy" not in text


def test_the_daemon_logs_the_evaluation_of_each_round() -> None:
    from node.round import driver

    source = Path(driver.__file__).read_text()
    assert "describe_eval(record)" in source


def test_json_outputs_never_carry_nan_or_infinity() -> None:
    assert dumps({"a": float("nan"), "b": [float("inf"), 1.0], "c": (float("-inf"),)}) == (
        '{"a": null, "b": [null, 1.0], "c": [null]}'
    )
    raw = [
        path.name
        for path in sorted((ROOT / "node/commands").glob("*.py"))
        if re.search(r"\bjson\.dumps\(", path.read_text())
    ]
    assert raw == [], "print --json output with gossipmed.strict_json.dumps"


@pytest.mark.slow
def test_train_json_for_free_text_is_strict_json(
    tiny_base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("\n".join(f"patient {i} reports chest pain after exercise" for i in range(60)))
    argv = ["train", "--dataset", "user", "--data-path", str(notes), "--base-model", str(tiny_base)]
    argv += ["--sites", "1", "--steps", "2", "--batch-size", "4", "--eval-size", "6", "--json"]
    assert main(argv) == 0
    out = _strict(capsys.readouterr().out)  # NaN accuracy used to print as NaN
    assert out["accuracy_after"] is None and out["loss_after"] > 0
    assert out["perplexity_after"] > 1
