"""Issue #20 finding 2: does one scaling attacker's influence compound under a mixing rule?

Runs the same `gossipmed simulate` twice, clean and with one `scale` attacker, and prints, by
round, the honest sites' state norms under attack against the clean run's (the "norm
factor": attacked / clean, worst honest site). The norms are read from each peer's state
right after it mixes, so the script measures any version of the code on PYTHONPATH (it
needs only `Peer.complete_round` and the CLI), including the base commit:

    .venv/bin/python scripts/bench_influence.py -- --problem quadratic --nodes 6 \
        --topology ring --rounds 30
    PYTHONPATH=/tmp/base428 python /tmp/base428/scripts/bench_influence.py -- ...

Also reported: how often the rule's norm bound acted in the clean run (`bound_clipped` of
`states_mixed`, where the code records it) and the audit's `mix_rolled_back` count.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from gossipmed.mixing.bounds import state_norm
from node.cli import main as cli
from node.round.peer import Peer

NORMS: dict[str, dict[int, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
_current = ["clean"]
_trace: list[Any] = []  # an open file when --trace is given
_complete = Peer.complete_round


def _recording(self: Peer, round: int) -> Any:
    record = _complete(self, round)
    norm = state_norm(self.learner.get_state())
    NORMS[_current[0]][round][self.name] = norm
    for fh in _trace:  # so a run cut short still leaves its rounds
        fh.write(json.dumps({"run": _current[0], "round": round, "site": self.name,
                             "norm": norm}) + "\n")  # fmt: skip
        fh.flush()
    return record


Peer.complete_round = _recording  # type: ignore[method-assign]


def _simulate(tag: str, args: list[str], out: Path) -> dict[str, Any]:
    _current[0] = tag
    with contextlib.redirect_stdout(sys.stderr):  # simulate's own summary
        code = cli(["simulate", *args, "--json", "--out", str(out / tag)])
    if code != 0:
        raise SystemExit(f"simulate ({tag}) exited {code}")
    return json.loads((out / tag / "summary.json").read_text())


def _factor(attacked: float, clean: float) -> float:
    if not math.isfinite(attacked):
        return math.inf
    return attacked / clean if clean > 0 else math.inf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attack-scale", default="1000")
    parser.add_argument("--every", type=int, default=1, help="print every Nth round")
    parser.add_argument("--trace", type=Path, help="also append every norm to this JSONL file")
    parser.add_argument("simulate_args", nargs=argparse.REMAINDER)
    opts = parser.parse_args()
    args = [a for a in opts.simulate_args if a != "--"]
    attack = ["--attack", "scale", "--attackers", "1", "--attack-scale", opts.attack_scale]
    if opts.trace is not None:
        _trace.append(opts.trace.open("a", encoding="utf-8"))
    with tempfile.TemporaryDirectory() as tmp:
        attacked = _simulate("attacked", [*args, *attack], Path(tmp))
        clean = _simulate("clean", args, Path(tmp))
    attackers = set(attacked["robustness"]["attackers"])
    rows = []
    for r in sorted(NORMS["attacked"]):
        pairs = [
            (NORMS["attacked"][r][s], NORMS["clean"][r][s])
            for s in NORMS["attacked"][r]
            if s not in attackers and s in NORMS["clean"][r]
        ]
        factors = [_factor(a, c) for a, c in pairs]
        rows.append(
            {
                "round": r,
                "factor_max": max(factors),
                "factor_min": min(factors),
                "clean_norm_mean": sum(c for _, c in pairs) / len(pairs),
                "attacked_norm_max": max(a for a, _ in pairs),
            }
        )
    rolled = {
        tag: sum(v for k, v in s.get("audit", {}).items() if k.startswith("mix_rolled_back"))
        for tag, s in (("clean", clean), ("attacked", attacked))
    }
    report = {
        "attackers": sorted(attackers),
        "aggregation": clean["robustness"]["aggregation"],
        "bound_clean": clean["robustness"].get("mixing_bound"),
        "bound_attacked": attacked["robustness"].get("mixing_bound"),
        "mix_rolled_back": rolled,
        "final_accuracy": {
            "clean": clean["robustness"]["honest_accuracy_mean"],
            "attacked": attacked["robustness"]["honest_accuracy_mean"],
        },
        "rounds": rows,
    }
    print(json.dumps(report, indent=1, default=str))
    print("round  norm factor (attacked/clean, honest max..min)  clean mean  attacked max")
    for row in rows:
        if row["round"] % opts.every == 0 or row is rows[-1]:
            print(
                f"{row['round']:5d}  {row['factor_max']:11.4g} .. {row['factor_min']:<10.4g}"
                f"                       {row['clean_norm_mean']:10.4g}  "
                f"{row['attacked_norm_max']:10.4g}"
            )


if __name__ == "__main__":
    main()
