"""Runs a tutorial page's `bash` blocks as a reader would, through Sybil.

The conventions (shared with the docs writers):

- every fenced block with info string `bash` runs, in page order, in one fresh temporary
  working directory per page, with the checkout's `gossipmed` first on PATH; a block stops
  at its first failing command (`set -e -o pipefail`) and the test fails with its output;
- a block directly preceded by `<!-- docs-test: skip -->` is shown but not run (GPU lines,
  other hosts, ray/ssh/systemctl);
- `<!-- docs-test: replace "A" "B" -->` anywhere on the page replaces A by B in every block
  before it runs (small settings for tests: fewer rounds, the test suite's toy models);
  `\"` is a quote and `\n` a new line inside A or B;
- variables and the working directory carry from one block to the next, as in one shell;
  commands started in the background (`&`) are stopped by a later block of the page, and
  whatever is left of a block's process group is killed when the page ends.

Blocks with other info strings (`text` for output, `toml`, ...) are not run.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from docs_support import FENCE, ROOT
from sybil import Document, Example, Region, Sybil

SKIP = re.compile(r"<!--\s*docs-test:\s*skip\s*-->\s*\Z")
REPLACE = re.compile(
    r'<!--\s*docs-test:\s*replace\s+"((?:[^"\\]|\\.)*)"\s+"((?:[^"\\]|\\.)*)"\s*-->'
)
RUN_LANGUAGE = "bash"
BLOCK_TIMEOUT_S = 240  # under pytest-timeout (300 s), so the failure shows the output
OUTPUT_TAIL = 4000


@dataclass(frozen=True)
class Block:
    source: str
    skipped: bool


def replacements(text: str) -> list[tuple[str, str]]:
    """The page's (old, new) pairs; inside the quotes, \\" is a quote and \\n a new line."""
    return [(_unescape(a), _unescape(b)) for a, b in REPLACE.findall(text)]


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), text)


def parse_bash_blocks(document: Document) -> Iterator[Region]:
    """One Sybil region per `bash` block, with the page's replacements applied."""
    swaps = replacements(document.text)
    for m in FENCE.finditer(document.text):
        info = (m.group("info").split() or [""])[0]
        if info != RUN_LANGUAGE:
            continue
        indent = len(m.group("indent"))
        source = "\n".join(line[indent:] for line in m.group("body").splitlines())
        for old, new in swaps:
            source = source.replace(old, new)
        skipped = SKIP.search(document.text[: m.start()].rstrip() + "\n") is not None
        yield Region(m.start(), m.end(), Block(source, skipped), evaluate_block)


@dataclass
class PageShell:
    """What one page's blocks share: the working directory, the environment, the shell
    variables set so far, and the process groups started (for the final clean-up)."""

    workdir: Path
    env: dict[str, str]
    state: Path
    groups: list[int] = field(default_factory=list)
    log: list[str] = field(default_factory=list)

    def run(self, source: str, *, line: int) -> None:
        output = self.state / f"block-{line}.out"
        script = "\n".join(
            [
                "set -e -o pipefail",
                f"cd {shlex.quote(str(self.workdir))}",
                f'[ -f {self.state}/cwd ] && cd "$(cat {self.state}/cwd)"',
                f"[ -f {self.state}/vars ] && . {self.state}/vars",
                "trap 'echo \"docs-test: failed: $BASH_COMMAND\" >&2' ERR",
                source,
                "trap - ERR",
                # what the page itself set (variables, functions), not bash's read-only ones
                f"pwd > {self.state}/cwd",
                f"( declare -p $(compgen -v | grep -vxF -f {self.state}/baseline) "
                f"| grep -v '^declare -[a-zA-Z]*r'; declare -f ) > {self.state}/vars 2>/dev/null"
                " || true",
            ]
        )
        with output.open("wb") as out:
            proc = subprocess.Popen(
                ["bash", "-c", script],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,  # its own process group: background jobs included
            )
            self.groups.append(proc.pid)
            try:
                code = proc.wait(timeout=BLOCK_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                _kill_group(proc.pid)
                proc.wait()
                code = -1
            except BaseException as exc:  # pytest-timeout, Ctrl-C: say where the page was
                tail = output.read_text(errors="replace")[-OUTPUT_TAIL:]
                exc.add_note(f"while running the block at line {line}; its output so far:\n{tail}")
                raise
        text = output.read_text(errors="replace")
        self.log.append(f"--- line {line}\n{source}\n{text}")
        if code != 0:
            status = "timed out" if code == -1 else f"exit {code}"
            raise AssertionError(
                f"block at line {line} failed ({status}):\n{source}\n--- output (tail):\n"
                f"{text[-OUTPUT_TAIL:]}"
            )

    def close(self) -> None:
        for group in self.groups:
            _kill_group(group)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def evaluate_block(example: Example) -> None:
    block: Block = example.parsed
    if block.skipped:
        return
    shell: PageShell = example.namespace["shell"]
    shell.run(block.source, line=example.line)


def page_environment(bin_dir: Path, home: Path, extra: Mapping[str, str]) -> dict[str, str]:
    """The reader's environment: this checkout's gossipmed and python first on PATH, no
    network for Hugging Face, caches in the test's own folder (never ~/.cache)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    launcher = bin_dir / "gossipmed"
    launcher.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m node.cli "$@"\n')
    launcher.chmod(0o755)
    python = bin_dir / "python"
    if not python.exists():
        python.symlink_to(sys.executable)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYTEST_", "COV_")) and k not in ("PYTHONPATH", "VIRTUAL_ENV")
    }
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=str(ROOT),
        HOME=str(home),
        XDG_CACHE_HOME=str(home / ".cache"),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PYTHONHASHSEED="0",
        **extra,
    )
    return env


def run_page(path: Path, *, workdir: Path, extra_env: Mapping[str, str]) -> list[str]:
    """Run every `bash` block of the page in order; returns the transcript (for debugging).
    Raises AssertionError, naming the line, at the first block that fails."""
    state = workdir / ".docs-test"
    state.mkdir(parents=True)
    home = workdir / ".home"
    home.mkdir()
    env = page_environment(state / "bin", home, extra_env)
    baseline = subprocess.run(
        ["bash", "-c", "compgen -v"], env=env, capture_output=True, text=True, check=True
    ).stdout
    (state / "baseline").write_text(baseline + "BASH_COMMAND\n")
    shell = PageShell(workdir=workdir, env=env, state=state)
    document = SYBIL.parse(path)
    document.namespace["shell"] = shell
    try:
        for example in document:
            example.evaluate()
    finally:
        shell.close()
    return shell.log


SYBIL = Sybil(parsers=[parse_bash_blocks], patterns=["*.md"], path=str(ROOT / "docs"))
