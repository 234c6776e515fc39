"""Strict JSON out: what every `--json` output, status document and summary file goes through.

Python's json writes NaN and Infinity, which are not JSON: a free-text run (accuracy NaN) or a
non-private one (epsilon inf) then breaks every strict parser downstream (jq, browsers,
Prometheus exporters). A value that is not finite was not measured, so it becomes null, and
`allow_nan=False` makes any value that slips past this a loud error rather than bad JSON.
"""

from __future__ import annotations

import json
import math
from typing import Any


def finite(obj: Any) -> Any:
    """`obj` with every non-finite float (in dicts, lists and tuples) replaced by None."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    return obj


def dumps(obj: Any, **kwargs: Any) -> str:
    """json.dumps of `finite(obj)`, never emitting NaN or Infinity."""
    return json.dumps(finite(obj), allow_nan=False, **kwargs)
