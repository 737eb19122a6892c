"""Metrics: EF agreement (MAE, RMSE, R²) with bootstrap intervals; video-quality metrics come with evaluation."""

from echodiff.metrics.regression import regression_metrics

__all__ = ["regression_metrics"]
