"""Progress of long commands on stderr: a live bar on a terminal, plain lines otherwise.

A run under nohup, systemd or a CI log has no terminal: a live bar there either draws
nothing until the end or fills the log with control codes. So when stderr is not a terminal
each update is one plain line (`gossip rounds: 3/20 (41 s)`), which is what such a log needs
to show that the run is alive and how far it got.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

Update = Callable[[str, int, int], None]  # (label, done, total)


def _plain(stream: TextIO, *, unit: str) -> Update:
    start = time.monotonic()
    last: dict[str, int] = {}

    def update(label: str, done: int, total: int) -> None:
        if last.get(label) == done:
            return
        last[label] = done
        elapsed = time.monotonic() - start
        print(f"{label}: {done}/{total} {unit} ({elapsed:.0f} s)".replace("  ", " "), file=stream)
        stream.flush()

    return update


@contextmanager
def progress_lines(
    *, quiet: bool = False, unit: str = "", stream: TextIO | None = None
) -> Iterator[Update]:
    """An `update(label, done, total)` callable for the duration of the block. Several labels
    (e.g. gossip, local-only) get a bar or a line each."""
    stream = stream if stream is not None else sys.stderr
    if quiet:
        yield lambda label, done, total: None
        return
    if not stream.isatty():
        yield _plain(stream, unit=unit)
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(file=stream),
        transient=False,
    ) as bar:
        tasks: dict[str, int] = {}

        def update(label: str, done: int, total: int) -> None:
            if label not in tasks:
                tasks[label] = int(bar.add_task(f"{label} {unit}".strip(), total=total))
            bar.update(tasks[label], completed=done)  # type: ignore[arg-type]

        yield update
