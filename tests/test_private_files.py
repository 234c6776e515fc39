"""Everything a site writes is 0600 in 0700 folders, whatever the umask (issue #13).

Each test runs under umask 0022, the common default, so a 0600 result is the code's doing.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from gossipmed.consortium.audit import ACCEPTED, AuditLog, read_audit
from gossipmed.metrics import MetricsWriter, RoundRecord, read_metrics
from gossipmed.privacy.ledger import PrivacyLedger
from gossipmed.storage import files
from gossipmed.storage.checkpoint import META_FILE, STATE_FILE, atomic_write_bytes, save_state
from gossipmed.storage.files import open_private, private_dir


@pytest.fixture(autouse=True)
def common_umask() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def record(r: int) -> RoundRecord:
    return RoundRecord(
        round=r,
        site="site-00",
        train_loss=1.0,
        eval_loss=None,
        accuracy=None,
        consensus_distance=None,
        epsilon=0.5,
        bytes_sent=0,
        bytes_received=0,
        neighbours_heard=0,
        seconds=0.1,
    )


# --- the helpers ----------------------------------------------------------------------------


def test_private_dir_creates_every_missing_level_0700(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    leaf = private_dir(tmp_path / "a" / "b" / "c")
    assert leaf.is_dir()
    for level in (tmp_path / "a", tmp_path / "a" / "b", leaf):
        assert mode(level) == 0o700, level
    assert mode(tmp_path) == 0o755  # an existing parent is left alone


def test_private_dir_leaves_an_existing_folder_alone_unless_told_to_tighten(
    tmp_path: Path,
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    os.chmod(shared, 0o755)
    private_dir(shared)
    assert mode(shared) == 0o755
    private_dir(shared, tighten=True)
    assert mode(shared) == 0o700


def test_tighten_spares_folders_of_other_accounts_and_sticky_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sticky = tmp_path / "tmp-like"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    private_dir(sticky, tighten=True)
    assert mode(sticky) == 0o1777

    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chmod(theirs, 0o755)
    real_uid = os.geteuid()
    monkeypatch.setattr(files.os, "geteuid", lambda: real_uid + 1)
    private_dir(theirs, tighten=True)
    assert mode(theirs) == 0o755


def test_private_dir_refuses_a_file_in_the_way(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError):
        private_dir(tmp_path / "f")


@pytest.mark.parametrize("how", ["a", "w", "x", "ab", "wb", "xb"])
def test_open_private_creates_0600_files_in_0700_folders(tmp_path: Path, how: str) -> None:
    path = tmp_path / "new" / "file"
    with open_private(path, how) as fh:
        fh.write(b"data" if "b" in how else "data")
    assert path.read_bytes() == b"data"
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700


def test_open_private_tightens_an_existing_file_before_writing(tmp_path: Path) -> None:
    path = tmp_path / "old.jsonl"
    path.write_text("line 1\n")
    os.chmod(path, 0o644)
    with open_private(path, "a") as fh:
        assert mode(path) == 0o600
        fh.write("line 2\n")
    assert path.read_text() == "line 1\nline 2\n"
    assert mode(path) == 0o600


def test_open_private_refuses_read_modes(tmp_path: Path) -> None:
    for bad in ("r", "r+", "a+", "abb"):
        with pytest.raises(ValueError):
            open_private(tmp_path / "f", bad)


# --- each writer ----------------------------------------------------------------------------


def test_atomic_writes_are_0600_in_new_0700_folders(tmp_path: Path) -> None:
    path = tmp_path / "made" / "control.json"
    atomic_write_bytes(path, b"{}")
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700
    old = tmp_path / "was-public"
    old.write_bytes(b"old")
    os.chmod(old, 0o644)
    atomic_write_bytes(old, b"new")
    assert (old.read_bytes(), mode(old)) == (b"new", 0o600)


def test_checkpoints_are_0600_and_the_state_folder_becomes_0700(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    os.chmod(state_dir, 0o755)  # as an older version left it
    save_state(state_dir, {"w": torch.zeros(3)}, {"round": 0})
    assert mode(state_dir) == 0o700
    assert mode(state_dir / STATE_FILE) == 0o600
    assert mode(state_dir / META_FILE) == 0o600


def test_the_audit_log_is_0600_and_an_older_one_is_tightened(tmp_path: Path) -> None:
    path = tmp_path / "site" / "audit.jsonl"
    log = AuditLog(path)
    log.record(outcome=ACCEPTED, reason="ok", sender="a", round=0, payload_hash="00")
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700
    os.chmod(path, 0o644)
    log.record(outcome=ACCEPTED, reason="ok", sender="a", round=1, payload_hash="00")
    assert mode(path) == 0o600
    assert [e["round"] for e in read_audit(path)] == [0, 1]


def test_metrics_are_0600_and_an_older_file_is_tightened(tmp_path: Path) -> None:
    path = tmp_path / "site" / "metrics.jsonl"
    with MetricsWriter(path) as writer:
        writer.write(record(0))
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700
    os.chmod(path, 0o644)
    with MetricsWriter(path) as writer:
        writer.write(record(1))
    assert mode(path) == 0o600
    assert [r.round for r in read_metrics(path)] == [0, 1]


def test_the_ledger_is_0600_in_a_0700_folder(tmp_path: Path) -> None:
    path = tmp_path / "ledger-dir" / "ledger.json"
    ledger = PrivacyLedger.open(path, budget=8.0, delta=1e-5)
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700
    os.chmod(path, 0o644)
    ledger.charge(noise_multiplier=1.0, sample_rate=0.05, steps=1)
    assert mode(path) == 0o600
