"""A simulation's `--out` folder: new, empty, or an earlier run that `--overwrite` clears.

Writing a run into a used folder mixed runs: the old baselines/ and summary.json stayed next
to the new metrics and `inspect` showed them together. So a non-empty folder is refused
unless --overwrite is given, and even then only a folder that looks like a run directory
(its config.toml has a [sim] table, which a run writes first) is cleared, wholly. A folder
holding anything else (a home directory typed by mistake, a site folder) is never deleted.
"""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

from gossipmed.errors import ConfigError

RUN_MARKER = "config.toml"


def looks_like_a_run(folder: Path) -> bool:
    try:
        doc = tomllib.loads((folder / RUN_MARKER).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return False
    return isinstance(doc.get("sim"), dict)


def prepare_run_dir(out: Path, *, overwrite: bool) -> None:
    """Make `out` an empty folder for a new run, or raise ConfigError saying why not."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder")
    if not out.exists() or not any(out.iterdir()):
        return
    if not looks_like_a_run(out):
        raise ConfigError(
            f"--out {out} is not empty and is not a simulation run directory (no {RUN_MARKER} "
            "with a [sim] table); pick a new folder (--overwrite clears only run directories)"
        )
    if not overwrite:
        raise ConfigError(
            f"--out {out} already holds a run; pick a new folder or add --overwrite to replace it"
        )
    for entry in out.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
