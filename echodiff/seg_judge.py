"""The segmentation judge: EF read the way EchoNet-Dynamic's segmentation arm reads it, owing nothing to the EF
regressor.

A small U-Net (:class:`echodiff.models.lv_segmentation.LVSegmenter`) learns the left ventricle's cavity from the
dataset's traced frames (``VolumeTracings.csv``: the end-diastolic and end-systolic outline of every TRAIN video,
so it trains the same way on EchoNet-Dynamic and on the phantom). On a clip it gives the LV area frame by frame;
``contraction = 1 - min(area) / max(area)`` over the clip is mapped to EF (%) by a straight line fitted on real
TRAIN clips (:class:`echodiff.metrics.lv_area.AreaJudge`'s fit). Unlike the LV-area judge it needs no outline of
the source video: it finds the ventricle in each frame itself. Its own accuracy (EF on real VAL clips vs the
CSV's EF, and Dice on VAL's traced frames) is measured when it is fitted and travels with it.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from echodiff.data import DiffusionClips, EchoNetDynamic
from echodiff.data.transforms import resize
from echodiff.data.video import VideoCache
from echodiff.io import atomic_path
from echodiff.metrics.lv_area import AreaJudge
from echodiff.metrics.regression import ef_scores
from echodiff.models.lv_segmentation import LVSegmenter, lv_area_curves


@dataclass(frozen=True)
class SegJudgeConfig:
    """How the judge is trained (sizes in px; ``videos``: TRAIN videos whose two traced frames it learns from)."""

    size: int  # frame size it segments: the cascade's output size
    steps: int = 300  # optimiser steps (batch ``batch_size`` frames)
    width: int = 8  # 8 at 32 px on the 400-video phantom: Dice 0.97, VAL EF r 0.98, MAE 2.1 (300 steps)
    batch_size: int = 16
    lr: float = 2e-3
    videos: int = 1000  # at most this many TRAIN videos (x2 traced frames); the calibration uses up to 64 clips
    seed: int = 0


def traced_frames(root: str | os.PathLike, split: str, size: int, videos: int | None = None,
                  cache: VideoCache | str | os.PathLike | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The traced (ED and ES) frames of the first ``videos`` videos of ``split`` and their LV masks, both area-averaged
    to ``size``: grey frames ``(N, 1, size, size)`` in [0, 1] and soft masks ``(N, 1, size, size)`` in [0, 1]."""
    data = EchoNetDynamic(root, split, target_type=["LargeFrame", "LargeTrace", "SmallFrame", "SmallTrace"],
                          mean=0.0, std=255.0, cache=cache)
    frames, masks = [], []
    for index in range(len(data) if videos is None else min(videos, len(data))):
        large, large_mask, small, small_mask = data.target(index)
        frames += [large.mean(0, keepdim=True), small.mean(0, keepdim=True)]
        masks += [large_mask[None], small_mask[None]]
    if not frames:
        raise ValueError(f"{root}: split {split} has no traced video; the segmentation judge needs VolumeTracings.csv")
    return resize(torch.stack(frames), size), resize(torch.stack(masks), size)


def train_segmenter(frames: torch.Tensor, masks: torch.Tensor, cfg: SegJudgeConfig) -> LVSegmenter:
    """Train an :class:`LVSegmenter` on ``frames``/``masks`` (:func:`traced_frames`) with soft-Dice + BCE.

    Each batch is augmented the way generated videos differ from real frames: a random gain (0.8-1.2), additive
    Gaussian noise (std 0-0.06) and a shift of up to 1/16 of the frame (wrapping), so the judge does not depend on
    the real speckle's exact texture. Deterministic for ``cfg.seed`` on a CPU."""
    generator = torch.Generator().manual_seed(cfg.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = LVSegmenter(cfg.width)
    optimiser = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, cfg.lr, total_steps=cfg.steps, pct_start=0.1)
    shift = max(cfg.size // 16, 1)
    model.train()
    for _ in range(cfg.steps):
        pick = torch.randint(len(frames), (cfg.batch_size,), generator=generator)
        x, y = frames[pick], masks[pick]
        gain = torch.empty(len(x), 1, 1, 1).uniform_(0.8, 1.2, generator=generator)
        noise = torch.randn(x.shape, generator=generator) * torch.rand(len(x), 1, 1, 1, generator=generator) * 0.06
        x = (x * gain + noise).clamp(0, 1)
        dy, dx = (int(v) for v in torch.randint(-shift, shift + 1, (2,), generator=generator))
        x, y = x.roll((dy, dx), (-2, -1)), y.roll((dy, dx), (-2, -1))
        logits = model(x)
        prob = torch.sigmoid(logits)
        dice = 1 - (2 * (prob * y).sum((1, 2, 3)) + 1) / (prob.sum((1, 2, 3)) + y.sum((1, 2, 3)) + 1)
        loss = F.binary_cross_entropy_with_logits(logits, y) + dice.mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
    return model.eval()


@torch.no_grad()
def dice_score(model: LVSegmenter, frames: torch.Tensor, masks: torch.Tensor) -> float:
    """Mean Dice of the thresholded segmentation (p > 0.5) against the masks (> 0.5)."""
    pred = torch.sigmoid(model(frames)) > 0.5
    truth = masks > 0.5
    inter = (pred & truth).sum((1, 2, 3)).float()
    return float((2 * inter / (pred.sum((1, 2, 3)) + truth.sum((1, 2, 3))).clamp(min=1)).mean())


#: a frame whose brightest pixel is below this (in [0, 1]) is blank -- a short video's zero padding -- and not read
BLANK = 0.02


def contractions(model: LVSegmenter, videos: torch.Tensor) -> np.ndarray:
    """``1 - min / max`` of each video's segmented LV area curve over its non-blank frames; ``videos``
    ``(N, C, T, H, W)`` in [0, 1]. (Blank padding frames segment as one big cavity: on the phantom's VAL clips they
    took the judge's r with EF from 0.98 to 0.83.)"""
    area = lv_area_curves(model, videos)
    seen = videos.float().amax((1, 3, 4)) > BLANK
    top = torch.where(seen, area, torch.zeros_like(area)).amax(1)
    low = torch.where(seen, area, torch.ones_like(area)).amin(1)
    out = 1 - low / top.clamp(min=1e-6)
    return torch.where(seen.any(1), out, torch.full_like(out, float("nan"))).numpy()


@dataclass
class SegJudge:
    """A trained segmenter, the line from its contraction to EF, and its own accuracy on real VAL clips."""

    segmenter: LVSegmenter
    line: AreaJudge
    config: SegJudgeConfig
    accuracy: dict[str, float]  # val_r, val_mae, val_slope (EF on real VAL clips), val_dice (traced VAL frames)

    def ef(self, videos: torch.Tensor) -> np.ndarray:
        """EF (%) of videos ``(N, C, T, H, W)`` in [0, 1], resized to the judge's size by area averaging."""
        return self.line.ef(contractions(self.segmenter, resize(videos.float(), self.config.size)))

    def save(self, path: str | os.PathLike) -> Path:
        """Write the judge atomically (weights, line, settings, accuracy)."""
        with atomic_path(path) as tmp:
            torch.save({"state_dict": self.segmenter.state_dict(), "line": asdict(self.line),
                        "config": asdict(self.config), "accuracy": self.accuracy}, tmp)
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike, expected: SegJudgeConfig | None = None) -> SegJudge:
        """Read a saved judge; with ``expected``, a judge trained with other settings is an error naming the file."""
        state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
        config = SegJudgeConfig(**state["config"])
        if expected is not None and config != expected:
            raise ValueError(f"{path}: segmentation judge trained with {config}, but this run asks for {expected}; "
                             f"delete the file to retrain it, or use the settings it was trained with")
        segmenter = LVSegmenter(config.width)
        segmenter.load_state_dict(state["state_dict"])
        return cls(segmenter.eval(), AreaJudge(**state["line"]), config, dict(state["accuracy"]))


def _clip_batch(data: DiffusionClips, clips: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """Up to ``clips`` real clips ``(N, 3, T, H, W)`` of ``data`` (random windows seeded by ``seed``) and their EFs."""
    videos, efs = [], []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for index in range(min(clips, len(data))):
            _, ef, clip = data[index]
            videos.append(clip)
            efs.append(float(ef))
    return torch.stack(videos), np.array(efs)


def fit_seg_judge(train: DiffusionClips, val: DiffusionClips, cfg: SegJudgeConfig, clips: int = 64) -> SegJudge:
    """Train the segmenter on ``train``'s traced frames, fit its EF line on up to ``clips`` of ``train``'s clips
    (the cascade's clip length and frame rate), and measure it on up to ``clips`` real ``val`` clips."""
    cache = train.cache
    frames, masks = traced_frames(train.root, "train", cfg.size, cfg.videos, cache)
    segmenter = train_segmenter(frames, masks, cfg)
    x, y = _clip_batch(train, clips, cfg.seed)
    line = AreaJudge.fit(contractions(segmenter, resize(x, cfg.size)), y)
    vx, vy = _clip_batch(val, clips, cfg.seed + 1)
    val_ef = line.ef(contractions(segmenter, resize(vx, cfg.size)))
    scores = ef_scores(vy, val_ef)
    val_frames, val_masks = traced_frames(val.root, "val", cfg.size, clips, cache)
    accuracy = {"val_r": scores["r"], "val_mae": scores["mae"], "val_slope": scores["slope"],
                "val_dice": dice_score(segmenter, val_frames, val_masks), "val_clips": float(len(vy))}
    return SegJudge(segmenter, line, cfg, accuracy)
