"""NHITS wrapper: a scikit-learn style estimator around neuralforecast's NHITS.

`__init__` stores hyperparameters only; `fit` trains through neuralforecast (Lightning) and leaves
fitted state in attributes ending in `_`. Training uses neuralforecast end to end; inference calls
the fitted torch module directly on a batch of input windows (the same per-window scaler, forward
and inverse scaling neuralforecast's predict step applies, checked equal by a test), because
building a Lightning Trainer per forecast costs far more than the forward pass
(docs/benchmarks.md).

torch and neuralforecast are imported lazily so that importing this module (settings, registry,
the serving process before its first model load) stays cheap.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

WEIGHTS_FILE = "weights.pt"
CONFIG_FILE = "nhits.json"

# Scalers whose inverse is affine in (shift, scale) and carry no learnable state.
SCALERS = ("identity", "standard", "robust", "minmax", "minmax1")


@dataclass(frozen=True, slots=True)
class NHITSConfig:
    """NHITS hyperparameters (neuralforecast names). `h` is the maximum forecast horizon in bars."""

    h: int = 24
    input_size: int = 168
    max_steps: int = 300
    learning_rate: float = 1e-4
    batch_size: int = 32
    windows_batch_size: int = 256
    mlp_units: int = 64
    n_pool_kernel_size: tuple[int, ...] = (2, 2, 1)
    n_freq_downsample: tuple[int, ...] = (4, 2, 1)
    scaler_type: str = "robust"
    val_check_steps: int = 50
    random_seed: int = 1

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["n_pool_kernel_size"] = list(self.n_pool_kernel_size)
        data["n_freq_downsample"] = list(self.n_freq_downsample)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NHITSConfig:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for key in ("n_pool_kernel_size", "n_freq_downsample"):
            if key in known:
                known[key] = tuple(known[key])
        return cls(**known)


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Silence Lightning's banner logs and advisory warnings (dataloader workers, GPU hints)."""
    names = ("lightning", "lightning.pytorch", "pytorch_lightning", "lightning_fabric")
    loggers = [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            for module in ("lightning", "pytorch_lightning", "neuralforecast", "torch.utils.data"):
                warnings.filterwarnings("ignore", module=rf"{module}(\.|$)")
            warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def library_versions() -> dict[str, str]:
    """Versions of the libraries a model file depends on, stored with every model version."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str] = {}
    for name in ("neuralforecast", "torch", "lightning", "statsforecast", "numpy", "pandas"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


@dataclass
class FitResult:
    """What `fit` observed: final losses and the number of optimizer steps taken."""

    steps: int = 0
    train_loss: float | None = None
    valid_loss: float | None = None
    valid_trajectory: list[tuple[int, float]] = field(default_factory=list)


class NHITSForecaster:
    """Univariate NHITS on the bar index of one price series.

    Parameters are those of `NHITSConfig` plus `accelerator` ("cpu" or "gpu") and, on a GPU, the
    `device` index chosen by services.runtime.gpu (passed through, never assumed to be 0).
    Fitted attributes: `model_` (the neuralforecast NHITS module), `fit_` (FitResult),
    `n_train_` (bars seen in training).
    """

    def __init__(
        self, config: NHITSConfig | None = None, *, accelerator: str = "cpu", device: int | None = None
    ) -> None:
        self.config = config or NHITSConfig()
        self.accelerator = accelerator
        self.device = device

    # ---- training -------------------------------------------------------------------------------

    def _build(self, *, callbacks: Sequence[Any] = (), trainer: bool = True) -> Any:
        from neuralforecast.losses.pytorch import MAE
        from neuralforecast.models import NHITS

        cfg = self.config
        if cfg.scaler_type not in SCALERS:
            raise ValueError(f"scaler_type must be one of {SCALERS}")
        stacks = len(cfg.n_pool_kernel_size)
        kwargs: dict[str, Any] = {}
        if trainer:
            kwargs = {
                "accelerator": self.accelerator,
                "devices": [self.device] if self.accelerator == "gpu" and self.device is not None else 1,
                "callbacks": list(callbacks),
                "enable_progress_bar": False,
                "enable_model_summary": False,
                "enable_checkpointing": False,
                "logger": False,
            }
        return NHITS(
            h=cfg.h,
            input_size=cfg.input_size,
            stack_types=["identity"] * stacks,
            n_blocks=[1] * stacks,
            mlp_units=[[cfg.mlp_units, cfg.mlp_units]] * stacks,
            n_pool_kernel_size=list(cfg.n_pool_kernel_size),
            n_freq_downsample=list(cfg.n_freq_downsample),
            loss=MAE(),
            max_steps=cfg.max_steps,
            learning_rate=cfg.learning_rate,
            batch_size=cfg.batch_size,
            windows_batch_size=cfg.windows_batch_size,
            val_check_steps=cfg.val_check_steps,
            scaler_type=cfg.scaler_type,
            random_seed=cfg.random_seed,
            **kwargs,
        )

    def fit(self, y: np.ndarray, *, val_size: int = 0, callbacks: Sequence[Any] = ()) -> NHITSForecaster:
        """Train on `y`, shape (n,), float: one price series on its bar index.

        The last `val_size` bars are not trained on; neuralforecast reports the loss on them
        (`valid_loss`) every `val_check_steps` steps. `callbacks` are Lightning callbacks.
        """
        return self.fit_many([y], val_size=val_size, callbacks=callbacks)

    def fit_many(
        self, series: Sequence[np.ndarray], *, val_size: int = 0, callbacks: Sequence[Any] = ()
    ) -> NHITSForecaster:
        """Train one model across several series (a global model), each shape (n_i,), on its own
        bar index; one series is `fit`.

        neuralforecast samples training windows from every series; the model's `scaler_type`
        scales each input window by its own statistics (and the loss is taken in those units), so
        series of any price level train together without per-series statistics. The last
        `val_size` bars of every series are not trained on.
        """
        import pandas as pd
        from neuralforecast import NeuralForecast

        cfg = self.config
        arrays = [np.asarray(y, dtype=np.float64) for y in series]
        if not arrays:
            raise ValueError("at least one series is required")
        for y in arrays:
            if y.ndim != 1:
                raise ValueError(f"y must be 1-D, got shape {y.shape}")
            if len(y) - val_size < cfg.input_size + cfg.h:
                raise ValueError(
                    f"need input_size + h = {cfg.input_size + cfg.h} training bars, got {len(y) - val_size}"
                )
        ids = ["y"] if len(arrays) == 1 else [f"s{i:04d}" for i in range(len(arrays))]
        df = pd.concat(
            [
                pd.DataFrame({"unique_id": uid, "ds": np.arange(len(y), dtype=np.int64), "y": y})
                for uid, y in zip(ids, arrays, strict=True)
            ],
            ignore_index=True,
        )
        model = self._build(callbacks=callbacks)
        with quiet_lightning():
            nf = NeuralForecast(models=[model], freq=1)
            nf.fit(df=df, val_size=val_size)
        fitted = nf.models[0]
        fitted.eval()
        self.model_ = fitted.to("cpu")
        self.n_train_ = sum(len(y) - val_size for y in arrays)
        train = [loss for _, loss in getattr(fitted, "train_trajectories", [])]
        valid = [(int(step), float(loss)) for step, loss in getattr(fitted, "valid_trajectories", [])]
        self.fit_ = FitResult(
            steps=len(train),
            train_loss=float(train[-1]) if train else None,
            valid_loss=valid[-1][1] if valid else None,
            valid_trajectory=valid,
        )
        return self

    # ---- inference ------------------------------------------------------------------------------

    def predict_windows(self, windows: np.ndarray) -> np.ndarray:
        """Point forecasts for a batch of input windows.

        windows: shape (B, input_size), float, oldest bar first, no missing values.
        Returns shape (B, h), float64: the next h bars of each window.
        """
        import torch

        x = np.ascontiguousarray(windows, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.config.input_size:
            raise ValueError(f"windows must have shape (B, {self.config.input_size}), got {x.shape}")
        model = self.model_
        with torch.inference_mode():
            return _forward(model, torch.from_numpy(x)).numpy().astype(np.float64)

    def predict(self, y: np.ndarray) -> np.ndarray:
        """Forecast the `h` bars after series `y`, shape (n,) with n >= input_size -> shape (h,)."""
        window = np.asarray(y, dtype=np.float64)[-self.config.input_size :]
        return self.predict_windows(window[None, :])[0]

    # ---- persistence ----------------------------------------------------------------------------

    def save(self, directory: Path) -> list[Path]:
        """Write the weights (a plain state dict) and the hyperparameters; returns the files."""
        import torch

        directory.mkdir(parents=True, exist_ok=True)
        weights = directory / WEIGHTS_FILE
        config = directory / CONFIG_FILE
        torch.save(self.model_.state_dict(), weights)
        config.write_text(json.dumps(self.config.to_dict(), indent=2, sort_keys=True))
        return [weights, config]

    @classmethod
    def load(cls, directory: Path) -> NHITSForecaster:
        """Rebuild the module from its hyperparameters and load the weights (no pickle)."""
        import torch

        config = NHITSConfig.from_dict(json.loads((directory / CONFIG_FILE).read_text()))
        self = cls(config)
        with quiet_lightning():
            model = self._build(trainer=False)
        state = torch.load(directory / WEIGHTS_FILE, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        model.eval()
        self.model_ = model
        self.n_train_ = 0
        self.fit_ = FitResult()
        return self


class StackedNHITS:
    """Many fitted NHITS models of one architecture evaluated in one vectorised pass.

    Each symbol has its own weights; `torch.func.stack_module_state` stacks them and `vmap` runs
    the forward of all models at once, faster than a loop (docs/benchmarks.md).
    """

    def __init__(self, forecasters: Sequence[NHITSForecaster]) -> None:
        import copy

        from torch.func import stack_module_state

        if not forecasters:
            raise ValueError("at least one model is required")
        configs = {f.config for f in forecasters}
        if len(configs) != 1:
            raise ValueError("all models must share one configuration")
        self.config = forecasters[0].config
        self.scaler_ = forecasters[0].model_.scaler
        self.loss_ = forecasters[0].model_.loss
        modules = [f.model_ for f in forecasters]
        self.params_, self.buffers_ = stack_module_state(modules)
        self.base_ = copy.deepcopy(modules[0]).to("meta")

    def predict(self, windows: np.ndarray) -> np.ndarray:
        """windows: (M, input_size), row i for model i -> forecasts (M, h), float64."""
        import torch
        from torch.func import functional_call, vmap

        x = torch.from_numpy(np.ascontiguousarray(windows, dtype=np.float32))
        if x.ndim != 2 or x.shape[1] != self.config.input_size:
            raise ValueError(f"windows must have shape (M, {self.config.input_size}), got {tuple(x.shape)}")
        base = self.base_

        def one(params: Any, buffers: Any, z: torch.Tensor) -> torch.Tensor:
            batch = {
                "insample_y": z[None],
                "insample_mask": torch.ones_like(z)[None],
                "futr_exog": None,
                "hist_exog": None,
                "stat_exog": None,
            }
            out: torch.Tensor = functional_call(base, (params, buffers), (batch,))
            return out[0]

        with torch.inference_mode():
            z, shift, scale = _scale(self.scaler_, x)
            out = self.loss_.domain_map(vmap(one)(self.params_, self.buffers_, z))  # (M, h, 1), scaled
            y_hat = self.scaler_.inverse_scaler(out, shift, scale)[..., 0]
        return y_hat.numpy().astype(np.float64)


def _scale(scaler: Any, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-window scaling of y (B, L) as neuralforecast does it: (z (B, L), shift, scale)."""
    import torch

    x = y.unsqueeze(-1)  # (B, L, 1)
    shift, scale = scaler.compute_statistics(x=x, mask=torch.ones_like(x), dim=scaler.dim, eps=scaler.eps)
    return scaler.scaler(x, shift, scale)[..., 0], shift, scale


def _forward(model: Any, y: torch.Tensor) -> torch.Tensor:
    """neuralforecast's direct predict step for a univariate model: y (B, L) -> (B, h)."""
    import torch

    scaler = model.scaler
    z, shift, scale = _scale(scaler, y)
    batch = {
        "insample_y": z,
        "insample_mask": torch.ones_like(z),
        "futr_exog": None,
        "hist_exog": None,
        "stat_exog": None,
    }
    out = model.loss.domain_map(model(batch))  # (B, h, 1) in scaled units
    y_hat: torch.Tensor = scaler.inverse_scaler(out, shift, scale)
    return y_hat[..., 0]
