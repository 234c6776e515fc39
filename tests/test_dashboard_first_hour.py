"""What the dashboard shows a newcomer: a simulation's bytes and baselines, log-axis ticks
that read as numbers (not `1e0.4`), and legends in full (HTML under the chart)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from node.report.dashboard import DirectoryView, asset
from node.report.history import COLUMNS

JS_HELPERS = ("isNum", "fmt", "linearTicks", "logTicks", "powerLabel")
TICKS_SCRIPT = r"""
const src = require("fs").readFileSync(0, "utf8");
const grab = (name) => new RegExp("function " + name + "\\([^]*?\\n  }\\n").exec(src)[0];
const helpers = new Function(NAMES.map(grab).join("\n") + "; return {logTicks, powerLabel};")();
const ranges = [[-0.52, 0.4], [-6, 0.48], [-12, 2], [0.34, 0.41]];
console.log(JSON.stringify(ranges.map(([a, b]) => helpers.logTicks(a, b).map(helpers.powerLabel))));
"""


def test_a_simulation_shows_its_bytes_and_its_baselines(tmp_path: Path) -> None:
    from node.cli import main

    out = tmp_path / "run"
    argv = ["simulate", "--problem", "quadratic", "--nodes", "3", "--topology", "ring"]
    assert main([*argv, "--rounds", "3", "--baselines", "--out", str(out), "--json"]) == 0
    doc = DirectoryView(out, live=False).snapshot()
    sent = COLUMNS.index("bytes_sent")
    for card in doc["sites"]:  # no daemon runs: the bytes come from the metrics
        rows = doc["history"][card["name"]]
        assert card["bytes_sent"] == sum(r[sent] for r in rows) > 0
    summary = json.loads((out / "summary.json").read_text())["final"]
    baselines = doc["baselines"]
    assert set(baselines) == {"local-only", "centralized"}
    assert [p[0] for p in baselines["local-only"]] == [0, 1, 2]
    assert baselines["local-only"][-1][1] == pytest.approx(summary["local"]["accuracy_mean"])
    assert baselines["centralized"][-1][1] == pytest.approx(summary["central"]["accuracy_mean"])


def test_the_page_labels_rounds_since_start_and_draws_legends_in_html() -> None:
    page, script = asset("index.html").decode(), asset("dashboard.js").decode()
    assert "rounds completed since start" in page
    assert '"1e" + y.toFixed' not in script  # the old fractional-exponent tick labels
    assert "chart-legend" in script and "chart-legend" in asset("dashboard.css").decode()


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node to run the page's script")
def test_log_ticks_read_as_numbers() -> None:
    code = TICKS_SCRIPT.replace("NAMES", json.dumps(list(JS_HELPERS)))
    res = subprocess.run(
        ["node", "-e", code], input=asset("dashboard.js").decode(), capture_output=True,
        text=True, timeout=60, check=True,
    )  # fmt: skip
    less_than_a_decade, six_decades, fourteen_decades, narrow = json.loads(res.stdout)
    assert less_than_a_decade == ["0.3", "0.51", "0.87", "1.48", "2.51"]
    assert six_decades == ["1e-6", "1e-4", "0.01", "1"]
    assert fourteen_decades == ["1e-12", "1e-9", "1e-6", "0.001", "1"]
    assert narrow == ["2.19", "2.28", "2.37", "2.47", "2.57"]
