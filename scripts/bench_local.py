"""Local-only baseline on one site's slice of icd10 with LoRA: non-private vs DP eps 8 vs eps 3.

Prints held-out accuracy before/after and ms/step for each setting (one JSON line each, then
a summary). Noise for the DP rows is calibrated from (epsilon, delta, --steps, Poisson rate
batch/n_site). Usage: .venv/bin/python scripts/bench_local.py [--steps 150] [--eval-size 210]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from gossipmed.learn.config import (
    DEFAULT_CLIP_NORM,
    AdapterConfig,
    DataConfig,
    DPConfig,
    LearningConfig,
    TrainConfig,
)
from gossipmed.learn.train import build_site_learners, load_shared_model
from gossipmed.privacy.randomness import RandomSource


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--eval-size", type=int, default=210)
    p.add_argument("--lr", type=float, default=0.01)  # docs/benchmarks/local-training.md
    p.add_argument("--optimizer", choices=["adam", "sgd"], default="adam")
    p.add_argument("--clip-norm", type=float, default=DEFAULT_CLIP_NORM)
    p.add_argument("--delta", type=float, default=1e-5)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--sites", type=int, default=4)
    args = p.parse_args()

    def config(epsilon: float | None) -> LearningConfig:
        return LearningConfig(
            data=DataConfig(
                dataset="icd10",
                n_sites=args.sites,
                partition="iid",
                max_train_examples=8000,
                eval_size=args.eval_size,
            ),
            adapter=AdapterConfig(kind="lora"),
            dp=DPConfig(
                enabled=epsilon is not None,
                epsilon=epsilon or 1.0,
                delta=args.delta,
                clip_norm=args.clip_norm,
                planned_steps=args.steps,
            ),
            train=TrainConfig(lr=args.lr, batch_size=args.batch_size, optimizer=args.optimizer),
        )

    model = load_shared_model(config(None), progress=True)
    rows = []
    for label, eps in (("non-private", None), ("epsilon 8", 8.0), ("epsilon 3", 3.0)):
        setup = build_site_learners(config(eps), randomness=RandomSource.seeded(0), model=model)
        site = setup.learners[0]
        start = time.perf_counter()
        before = site.evaluate_report()
        eval_seconds = time.perf_counter() - start
        start = time.perf_counter()
        stats = site.train_round(steps=args.steps)
        wall = time.perf_counter() - start
        after = site.evaluate_report()
        row = {
            "setting": label,
            "n_train": len(site.train_data),
            "steps": args.steps,
            "noise_multiplier": site.noise_multiplier,
            "epsilon_spent": None if eps is None else site.epsilon,
            "acc_before": before.accuracy,
            "acc_after": after.accuracy,
            "loss_before": before.loss,
            "loss_after": after.loss,
            "ms_per_step": 1000 * wall / args.steps,
            "median_grad_norm": float(site.last_grad_norms.median()) if eps else None,
            "eval_seconds": eval_seconds,
            "train_loss": stats.train_loss,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"{'setting':<12} {'acc before':>10} {'acc after':>10} {'eps':>6} {'ms/step':>8}")
    for r in rows:
        eps_s = "-" if r["epsilon_spent"] is None else f"{r['epsilon_spent']:.2f}"
        print(
            f"{r['setting']:<12} {r['acc_before']:>10.3f} {r['acc_after']:>10.3f} "
            f"{eps_s:>6} {r['ms_per_step']:>8.0f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
