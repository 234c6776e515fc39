"""Atomic file replacement: temp file in the same directory, fsync, rename, fsync the dir.

Apart from the checkpoint (gossipmed.storage.checkpoint), so that writing a roster or a
cache file does not load torch.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from gossipmed.errors import CheckpointError
from gossipmed.storage.files import PRIVATE_FILE_MODE, fsync_dir, private_dir


def atomic_write_bytes(path: Path, data: bytes, *, mode: int = PRIVATE_FILE_MODE) -> None:
    """Replace `path` with `data` so readers see the old or the new file, nothing between.

    The temporary file is created 0600 (mkstemp) and only then given `mode`, so a wider
    `mode` never exposes a half-written file; missing folders are created 0700."""
    try:
        private_dir(path.parent)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise CheckpointError(f"cannot write {path}: {exc.strerror or exc}") from exc
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise CheckpointError(f"cannot write {path}: {exc.strerror or exc}") from exc
    fsync_dir(path.parent)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(
        path, (json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n").encode()
    )
