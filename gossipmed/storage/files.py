"""Private files: everything a site writes is 0600 in 0700 folders.

A site's folder holds patient-derived state (adapters, metrics computed on its records), its
audit trail and its privacy ledger; another local account has no business reading any of it.
The umask cannot be trusted to say so (0022 is the common default), hence explicit modes:
files are created 0600 and an existing file we append to is tightened to 0600 on open; the
folders we create are 0700.

Existing folders are a separate question: a folder the caller named (a site folder, an
`--out` folder) may be shared on purpose, so it is only tightened when the caller says it
belongs to the site alone (`tighten=True`), and never when another account owns it or it has
the sticky bit (/tmp).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import IO, Any

PRIVATE_FILE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700

_OPEN_FLAGS = {
    "a": os.O_WRONLY | os.O_CREAT | os.O_APPEND,
    "w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
    "x": os.O_WRONLY | os.O_CREAT | os.O_EXCL,
}


def private_dir(path: Path, *, tighten: bool = False) -> Path:
    """Make `path` a folder, creating each missing level 0700.

    With `tighten`, an existing folder that this account owns loses its group and other
    bits as well (for folders that are the site's own, such as state/).
    """
    path = Path(path)
    missing: list[Path] = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for level in reversed(missing):
        try:
            os.mkdir(level, PRIVATE_DIR_MODE)
        except FileExistsError:
            continue  # created concurrently: not ours to chmod
        os.chmod(level, PRIVATE_DIR_MODE)  # the umask may have cleared owner bits
    if not path.is_dir():
        raise NotADirectoryError(f"{path} exists and is not a folder")
    if tighten and not missing:
        st = path.stat()
        loose = stat.S_IMODE(st.st_mode) & 0o077
        if loose and st.st_uid == os.geteuid() and not st.st_mode & stat.S_ISVTX:
            os.chmod(path, stat.S_IMODE(st.st_mode) & ~0o077)
    return path


def open_private(path: Path, mode: str = "a", *, encoding: str = "utf-8") -> IO[Any]:
    """open() for a file only this account may read: created 0600, and an existing file
    (say, an audit log written 0644 by an older version) is set to 0600 before any byte is
    written. `mode` is "a", "w" or "x", with "b" for bytes. Missing folders are made 0700."""
    base = mode.replace("b", "")
    if base not in _OPEN_FLAGS or mode.count("b") > 1:
        raise ValueError(f"open_private mode must be a, w or x (optionally with b), not {mode!r}")
    path = Path(path)
    private_dir(path.parent)
    fd = os.open(path, _OPEN_FLAGS[base] | os.O_CLOEXEC, PRIVATE_FILE_MODE)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) != PRIVATE_FILE_MODE:
            os.fchmod(fd, PRIVATE_FILE_MODE)
        if "b" in mode:
            return os.fdopen(fd, base + "b")
        return os.fdopen(fd, base, encoding=encoding)
    except BaseException:
        os.close(fd)
        raise


def fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable (best effort where the OS cannot open folders)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
