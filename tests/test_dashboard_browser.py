"""The dashboard in a real browser: `scripts/dashboard_screenshot.py` (the command that made
docs/dashboard-*.png) starts a 3-site loopback cluster of real daemons, and headless Chromium
renders a daemon's own page and `gossipmed dashboard` of the cluster folder; the rendered DOM
must show the round, the sites and drawn charts. Skipped only where Chromium is not installed
(`scripts/setup` installs Debian's chromium as root)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.network]

ROOT = Path(__file__).resolve().parents[1]
SITES = ("site-00", "site-01", "site-02")


def test_chromium_renders_the_site_and_cluster_dashboards(tmp_path: Path) -> None:
    if not any(shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")):
        pytest.skip("Chromium is not installed (scripts/setup installs Debian's chromium as root)")
    res = subprocess.run(
        [
            sys.executable,
            "scripts/dashboard_screenshot.py",
            "--out",
            str(tmp_path),
            "--rounds",
            "2",
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    for page in ("site", "cluster"):
        png = (tmp_path / f"dashboard-{page}.png").read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 20_000
        dom = (tmp_path / f"dashboard-{page}.html").read_text()
        rounds = re.search(r'id="round">(\d+)<', dom)
        assert rounds is not None and int(rounds.group(1)) >= 2, "no round drawn"
        assert all(site in dom for site in SITES)
        charts = re.findall(r'<svg class="chart" id="chart-(\w+)"[^>]*>(.*?)</svg>', dom, re.S)
        assert {name for name, _ in charts} == {"accuracy", "consensus", "bytes", "epsilon"}
        assert all('class="series"' in body for _, body in charts), "a chart has no line"
        assert "not updated" not in dom
        assert not re.search(r">1e-?\d+\.\d", dom), "a log tick with a fractional exponent"
        assert dom.count('class="chart-legend"') == 4  # every chart names its lines in full
        assert "site-01 sent</span>" in dom and "site-01 received</span>" in dom
    site_dom = (tmp_path / "dashboard-site.html").read_text()
    assert "gossipmed: site-01" in site_dom
    assert "rounds completed since start" in site_dom
    assert "it dials" in site_dom  # site-00 is outbound-only: it dials site-01
    cluster_dom = (tmp_path / "dashboard-cluster.html").read_text()
    assert len(re.findall(r'<g class="site" data-site="site-0\d"', cluster_dom)) == 3
    assert 'stroke-dasharray="4 3"' in cluster_dom  # the unreachable site is drawn dashed
