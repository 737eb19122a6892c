"""EF agreement between a reference and a prediction: MAE, RMSE (EF points) and R², with bootstrap 95 % CIs."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score


def _scores(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    return {
        "mae": float(mean_absolute_error(y, pred)),
        "rmse": float(np.sqrt(mean_squared_error(y, pred))),
        "r2": float(r2_score(y, pred)),
    }


def regression_metrics(y: np.ndarray, pred: np.ndarray, bootstrap: int = 1000, seed: int = 0) -> dict[str, float]:
    """``{mae, rmse, r2}`` of ``pred`` against ``y`` (EF in %), plus ``<name>_ci_low`` / ``<name>_ci_high``:
    the 2.5th and 97.5th percentiles over ``bootstrap`` resamples of the videos (0 skips them)."""
    y = np.asarray(y, dtype=float)
    pred = np.asarray(pred, dtype=float)
    if y.shape != pred.shape or y.ndim != 1:
        raise ValueError(f"y and pred must be 1-D of one length, got {y.shape} and {pred.shape}")
    if len(y) < 2:
        raise ValueError(f"need at least 2 videos for MAE/RMSE/R², got {len(y)}")
    out = _scores(y, pred)
    if bootstrap:
        rng = np.random.default_rng(seed)
        draws = [_scores(y[i], pred[i]) for i in (rng.integers(0, len(y), len(y)) for _ in range(bootstrap))]
        for name in ("mae", "rmse", "r2"):
            values = np.array([d[name] for d in draws])
            out[f"{name}_ci_low"], out[f"{name}_ci_high"] = (float(v) for v in np.percentile(values, [2.5, 97.5]))
    return out
