"""Metrics: EF agreement (MAE, RMSE, R², Pearson r) with bootstrap intervals; video quality lives in evaluation."""

from echodiff.metrics.regression import ef_scores, pearson_r, regression_metrics

__all__ = ["ef_scores", "pearson_r", "regression_metrics"]
