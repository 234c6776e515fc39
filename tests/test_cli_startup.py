"""The commands a new site runs first (init, consortium build and show) and `status`, which
scripts poll until a daemon answers, start without loading torch: each one is a fresh
interpreter, and torch alone costs seconds to import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = """
import sys
from node.cli import main
root = sys.argv[1]
for argv in (
    ["init", f"{root}/a", "--name", "a"],
    ["init", f"{root}/b", "--name", "b"],
    ["consortium", "build", f"{root}/a/card.toml", f"{root}/b/card.toml",
     "--topology", "complete", "--out", f"{root}/consortium.toml"],
    ["consortium", "show", f"{root}/consortium.toml"],
):
    assert main(argv) == 0, argv
assert main(["status", "--site", f"{root}/a"]) == 2  # polled until the daemon answers
loaded = sorted(m for m in ("torch", "transformers", "peft", "opacus") if m in sys.modules)
print("loaded:", ",".join(loaded) or "none")
"""


def test_init_consortium_and_status_load_no_torch(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "loaded: none"


def test_the_whole_cli_is_listed_when_no_command_comes_first() -> None:
    from node.cli import build_parser

    full = build_parser().format_help()
    assert "simulate" in full and "status" in full and "consortium" in full
    one = build_parser(command="status").format_help()
    assert "status" in one and "simulate" not in one
    assert "simulate" in build_parser(command="no-such-command").format_help()
