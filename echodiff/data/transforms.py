"""Tensor transforms shared by the stages."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Area-average frames ``(B, C, H, W)`` or videos ``(B, C, T, H, W)`` to ``size`` x ``size`` px (no-op at that
    size); the time axis is left alone."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    if x.ndim == 4:
        return F.interpolate(x, size=(size, size), mode="area")
    if x.ndim != 5:
        raise ValueError(f"resize expects (B, C, H, W) or (B, C, T, H, W), got {tuple(x.shape)}")
    b, c, t, h, w = x.shape
    frames = F.interpolate(x.transpose(1, 2).reshape(b * t, c, h, w), size=(size, size), mode="area")
    return frames.reshape(b, t, c, size, size).transpose(1, 2)
