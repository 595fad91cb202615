"""Gaussian HMM of market regimes: fitted with hmmlearn, read with our own forward recursion.

The one rule: `filtered_proba` row t uses rows <= t only (forward recursion, normalised in log space),
so it may describe the present. hmmlearn's `predict_proba` is smoothed (forward-backward: it uses
the future) and is never used here; `viterbi` is the hindsight path over the whole history. After
`fit`, nothing needs hmmlearn: the parameters alone (`to_dict`) reproduce every output.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.linalg import LinAlgError, cholesky, solve_triangular
from scipy.special import logsumexp

try:  # hmmlearn's compiled forward recursion; the pure-Python one below is the reference
    from hmmlearn import _hmmc
except ImportError:  # pragma: no cover - a hmmlearn without the extension
    _hmmc = None

#: Number of state counts tried by BIC when `n_states` is None.
STATE_RANGE: tuple[int, ...] = (2, 3, 4)
#: Floor of every covariance diagonal (features are standardised), so no state collapses onto a point.
MIN_COVAR = 1e-3

_N_COV_PARAMS: dict[str, Callable[[int], int]] = {
    "full": lambda f: f * (f + 1) // 2,
    "diag": lambda f: f,
}

OnRestart = Callable[[int, int, float], None]


class RegimeHMM:
    """Gaussian HMM over standardised features X (n, f).

    Hyperparameters: `n_states` (None: chosen by BIC among 2..4), `n_restarts` fits per candidate
    state count with different seeds (best log-likelihood kept), `max_iter` EM iterations,
    `covariance_type` "full" or "diag", `random_state` base seed.

    Fitted: `n_states_`, `n_features_in_`, `log_likelihood_` (of the training X, chosen model),
    `bic_` {k: BIC or None when every restart failed}, `converged_`, `n_iter_`, `startprob_` (k,),
    `transmat_` (k, k), `means_` (k, f), `covars_` (k, f, f) (full form for both covariance types),
    `expected_durations_` (k,) = 1 / (1 - a_ii) bars.
    """

    def __init__(
        self,
        n_states: int | None = None,
        n_restarts: int = 5,
        max_iter: int = 200,
        random_state: int = 0,
        covariance_type: str = "full",
    ) -> None:
        self.n_states = n_states
        self.n_restarts = n_restarts
        self.max_iter = max_iter
        self.random_state = random_state
        self.covariance_type = covariance_type

    # ------------------------------------------------------------------ fitting

    def fit(self, X: np.ndarray, *, on_restart: OnRestart | None = None) -> RegimeHMM:
        """Fit on X (n, f). `on_restart(done, total, best_loglik)` is called after each restart.

        Raises ValueError on bad shapes or settings, RuntimeError when every restart fails.
        """
        from hmmlearn.hmm import GaussianHMM

        X = _check_X(X)
        if self.covariance_type not in _N_COV_PARAMS:
            raise ValueError(f"covariance_type must be one of {sorted(_N_COV_PARAMS)}")
        if self.n_restarts < 1 or self.max_iter < 1:
            raise ValueError("n_restarts and max_iter must be >= 1")
        candidates = STATE_RANGE if self.n_states is None else (int(self.n_states),)
        if min(candidates) < 1:
            raise ValueError(f"n_states must be >= 1, got {self.n_states}")
        n, f = X.shape
        if n < 2 * max(candidates):
            raise ValueError(f"{n} rows are too few for {max(candidates)} states")

        total = len(candidates) * self.n_restarts
        done = 0
        best_overall = -math.inf
        fits: dict[int, Any] = {}
        logliks: dict[int, float] = {}
        for k in candidates:
            best_ll, best_model = -math.inf, None
            for r in range(self.n_restarts):
                model = GaussianHMM(
                    n_components=k,
                    covariance_type=self.covariance_type,
                    n_iter=self.max_iter,
                    tol=1e-4,
                    min_covar=MIN_COVAR,
                    random_state=self.random_state + 1000 * k + r,
                )
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        model.fit(X)
                        ll = float(model.score(X)) if _positive_definite(model.covars_) else -math.inf
                except (ValueError, LinAlgError, np.linalg.LinAlgError):
                    ll = -math.inf
                if math.isfinite(ll) and ll > best_ll:
                    best_ll, best_model = ll, model
                best_overall = max(best_overall, best_ll)
                done += 1
                if on_restart is not None:
                    on_restart(done, total, best_overall)
            if best_model is not None:
                fits[k], logliks[k] = best_model, best_ll
        if not fits:
            raise RuntimeError("every HMM restart failed")

        bics = {k: self._bic(logliks[k], k, n, f) for k in fits}
        self.bic_: dict[int, float | None] = {k: bics.get(k) for k in candidates}
        chosen = min(bics, key=bics.__getitem__)
        model = fits[chosen]
        self.n_states_ = chosen
        self.n_features_in_ = f
        self.log_likelihood_ = logliks[chosen]
        self.converged_ = _converged(model.monitor_)
        self.n_iter_ = int(model.monitor_.iter)
        self.startprob_ = np.asarray(model.startprob_, dtype=np.float64)
        self.transmat_ = np.asarray(model.transmat_, dtype=np.float64)
        self.means_ = np.asarray(model.means_, dtype=np.float64)
        self.covars_ = np.asarray(model.covars_, dtype=np.float64)  # (k, f, f) for every type
        self._prepare()
        return self

    def _bic(self, loglik: float, k: int, n: int, f: int) -> float:
        params = (k - 1) + k * (k - 1) + k * f + k * _N_COV_PARAMS[self.covariance_type](f)
        return -2.0 * loglik + params * math.log(n)

    def _prepare(self) -> None:
        """Cache what the recursions need: log start/transition probabilities, Cholesky factors."""
        with np.errstate(divide="ignore"):
            self._log_start = np.log(self.startprob_)
            self._log_trans = np.log(self.transmat_)
        self._chol = np.stack([cholesky(c, lower=True) for c in self.covars_])
        # L^-1 of each state (f x f, tiny): z = (x - mean) @ L^-T is one matmul per state
        self._chol_inv_t = np.stack([solve_triangular(L, np.eye(len(L)), lower=True).T for L in self._chol])
        diag = np.clip(1.0 - np.diag(self.transmat_), 1e-12, None)
        self.expected_durations_ = 1.0 / diag

    # ------------------------------------------------------------------ reading

    def log_emission(self, X: np.ndarray) -> np.ndarray:
        """(n, f) -> (n, k) log density of each row under each state's Gaussian."""
        X = self._check_fitted_X(X)
        n, f = X.shape
        out = np.empty((n, self.n_states_))
        for j in range(self.n_states_):
            L = self._chol[j]
            z = (X - self.means_[j]) @ self._chol_inv_t[j]  # (n, f), rows L^-1 (x - mean)
            log_det = 2.0 * np.log(np.diag(L)).sum()
            out[:, j] = -0.5 * (f * math.log(2 * math.pi) + log_det + (z * z).sum(axis=1))
        return out

    def _forward(self, X: np.ndarray) -> tuple[np.ndarray, float]:
        """(normalised log alpha (n, k), log-likelihood): hmmlearn's compiled forward pass (the same
        recursion, `_forward_loop`, in C++: ~1 ms for 5,000 bars instead of ~100), normalised per row."""
        if _hmmc is None:
            return self._forward_loop(X)
        log_b = self.log_emission(X)
        with np.errstate(divide="ignore"):
            _, joint = _hmmc.forward_log(self.startprob_, self.transmat_, np.ascontiguousarray(log_b))
        norms = logsumexp(joint, axis=1)
        return joint - norms[:, None], float(norms[-1])

    def _forward_loop(self, X: np.ndarray) -> tuple[np.ndarray, float]:
        # log alpha_t(j) = log b_t(j) + logsumexp_i(log alpha_{t-1}(i) + log a_ij), normalised per row;
        # the logsumexp is taken as m + log(exp(log alpha_{t-1} - m) @ A), m = max log alpha_{t-1}.
        log_b = self.log_emission(X)
        n, k = log_b.shape
        log_alpha = np.empty((n, k))
        norms = np.empty(n)
        trans = self.transmat_
        prev = self._log_start + log_b[0]
        with np.errstate(divide="ignore"):
            for t in range(n):
                if t > 0:
                    last = log_alpha[t - 1]
                    m = last.max()
                    prev = np.log(np.exp(last - m) @ trans) + m + log_b[t]
                top = prev.max()
                norms[t] = top + math.log(np.exp(prev - top).sum())
                log_alpha[t] = prev - norms[t]
        return log_alpha, float(norms.sum())

    def filtered_proba(self, X: np.ndarray) -> np.ndarray:
        """(n, f) -> (n, k) P(state_t | x_0..x_t): forward only, row t uses rows <= t. Rows sum to 1."""
        log_alpha, _ = self._forward(X)
        return np.exp(log_alpha)

    def score(self, X: np.ndarray) -> float:
        """Log-likelihood of X (n, f) under the fitted parameters (sum of the forward normalisers)."""
        return self._forward(X)[1]

    def viterbi(self, X: np.ndarray) -> np.ndarray:
        """(n, f) -> (n,) int most likely state path given ALL rows (hindsight: uses the future)."""
        log_b = self.log_emission(X)
        if _hmmc is not None:  # the same dynamic programme, compiled
            with np.errstate(divide="ignore"):
                _, path = _hmmc.viterbi(self.startprob_, self.transmat_, np.ascontiguousarray(log_b))
            return np.asarray(path, dtype=np.int64)
        n, k = log_b.shape
        back = np.zeros((n, k), dtype=np.int64)
        delta = self._log_start + log_b[0]
        for t in range(1, n):
            cand = delta[:, None] + self._log_trans  # (from, to)
            back[t] = np.argmax(cand, axis=0)
            delta = cand[back[t], np.arange(k)] + log_b[t]
        path = np.empty(n, dtype=np.int64)
        path[-1] = int(np.argmax(delta))
        for t in range(n - 1, 0, -1):
            path[t - 1] = back[t, path[t]]
        return path

    # ------------------------------------------------------------------ persistence

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict of the hyperparameters and fitted parameters (lists of floats)."""
        self._check_fitted()
        return {
            "n_states": self.n_states,
            "n_restarts": self.n_restarts,
            "max_iter": self.max_iter,
            "random_state": self.random_state,
            "covariance_type": self.covariance_type,
            "n_states_": self.n_states_,
            "n_features_in_": self.n_features_in_,
            "log_likelihood_": self.log_likelihood_,
            "bic_": {str(k): v for k, v in self.bic_.items()},
            "converged_": self.converged_,
            "n_iter_": self.n_iter_,
            "startprob_": self.startprob_.tolist(),
            "transmat_": self.transmat_.tolist(),
            "means_": self.means_.tolist(),
            "covars_": self.covars_.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RegimeHMM:
        out = cls(
            n_states=data["n_states"],
            n_restarts=int(data["n_restarts"]),
            max_iter=int(data["max_iter"]),
            random_state=int(data["random_state"]),
            covariance_type=str(data["covariance_type"]),
        )
        out.n_states_ = int(data["n_states_"])
        out.n_features_in_ = int(data["n_features_in_"])
        out.log_likelihood_ = float(data["log_likelihood_"])
        out.bic_ = {int(k): (None if v is None else float(v)) for k, v in data["bic_"].items()}
        out.converged_ = bool(data["converged_"])
        out.n_iter_ = int(data["n_iter_"])
        out.startprob_ = np.asarray(data["startprob_"], dtype=np.float64)
        out.transmat_ = np.asarray(data["transmat_"], dtype=np.float64)
        out.means_ = np.asarray(data["means_"], dtype=np.float64)
        out.covars_ = np.asarray(data["covars_"], dtype=np.float64)
        k, f = out.n_states_, out.n_features_in_
        shapes = {
            "startprob_": (out.startprob_.shape, (k,)),
            "transmat_": (out.transmat_.shape, (k, k)),
            "means_": (out.means_.shape, (k, f)),
            "covars_": (out.covars_.shape, (k, f, f)),
        }
        for name, (got, want) in shapes.items():
            if got != want:
                raise ValueError(f"{name} has shape {got}, expected {want}")
        out._prepare()
        return out

    # ------------------------------------------------------------------ checks

    def _check_fitted(self) -> None:
        if not hasattr(self, "n_states_"):
            raise RuntimeError("RegimeHMM is not fitted")

    def _check_fitted_X(self, X: np.ndarray) -> np.ndarray:
        self._check_fitted()
        X = _check_X(X)
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features, fitted on {self.n_features_in_}")
        return X


def _positive_definite(covars: np.ndarray) -> bool:
    """Every state's covariance is usable (a collapsed state has a singular one)."""
    try:
        return bool(np.all(np.linalg.eigvalsh(np.asarray(covars, dtype=np.float64)) > MIN_COVAR / 10))
    except np.linalg.LinAlgError:
        return False


def _converged(monitor: Any) -> bool:
    """EM stopped on its tolerance (hmmlearn's own `converged` is also true at the iteration cap)."""
    history = list(monitor.history)
    return len(history) >= 2 and abs(history[-1] - history[-2]) < monitor.tol


def _check_X(X: np.ndarray) -> np.ndarray:
    X = np.ascontiguousarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] < 1:
        raise ValueError(f"X must be (n, f) with n >= 1, got shape {X.shape}")
    if not np.all(np.isfinite(X)):
        raise ValueError("X contains NaN or infinite values")
    return X
