"""A site's data folder is read as regular files only, bounded while reading: an entry that
is a symlink to /dev/zero, a FIFO or a device is refused in one line naming it, a file or a
line past its limit is refused as soon as the limit is passed, and a symlink to a regular
file is read like the file.

The hostile cases run the real loader in a child process with a memory limit and a timeout,
so that the failure they guard against (memory exhaustion, a hang) stays in the child."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gossipmed.errors import DataError
from gossipmed.learn.config import DataConfig
from gossipmed.learn.datasets import load_dataset
from gossipmed.learn.datasets.bounded import MAX_LINE_BYTES, read_lines

CHILD_LIMIT_BYTES = 1 << 30
CHILD_TIMEOUT_S = 60.0

LOADER = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
from gossipmed.errors import GossipmedError
from gossipmed.learn.config import DataConfig
from gossipmed.learn.datasets import load_dataset
try:
    load_dataset(DataConfig(dataset="user", path=sys.argv[1], n_sites=1))
except GossipmedError as exc:
    print("refused:", exc)
    sys.exit(2)
print("loaded")
"""


def records(n: int = 30) -> str:
    return "".join(json.dumps({"text": f"note {i}", "label": "ab"[i % 2]}) + "\n" for i in range(n))


def load_in_child(path: Path) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            [sys.executable, "-c", LOADER.format(limit=CHILD_LIMIT_BYTES), str(path)],
            capture_output=True,
            text=True,
            timeout=CHILD_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"loading {path} did not finish within {CHILD_TIMEOUT_S:g} s (it hung)")


def data_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "train.jsonl").write_text(records())
    return folder


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom"])
def test_a_data_entry_linked_to_an_endless_device_is_refused_by_name(
    tmp_path: Path, device: str
) -> None:
    folder = data_folder(tmp_path)
    (folder / "more.txt").symlink_to(device)
    done = load_in_child(folder)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "more.txt" in done.stdout and "not a regular file" in done.stdout


def test_a_fifo_in_the_data_folder_is_refused_without_waiting(tmp_path: Path) -> None:
    folder = data_folder(tmp_path)
    os.mkfifo(folder / "pipe.jsonl")
    done = load_in_child(folder)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "pipe.jsonl" in done.stdout and "FIFO" in done.stdout


def test_a_symlink_to_a_regular_file_is_read_like_the_file(tmp_path: Path) -> None:
    elsewhere = tmp_path / "records.jsonl"
    elsewhere.write_text(records())
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "train.jsonl").symlink_to(elsewhere)
    direct = load_dataset(DataConfig(dataset="user", path=str(elsewhere), n_sites=1))
    linked = load_dataset(DataConfig(dataset="user", path=str(folder), n_sites=1))
    assert {ex.text for ex in linked.train + linked.test} == {
        ex.text for ex in direct.train + direct.test
    }


def test_a_line_past_the_limit_is_refused_before_the_file_is_read_on(tmp_path: Path) -> None:
    path = tmp_path / "long.txt"
    path.write_bytes(b"x" * (MAX_LINE_BYTES + 1) + b"\nshort\n")
    with pytest.raises(DataError, match=r"long\.txt:1: line longer than"):
        list(read_lines(path))


def test_bytes_are_counted_while_reading_not_taken_from_stat(tmp_path: Path) -> None:
    path = tmp_path / "grows.txt"
    path.write_bytes(b"line\n" * 1000)
    with pytest.raises(DataError, match=r"grows\.txt is larger than 4096 bytes"):
        list(read_lines(path, max_bytes=4096))
    lines = list(read_lines(path, max_bytes=5000, max_line=4))
    assert lines[0] == (1, "line") and len(lines) == 1000


@settings(max_examples=80, deadline=None)
@given(
    lines=st.lists(st.text(alphabet=st.characters(blacklist_characters="\n\r"), max_size=40)),
    max_bytes=st.integers(min_value=1, max_value=600),
    max_line=st.integers(min_value=1, max_value=60),
)
def test_read_lines_returns_the_file_or_refuses_exactly_when_a_limit_is_passed(
    tmp_path_factory: pytest.TempPathFactory, lines: list[str], max_bytes: int, max_line: int
) -> None:
    path = tmp_path_factory.mktemp("lines") / "f.txt"
    data = "".join(line + "\n" for line in lines).encode()
    path.write_bytes(data)
    too_big = len(data) > max_bytes or any(len(x.encode()) > max_line for x in lines)
    try:
        got = list(read_lines(path, max_bytes=max_bytes, max_line=max_line))
    except DataError as exc:
        assert too_big, exc
        assert str(path) in str(exc) and "\n" not in str(exc)
    else:
        assert not too_big
        assert got == list(enumerate(lines, 1))


def test_a_sites_own_file_is_read_again_at_every_load(tmp_path: Path) -> None:
    """Built-in sets are generated once per process; a site's records are never served from
    memory after the file changed."""
    path = tmp_path / "records.jsonl"
    path.write_text(records(30))
    config = DataConfig(dataset="user", path=str(path), n_sites=1)
    first = load_dataset(config)
    path.write_text(records(40))
    again = load_dataset(config)
    assert len(again.train) + len(again.test) == 40 != len(first.train) + len(first.test)
