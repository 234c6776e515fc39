"""The QA benchmark: the 8-site ring on the built-in medical QA sets, Dirichlet topic skew.

For each data set (`medqa-mc`: multiple choice, four options; `medqa-text`: free text) and
each privacy setting (DP epsilon 8 per site, non-private), one `gossipmed simulate
--baselines` run gives the three runs (gossip, local-only, centralized): 2 data sets x 2
settings x 3 runs. Reported per run at the last round: multiple-choice accuracy (summed and
per-token-normalised log-likelihood, where the evaluator gives both), the response loss
(mean per-example NLL of the answer tokens) and perplexity (exp of the summed NLL over the
summed answer tokens), with the chance level and the round-0 score: the base before any
training, from `simulate --no-train --rounds 1` (a LoRA adapter starts as the identity, so
this is the base through the project's own evaluator, on the same held-out set).

`--only shape` adds one row on a random-init 135M-parameter shape (SmolLM-135M's, built by
scripts/bench_scale.py with the tiny base's tokenizer): seconds per round and peak memory of
the same ring and data (gossip only, `--shape-rounds` rounds).

    .venv/bin/python scripts/bench_qa.py --out RUN              # the benchmark (hours on CPU)
    .venv/bin/python scripts/bench_qa.py --out RUN --quick      # a few minutes: smoke test
    .venv/bin/python scripts/bench_qa.py --out RUN --only shape --shape-local-steps 2

Every run directory stays under RUN (inspect with `gossipmed inspect RUN/<name>`); the rows
go to RUN/results.jsonl and a table to stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CHANCE = {"medqa-mc": 0.25, "medqa-text": None}  # four options; free text has no chance
RUNS = {
    "gossip": "metrics.jsonl",
    "local-only": "baselines/local-only/metrics.jsonl",
    "centralized": "baselines/centralized/metrics.jsonl",
}
METRICS = ("accuracy", "accuracy_norm", "eval_loss", "eval_perplexity")


def _simulate(argv: list[str], out: Path, *, log: Path) -> dict[str, Any]:
    """One `gossipmed simulate` in its own process (its peak RSS is its own)."""
    cmd = [sys.executable, "-m", "node.cli", "simulate", *argv, "--out", str(out), "--json"]
    print("$ gossipmed " + " ".join(cmd[3:]), file=sys.stderr, flush=True)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    with log.open("w") as fh:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        sys.exit(f"bench_qa: simulate failed (exit {proc.returncode}); see {log}")
    summary: dict[str, Any] = json.loads((out / "summary.json").read_text())
    return summary


def _final(path: Path) -> dict[str, Any]:
    """Mean (and min/max of accuracy) over sites at the last evaluated round."""
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    evaluated = [r for r in records if r.get("eval_loss") is not None]
    if not evaluated:
        return {"round": None}
    last = max(r["round"] for r in evaluated)
    rows = [r for r in evaluated if r["round"] == last]
    out: dict[str, Any] = {"round": last, "sites": len(rows)}
    for key in METRICS:
        values = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
        values = [v for v in values if math.isfinite(v)]
        out[key] = statistics.fmean(values) if values else None
        if key == "accuracy" and values:
            out["accuracy_min"], out["accuracy_max"] = min(values), max(values)
    return out


def _common(args: argparse.Namespace, dataset: str) -> list[str]:
    argv = ["--dataset", dataset, "--partition", "dirichlet", "--alpha", str(args.alpha)]
    argv += ["--eval-size", str(args.eval_size), "--seed", str(args.seed)]
    argv += ["--eval-every", str(args.eval_every)]
    for flag, value in (
        ("--max-train-examples", args.max_train_examples),
        ("--local-steps", args.local_steps),
        ("--batch-size", args.batch_size),
        ("--base-model", args.base_model),
        ("--device", args.device),
    ):
        if value is not None:
            argv += [flag, str(value)]
    return argv


def _privacy(setting: str) -> list[str]:
    return ["--no-dp"] if setting == "none" else ["--epsilon", setting]


def run_benchmark(args: argparse.Namespace, out: Path) -> list[dict[str, Any]]:
    rows = []
    for dataset in args.datasets:
        common = _common(args, dataset)
        name = f"{dataset}-round0"
        start = time.perf_counter()
        _simulate(
            [*common, "--nodes", "2", "--topology", "complete", "--rounds", "1", "--no-train"],
            out / name,
            log=out / f"{name}.log",
        )
        rows.append(
            {
                "dataset": dataset,
                "privacy": "-",
                "run": "round 0 (base)",
                "chance": CHANCE[dataset],
                **_final(out / name / RUNS["gossip"]),
                "wall_s": time.perf_counter() - start,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
        for setting in args.privacy:
            name = f"{dataset}-{'eps' + setting if setting != 'none' else 'nondp'}"
            ring = ["--nodes", str(args.nodes), "--topology", "ring", "--rounds", str(args.rounds)]
            start = time.perf_counter()
            summary = _simulate(
                [*common, *ring, *_privacy(setting), "--baselines"],
                out / name,
                log=out / f"{name}.log",
            )
            wall = time.perf_counter() - start
            per_round = summary.get("seconds_per_round", {})
            keys = {"gossip": "gossip", "local-only": "local", "centralized": "central"}
            for run, rel in RUNS.items():
                rows.append(
                    {
                        "dataset": dataset,
                        "privacy": "non-private" if setting == "none" else f"epsilon {setting}",
                        "run": run,
                        "chance": CHANCE[dataset],
                        **_final(out / name / rel),
                        "seconds_per_round": per_round.get(keys[run]),
                        "peak_rss_mib": summary.get("peak_rss_mib"),
                        "wall_s": wall,
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    return rows


def run_shape(args: argparse.Namespace, out: Path) -> list[dict[str, Any]]:
    """Seconds per round and peak memory on a random-init 135M shape (gossip only)."""
    folder = out / f"base-{args.shape}"
    if not (folder / "config.json").is_file():
        tokenizer = args.base_model or str(_tiny_base())
        cmd = [sys.executable, str(ROOT / "scripts" / "bench_scale.py"), "--save", str(folder)]
        cmd += ["--shape", args.shape, "--tokenizer", tokenizer]
        subprocess.run(cmd, cwd=ROOT, check=True)
    rows = []
    for dataset in args.datasets:
        steps = args.shape_local_steps or args.local_steps
        shaped = argparse.Namespace(**{**vars(args), "base_model": None, "local_steps": steps})
        argv = _common(shaped, dataset)
        ring = ["--nodes", str(args.nodes), "--topology", "ring"]
        name = f"{dataset}-{args.shape}"
        summary = _simulate(
            [*argv, *ring, "--rounds", str(args.shape_rounds), "--base-model", str(folder),
             *_privacy(args.privacy[0]), "--eval-every", str(args.shape_rounds)],
            out / name,
            log=out / f"{name}.log",
        )  # fmt: skip
        rows.append(
            {
                "dataset": dataset,
                "privacy": args.privacy[0],
                "run": f"gossip on random-init {args.shape}",
                "rounds": args.shape_rounds,
                "seconds_per_round": summary.get("seconds_per_round", {}).get("gossip"),
                "peak_rss_mib": summary.get("peak_rss_mib"),
                **_final(out / name / RUNS["gossip"]),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def _tiny_base() -> Path:
    sys.path.insert(0, str(ROOT))
    from gossipmed.learn.base_model import ensure_base_model

    return ensure_base_model(progress=False)


def _cell(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def table(rows: list[dict[str, Any]]) -> str:
    head = "| data set | privacy | run | chance | accuracy (min-max) | acc. norm | response loss "
    head += "| perplexity | s/round | peak RSS MiB |"
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        acc = _cell(r.get("accuracy"))
        if r.get("accuracy_min") is not None and r["run"] != "centralized":
            acc += f" ({r['accuracy_min']:.3f}-{r['accuracy_max']:.3f})"
        lines.append(
            f"| {r['dataset']} | {r['privacy']} | {r['run']} | {_cell(r.get('chance'), 2)} "
            f"| {acc} | {_cell(r.get('accuracy_norm'))} | {_cell(r.get('eval_loss'))} "
            f"| {_cell(r.get('eval_perplexity'), 2)} | {_cell(r.get('seconds_per_round'), 1)} "
            f"| {_cell(r.get('peak_rss_mib'), 0)} |"
        )
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="folder for every run (created)")
    p.add_argument("--only", choices=("benchmark", "shape", "all"), default="benchmark")
    p.add_argument("--datasets", default="medqa-mc,medqa-text", help="comma-separated")
    p.add_argument("--privacy", default="8,none", help="epsilons and/or none, comma-separated")
    p.add_argument("--nodes", type=int, default=8)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-size", type=int, default=300)
    p.add_argument("--eval-every", type=int, default=1, help="evaluate every N rounds")
    p.add_argument("--max-train-examples", type=int, help="default: the data set's (20,000)")
    p.add_argument("--local-steps", type=int, help="default: simulate's (20)")
    p.add_argument("--batch-size", type=int, help="default: simulate's (128)")
    p.add_argument("--base-model", help="default: the tiny base")
    p.add_argument("--device", help="auto (default), cpu, cuda")
    p.add_argument("--shape", default="smollm-135m", help="bench_scale.py shape for --only shape")
    p.add_argument("--shape-rounds", type=int, default=1)
    p.add_argument("--shape-local-steps", type=int, help="default: --local-steps")
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: 3 sites, 2 rounds of 2 steps at batch 8, 150 examples, 12 held out",
    )
    args = p.parse_args()
    args.datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    args.privacy = [s.strip() for s in args.privacy.split(",") if s.strip()]
    unknown = [d for d in args.datasets if d not in CHANCE]
    if unknown:
        p.error(f"unknown data set(s) {', '.join(unknown)}; choose from {', '.join(CHANCE)}")
    for s in args.privacy:
        if s != "none" and not (_is_number(s) and float(s) > 0):
            p.error(f"--privacy takes positive epsilons or none, not {s!r}")
    if args.quick:
        args.nodes, args.rounds, args.eval_size = 3, 2, 12
        args.max_train_examples, args.local_steps, args.batch_size = 150, 2, 8
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    if args.only in ("benchmark", "all"):
        rows += run_benchmark(args, args.out)
    if args.only in ("shape", "all"):
        rows += run_shape(args, args.out)
    with (args.out / "results.jsonl").open("a") as fh:
        for row in rows:
            fh.write(json.dumps({**row, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}))
            fh.write("\n")
    print(table(rows))
    return 0


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


if __name__ == "__main__":
    sys.exit(main())
