"""Screenshots of the documentation site (the landing page and tutorial 2), in headless
Chromium over a strict `mkdocs build` of this checkout, served on 127.0.0.1.

    .venv/bin/python scripts/docs_screenshots.py [--out docs/assets/screenshots]

Writes OUT/landing.png and OUT/tutorial-three-hospitals.png. Needs the docs extra
(./scripts/setup) and Chromium (Debian's `chromium`; scripts/setup installs it as root).
Exits 3 when no browser is installed.
"""

from __future__ import annotations

import argparse
import functools
import os
import subprocess
import sys
import tempfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from dashboard_screenshot import EXIT_NO_BROWSER, browser  # noqa: E402

PAGES = {
    "landing.png": "",
    "tutorial-three-hospitals.png": "tutorials/three-hospitals/",
}
WINDOW = "1280,900"
VIRTUAL_TIME_MS = "3000"


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def build_site(out: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "NO_MKDOCS_2_WARNING": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"mkdocs build failed:\n{done.stderr[-4000:]}")


def screenshot(exe: str, url: str, png: Path, profile: Path) -> None:
    cmd = [
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
        f"--screenshot={png}",
    ]
    if os.geteuid() == 0:
        cmd.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox
    shot = subprocess.run([*cmd, url], capture_output=True, text=True, timeout=120)
    if shot.returncode != 0 or not png.is_file():
        raise SystemExit(f"chromium screenshot of {url} failed: {shot.stderr[-2000:]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "assets" / "screenshots")
    args = parser.parse_args()
    exe = browser()
    if exe is None:
        print("no chromium installed (scripts/setup installs it as root)", file=sys.stderr)
        return EXIT_NO_BROWSER
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gossipmed-docs-") as tmp:
        site = Path(tmp) / "site"
        build_site(site)
        handler = functools.partial(_QuietHandler, directory=str(site))
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            base = f"http://127.0.0.1:{server.server_address[1]}/"
            for name, path in PAGES.items():
                png = args.out / name
                screenshot(exe, base + path, png, Path(tmp) / "profile")
                print(f"wrote {png.relative_to(ROOT) if png.is_relative_to(ROOT) else png}")
        finally:
            server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
