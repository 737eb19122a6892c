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


def sector_mask(frames: torch.Tensor, threshold: float = 2.0 / 255.0) -> torch.Tensor:
    """The scan sector of echo frames ``(B, C, H, W)`` in [0, 1], as a ``(B, 1, H, W)`` mask of 0s and 1s.

    An echocardiogram has no signal outside its sector (black in EchoNet-Dynamic and the phantom). The sector is
    convex, so each row of it is one run of pixels: the mask fills every row from its first to its last pixel
    brighter than ``threshold`` (dark blood pools inside the sector are kept; values up to ``threshold`` outside
    it, e.g. video-codec noise, are ignored). A row with no such pixel is all 0.
    """
    if frames.ndim != 4:
        raise ValueError(f"sector_mask expects frames (B, C, H, W), got {tuple(frames.shape)}")
    lit = frames.amax(1) > threshold  # (B, H, W)
    width = frames.shape[-1]
    x = torch.arange(width, device=frames.device)
    first = torch.where(lit, x, width).amin(-1, keepdim=True)  # (B, H, 1); width where the row is dark
    last = torch.where(lit, x, -1).amax(-1, keepdim=True)
    return ((x >= first) & (x <= last)).unsqueeze(1).to(frames.dtype)
