"""Fréchet distances between feature distributions of real and generated videos.

``FID`` and ``FVD`` are the usual numbers only with the usual networks, which are read from local files
(never downloaded; :class:`echodiff.weights.MissingWeightsError` says where to put them):

- FID: the TorchScript Inception of StyleGAN2-ADA / StyleGAN-V, ``inception-2015-12-05.pt`` (2048-d pool
  features of every frame, inputs uint8 at any size).
- FVD: StyleGAN-V's TorchScript I3D, ``i3d_torchscript.pt`` (400-d logits-layer features of 16-frame clips,
  inputs on the 0-255 scale, rescaled and resized to 224 px inside).

``FD_EFreg`` is always available: the same distance in the feature space of our own EF regressor. It is a
different metric with its own name: comparable only between runs that use the same regressor and sample size.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
from PIL import Image

from echodiff import weights
from echodiff.data.video import to_uint8
from echodiff.models.ef_regressor import EFRegressor, regress_ef

INCEPTION = ("inception-2015-12-05.pt",
             "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt")
I3D = ("i3d_torchscript.pt", "https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt?dl=1")


def feature_stats(features: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(D,)`` and covariance ``(D, D)`` (unbiased) of features ``(N, D)``, in float64."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need features (N >= 2, D), got shape {x.shape}")
    return x.mean(0), np.cov(x, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2):
    ``|mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2))``."""
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    root = scipy.linalg.sqrtm(sigma1 @ sigma2)  # no disp= argument: newer SciPy removed it
    if not np.isfinite(root).all():  # singular product (few samples): regularise as pytorch-fid does
        eps = np.eye(len(mu1)) * 1e-6
        root = scipy.linalg.sqrtm((sigma1 + eps) @ (sigma2 + eps))
    root = np.real(root)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(root))


def frechet_distance_of(real: np.ndarray | torch.Tensor, fake: np.ndarray | torch.Tensor) -> float:
    """Fréchet distance between the Gaussians fitted to two feature sets ``(N, D)``."""
    return frechet_distance(*feature_stats(real), *feature_stats(fake))


def load_detector(kind: str, path: str | os.PathLike | None = None) -> torch.jit.ScriptModule:
    """The TorchScript feature network for ``"fid"`` (Inception) or ``"fvd"`` (I3D), from a local file."""
    filename, url = {"fid": INCEPTION, "fvd": I3D}[kind]
    file = weights.require(filename, url, kind.upper(), path)
    return torch.jit.load(str(file), map_location="cpu").eval()


@torch.no_grad()
def inception_features(videos: torch.Tensor, detector: torch.jit.ScriptModule, batch_size: int = 64) -> np.ndarray:
    """FID features of every frame of ``(B, 3, T, H, W)`` in [0, 1]: ``(B * T, 2048)``."""
    frames = videos.permute(0, 2, 1, 3, 4).flatten(0, 1)
    frames = torch.from_numpy(to_uint8(frames))  # the detectors take 0-255 bytes, rounded as every writer rounds
    return torch.cat([detector(chunk, return_features=True).float() for chunk in frames.split(batch_size)]).numpy()


@torch.no_grad()
def i3d_features(videos: torch.Tensor, detector: torch.jit.ScriptModule, batch_size: int = 16) -> np.ndarray:
    """FVD features of 16-frame clips ``(B, 3, 16, H, W)`` in [0, 1] (StyleGAN-V's fvd2048_16f): ``(B, 400)``."""
    if videos.shape[2] < 16:
        raise ValueError(f"FVD uses 16-frame clips, got {videos.shape[2]} frames")
    clips = videos[:, :, :16] * 255
    return torch.cat([detector(chunk, rescale=True, resize=True, return_features=True).float()
                      for chunk in clips.split(batch_size)]).numpy()


def fid(real: torch.Tensor, fake: torch.Tensor, path: str | os.PathLike | None = None) -> float:
    """FID over all frames of two video sets ``(B, 3, T, H, W)`` in [0, 1] (Inception weights from disk)."""
    detector = load_detector("fid", path)
    return frechet_distance_of(inception_features(real, detector), inception_features(fake, detector))


def fvd(real: torch.Tensor, fake: torch.Tensor, path: str | os.PathLike | None = None) -> float:
    """FVD between two video sets ``(B, 3, T >= 16, H, W)`` in [0, 1] (I3D weights from disk)."""
    detector = load_detector("fvd", path)
    return frechet_distance_of(i3d_features(real, detector), i3d_features(fake, detector))


def fd_ef_regressor(real: torch.Tensor, fake: torch.Tensor, regressor: EFRegressor, fps: float | None = None) -> float:
    """``FD_EFreg``: Fréchet distance in the pooled feature space of an EF regressor (not FID/FVD)."""
    return frechet_distance_of(regress_ef(regressor, real, fps, features=True)[1],
                               regress_ef(regressor, fake, fps, features=True)[1])


def export_frames(videos: torch.Tensor, names: list[str], folder: str | os.PathLike, size: int = 128,
                  frames: int = 16) -> Path:
    """Write ``folder/<name>/<i>.png`` for StyleGAN-V's FID/FVD scripts: the first ``frames`` frames of each
    ``(B, 3, T, H, W)`` video in [0, 1], zero-padded (centred) to ``size`` px as EchoDiffusion's
    ``split_videos_into_real_fake.sh`` does (frames larger than ``size`` are resized down instead)."""
    folder = Path(folder)
    b, _, _, h, w = videos.shape
    if len(names) != b:
        raise ValueError(f"{len(names)} names for {b} videos")
    clip = videos[:, :, :frames]
    if max(h, w) > size:
        clip = F.interpolate(clip.flatten(1, 2), size=(size, size), mode="area").unflatten(1, clip.shape[1:3])
        h = w = size
    top, left = (size - h) // 2, (size - w) // 2
    for video, name in zip(clip, names, strict=True):
        out = folder / name
        out.mkdir(parents=True, exist_ok=True)
        for i, frame in enumerate(to_uint8(video).transpose(1, 2, 3, 0)):
            canvas = np.zeros((size, size, 3), np.uint8)
            canvas[top:top + h, left:left + w] = frame
            Image.fromarray(canvas).save(out / f"{i}.png")
    return folder
