"""A fast stand-in learner for the robustness/compression/drift benchmarks.

The language model costs ~40 s per simulated round for 16 sites on the 2-core sandbox, too
slow for the dozens of runs these benchmarks need. This learner keeps everything else real:
the same dataset loader and Dirichlet partitioner as gossipmed.learn.train, the same Peer, envelope
sealing, codecs, mixing rules and attackers (it is handed to node.sim.simulation.Simulation as its
LearnerFactory). The model is a softmax regression on hashed unigram+bigram counts, trained
with plain minibatch SGD; its state is two float32 tensors (about the size of the tiny
base's LoRA adapter), so byte counts are comparable.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from gossipmed.learn.config import DataConfig
from gossipmed.learn.datasets import Example, load_dataset
from gossipmed.learn.learner import AdapterState, EvalStats, TrainStats
from gossipmed.learn.partition import partition

FEATURES = 1024


def bench_parser(doc: str | None, *, rounds: int) -> argparse.ArgumentParser:
    """The flags every robustness benchmark shares; each script adds its own sweep flags."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sites", type=int, default=16)
    p.add_argument("--rounds", type=int, default=rounds)
    p.add_argument("--local-steps", type=int, default=10)
    p.add_argument("--topology", default="random-regular")
    p.add_argument("--degree", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="write all rows here")
    return p


def write_rows(args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    """Save the command's arguments and every row, so a table can be traced to its run."""
    if not args.json:
        return
    args.json.parent.mkdir(parents=True, exist_ok=True)
    meta = vars(args) | {"json": str(args.json)}
    args.json.write_text(json.dumps({"args": meta, "rows": rows}, indent=2))


def _bucket(token: str) -> int:
    return int.from_bytes(hashlib.blake2b(token.encode(), digest_size=4).digest(), "big") % FEATURES


def featurise(examples: Sequence[Example]) -> torch.Tensor:
    rows = torch.zeros(len(examples), FEATURES)
    for i, ex in enumerate(examples):
        words = ex.text.lower().split()
        for tok in [*words, *(a + "_" + b for a, b in itertools.pairwise(words))]:
            rows[i, _bucket(tok)] += 1.0
    return rows / rows.sum(dim=1, keepdim=True).clamp(min=1.0).sqrt()


class BowLearner:
    """gossipmed.learn.learner.Learner: softmax regression, SGD with Poisson-free fixed batches."""

    def __init__(
        self,
        *,
        x: torch.Tensor,
        y: torch.Tensor,
        test_x: torch.Tensor,
        test_y: torch.Tensor,
        n_classes: int,
        lr: float,
        batch: int,
        seed: int,
    ) -> None:
        self.x, self.y, self.test_x, self.test_y = x, y, test_x, test_y
        self.n_classes = n_classes
        self.lr, self.batch = lr, batch
        self.gen = torch.Generator().manual_seed(seed)
        self.state: AdapterState = {
            "weight": torch.zeros(n_classes, FEATURES),
            "bias": torch.zeros(n_classes),
        }

    def get_state(self) -> AdapterState:
        return {k: v.clone() for k, v in self.state.items()}

    def set_state(self, state: Mapping[str, torch.Tensor]) -> None:
        self.state = {k: v.detach().to(torch.float32).clone() for k, v in state.items()}

    ledger = None  # no DP accounting in this stand-in

    def state_dict(self) -> None:
        return None

    def save_adapter(self, out: str | Path) -> Path:
        from gossipmed.storage.checkpoint import save_state

        save_state(Path(out), self.state, {"learner": "bow"})
        return Path(out)

    def flip_labels(self) -> None:
        """Data poisoning (node.sim.attacks label-flip): label j becomes j + 1."""
        self.y = (self.y + 1) % self.n_classes

    def train_round(self, *, steps: int) -> TrainStats:
        started = time.perf_counter()
        w, b = self.state["weight"].clone(), self.state["bias"].clone()
        losses = []
        for _ in range(steps):
            idx = torch.randint(len(self.y), (self.batch,), generator=self.gen)
            x, y = self.x[idx], self.y[idx]
            probs = torch.softmax(x @ w.T + b, dim=1)
            losses.append(float(-probs[torch.arange(len(y)), y].clamp(min=1e-12).log().mean()))
            probs[torch.arange(len(y)), y] -= 1.0  # d(cross-entropy)/d(logits)
            w -= self.lr * (probs.T @ x) / len(y)
            b -= self.lr * probs.mean(dim=0)
        self.state = {"weight": w, "bias": b}
        return TrainStats(
            train_loss=sum(losses) / len(losses),
            epsilon=math.inf,
            n_examples=steps * self.batch,
            steps=steps,
            seconds=time.perf_counter() - started,
        )

    def evaluate(self) -> EvalStats:
        with torch.no_grad():
            logits = self.test_x @ self.state["weight"].T + self.state["bias"]
            loss = float(torch.nn.functional.cross_entropy(logits, self.test_y))
            acc = float((logits.argmax(dim=1) == self.test_y).float().mean())
        return EvalStats(loss=loss, accuracy=acc)


class BowFactory:
    """node.sim.simulation.LearnerFactory over a real dataset and the project's partitioner."""

    def __init__(
        self,
        *,
        dataset: str = "icd10",
        n_sites: int,
        alpha: float,
        seed: int = 0,
        max_train_examples: int = 8000,
        eval_size: int = 1000,
        lr: float = 2.0,
        batch: int = 32,
    ) -> None:
        dc = DataConfig(
            dataset=dataset,  # type: ignore[arg-type]
            n_sites=n_sites,
            partition="dirichlet",
            alpha=alpha,
            seed=seed,
            max_train_examples=max_train_examples,
            eval_size=eval_size,
        )
        data = load_dataset(dc)
        labels = {lab: i for i, lab in enumerate(data.labels)}
        self.n_classes = len(labels)
        self.x = featurise(data.train)
        self.y = torch.tensor([labels[str(ex.label)] for ex in data.train])
        self.test_x = featurise(data.test)
        self.test_y = torch.tensor([labels[str(ex.label)] for ex in data.test])
        self.parts = partition(
            data.train, scheme="dirichlet", n_sites=n_sites, alpha=alpha, seed=seed
        )
        self.lr, self.batch, self.seed = lr, batch, seed

    def _learner(self, idx: Sequence[int], k: int) -> BowLearner:
        index = torch.tensor(list(idx), dtype=torch.long)
        return BowLearner(
            x=self.x[index],
            y=self.y[index],
            test_x=self.test_x,
            test_y=self.test_y,
            n_classes=self.n_classes,
            lr=self.lr,
            batch=self.batch,
            seed=self.seed * 1000 + k,
        )

    def site_learners(self) -> list[BowLearner]:
        return [self._learner(idx, k) for k, idx in enumerate(self.parts)]

    def pooled_learner(self) -> BowLearner:
        return self._learner(range(len(self.y)), 999)


def run_gossip(
    factory: BowFactory,
    *,
    sections: dict[str, dict[str, object]],
    sites: int,
    local_steps: int,
) -> dict[str, object]:
    """One simulated gossip run with the real peer path; honest-site accuracy, consensus
    distance among honest sites, and bytes actually sent. `sections` are sim.toml tables
    ([sim], [consortium], [gossip], [attack])."""
    from node.sim.config import sim_config_from_mapping
    from node.sim.simulation import Simulation

    config = sim_config_from_mapping(
        {
            **sections,
            # problem is unused (the factory supplies learners); one exchange per round, as
            # every result in docs/benchmarks/robustness.md was measured, unless asked
            "sim": {"problem": "quadratic", **sections.get("sim", {})},
            "consortium": {"gossip_steps": 1, **sections.get("consortium", {})},
            "data": {"n_sites": sites},
            "train": {"steps_per_round": local_steps},
        }
    )
    simulation = Simulation(config, factory=factory)
    started = time.perf_counter()
    result = simulation.run_gossip()
    seconds = time.perf_counter() - started
    attackers = set(simulation.attackers)
    records = result.records
    last = max(r.round for r in records if r.accuracy is not None)
    accs = [r.accuracy for r in records if r.round == last and r.site not in attackers]
    honest = [s for n, s in result.states.items() if n not in attackers]
    flat = torch.stack([torch.cat([v.reshape(-1).float() for v in s.values()]) for s in honest])
    rounds = config.sim.rounds
    sent_by_round = [sum(r.bytes_sent for r in records if r.round == k) for k in range(rounds)]
    exposure: dict[int, list[float]] = {}
    for rec in records:
        if rec.round == last and rec.site not in attackers and rec.accuracy is not None:
            bad = len(simulation.schedule.neighbours(last, rec.site) & attackers)
            exposure.setdefault(bad, []).append(rec.accuracy)
    return {
        "attackers": sorted(attackers),
        "honest_accuracy_by_attacker_neighbours": {
            str(k): {"sites": len(v), "accuracy_mean": sum(v) / len(v)}
            for k, v in sorted(exposure.items())
        },
        "rounds": rounds,
        "honest_accuracy_mean": sum(a for a in accs if a is not None) / len(accs),
        "honest_accuracy_min": min(a for a in accs if a is not None),
        "honest_consensus_distance": float((flat - flat.mean(0)).pow(2).sum(1).mean().sqrt()),
        "bytes_per_round_all": sum(sent_by_round) / rounds,
        "bytes_per_round_after_first": sum(sent_by_round[1:]) / max(1, rounds - 1),
        "seconds": seconds,
    }
