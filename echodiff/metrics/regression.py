"""EF agreement of a prediction with a reference: MAE, RMSE (EF points), R², Pearson r, slope, with bootstrap CIs."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score


def pearson_r(y: np.ndarray, pred: np.ndarray) -> float:
    """Pearson correlation of ``pred`` with ``y``; NaN when either is constant.

    Unlike R², r ignores bias and scale: it says whether a generator *follows* the target EF at all, even where
    its videos read systematically too high or too flat (R² can then be far below 0).
    """
    y, pred = np.asarray(y, dtype=float), np.asarray(pred, dtype=float)
    dy, dp = y - y.mean(), pred - pred.mean()
    denom = float(np.sqrt((dy**2).sum() * (dp**2).sum()))
    return float((dy * dp).sum() / denom) if denom > 0 else float("nan")


def slope(y: np.ndarray, pred: np.ndarray) -> float:
    """Least-squares slope of ``pred`` on ``y`` (EF points per EF point); NaN when ``y`` is constant.

    A generator that follows its target with slope 0.3 moves the video's EF by 3 points per 10 asked for: not
    precise, whatever its r. 1 is the ideal."""
    y, pred = np.asarray(y, dtype=float), np.asarray(pred, dtype=float)
    dy = y - y.mean()
    denom = float((dy**2).sum())
    return float((dy * (pred - pred.mean())).sum() / denom) if denom > 0 else float("nan")


def ef_scores(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """``{mae, rmse, r2, r, slope}`` of ``pred`` against ``y`` (EF in %), without confidence intervals."""
    return {
        "mae": float(mean_absolute_error(y, pred)),
        "rmse": float(np.sqrt(mean_squared_error(y, pred))),
        "r2": float(r2_score(y, pred)),
        "r": pearson_r(y, pred),
        "slope": slope(y, pred),
    }


def regression_metrics(y: np.ndarray, pred: np.ndarray, bootstrap: int = 1000, seed: int = 0) -> dict[str, float]:
    """``{mae, rmse, r2, r, slope}`` of ``pred`` against ``y`` (EF in %), plus ``<name>_ci_low`` / ``<name>_ci_high``:
    the 2.5th and 97.5th percentiles over ``bootstrap`` resamples of the videos (0 skips them)."""
    y = np.asarray(y, dtype=float)
    pred = np.asarray(pred, dtype=float)
    if y.shape != pred.shape or y.ndim != 1:
        raise ValueError(f"y and pred must be 1-D of one length, got {y.shape} and {pred.shape}")
    if len(y) < 2:
        raise ValueError(f"need at least 2 videos for MAE/RMSE/R², got {len(y)}")
    out = ef_scores(y, pred)
    if bootstrap:
        rng = np.random.default_rng(seed)
        draws = [ef_scores(y[i], pred[i]) for i in (rng.integers(0, len(y), len(y)) for _ in range(bootstrap))]
        for name in ("mae", "rmse", "r2", "r", "slope"):
            values = np.array([d[name] for d in draws])
            values = values[~np.isnan(values)]  # r of a resample that drew one video only
            low, high = np.percentile(values, [2.5, 97.5]) if len(values) else (np.nan, np.nan)
            out[f"{name}_ci_low"], out[f"{name}_ci_high"] = float(low), float(high)
    return out
