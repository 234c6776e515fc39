"""Screenshots of the dashboard of a running 3-site cluster, in headless Chromium.

    .venv/bin/python scripts/dashboard_screenshot.py --out docs/ [--rounds 4]

Starts a loopback cluster of 3 real daemons (`gossipmed run` processes; the toy base model with
DP, site-00 outbound-only), waits until every site has completed `--rounds` rounds, serves
`gossipmed dashboard` on the cluster folder, and has Chromium (`--headless`, `--no-sandbox` as
root) render two pages after their scripts ran:

    OUT/dashboard-site.png, OUT/dashboard-site.html        site-01's own page (its daemon, /)
    OUT/dashboard-cluster.png, OUT/dashboard-cluster.html  `gossipmed dashboard CLUSTER`

The .html files are the rendered DOM (what tests/test_dashboard_browser.py checks). Then it
stops everything it started. Exit code 3 when no Chromium is installed (`scripts/setup`
installs Debian's chromium as root).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
WINDOW = "1280,1320"
VIRTUAL_TIME_MS = "6000"  # the page fetches its data, draws, and refreshes once
EXIT_NO_BROWSER = 3


def browser() -> str | None:
    return next((p for p in map(shutil.which, BROWSERS) if p), None)


def capture(exe: str, url: str, *, png: Path, dom: Path, profile: Path) -> None:
    common = [
        exe,
        "--headless",
        "--disable-gpu",
        "--hide-scrollbars",
        "--no-first-run",
        "--disable-extensions",
        "--force-device-scale-factor=1",
        f"--user-data-dir={profile}",
        f"--virtual-time-budget={VIRTUAL_TIME_MS}",
        f"--window-size={WINDOW}",
    ]
    if os.geteuid() == 0:
        common.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox
    shot = subprocess.run(
        [*common, f"--screenshot={png}", url], capture_output=True, text=True, timeout=120
    )
    if shot.returncode != 0 or not png.is_file():
        raise SystemExit(f"chromium screenshot of {url} failed: {shot.stderr[-2000:]}")
    dumped = subprocess.run([*common, "--dump-dom", url], capture_output=True, timeout=120)
    if dumped.returncode != 0 or not dumped.stdout:
        raise SystemExit(f"chromium --dump-dom of {url} failed: {dumped.stderr[-2000:]!r}")
    dom.write_bytes(dumped.stdout)


def make_cluster(directory: Path) -> list[Path]:
    from gossipmed.consortium.roster import load_roster, save_roster
    from gossipmed.consortium.setup import with_outbound_only
    from node.daemon.cluster import CONSORTIUM_FILE, create_cluster, ensure_toy_base, toy_sections

    base = ensure_toy_base(directory.parent / "toy-base")

    def sections(i: int) -> dict[str, dict[str, Any]]:
        tables = toy_sections(index=i, nodes=3, base_model=base, rounds=0, round_timeout_s=30.0)
        tables["dp"]["planned_steps"] = 400  # the budget lasts 200 rounds, not 20
        return tables

    sites = create_cluster(directory, nodes=3, topology="ring", sections=sections)
    consortium = directory / CONSORTIUM_FILE  # site-00 is a hospital that only dials out
    save_roster(with_outbound_only(load_roster(consortium), [sites[0].name]), consortium)
    return sites


def wait_for_rounds(sites: list[Path], rounds: int, timeout: float) -> None:
    from node.daemon.cluster import site_status, wait_until

    def done() -> bool:
        states = [site_status(s) for s in sites]
        return all(st["up"] and int(st.get("completed", 0)) >= rounds for st in states)

    wait_until(done, timeout=timeout, interval=1.0, what=f"{rounds} rounds on every site")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the PNG and DOM files")
    parser.add_argument("--rounds", type=int, default=4, help="rounds every site completes first")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for them")
    args = parser.parse_args()
    exe = browser()
    if exe is None:
        print("no chromium installed (scripts/setup installs it as root)", file=sys.stderr)
        return EXIT_NO_BROWSER
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(ROOT))
    from node.daemon.cluster import start_cluster, stop_cluster
    from node.daemon.control_client import site_dashboard_url

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gossipmed-dashboard-") as tmp:
        cluster = Path(tmp) / "cluster"
        sites = make_cluster(cluster)
        dashboard: subprocess.Popen[str] | None = None
        try:
            start_cluster(cluster)
            wait_for_rounds(sites, args.rounds, args.timeout)
            dashboard = subprocess.Popen(
                [sys.executable, "-m", "node.cli", "dashboard", str(cluster)],
                stdout=subprocess.PIPE,
                text=True,
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
            assert dashboard.stdout is not None
            line = dashboard.stdout.readline()
            cluster_url = line.split(": ", 1)[1].split(" ", 1)[0] if ": http" in line else ""
            if not cluster_url:
                raise SystemExit(f"gossipmed dashboard printed no address: {line!r}")
            # Both addresses carry their token in the fragment, as `gossipmed status --url`
            # and `gossipmed dashboard` print them.
            profile = Path(tmp) / "profile"
            pages = {"site": site_dashboard_url(sites[1] / "control.json"), "cluster": cluster_url}
            for name, url in pages.items():
                png, dom = args.out / f"dashboard-{name}.png", args.out / f"dashboard-{name}.html"
                capture(exe, url, png=png, dom=dom, profile=profile)
                print(f"{name}: {url} -> {png}, {dom}")
        finally:
            if dashboard is not None:
                dashboard.send_signal(signal.SIGTERM)
                try:
                    dashboard.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    dashboard.kill()
                    dashboard.wait(timeout=30)
            started = time.monotonic()
            stop_cluster(cluster, timeout=60)
            print(f"cluster stopped in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
