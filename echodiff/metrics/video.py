"""Per-video similarity of a generated clip to the real clip of the same window (SSIM, LPIPS), and its motion.

SSIM and LPIPS follow EchoDiffusion's evaluation: SSIM with data range 1 over every frame, LPIPS (VGG) per frame
on [-1, 1] inputs, averaged over frames. ``temporal_profile`` (ours) says whether a clip beats or flickers, and
``motion_correlation`` (ours) whether it moves as a known true video does.
Videos are ``(B, C, T, H, W)`` in [0, 1]; results are ``(B,)``.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torchvision.models import VGG16_Weights

from echodiff import weights
from echodiff.data.transforms import resize, sector_mask


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(generated: torch.Tensor, real: torch.Tensor, data_range: float = 1.0,
         inside: torch.Tensor | None = None) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004: 11-px Gaussian window, sigma 1.5, K1 0.01, K2 0.03) per video.

    Computed per frame and channel on the window positions that fit inside the frame, then averaged over
    positions, channels and frames: ``(B, C, T, H, W)`` x2 -> ``(B,)``. ``inside`` ``(B, H, W)`` (e.g. the scan
    sector, :func:`echodiff.data.transforms.sector_mask`) averages only the windows centred on its nonzero pixels,
    so a black background that both videos share does not count.
    """
    if generated.shape != real.shape or generated.ndim != 5:
        raise ValueError(f"ssim needs two (B, C, T, H, W) videos of one shape, got {tuple(generated.shape)} and "
                         f"{tuple(real.shape)}")
    if inside is not None and inside.shape != (real.shape[0], *real.shape[-2:]):
        raise ValueError(f"ssim's inside must be (B, H, W) = {(real.shape[0], *real.shape[-2:])}, got "
                         f"{tuple(inside.shape)}")
    b, c, t, h, w = real.shape
    x = generated.double().permute(0, 2, 1, 3, 4).reshape(b * t * c, 1, h, w)
    y = real.double().permute(0, 2, 1, 3, 4).reshape(b * t * c, 1, h, w)
    g = _gaussian_window().to(x.device)

    def blur(image: torch.Tensor) -> torch.Tensor:  # separable Gaussian, 'valid' positions only
        return F.conv2d(F.conv2d(image, g.view(1, 1, 1, -1)), g.view(1, 1, -1, 1))

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    index = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    if inside is None:
        return index.reshape(b, -1).mean(1).float()
    half = (g.numel() - 1) // 2  # 'valid' positions: window centres from half to size - 1 - half
    weight = (inside[:, half:h - half, half:w - half] != 0).double().to(index.device)  # (B, h', w')
    index = index.reshape(b, t * c, *weight.shape[-2:])
    total = (index * weight[:, None]).sum((1, 2, 3))
    return (total / (weight.sum((1, 2)) * t * c)).float()  # NaN for a video whose mask is empty


def temporal_profile(videos: torch.Tensor, fps: float,
                     band: tuple[float, float] = (0.6, 3.0)) -> dict[str, torch.Tensor]:
    """How much a clip moves, and how much of that motion is at heart-rate frequencies.

    ``temporal_std``: per pixel, the standard deviation over frames, averaged over pixels (grey level, 0-1).
    ``cardiac_fraction``: the share of the temporal power spectrum (DC removed, summed over pixels) whose
    frequency lies in ``band`` (Hz; 0.6-3 Hz = 36-180 bpm). A beating heart puts most of its motion there;
    frame-to-frame flicker spreads evenly up to the Nyquist frequency, so white noise over 16 frames at 8 fps
    scores 5/8. ``(B, C, T, H, W)`` -> two ``(B,)`` tensors; needs ``fps / T`` (the frequency step) < band width.
    """
    if videos.ndim != 5 or videos.shape[2] < 4:
        raise ValueError(f"temporal_profile needs (B, C, T, H, W) videos with T >= 4, got {tuple(videos.shape)}")
    t = videos.shape[2]
    if fps / t >= band[1] - band[0]:
        raise ValueError(f"{t} frames at {fps} fps resolve frequency in steps of {fps / t:.2f} Hz, too coarse for "
                         f"the band {band} Hz: use more frames")
    grey = videos.float().mean(1)  # (B, T, H, W)
    moving = grey - grey.mean(1, keepdim=True)
    power = torch.fft.rfft(moving, dim=1).abs().pow(2).sum((2, 3))  # (B, T // 2 + 1)
    freqs = torch.fft.rfftfreq(t, d=1.0 / fps)
    in_band = (freqs >= band[0]) & (freqs <= band[1])
    total = power[:, 1:].sum(1)
    fraction = torch.where(total > 0, power[:, in_band].sum(1) / total.clamp_min(1e-20), torch.nan)
    return {"temporal_std": grey.std(1, unbiased=False).mean((1, 2)), "cardiac_fraction": fraction}


def _check_against_truth(name: str, videos: torch.Tensor, truth: torch.Tensor, anatomy: torch.Tensor) -> None:
    """Videos and truth ``(B, C, T, H, W)`` of one shape and their anatomy frames ``(B, C, H, W)``, or an error."""
    if videos.shape != truth.shape or videos.ndim != 5 or anatomy.shape != (*videos.shape[:2], *videos.shape[-2:]):
        raise ValueError(f"{name} needs videos and truth (B, C, T, H, W) of one shape and anatomy "
                         f"(B, C, H, W), got {tuple(videos.shape)}, {tuple(truth.shape)}, {tuple(anatomy.shape)}")


def motion_correlation(videos: torch.Tensor, truth: torch.Tensor, anatomy: torch.Tensor, size: int) -> torch.Tensor:
    """Pearson r, per video, between the motion of ``videos`` and of ``truth``: each frame minus the anatomy frame,
    area-averaged to ``size`` px, over all pixels and frames. 1: the same change from the anatomy frame, at any
    amplitude; 0: unrelated (a still video, the anatomy frame repeated, scores 0). ``videos`` and ``truth``
    ``(B, C, T, H, W)``, ``anatomy`` ``(B, C, H, W)``, all in [0, 1] at one size -> ``(B,)``."""
    _check_against_truth("motion_correlation", videos, truth, anatomy)
    still = resize(anatomy.float(), size)[:, :, None]
    a, b = ((resize(v.float(), size) - still).flatten(1) for v in (videos, truth))
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-12)


def chamber_excess(videos: torch.Tensor, truth: torch.Tensor, anatomy: torch.Tensor, size: int,
                   dark: float = 0.06) -> torch.Tensor:
    """How much brighter ``videos`` are than ``truth`` where the true video is dark inside the anatomy frame's scan
    sector (the chambers and blood pools), per video: the mean of video − truth over those pixels of every frame,
    area-averaged to ``size`` px, in brightness units of [0, 1]. Grey chambers score above 0, the true video 0;
    NaN for a video without a pixel darker than ``dark``. Shapes as :func:`motion_correlation` -> ``(B,)``."""
    _check_against_truth("chamber_excess", videos, truth, anatomy)
    generated, true = (resize(v.float(), size).mean(1) for v in (videos, truth))  # (B, T, size, size), grey
    inside = sector_mask(resize(anatomy.float(), size))  # (B, 1, size, size)
    chambers = ((true < dark) & (inside > 0)).float()
    count = chambers.flatten(1).sum(1)
    excess = ((generated - true) * chambers).flatten(1).sum(1) / count.clamp_min(1)
    return torch.where(count > 0, excess, torch.full_like(excess, float("nan")))


class LPIPS(torch.nn.Module):
    """LPIPS (Zhang et al. 2018), VGG variant, per frame, averaged over frames: ``(B, C, T, H, W)`` x2 -> ``(B,)``.

    The calibrated linear layers ship with the ``lpips`` package; the VGG-16 backbone is torchvision's ImageNet
    file ``vgg16-397923af.pth``, read from the torch cache (or ``vgg_path``) and never downloaded: without it,
    :class:`echodiff.weights.MissingWeightsError` says where to put it. Only the ``features.*`` tensors are used.
    """

    FILENAME = os.path.basename(VGG16_Weights.IMAGENET1K_V1.url)

    def __init__(self, vgg_path: str | os.PathLike | None = None):
        super().__init__()
        import lpips

        path = weights.require(self.FILENAME, VGG16_Weights.IMAGENET1K_V1.url, "LPIPS (VGG)", vgg_path)
        state = torch.load(path, map_location="cpu", weights_only=True)
        self.metric = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False).eval()
        for name, param in self.metric.net.named_parameters():  # slice<k>.<index>.<weight|bias>
            _, index, kind = name.split(".")
            key = f"features.{index}.{kind}"
            if key not in state or state[key].shape != param.shape:
                raise ValueError(f"{path}: not torchvision VGG-16 weights ({key} missing or of another shape)")
            param.data.copy_(state[key])
        self.requires_grad_(False)

    @torch.no_grad()
    def forward(self, generated: torch.Tensor, real: torch.Tensor, frames_per_batch: int = 64) -> torch.Tensor:
        if generated.shape != real.shape or generated.ndim != 5:
            raise ValueError(f"LPIPS needs two (B, C, T, H, W) videos of one shape, got {tuple(generated.shape)} "
                             f"and {tuple(real.shape)}")
        b, c, t, h, w = real.shape
        x = generated.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w) * 2 - 1
        y = real.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w) * 2 - 1
        device = next(self.parameters()).device
        d = torch.cat([self.metric(xs.to(device), ys.to(device)).flatten().cpu()
                       for xs, ys in zip(x.split(frames_per_batch), y.split(frames_per_batch), strict=True)])
        return d.reshape(b, t).mean(1)
