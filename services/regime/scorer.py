"""LightGBM signal scorer with purged, embargoed walk-forward training and calibrated probabilities.

`purged_walk_forward_splits` cuts the signals (in time order) into n_folds + 1 blocks of equal count;
block 0 only trains, blocks 1..n_folds are the test folds in time order, each trained on everything
before it (expanding window) except
- PURGED samples: a training label whose interval [t, t1] reaches the first bar of the test fold
  (t1 >= its first t) would carry information from the test span, so it is dropped;
- samples right after an earlier test fold (later folds train on earlier test folds): those starting
  after the fold but before its labels end (t <= max t1 of the fold) are PURGED too, and those
  starting within `embargo` bars after that end are EMBARGOED (Lopez de Prado's convention), against
  the serial correlation around each test span.
No sample trains a model that scores a sample at or before its own time.

`SignalScorer.fit` runs the walk-forward (out-of-fold raw probabilities), fits the calibrator
(isotonic or Platt) on them, then fits the serving booster on all samples. `walk_forward_calibrated`
in the result gives honest calibrated OOF probabilities: fold k is calibrated by a calibrator fitted
on the OOF predictions of folds < k only (fold 1 stays raw).

Calibration defaults to Platt (a logistic map of the raw log-odds, 2 parameters): on the bundled data
the scores are weak and isotonic's steps at the extremes cost more log loss than they correct.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

Calibration = Literal["isotonic", "platt"]
OnIteration = Callable[[int, int], None]

_EPS = 1e-6
#: Calibrated probabilities are kept in [CLIP, 1 - CLIP]: an isotonic step at 0 or 1 learned from a
#: handful of samples would otherwise give an infinite log loss.
CLIP = 1e-3


def _check_xy(X: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
    X = np.ascontiguousarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"X must be (n, f), got shape {X.shape}")
    if y is not None and np.asarray(y).shape != (len(X),):
        raise ValueError(f"y must be ({len(X)},), got shape {np.asarray(y).shape}")
    return X


@dataclass(frozen=True, slots=True)
class Split:
    """One walk-forward fold: `train` and `test` (positions into the caller's arrays), and what was
    removed from the expanding training window: `purged`, `embargoed`."""

    fold: int
    train: np.ndarray
    test: np.ndarray
    purged: np.ndarray
    embargoed: np.ndarray


def purged_walk_forward_splits(
    t_index: np.ndarray, t1: np.ndarray, *, n_folds: int = 5, embargo: int = 0
) -> list[Split]:
    """Expanding-window walk-forward folds over signals with label intervals [t_index, t1] (both (n,),
    bar positions). Samples are ordered by t (stable); signals sharing a bar stay in one block."""
    t = np.asarray(t_index, dtype=np.int64)
    end = np.asarray(t1, dtype=np.int64)
    if t.shape != end.shape or t.ndim != 1:
        raise ValueError("t_index and t1 must be (n,) arrays of the same length")
    if np.any(end < t):
        raise ValueError("t1 must be >= t_index")
    if n_folds < 1 or embargo < 0:
        raise ValueError("n_folds must be >= 1 and embargo >= 0")
    order = np.argsort(t, kind="stable")
    bars = np.unique(t)
    if len(bars) < n_folds + 1:
        raise ValueError(f"{len(bars)} distinct signal bars, need at least {n_folds + 1}")
    # block edges on distinct bars, so that signals of one bar never straddle a fold boundary
    counts = np.searchsorted(t[order], bars, side="right")
    cuts = [int(bars[np.searchsorted(counts, len(t) * k / (n_folds + 1))]) for k in range(1, n_folds + 1)]
    edges = [int(t.min()), *cuts, int(t.max()) + 1]
    splits: list[Split] = []
    after_purged = np.zeros(len(t), dtype=bool)  # overlapping the labels of an earlier test fold
    embargoed = np.zeros(len(t), dtype=bool)
    for k in range(1, n_folds + 1):
        start, stop = edges[k], edges[k + 1]
        test = np.flatnonzero((t >= start) & (t < stop))
        before = t < start
        purged = before & ((end >= start) | after_purged)
        dropped_embargo = before & embargoed & ~purged
        train = np.flatnonzero(before & ~purged & ~dropped_embargo)
        splits.append(
            Split(
                fold=k,
                train=train,
                test=test,
                purged=np.flatnonzero(purged),
                embargoed=np.flatnonzero(dropped_embargo),
            )
        )
        if len(test):
            last_t, last = int(t[test].max()), int(end[test].max())
            after_purged |= (t > last_t) & (t <= last)
            embargoed |= (t > max(last, last_t)) & (t <= last + embargo)
    return splits


class _Calibrator:
    """Monotone map of raw probabilities to calibrated ones, stored as plain numbers."""

    def __init__(self, method: Calibration) -> None:
        if method not in ("isotonic", "platt"):
            raise ValueError(f"calibration must be 'isotonic' or 'platt', got {method!r}")
        self.method = method
        self.params_: dict[str, Any] = {}

    def fit(self, p: np.ndarray, y: np.ndarray) -> _Calibrator:
        p, y = np.asarray(p, dtype=np.float64), np.asarray(y, dtype=np.float64)
        if len(np.unique(y)) < 2:
            self.params_ = {"constant": float(y.mean()) if len(y) else 0.5}
        elif self.method == "isotonic":
            from sklearn.isotonic import IsotonicRegression

            iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(p, y)
            self.params_ = {"x": iso.X_thresholds_.tolist(), "y": iso.y_thresholds_.tolist()}
        else:
            from sklearn.linear_model import LogisticRegression

            lr = LogisticRegression(C=1e6).fit(_logit(p)[:, None], y)
            self.params_ = {"a": float(lr.coef_[0, 0]), "b": float(lr.intercept_[0])}
        return self

    def transform(self, p: np.ndarray) -> np.ndarray:
        p = np.asarray(p, dtype=np.float64)
        prm = self.params_
        if "constant" in prm:
            out = np.full(p.shape, prm["constant"])
        elif "x" in prm:
            out = np.interp(p, prm["x"], prm["y"])
        else:
            out = 1.0 / (1.0 + np.exp(-(prm["a"] * _logit(p) + prm["b"])))
        return np.clip(out, CLIP, 1.0 - CLIP)


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, _EPS, 1.0 - _EPS)
    return np.log(q / (1.0 - q))


@dataclass(frozen=True, slots=True)
class WalkForward:
    """Out-of-fold results over n samples (positions as given). `raw` (n,) booster probabilities,
    NaN for samples never tested (block 0); `calibrated` (n,) fold k calibrated on folds < k only
    (fold 1 raw); `fold` (n,) test fold (0 = train-only block); `base_rate` (n,) the label rate of
    the fold's training set (the honest constant predictor); `splits` the folds."""

    raw: np.ndarray
    calibrated: np.ndarray
    fold: np.ndarray
    base_rate: np.ndarray
    splits: list[Split]

    @property
    def tested(self) -> np.ndarray:
        """(n,) bool: the sample has an out-of-fold prediction."""
        return self.fold > 0


class SignalScorer:
    """P(target before stop) of a signal from its features, LightGBM binary classifier (one thread,
    deterministic) with a probability calibrator fitted on out-of-fold predictions.

    Fitted state: `booster_` (on all samples), `calibrator_`, `walk_forward_` (the OOF results),
    `feature_names_` (f,).
    """

    def __init__(
        self,
        n_estimators: int = 200,
        learning_rate: float = 0.05,
        num_leaves: int = 15,
        min_child_samples: int = 50,
        random_state: int = 0,
        calibration: Calibration = "platt",
    ) -> None:
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.random_state = random_state
        self.calibration = calibration

    def _params(self) -> dict[str, Any]:
        return {
            "objective": "binary",
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_child_samples": self.min_child_samples,
            "seed": self.random_state,
            "num_threads": 1,
            "deterministic": True,
            "force_row_wise": True,
            "verbose": -1,
        }

    def _train(
        self, X: np.ndarray, y: np.ndarray, names: list[str], progress: Callable[[int], None] | None
    ) -> Any:
        import lightgbm as lgb

        callbacks = []
        if progress is not None:

            def _cb(env: Any) -> None:
                progress(env.iteration + 1)

            callbacks.append(_cb)
        data = lgb.Dataset(X, label=y, feature_name=names, free_raw_data=True)
        return lgb.train(self._params(), data, num_boost_round=self.n_estimators, callbacks=callbacks)

    def walk_forward(
        self,
        X: np.ndarray,
        y: np.ndarray,
        t_index: np.ndarray,
        t1: np.ndarray,
        *,
        n_folds: int = 5,
        embargo: int,
        feature_names: list[str] | None = None,
        on_iteration: OnIteration | None = None,
        _total: int | None = None,
    ) -> WalkForward:
        """Out-of-fold predictions of X (n, f), y (n,) 0/1 with label intervals [t_index, t1] (n,),
        on purged, embargoed expanding folds (see the module docstring). A fold whose training set
        has one class predicts that constant. `on_iteration(step, max_steps)` per boosting round."""
        X = _check_xy(X, y)
        y = np.asarray(y, dtype=np.float64)
        names = feature_names or [f"f{i}" for i in range(X.shape[1])]
        splits = purged_walk_forward_splits(t_index, t1, n_folds=n_folds, embargo=embargo)
        total = _total or self.n_estimators * n_folds
        raw = np.full(len(y), np.nan)
        calibrated = np.full(len(y), np.nan)
        fold = np.zeros(len(y), dtype=np.int64)
        base = np.full(len(y), np.nan)
        for i, split in enumerate(splits):
            done = i * self.n_estimators
            ytr = y[split.train]
            rate = float(ytr.mean()) if len(ytr) else 0.5
            if len(np.unique(ytr)) < 2:
                p = np.full(len(split.test), rate)
                if on_iteration is not None:
                    on_iteration(done + self.n_estimators, total)
            else:
                step = None if on_iteration is None else (lambda it, d=done: on_iteration(d + it, total))
                booster = self._train(X[split.train], ytr, names, step)
                p = booster.predict(X[split.test])
            raw[split.test] = p
            earlier = fold > 0
            if earlier.any():
                cal = _Calibrator(self.calibration).fit(raw[earlier], y[earlier])
                calibrated[split.test] = cal.transform(p)
            else:
                calibrated[split.test] = p
            fold[split.test] = split.fold
            base[split.test] = rate
        return WalkForward(raw=raw, calibrated=calibrated, fold=fold, base_rate=base, splits=splits)

    def fit(
        self,
        X: np.ndarray,
        y: np.ndarray,
        t_index: np.ndarray,
        t1: np.ndarray,
        *,
        n_folds: int = 5,
        embargo: int = 0,
        feature_names: list[str] | None = None,
        returns: np.ndarray | None = None,
        on_iteration: OnIteration | None = None,
    ) -> SignalScorer:
        """Walk-forward OOF predictions, a calibrator fitted on them, then the serving booster on all
        of X (n, f), y (n,). `returns` (n,): the realised returns after costs of the labels, whose
        means over wins and losses give `expected_return`. `on_iteration(step, max_steps)` counts
        the rounds of all n_folds + 1 fits. Raises ValueError when y has one class only."""
        X = _check_xy(X, y)
        y = np.asarray(y, dtype=np.float64)
        if len(np.unique(y)) < 2:
            raise ValueError("y has a single class; nothing to score")
        names = list(feature_names) if feature_names else [f"f{i}" for i in range(X.shape[1])]
        if len(names) != X.shape[1]:
            raise ValueError(f"{len(names)} feature names for {X.shape[1]} columns")
        total = self.n_estimators * (n_folds + 1)
        wf = self.walk_forward(
            X, y, t_index, t1, n_folds=n_folds, embargo=embargo, feature_names=names,
            on_iteration=on_iteration, _total=total,
        )  # fmt: skip
        tested = wf.tested
        self.calibrator_ = _Calibrator(self.calibration).fit(wf.raw[tested], y[tested])
        done = self.n_estimators * n_folds
        step = None if on_iteration is None else (lambda it: on_iteration(done + it, total))
        self.booster_ = self._train(X, y, names, step)
        self.walk_forward_ = wf
        self.feature_names_ = names
        self.mean_return_win_, self.mean_return_loss_ = float("nan"), float("nan")
        if returns is not None:
            r = np.asarray(returns, dtype=np.float64)
            if r.shape != y.shape:
                raise ValueError(f"returns must be ({len(y)},), got shape {r.shape}")
            self.mean_return_win_ = float(r[y == 1].mean())
            self.mean_return_loss_ = float(r[y == 0].mean())
        return self

    def _fitted(self) -> Any:
        if not hasattr(self, "booster_"):
            raise RuntimeError("SignalScorer is not fitted")
        return self.booster_

    def predict_raw(self, X: np.ndarray) -> np.ndarray:
        """Uncalibrated booster probabilities (n,)."""
        return np.asarray(self._fitted().predict(_check_xy(X)), dtype=np.float64)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Calibrated P(label = 1) (n,) of X (n, f)."""
        return self.calibrator_.transform(self.predict_raw(X))

    def expected_return(self, X: np.ndarray) -> np.ndarray:
        """Expected return after costs (n,): p * mean win + (1 - p) * mean loss, the means over the
        training labels (NaN when `fit` got no `returns`)."""
        p = self.predict_proba(X)
        return p * self.mean_return_win_ + (1.0 - p) * self.mean_return_loss_

    def contributions(self, X: np.ndarray) -> np.ndarray:
        """Per-feature contributions (n, f + 1) in log-odds of the raw booster (before calibration);
        the last column is the bias; each row sums to the raw log-odds."""
        return np.asarray(self._fitted().predict(_check_xy(X), pred_contrib=True), dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able state: hyperparameters, LightGBM's model string, the calibrator's parameters."""
        return {
            "params": {
                "n_estimators": self.n_estimators,
                "learning_rate": self.learning_rate,
                "num_leaves": self.num_leaves,
                "min_child_samples": self.min_child_samples,
                "random_state": self.random_state,
                "calibration": self.calibration,
            },
            "feature_names": list(self.feature_names_),
            "booster": self._fitted().model_to_string(),
            "calibrator": dict(self.calibrator_.params_),
            "mean_return_win": _json_float(self.mean_return_win_),
            "mean_return_loss": _json_float(self.mean_return_loss_),
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> SignalScorer:
        """Inverse of `to_dict` (the walk-forward results are not stored)."""
        import lightgbm as lgb

        scorer = cls(**state["params"])
        scorer.booster_ = lgb.Booster(model_str=state["booster"])
        cal = _Calibrator(scorer.calibration)
        cal.params_ = dict(state["calibrator"])
        scorer.calibrator_ = cal
        scorer.feature_names_ = list(state["feature_names"])
        scorer.mean_return_win_ = _from_json_float(state.get("mean_return_win"))
        scorer.mean_return_loss_ = _from_json_float(state.get("mean_return_loss"))
        return scorer


def _json_float(value: float) -> float | None:
    return None if not np.isfinite(value) else float(value)


def _from_json_float(value: float | None) -> float:
    return float("nan") if value is None else float(value)
