"""Cost as the consortium grows: gossipmed simulate at many sites beside Flower's Ray simulation.

Runs, one subprocess each and one after another (so they share the machine's load alike):
  - `gossipmed simulate --problem quadratic` on a random 4-regular graph with
    `--gossip-steps 1` (every envelope signed and encrypted) at each of --sites, per engine;
  - the language model (tiny base, default settings) at --lm-sites for 2 rounds, per engine;
  - Flower's Ray simulation of the same quadratic problem (dimension 256, 10 local steps,
    every site every round, FedAvg) at each of --sites, from its own virtualenv
    (scripts/bench_scale_flower.py; --flower-venv, created with `flwr[simulation]` 1.42.0 when
    missing).
Each row: set-up seconds, seconds per round, seconds per site-round, and the peak memory
summed over the process and all its descendants (Ray's workers included), sampled every
0.2 s. `--engine ray` rows are skipped, with the reason, when this gossipmed has no Ray
engine.

    python scripts/bench_scale.py --only sites -- --flower-venv ~/venv-flower --out sites.jsonl
    python scripts/bench_scale_sites.py --sites 256,1024,4096 --flower-rounds 2,2,1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FLOWER_WORKER = ROOT / "scripts" / "bench_scale_flower.py"
FLOWER_REQUIREMENT = "flwr[simulation]==1.42.0"  # the version of the recorded runs
PAGE = 4096


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as fh:
                stat = fh.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def _tree_rss(root: int) -> int:
    """Resident bytes of `root` and every descendant (Ray's raylet, GCS and workers too)."""
    tree = _children()
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        stack.extend(tree.get(pid, []))
        try:
            with open(f"/proc/{pid}/statm", encoding="ascii") as fh:
                total += int(fh.read().split()[1]) * PAGE
        except OSError:
            continue
    return total


def run_measured(cmd: list[str], *, timeout: float, env: dict[str, str]) -> dict[str, Any]:
    """Run `cmd`, sampling the RSS of its process tree; (rc, stdout, stderr tail, peak, wall)."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _tree_rss(proc.pid))
            done.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        out, err = proc.communicate(timeout=timeout)
        rc: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        rc = None
    done.set()
    sampler.join()
    return {
        "rc": rc,
        "stdout": out,
        "stderr_tail": err.strip().splitlines()[-5:],
        "peak_tree_gib": peak / 2**30,
        "wall_s": time.perf_counter() - started,
    }


def engine_missing(engine: str, env: dict[str, str]) -> str | None:
    """Why `--engine engine` cannot run here, or None."""
    if engine == "inprocess":
        return None
    help_text = subprocess.run(
        [sys.executable, "-m", "node.cli", "simulate", "--help"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    if "--engine" not in help_text:
        return "this gossipmed has no --engine option (the Ray engine is not built in yet)"
    if engine == "ray":
        probe = subprocess.run(
            [sys.executable, "-c", "import ray"], env=env, capture_output=True, check=False
        )
        if probe.returncode != 0:
            return "ray is not installed (pip install 'gossipmed[ray]')"
    return None


def gossipmed_row(
    *, problem: str, sites: int, rounds: int, engine: str, timeout: float, env: dict[str, str]
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-sites-") as tmp:
        cmd = [sys.executable, "-m", "node.cli", "simulate", "--problem", problem]
        cmd += ["--nodes", str(sites), "--topology", "random-regular", "--degree", "4"]
        cmd += ["--rounds", str(rounds), "--gossip-steps", "1", "--eval-every", str(rounds)]
        if engine != "inprocess":
            cmd += ["--engine", engine]
        shown = " ".join(["gossipmed", *cmd[3:]])  # without the scratch folder
        cmd += ["--out", tmp, "--json"]
        res = run_measured(cmd, timeout=timeout, env=env)
        row: dict[str, Any] = {
            "kind": "gossipmed", "problem": problem, "engine": engine, "sites": sites,
            "rounds": rounds, "peak_tree_gib": res["peak_tree_gib"], "wall_s": res["wall_s"],
            "command": shown,
        }  # fmt: skip
        summary_path = Path(tmp) / "summary.json"
        if res["rc"] != 0 or not summary_path.is_file():
            return {**row, "kind": "error", "rc": res["rc"], "stderr": res["stderr_tail"]}
        summary = json.loads(summary_path.read_text())
        per_round = float(summary["seconds_per_round"]["gossip"])
        return {
            **row,
            "s_per_round": per_round,
            "ms_per_site_round": 1000 * per_round / sites,
            "setup_and_exit_s": res["wall_s"] - float(summary["wall_seconds"]["gossip"]),
            "topology": {k: summary["topology"].get(k) for k in ("lambda2", "diameter")},
            "ray": summary.get("engine", {}).get("ray_version"),
            "workers": len(summary.get("engine", {}).get("workers", [])) or None,
        }


def ensure_flower_venv(path: Path) -> Path:
    python = path / "bin" / "python"
    if not python.is_file():
        subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    probe = subprocess.run([str(python), "-c", "import flwr, ray, numpy"], check=False)
    if probe.returncode != 0:
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", FLOWER_REQUIREMENT, "numpy"], check=True
        )
    return python


def flower_row(
    *, python: Path, sites: int, rounds: int, timeout: float, env: dict[str, str]
) -> dict[str, Any]:
    cmd = [str(python), str(FLOWER_WORKER), "--sites", str(sites), "--rounds", str(rounds)]
    clean = {k: v for k, v in env.items() if k != "PYTHONPATH"}  # Flower's venv only
    res = run_measured(cmd, timeout=timeout, env=clean)
    rows = [json.loads(ln) for ln in res["stdout"].splitlines() if ln.startswith("{")]
    if res["rc"] != 0 or not rows:
        return {"kind": "error", "framework": "flower", "sites": sites, "rc": res["rc"],
                "stderr": res["stderr_tail"]}  # fmt: skip
    row = rows[-1]
    warm = row["s_rounds"][1:]  # the first round starts Ray's actors
    return {
        **row,
        "s_first_round": row["s_rounds"][0],
        "s_per_round": sorted(warm)[len(warm) // 2] if warm else row["s_rounds"][0],
        "includes_start": not warm,
        "ms_per_site_round": 1000 * (warm[0] if warm else row["s_rounds"][0]) / sites,
        "peak_tree_gib": res["peak_tree_gib"],
        "setup_and_exit_s": res["wall_s"] - sum(row["s_rounds"]),
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| run | engine | sites | rounds | s per round | ms per site-round | set-up + exit s "
        "| peak memory, all processes (GiB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["kind"] == "gossipmed":
            name, engine = f"gossipmed {r['problem']}", r["engine"]
        elif r["kind"] == "flower":
            name, engine = "Flower FedAvg quadratic", f"Ray {r['ray']}"
        elif r["kind"] == "skipped":
            lines.append(f"| {r['what']} | {r['engine']} | - | - | skipped: {r['why']} | | | |")
            continue
        else:
            lines.append(f"| error | | {r.get('sites')} | | {r.get('stderr')} | | | |")
            continue
        first = " (1 round, incl. start)" if r.get("includes_start") else ""
        lines.append(
            f"| {name} | {engine} | {r['sites']} | {r['rounds']} | {r['s_per_round']:.3f}{first} "
            f"| {r['ms_per_site_round']:.2f} | {r['setup_and_exit_s']:.1f} "
            f"| {r['peak_tree_gib']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sites", default="256,1024,4096", help="quadratic sizes, comma list")
    p.add_argument("--rounds", type=int, default=2, help="gossipmed quadratic rounds")
    p.add_argument("--engines", default="inprocess,ray", help="gossipmed engines, comma list")
    p.add_argument("--lm-sites", type=int, default=64, help="0: no language-model row")
    p.add_argument("--lm-rounds", type=int, default=2)
    p.add_argument("--flower-venv", default=None, help="virtualenv for Flower (created if new)")
    p.add_argument(
        "--flower-rounds", default="2", help="Flower rounds per size (one value, or one per size)"
    )
    p.add_argument("--timeout", type=float, default=3600.0, help="per run, seconds")
    p.add_argument("--out", help="append the JSON rows to this file")
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.sites.split(",") if s]
    flower_rounds = [int(s) for s in args.flower_rounds.split(",")]
    if len(flower_rounds) == 1:
        flower_rounds *= len(sizes)
    if len(flower_rounds) != len(sizes):
        p.error("--flower-rounds needs one value or one per --sites value")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    env["TRANSFORMERS_OFFLINE"] = "1"
    header = {
        "kind": "host", "python": platform.python_version(), "cpus": os.cpu_count(),
        "load": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }  # fmt: skip
    rows: list[dict[str, Any]] = []

    def emit(row: dict[str, Any]) -> None:
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.out:
            with open(args.out, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(row) + "\n")

    ray_here = subprocess.run(
        [sys.executable, "-c", "import ray; print(ray.__version__)"],
        capture_output=True, text=True, check=False,
    ).stdout.strip()  # fmt: skip
    emit({**header, "ray_gossipmed_venv": ray_here or None})
    engines = []
    for engine in args.engines.split(","):
        why = engine_missing(engine, env)
        if why is None:
            engines.append(engine)
        else:
            emit({"kind": "skipped", "what": "gossipmed", "engine": engine, "why": why})

    def gossipmed_runs(problem: str, n: int, rounds: int) -> None:
        for engine in engines:
            emit(
                gossipmed_row(
                    problem=problem,
                    sites=n,
                    rounds=rounds,
                    engine=engine,
                    timeout=args.timeout,
                    env=env,
                )
            )

    for n in sizes:
        gossipmed_runs("quadratic", n, args.rounds)
    if args.flower_venv:  # beside the quadratic rows, before the slow language model
        python = ensure_flower_venv(Path(args.flower_venv).expanduser())
        for n, rounds in zip(sizes, flower_rounds, strict=True):
            emit(flower_row(python=python, sites=n, rounds=rounds, timeout=args.timeout, env=env))
    else:
        emit({"kind": "skipped", "what": "Flower", "engine": "ray", "why": "no --flower-venv"})
    if args.lm_sites:
        gossipmed_runs("lm", args.lm_sites, args.lm_rounds)
    print(table([r for r in rows if r["kind"] != "host"]))
    return 1 if any(r["kind"] == "error" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
