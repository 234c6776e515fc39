"""Poisoning attackers for the simulator: some sites lie about their state, or learn lies.

An attacker runs the same peer logic as everyone else (it trains, receives and mixes), so
its position in the graph and its timing look honest; only what it sends, or the data it
trains on, is poisoned:

    sign-flip   sends -x, the negated state (averaging with it pulls neighbours toward 0)
    scale       sends scale * x (default 10x): one loud neighbour dominates a plain average
    noise       sends x + N(0, (noise_std * rms(x))^2), fresh noise every round
    label-flip  trains on its own data with every label replaced by the next one in the
                label list, and sends the resulting state honestly (data poisoning)

Attackers are picked by the run's seed, so a clean run and an attacked run with the same
seed differ only in the attackers' behaviour.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from gossipmed.errors import ConfigError
from gossipmed.learn.learner import AdapterState
from gossipmed.wire.update import Admit, Schema, Sealer, SealOne, Update

ATTACKS = ("none", "sign-flip", "scale", "noise", "label-flip")
MESSAGE_ATTACKS = frozenset({"sign-flip", "scale", "noise"})


@dataclass(frozen=True)
class AttackConfig:
    """`[attack]` in sim.toml: which behaviour, how many attackers (chosen by the seed)."""

    kind: str = "none"
    """"none", "sign-flip", "scale", "noise" or "label-flip"."""
    attackers: int = 0
    """How many sites attack (chosen by the run's seed)."""
    scale: float = 10.0
    """Factor a "scale" attacker multiplies its state by."""
    noise_std: float = 1.0
    """Noise of a "noise" attacker, relative to the RMS of its state."""

    def __post_init__(self) -> None:
        if self.kind not in ATTACKS:
            raise ConfigError(f"attack.kind must be one of {', '.join(ATTACKS)}")
        if self.attackers < 0:
            raise ConfigError("attack.attackers must be an integer >= 0")
        if self.kind != "none" and self.attackers == 0:
            raise ConfigError(f"attack {self.kind!r} needs attack.attackers >= 1")
        if not math.isfinite(self.scale) or not math.isfinite(self.noise_std):
            raise ConfigError("attack.scale and attack.noise_std must be finite")
        if self.noise_std < 0:
            raise ConfigError("attack.noise_std must be >= 0")

    @property
    def active(self) -> bool:
        return self.kind != "none" and self.attackers > 0


def choose_attackers(names: Sequence[str], *, count: int, seed: int) -> list[str]:
    """`count` sites drawn by the seed (sorted); the same seed always picks the same ones."""
    if count > len(names):
        raise ConfigError(f"{count} attackers but only {len(names)} sites")
    rng = random.Random(f"gossipmed-attackers:{seed}")
    return sorted(rng.sample(list(names), count))


def poison_state(
    state: Mapping[str, torch.Tensor], *, config: AttackConfig, generator: torch.Generator
) -> AdapterState:
    """What a message attacker sends instead of `state`."""
    kind = config.kind
    if kind == "sign-flip":
        return {k: -v for k, v in state.items()}
    if kind == "scale":
        return {k: v * config.scale for k, v in state.items()}
    if kind == "noise":
        out = {}
        for k, v in state.items():
            x = v.detach().to(torch.float32)
            rms = float(x.pow(2).mean().sqrt()) if x.numel() else 0.0
            noise = torch.randn(x.shape, generator=generator) * (config.noise_std * rms)
            out[k] = (x + noise).to(v.dtype)
        return out
    raise ConfigError(f"{kind!r} is not a message attack")


class AttackingSealer(SealOne):
    """Wraps a site's sealer so everything it sends is poisoned; receiving is untouched."""

    def __init__(self, inner: Sealer, *, config: AttackConfig, seed: int) -> None:
        if config.kind not in MESSAGE_ATTACKS:
            raise ConfigError(f"{config.kind!r} is not a message attack")
        self.inner = inner
        self.name = inner.name
        self.config = config
        self.generator = torch.Generator().manual_seed(seed)

    def seal_many(
        self,
        *,
        update_tensors: Mapping[str, torch.Tensor],
        round: int,
        step: int,
        recipients: Sequence[str],
        epsilon: float,
        codec: str = "raw",
    ) -> dict[str, bytes]:
        bad = poison_state(update_tensors, config=self.config, generator=self.generator)
        return self.inner.seal_many(
            update_tensors=bad,
            round=round,
            step=step,
            recipients=recipients,
            epsilon=epsilon,
            codec=codec,
        )

    def open(self, data: bytes, *, expected_schema: Schema, admit: Admit | None = None) -> Update:
        return self.inner.open(data, expected_schema=expected_schema, admit=admit)

    def state_dict(self) -> dict[str, Any] | None:
        return self.inner.state_dict()

    def load_state_dict(self, state: Mapping[str, Any], *, schema: Schema) -> None:
        self.inner.load_state_dict(state, schema=schema)


# --- label flipping ----------------------------------------------------------------------


def flip_labels(learner: Any) -> None:
    """Make `learner` train on flipped labels (label j -> label j+1), in place.

    Works for gossipmed.learn.train.SiteLearner with labelled data and loss on the label (the
    candidate grid of its eval set gives every label's token sequence) and for the
    simulator's QuadraticLearner (its target is negated); a learner with its own
    `flip_labels()` method does it itself. Call it before any wrapper (drift) is applied."""
    own = getattr(learner, "flip_labels", None)
    if callable(own):
        own()
        return
    if hasattr(learner, "target") and hasattr(learner, "consensus_target"):
        learner.target = -learner.target
        return
    eval_set = getattr(learner, "eval_set", None)
    data = getattr(learner, "train_data", None)
    if eval_set is None or data is None or eval_set.candidates is None or not eval_set.labels:
        raise ConfigError("label-flip needs a labelled dataset")
    if learner.config.train.loss_on != "label":
        raise ConfigError("label-flip needs train.loss_on = 'label'")
    labels: tuple[str, ...] = eval_set.labels
    cand = eval_set.candidates
    label_tokens = {
        lab: cand.input_ids[j][cand.loss_mask[j] > 0].tolist() for j, lab in enumerate(labels)
    }
    flipped = {lab: labels[(j + 1) % len(labels)] for j, lab in enumerate(labels)}
    pad = int(learner.model.tokenizer.pad_token_id)
    rows: list[list[int]] = []
    new_labels: list[str | None] = []
    for ids, mask, lab in zip(data.input_ids, data.loss_mask, data.labels, strict=True):
        first = int((mask > 0).nonzero()[0]) if bool((mask > 0).any()) else len(ids)
        new_lab = flipped.get(lab, lab) if lab is not None else None
        target = label_tokens[new_lab] if new_lab is not None else []
        rows.append([*ids[:first].tolist(), *target])
        new_labels.append(new_lab)
    width = max(len(r) for r in rows)
    ids_t = torch.full((len(rows), width), pad, dtype=torch.long)
    mask_t = torch.zeros((len(rows), width), dtype=torch.float32)
    for i, (row, new_lab) in enumerate(zip(rows, new_labels, strict=True)):
        ids_t[i, : len(row)] = torch.tensor(row)
        n_target = len(label_tokens[new_lab]) if new_lab is not None else 0
        mask_t[i, len(row) - n_target : len(row)] = 1.0
    learner.train_data = dataclasses.replace(
        data, input_ids=ids_t, loss_mask=mask_t, labels=tuple(new_labels)
    )


def attack_sealer(sealer: Sealer, *, config: AttackConfig, index: int, seed: int) -> Sealer:
    """The sealer an attacker sends through (message attacks; others send honestly)."""
    if config.kind in MESSAGE_ATTACKS:
        return AttackingSealer(sealer, config=config, seed=seed + index)
    return sealer


def attack_learner(learner: Any, *, config: AttackConfig) -> None:
    """Poison an attacker's learner before it is wrapped or used (data attacks)."""
    if config.kind == "label-flip":
        flip_labels(learner)
