"""Spectral quantities that predict how fast gossip averaging converges.

For symmetric doubly stochastic W, the distance to consensus shrinks by at most lambda2 (the
second largest eigenvalue modulus) per round, so ln(tol)/ln(lambda2) rounds reach `tol`.

Up to DENSE_LIMIT sites the eigenvalues come from a dense decomposition (exact, fast at that
size). Above it W is only ever applied to vectors: Lanczos (scipy's eigsh) on W with the
consensus direction projected out, so thousands of sites cost a few sparse products instead
of an N x N array and an O(N^3) decomposition.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TypeAlias

import numpy as np
from scipy import sparse
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

DEFAULT_TOLERANCE = 1e-3
AUTO_CONTRACTION = 0.2
"""Per-round disagreement left after mixing that `gossip_steps_for` aims at: on the issue-#4
ring one exchange (lambda2 0.805) left non-IID sites 25 % behind exact averaging."""
MAX_AUTO_GOSSIP_STEPS = 16
DENSE_LIMIT = 512
"""Largest number of sites whose spectrum is computed densely."""
_ZERO = 1e-12
_LANCZOS_TOL = 1e-12
_LANCZOS_VECTORS = 64
_LANCZOS_MAXITER = 20_000

Matrix: TypeAlias = "np.ndarray | sparse.sparray | sparse.spmatrix"


def lambda2(w: Matrix, *, dense_limit: int = DENSE_LIMIT) -> float:
    """Second largest eigenvalue modulus of a symmetric W (0 for a single node)."""
    n = w.shape[0]
    if n < 2:
        return 0.0
    if n <= dense_limit:
        dense = _dense(w)
        moduli = np.sort(np.abs(np.linalg.eigvalsh((dense + dense.T) / 2.0)))
        return float(moduli[-2])
    op = sparse.csr_array(w)
    sym = (op + op.T) / 2.0
    # W 1 = 1: the disagreement part of x is x - mean(x), and W keeps it there
    return abs(_extreme(lambda x: sym @ _centred(x), n, which="LM"))


def periodic_lambda2(ws: Sequence[Matrix], *, dense_limit: int = DENSE_LIMIT) -> float:
    """Per-round rate of a time-varying schedule: the spectral norm of the period's product
    restricted to the disagreement subspace, taken to the power 1/period."""
    n = ws[0].shape[0]
    if n <= dense_limit:
        product = np.eye(n)
        for w in ws:
            product = _dense(w) @ product
        centred = product - np.ones((n, n)) / n
        rate = float(np.linalg.norm(centred, ord=2))
    else:
        ops = [sparse.csr_array(w) for w in ws]

        def gram(x: np.ndarray) -> np.ndarray:  # M^T M x with M = W_k ... W_1 (I - J/n)
            y = _centred(x)
            for w in ops:
                y = w @ y
            for w in reversed(ops):
                y = w.T @ y
            return _centred(y)

        rate = math.sqrt(max(_extreme(gram, n, which="LA"), 0.0))
    return 0.0 if rate < _ZERO else rate ** (1.0 / len(ws))


def laplacian_extremes(lap: Matrix, *, dense_limit: int = DENSE_LIMIT) -> tuple[float, float]:
    """(largest, second smallest) eigenvalue of a connected graph's Laplacian L."""
    n = lap.shape[0]
    if n <= dense_limit:
        eig = np.linalg.eigvalsh(_dense(lap))
        return float(eig[-1]), float(eig[1])
    op = sparse.csr_array(lap)
    largest = _extreme(lambda x: op @ x, n, which="LA")
    # Gershgorin: every eigenvalue of L is at most twice the largest degree, so c I - L is
    # positive semi-definite and its top eigenvalue off the constant vector is c - lambda_2
    ceiling = 2.0 * float(op.diagonal().max())
    top = _extreme(lambda x: _centred(ceiling * x - op @ x), n, which="LA")
    return largest, ceiling - top


def spectral_gap(w: Matrix) -> float:
    return 1.0 - lambda2(w)


def predicted_rounds(lam2: float, tol: float = DEFAULT_TOLERANCE) -> float:
    """Rounds to shrink the consensus distance by `tol`; inf when W does not mix."""
    if lam2 < _ZERO:
        return 1
    if lam2 >= 1.0 - _ZERO:
        return math.inf
    return max(1, math.ceil(math.log(tol) / math.log(lam2)))


def gossip_steps_for(
    lam2: float, *, target: float = AUTO_CONTRACTION, cap: int = MAX_AUTO_GOSSIP_STEPS
) -> int:
    """Fewest exchanges per round with lambda2 ** steps <= target (1 for a graph that
    averages exactly in one exchange, `cap` for one that barely mixes)."""
    if not 0.0 < target < 1.0:
        raise ValueError("target contraction must be in (0, 1)")
    if lam2 < _ZERO:
        return 1
    if lam2 >= 1.0 - _ZERO:
        return cap
    return max(1, min(cap, math.ceil(math.log(target) / math.log(lam2) - 1e-9)))


def _dense(w: Matrix) -> np.ndarray:
    if sparse.issparse(w):
        return np.asarray(sparse.csr_array(w).toarray(), dtype=float)
    return np.asarray(w, dtype=float)


def _centred(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = x - x.mean()
    return out


def _extreme(matvec: Callable[[np.ndarray], np.ndarray], n: int, *, which: str) -> float:
    """The extreme eigenvalue (`which` as eigsh takes it) of a symmetric operator on R^n,
    started from a fixed vector so that the same graph always gives the same number."""
    op = LinearOperator((n, n), matvec=matvec, dtype=np.float64)
    start = _centred(np.random.default_rng(0).standard_normal(n))
    if float(np.linalg.norm(matvec(start))) < _ZERO * float(np.linalg.norm(start)):
        return 0.0  # the operator annihilates the disagreement space: exact averaging
    try:
        values = eigsh(
            op,
            k=1,
            which=which,
            v0=start,
            ncv=min(n - 1, _LANCZOS_VECTORS),
            tol=_LANCZOS_TOL,
            maxiter=_LANCZOS_MAXITER,
            return_eigenvectors=False,
        )
    except ArpackNoConvergence as exc:  # keep the best estimate rather than fail a run
        if len(exc.eigenvalues) == 0:
            raise
        values = exc.eigenvalues
    return float(values[0])
