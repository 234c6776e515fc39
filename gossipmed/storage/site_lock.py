"""One writer per site folder: an flock on SITE_DIR/site.lock, with the holder's PID in it.

The daemon takes the lock before it opens the ledger or the checkpoint, and `ledger reset`
takes it too, so a second process can never open the live ledger and checkpoint of a running
(or still loading) daemon. A control-file check cannot do this: the control file appears only
once the daemon serves, long after the ledger is open. The kernel drops an flock when its
holder dies (kill -9 included), so a stale lock file never blocks a restart; the file is left
in place, because unlinking a lock file races with a process that has just opened it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from gossipmed.errors import GossipmedError
from gossipmed.storage.files import PRIVATE_FILE_MODE, private_dir

LOCK_FILE = "site.lock"
MAX_PID_BYTES = 32  # a PID and a newline; more is not ours


class SiteInUse(GossipmedError):
    """Another process holds the site folder's lock."""


def _holder(fd: int) -> str:
    raw = os.pread(fd, MAX_PID_BYTES, 0).strip()
    return f"pid {int(raw)}" if raw.isdigit() else "a process whose PID it did not write"


@contextlib.contextmanager
def site_lock(directory: Path, *, purpose: str) -> Iterator[Path]:
    """Hold SITE_DIR's lock for the `with` block; raise SiteInUse naming the holder's PID
    when another process has it. Never waits: a second daemon must not queue behind the
    first, it must say who is in the way."""
    directory = private_dir(Path(directory))
    path = directory / LOCK_FILE
    flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
    try:
        fd = os.open(path, flags, PRIVATE_FILE_MODE)
    except OSError as exc:
        raise SiteInUse(f"cannot open the site lock {path}: {exc.strerror}") from exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise SiteInUse(f"the site lock {path} is not a regular file")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SiteInUse(
                f"{directory} is in use by {_holder(fd)} (lock {path}); stop it before {purpose}"
            ) from None
        os.fchmod(fd, PRIVATE_FILE_MODE)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield path
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)  # no PID of a process that no longer holds it
    finally:
        os.close(fd)  # releases the flock
