"""LV segmentation network: a small 2-D U-Net that outlines the left ventricle's cavity in one echo frame.

EchoNet-Dynamic segments the LV frame by frame (DeepLabV3 on 112-px frames) and reads EF from the area curve; this
is the same idea at a CPU-friendly size. Input ``(B, 1, H, W)`` grey in [0, 1] (H, W divisible by 4); output
``(B, 1, H, W)`` logits of "LV cavity".
"""

from __future__ import annotations

import torch
from torch import nn


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(4, cout), nn.SiLU(),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(4, cout), nn.SiLU())


class LVSegmenter(nn.Module):
    """Three-level U-Net of width ``width`` (channels w / 2w / 4w)."""

    def __init__(self, width: int = 16):
        super().__init__()
        if width < 4 or width % 4:
            raise ValueError(f"width must be a positive multiple of 4, got {width}")
        self.width = width
        w = width
        self.down1, self.down2, self.bottom = _block(1, w), _block(w, 2 * w), _block(2 * w, 4 * w)
        self.up2, self.dec2 = nn.ConvTranspose2d(4 * w, 2 * w, 2, 2), _block(4 * w, 2 * w)
        self.up1, self.dec1 = nn.ConvTranspose2d(2 * w, w, 2, 2), _block(2 * w, w)
        self.head = nn.Conv2d(w, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 1 or x.shape[-1] % 4 or x.shape[-2] % 4:
            raise ValueError(f"LVSegmenter takes (B, 1, H, W) frames with H, W divisible by 4, got {tuple(x.shape)}")
        d1 = self.down1(x * 2 - 1)
        d2 = self.down2(nn.functional.max_pool2d(d1, 2))
        b = self.bottom(nn.functional.max_pool2d(d2, 2))
        u2 = self.dec2(torch.cat([self.up2(b), d2], 1))
        u1 = self.dec1(torch.cat([self.up1(u2), d1], 1))
        return self.head(u1)


@torch.no_grad()
def lv_area_curves(model: LVSegmenter, videos: torch.Tensor, batch_frames: int = 256) -> torch.Tensor:
    """Segmented LV area per frame, as a share of the frame, of ``videos`` ``(N, C, T, H, W)`` in [0, 1] (grey mean
    of the channels) -> ``(N, T)``. Areas are the summed cavity probabilities (soft, so sub-pixel motion counts)."""
    n, _, t, h, w = videos.shape
    frames = videos.float().mean(1).reshape(n * t, 1, h, w)
    device = next(model.parameters()).device
    model.eval()
    areas = [torch.sigmoid(model(chunk.to(device))).mean((1, 2, 3)).cpu() for chunk in frames.split(batch_frames)]
    return torch.cat(areas).reshape(n, t)
