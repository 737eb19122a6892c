"""Metrics: EF agreement (MAE, RMSE, R², Pearson r, slope) with bootstrap intervals; video quality: metrics.video."""

from echodiff.metrics.regression import ef_scores, pearson_r, regression_metrics, slope

__all__ = ["ef_scores", "pearson_r", "regression_metrics", "slope"]
