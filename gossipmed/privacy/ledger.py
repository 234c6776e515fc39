"""A site's privacy ledger: epsilon spent at a fixed delta, persisted, monotone, enforced.

The ledger stores the mechanism history (noise, sample rate, steps) rather than an epsilon,
so epsilon is always recomputed by the accountant and can only grow. Charges happen *before*
the noise is drawn (spend first), and a charge that would exceed the budget is refused, so
a crash can never leave privacy spent but unrecorded.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

from gossipmed.errors import PrivacyBudgetExceeded, PrivacyError
from gossipmed.privacy.dp import HistoryEntry, epsilon_of
from gossipmed.storage.files import PRIVATE_FILE_MODE, fsync_dir, private_dir

LEDGER_VERSION = 1
_MAX_LEDGER_BYTES = 1 << 20


class PrivacyLedger:
    def __init__(
        self,
        *,
        budget: float,
        delta: float,
        accountant: str = "rdp",
        path: str | Path | None = None,
        history: list[HistoryEntry] | None = None,
        carried_over: float = 0.0,
    ) -> None:
        if not (budget > 0 and math.isfinite(budget)):
            raise PrivacyError("privacy budget (epsilon) must be a positive number")
        if not 0 < delta < 1:
            raise PrivacyError("delta must be in (0, 1)")
        if accountant not in ("rdp", "prv"):
            raise PrivacyError(f"unknown accountant {accountant!r}")
        self.budget = float(budget)
        self.delta = float(delta)
        self.accountant = accountant
        self.path = Path(path) if path is not None else None
        if not (carried_over >= 0 and math.isfinite(carried_over)):
            raise PrivacyError("carried-over epsilon must be a finite number >= 0")
        self.carried_over = float(carried_over)
        self._history: list[HistoryEntry] = list(history or [])
        self._epsilon = epsilon_of(self._history, delta=self.delta, accountant=accountant)

    @property
    def history(self) -> list[HistoryEntry]:
        return list(self._history)

    @property
    def epsilon(self) -> float:
        return self._epsilon

    @property
    def total_spent(self) -> float:
        """Everything this site has spent, earlier budgets included (see `carried_over`): what
        its checkpoints and metrics may never exceed."""
        return self.carried_over + self._epsilon

    @property
    def remaining(self) -> float:
        return max(0.0, self.budget - self._epsilon)

    def _with(self, noise_multiplier: float, sample_rate: float, steps: int) -> list[HistoryEntry]:
        hist = list(self._history)
        if hist and hist[-1][0] == noise_multiplier and hist[-1][1] == sample_rate:
            hist[-1] = (noise_multiplier, sample_rate, hist[-1][2] + steps)
        else:
            hist.append((float(noise_multiplier), float(sample_rate), int(steps)))
        return hist

    def epsilon_after(self, *, noise_multiplier: float, sample_rate: float, steps: int) -> float:
        """Epsilon the site would have spent after `steps` more steps of this mechanism."""
        hist = self._with(noise_multiplier, sample_rate, steps)
        return epsilon_of(hist, delta=self.delta, accountant=self.accountant)

    def charge(self, *, noise_multiplier: float, sample_rate: float, steps: int) -> float:
        """Record `steps` DP steps, or raise PrivacyBudgetExceeded and record nothing."""
        if steps < 1:
            raise PrivacyError("a charge must cover at least one step")
        hist = self._with(noise_multiplier, sample_rate, steps)
        eps = epsilon_of(hist, delta=self.delta, accountant=self.accountant)
        if eps > self.budget:
            raise PrivacyBudgetExceeded(
                f"{steps} more step(s) would spend epsilon {eps:.3f} > budget {self.budget:g} "
                f"(spent so far {self._epsilon:.3f} at delta {self.delta:g})"
            )
        self._history, self._epsilon = hist, max(eps, self._epsilon)
        if self.path is not None:
            self.save(self.path)
        return self._epsilon

    def to_json(self) -> dict[str, object]:
        return {
            "version": LEDGER_VERSION,
            "budget": self.budget,
            "delta": self.delta,
            "accountant": self.accountant,
            "history": [list(h) for h in self._history],
            "epsilon": self._epsilon,
            "carried_over": self.carried_over,
        }

    def save(self, path: str | Path) -> None:
        """Atomic write (temp file + fsync + rename): a crash leaves the old or the new ledger.
        The file is 0600 (mkstemp's mode, made explicit) in a folder created 0700."""
        path = Path(path)
        private_dir(path.parent)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".ledger-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as fh:
                os.fchmod(fh.fileno(), PRIVATE_FILE_MODE)
                json.dump(self.to_json(), fh, indent=1)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        fsync_dir(path.parent)  # the rename itself must survive a power cut

    @classmethod
    def load(cls, path: str | Path) -> PrivacyLedger:
        path = Path(path)
        try:
            if path.stat().st_size > _MAX_LEDGER_BYTES:
                raise PrivacyError(f"ledger {path} is implausibly large")
            raw = json.loads(path.read_text())
        except OSError as exc:
            raise PrivacyError(f"cannot read ledger {path}: {exc.strerror}") from exc
        except json.JSONDecodeError as exc:
            raise PrivacyError(f"ledger {path} is not valid JSON") from exc
        try:
            if raw["version"] != LEDGER_VERSION:
                raise PrivacyError(f"ledger {path} has unsupported version {raw['version']!r}")
            history = [(float(s), float(q), int(t)) for s, q, t in raw["history"]]
            ledger = cls(
                budget=float(raw["budget"]),
                delta=float(raw["delta"]),
                accountant=str(raw["accountant"]),
                path=path,
                history=history,
                carried_over=float(raw.get("carried_over", 0.0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise PrivacyError(f"ledger {path} is malformed: {exc}") from exc
        return ledger

    @classmethod
    def open(
        cls, path: str | Path, *, budget: float, delta: float, accountant: str = "rdp"
    ) -> PrivacyLedger:
        """Load the ledger at `path` if it exists (its delta/accountant must match), else start one.

        A larger budget than recorded is allowed (a policy decision); the spent epsilon is kept.
        """
        path = Path(path)
        if not path.exists():
            ledger = cls(budget=budget, delta=delta, accountant=accountant, path=path)
            ledger.save(path)
            return ledger
        ledger = cls.load(path)
        if ledger.delta != delta or ledger.accountant != accountant:
            raise PrivacyError(
                f"ledger {path} accounts at delta {ledger.delta:g} with {ledger.accountant}; "
                f"refusing to reuse it with delta {delta:g} / {accountant}"
            )
        ledger.budget = float(budget)
        return ledger
