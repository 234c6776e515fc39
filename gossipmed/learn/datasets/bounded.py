"""Reading a site's own data files without trusting what the folder entry turns out to be.

A size check by `stat` before `open` says nothing about what is read: a symlink to /dev/zero
reports size 0 and then never ends, and opening a FIFO blocks until someone writes to it.
So the file is opened with O_NONBLOCK (a FIFO or device open returns at once), checked with
`fstat` on the open descriptor to be a regular file (a symlink to one is fine: it is the file
that is read that counts), and its bytes and line lengths are counted while reading, so no
limit depends on a size reported before the bytes arrive.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

from gossipmed.errors import DataError

MAX_FILE_BYTES = 512 * 1024 * 1024  # one data file
MAX_LINE_BYTES = 1024 * 1024  # one record (a JSON line or a line of text)
READ_CHUNK = 1024 * 1024


def open_regular(path: Path) -> int:
    """A read-only descriptor of `path`, refused unless it is a regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise DataError(f"cannot open data file {path}: {exc.strerror}") from exc
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise DataError(f"data file {path} is not a regular file ({_kind(mode)})")
        os.set_blocking(fd, True)  # a regular file never blocks; reads stay plain
    except BaseException:
        os.close(fd)
        raise
    return fd


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a folder"),
    ):
        if test(mode):
            return name
    return "not a file"


def read_lines(
    path: Path, *, max_bytes: int = MAX_FILE_BYTES, max_line: int = MAX_LINE_BYTES
) -> Iterator[tuple[int, str]]:
    """(line number, text) of each line of a UTF-8 file, newline stripped; DataError as soon
    as the bytes read pass `max_bytes` or a line passes `max_line`, never after."""
    path = Path(path)
    fd = open_regular(path)
    try:
        total = 0
        lineno = 0
        pending = b""
        while True:
            chunk = os.read(fd, READ_CHUNK)
            if not chunk:
                break
            total += len(chunk)
            if total > max_bytes:
                raise DataError(f"data file {path} is larger than {max_bytes} bytes")
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()
            for raw in lines:
                lineno += 1
                yield lineno, _decode(raw, path=path, lineno=lineno, max_line=max_line)
            if len(pending) > max_line:
                raise DataError(f"{path}:{lineno + 1}: line longer than {max_line} bytes")
        if pending:
            lineno += 1
            yield lineno, _decode(pending, path=path, lineno=lineno, max_line=max_line)
    finally:
        os.close(fd)


def _decode(raw: bytes, *, path: Path, lineno: int, max_line: int) -> str:
    if len(raw) > max_line:
        raise DataError(f"{path}:{lineno}: line longer than {max_line} bytes")
    try:
        return raw.decode("utf-8").removesuffix("\r")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}:{lineno}: not UTF-8 ({exc.reason})") from exc
