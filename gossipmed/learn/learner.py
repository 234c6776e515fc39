"""The contract between one site's learning (gossipmed.learn.train) and the gossip engine
(node.round.peer).

The engine only needs to read and write the trainable state and to ask for a round of local
training and an evaluation; keeping this a Protocol lets the engine be tested with toy
learners and lets many simulated sites share one frozen base model in memory.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

if TYPE_CHECKING:
    from gossipmed.privacy.ledger import PrivacyLedger

AdapterState = dict[str, torch.Tensor]
"""Flat name -> CPU tensor of exactly the parameters that train and travel."""


@dataclass(frozen=True)
class TrainStats:
    train_loss: float
    epsilon: float  # total epsilon spent by this site so far (at the ledger's delta)
    n_examples: int  # examples this site trained on in the round (weight for robust rules)
    steps: int
    seconds: float


@dataclass(frozen=True)
class EvalStats:
    loss: float  # mean over held-out examples of each one's mean target NLL
    accuracy: float | None  # None when the task has no candidates (free text)
    accuracy_norm: float | None = None  # by per-token-normalised likelihood
    perplexity: float | None = None  # exp(total target NLL / target tokens)


class Learner(Protocol):
    """One site's model state plus its local data and privacy ledger."""

    def get_state(self) -> AdapterState: ...

    def set_state(self, state: Mapping[str, torch.Tensor]) -> None: ...

    def train_round(self, *, steps: int) -> TrainStats:
        """K local (DP) steps from the current state; raises PrivacyBudgetExceeded when spent."""
        ...

    def evaluate(self) -> EvalStats:
        """Held-out loss and task accuracy of the current state."""
        ...

    def save_adapter(self, out: str | Path) -> Path:
        """The current state in the learner's own format (PEFT for language models)."""
        ...

    @property
    def ledger(self) -> PrivacyLedger | None:
        """The privacy ledger that training charges (None: no DP accounting)."""
        ...

    def state_dict(self) -> dict[str, Any] | None:
        """Learner state besides the adapter that must survive a restart (None: none)."""
        ...

    def load_state_dict(self, state: Mapping[str, Any], *, schema: Mapping[str, Any]) -> None: ...
