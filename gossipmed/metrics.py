"""Consensus distance and the one-record-per-site-per-round JSONL metrics format.

Consensus distance (global, what the simulator can see):
    D = sqrt( (1/n) * sum_i ||x_i - x_bar||^2 ),  x_bar = (1/n) sum_i x_i,
with x_i the flattened trainable state of site i after mixing. Each site's record carries its
own term ||x_i - x_bar||, so D = sqrt(mean of squares) of a round's records.

A daemon only sees its neighbourhood, so it reports the local version
    d_i = || x_i - mean_{j in heard(i) ∪ {i}} x_j ||
computed on the states it mixed this round (before mixing). It is zero exactly when every
neighbour heard agrees with the site, so it goes to zero with D on a connected graph.
With secure aggregation a site never holds a neighbour's state, so it reports the sum-based
|| x_i - s_i / W_i || instead (node.round.secure_mix; `secure` is true in its records).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import IO, Any

import torch

from gossipmed.errors import GossipmedError
from gossipmed.storage.files import open_private

METRICS_FILE = "metrics.jsonl"
METRICS_VERSION = 1


class MetricsError(GossipmedError):
    """A metrics file is missing or not in the JSONL record format."""


def flatten_state(state: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """All tensors of a state, in name order, as one float64 vector."""
    if not state:
        return torch.zeros(0, dtype=torch.float64)
    return torch.cat([state[k].detach().reshape(-1).to(torch.float64) for k in sorted(state)])


def consensus_distances(states: Iterable[Mapping[str, torch.Tensor]]) -> tuple[float, list[float]]:
    """(global D, per-site ||x_i - x_bar||) over the sites' states, streamed in two passes: a
    running sum for the mean, then each site's distance to it. At most one flattened state is
    held besides the sum, never an N x d stack, so thousands of sites (or states that live
    elsewhere and are fetched one by one) cost the memory of one. `states` is read twice:
    give a sequence, or a `LazyStates` that fetches each state anew on each pass. The sum
    runs in site order, which gives the same bits as the mean of the stacked states did."""
    if iter(states) is states:
        raise TypeError("consensus_distances reads the states twice: pass a re-iterable")
    total: torch.Tensor | None = None
    count = 0
    for state in states:
        flat = flatten_state(state)
        total = flat if total is None else total.add_(flat)
        count += 1
    if total is None:
        raise ValueError("consensus distance of zero sites")
    mean = total / count
    per_site = [float(torch.linalg.vector_norm(flatten_state(state) - mean)) for state in states]
    if len(per_site) != count:
        raise ValueError("the states changed in number between the two passes")
    overall = math.sqrt(float((torch.tensor(per_site, dtype=torch.float64) ** 2).mean()))
    return overall, per_site


class LazyStates:
    """A re-iterable view of the sites' states that calls each getter anew on every pass, so
    `consensus_distances` holds one state at a time instead of a list of copies."""

    def __init__(self, getters: Sequence[Callable[[], Mapping[str, torch.Tensor]]]) -> None:
        self._getters = tuple(getters)

    def __iter__(self) -> Iterator[Mapping[str, torch.Tensor]]:
        return (get() for get in self._getters)

    def __len__(self) -> int:
        return len(self._getters)


def local_consensus_distance(
    own: Mapping[str, torch.Tensor], neighbours: Iterable[Mapping[str, torch.Tensor]]
) -> float:
    """||x_i - mean(x_i and the neighbours heard)||; 0 when nothing was heard."""
    own_flat = flatten_state(own)
    others = [flatten_state(s) for s in neighbours]
    if not others:
        return 0.0
    mean = torch.stack([own_flat, *others]).mean(dim=0)
    return float(torch.linalg.vector_norm(own_flat - mean))


_MEASURED = (
    "train_loss",
    "eval_loss",
    "accuracy",
    "consensus_distance",
    "local_consensus_distance",
    "seconds",
    "state_norm",
    "accuracy_norm",
    "eval_perplexity",
)


@dataclass(frozen=True)
class RoundRecord:
    """One site's round; `None` means "not measured this round" (e.g. eval skipped)."""

    round: int
    site: str
    train_loss: float | None
    eval_loss: float | None
    accuracy: float | None
    consensus_distance: float | None
    epsilon: float
    bytes_sent: int
    bytes_received: int
    neighbours_heard: int
    seconds: float
    neighbours_expected: int = 0
    local_consensus_distance: float | None = None
    consensus_scope: str = "local"  # "global" when a simulator saw every site
    trained: bool = True
    online: bool = True
    rejected: int = 0
    run: str = "gossip"  # gossip | local | central
    secure: bool = False  # mixed from a secure aggregate (gossipmed.mixing.secagg)
    secure_contributors: int | None = None  # neighbours in the sum (None: no sum)
    secure_reconstructed: int | None = None  # dropped after sharing keys: masks rebuilt
    secure_skipped: str | None = None  # why the secure exchange gave no sum
    states_mixed: int = 0  # neighbour states (secure: sums) mixed over the round's exchanges
    bound_clipped: int = 0  # of those, scaled down by the mixing rule's norm bound
    state_norm: float | None = None  # L2 norm of the adapter state after mixing
    accuracy_norm: float | None = None  # accuracy by per-token-normalised likelihood
    eval_perplexity: float | None = None  # exp(sum of response NLL / response tokens)

    def to_json(self) -> dict[str, Any]:
        doc = {"v": METRICS_VERSION, **asdict(self)}
        if not math.isfinite(self.epsilon):
            doc["epsilon"] = None  # non-private training: strict JSON has no Infinity
        # a diverged run (e.g. a scaling attacker got through) must still be recorded, not
        # crash the writer: the value becomes null and its name is listed
        overflowed = [
            k for k in _MEASURED if isinstance(doc[k], float) and not math.isfinite(doc[k])
        ]
        for key in overflowed:
            doc[key] = None
        if overflowed:
            doc["non_finite"] = overflowed
        return doc

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RoundRecord:
        known = {f.name for f in fields(cls)}
        missing = {"round", "site"} - set(data)
        if missing:
            raise MetricsError(f"metrics record lacks {sorted(missing)}")
        values = {k: v for k, v in data.items() if k in known}
        if "epsilon" in values and values["epsilon"] is None:
            values["epsilon"] = math.inf
        defaults = {
            "train_loss": None,
            "eval_loss": None,
            "accuracy": None,
            "consensus_distance": None,
            "epsilon": 0.0,
            "bytes_sent": 0,
            "bytes_received": 0,
            "neighbours_heard": 0,
            "seconds": 0.0,
        }
        return cls(**{**defaults, **values})


class MetricsWriter:
    """Appends records to a JSONL file, one line each, flushed so a crash loses at most one.

    The file is 0600 in a folder created 0700: losses and accuracies are computed on the
    site's records without noise."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: IO[str] = open_private(path, "a", encoding="utf-8")

    def write(self, record: RoundRecord) -> None:
        self._fh.write(json.dumps(record.to_json(), allow_nan=False, sort_keys=True) + "\n")
        self._fh.flush()

    def sync(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_metrics(path: Path) -> list[RoundRecord]:
    """All records of a JSONL file; a truncated last line (crash mid-write) is skipped."""
    if not path.is_file():
        raise MetricsError(f"no metrics file at {path}")
    lines = path.read_text(encoding="utf-8").splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines):
                break
            raise MetricsError(f"{path}:{number}: not JSON ({exc.msg})") from None
        if not isinstance(data, dict):
            raise MetricsError(f"{path}:{number}: a record must be a JSON object")
        records.append(RoundRecord.from_json(data))
    return records
