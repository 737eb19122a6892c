"""Figures and animations shared by the notebooks (matplotlib/seaborn figures, GIFs via Pillow)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import matplotlib

matplotlib.use(os.environ.get("MPLBACKEND", "Agg"))
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from PIL import Image

from echodiff.data.video import to_uint8
from echodiff.io import atomic_path

CAPTION_PX = 14  # height of the caption band under a labelled GIF row (px)


def ef_caption(target: float, read: float | None = None, who: str = "") -> str:
    """A GIF tile's caption: ``EF 85`` (a target, or a real clip's EF with ``who="real"``), or ``EF 85 -> 79`` with
    the EF the regressor reads in the video; EF in %."""
    text = f"EF {target:.0f}" + ("" if read is None else f" -> {read:.0f}")
    return f"{who} {text}" if who else text


def ef_histogram(filelist: pd.DataFrame, binwidth: float = 2.5) -> plt.Figure:
    """Histogram of EF (%) per split (TRAIN / VAL / TEST), one panel each."""
    order = [s for s in ("TRAIN", "VAL", "TEST") if s in set(filelist["Split"])]
    grid = sns.displot(filelist, x="EF", col="Split", col_order=order, binwidth=binwidth,
                       stat="density", common_norm=False, height=2.6, aspect=1.2)
    grid.set_axis_labels("EF (%)", "density")
    return grid.figure


def ef_scatter(predictions: pd.DataFrame) -> plt.Figure:
    """Regressed vs reference EF (%), one colour per split, with the identity line."""
    fig, ax = plt.subplots(figsize=(4, 4))
    sns.scatterplot(predictions, x="EF", y="EF_pred", hue="Split", s=18, ax=ax)
    low, high = 0.0, 100.0
    ax.plot([low, high], [low, high], "k--", lw=0.8)
    ax.set(xlim=(low, high), ylim=(low, high), xlabel="reference EF (%)", ylabel="regressed EF (%)")
    fig.tight_layout()
    return fig


def target_scatter(scores: pd.DataFrame) -> sns.FacetGrid:
    """Regressed vs target EF (score rows with ``GT EF``, ``Gen EF``, ``mode``, ``candidate``), one panel per
    ``candidate`` set, identity line."""
    grid = sns.relplot(scores, x="GT EF", y="Gen EF", hue="mode", col="candidate", height=3.2)
    for ax in grid.axes.flat:
        ax.axline((50, 50), slope=1, color="grey", lw=0.8)
    grid.set_axis_labels("target EF (%)", "regressed EF (%)")
    return grid


def plan_histogram(real_efs: np.ndarray, target_efs: np.ndarray, bin_width: float, per_bin: int) -> plt.Figure:
    """Real TRAIN EFs and the balancing plan's synthetic targets (%), stacked, with the ``per_bin`` line."""
    hist = pd.concat([pd.DataFrame({"EF": real_efs, "source": "real TRAIN"}),
                      pd.DataFrame({"EF": target_efs, "source": "planned synthetic"})])
    fig, ax = plt.subplots(figsize=(6, 3))
    sns.histplot(hist, x="EF", hue="source", multiple="stack", binwidth=bin_width, binrange=(0, 100), ax=ax)
    ax.axhline(per_bin, color="grey", lw=0.8, ls="--")
    return fig


def per_bin_mae(frame: pd.DataFrame, bin_width: float) -> plt.Figure:
    """Mean absolute error per true-EF bin of each regressor variant (columns Bin: lower edge %, error, variant)."""
    fig, ax = plt.subplots(figsize=(6, 3))
    dodge = 0.3 if frame.variant.nunique() > 1 else False  # seaborn divides by zero dodging a single variant
    sns.pointplot(frame, x="Bin", y="error", hue="variant", errorbar=None, dodge=dodge, ax=ax)
    ax.set(xlabel=f"true EF bin (%, width {bin_width:g})", ylabel="MAE (EF points)",
           title="balanced VAL+TEST: MAE per EF bin")
    return fig


def loss_curves(history: pd.DataFrame) -> plt.Figure:
    """Training loss per optimizer step, one panel per cascade stage (columns step, train_loss, stage)."""
    return sns.relplot(history, x="step", y="train_loss", col="stage", kind="line", height=2.6,
                       facet_kws={"sharey": False}).figure


def bland_altman(predictions: pd.DataFrame) -> plt.Figure:
    """Bland-Altman plot: difference (regressed - reference EF) against their mean, with bias and 95 % limits."""
    frame = predictions.assign(mean=(predictions.EF + predictions.EF_pred) / 2,
                               diff=predictions.EF_pred - predictions.EF)
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    sns.scatterplot(frame, x="mean", y="diff", hue="Split", s=18, ax=ax)
    bias, sd = frame["diff"].mean(), frame["diff"].std()
    for y, style in ((bias, "-"), (bias - 1.96 * sd, "--"), (bias + 1.96 * sd, "--")):
        ax.axhline(y, color="k", lw=0.8, ls=style)
    ax.set(xlabel="mean of reference and regressed EF (%)", ylabel="regressed - reference EF (%)",
           title=f"bias {bias:.2f}, 95% limits ±{1.96 * sd:.2f}")
    fig.tight_layout()
    return fig


def frame_grid(videos: list[np.ndarray], titles: list[str], frames: int = 4) -> plt.Figure:
    """Rows of ``frames`` evenly spaced frames, one row per uint8 ``(3, T, H, W)`` video."""
    fig, axes = plt.subplots(len(videos), frames, figsize=(1.6 * frames, 1.7 * len(videos)), squeeze=False)
    for row, (video, title) in enumerate(zip(videos, titles, strict=True)):
        for col, t in enumerate(np.linspace(0, video.shape[1] - 1, frames).astype(int)):
            ax = axes[row, col]
            ax.imshow(video[:, t].transpose(1, 2, 0))
            ax.set_axis_off()
            ax.set_title(f"{title} t={t}" if col == 0 else f"t={t}", fontsize=7)
    fig.tight_layout()
    return fig


def overlay_tracing(frame: np.ndarray, coords: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    """RGB ``(H, W, 3)`` uint8 copy of ``frame`` with tracing rows ``(N, 4)`` (long axis + chords) drawn on it."""
    out = np.ascontiguousarray(frame.copy())
    for x1, y1, x2, y2 in coords:
        cv2.line(out, (round(x1), round(y1)), (round(x2), round(y2)), colour, 1, cv2.LINE_AA)
    return out


def write_gif(frames: list[np.ndarray], path: str | os.PathLike, fps: float) -> Path:
    """Animated GIF of RGB uint8 frames ``(H, W, 3)``, written atomically."""
    images = [Image.fromarray(np.ascontiguousarray(f)) for f in frames]
    with atomic_path(path) as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
    return Path(path)


def tracing_gif(video: np.ndarray, tracings: dict[int, np.ndarray], path: str | os.PathLike, fps: float,
                scale: int = 2) -> Path:
    """Animated GIF of uint8 ``(3, T, H, W)`` with each traced frame's tracing (ES green, ED red) shown on it
    and held for a few frames."""
    colours = {f: c for f, c in zip(tracings, [(0, 220, 0), (230, 40, 40)], strict=False)}
    frames = []
    for t in range(video.shape[1]):
        frame = video[:, t].transpose(1, 2, 0)
        repeat = 1
        if t in tracings:
            frame = overlay_tracing(frame, tracings[t], colours[t])
            repeat = max(1, round(fps / 4))
        big = cv2.resize(np.ascontiguousarray(frame), None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
        frames += [big] * repeat
    return write_gif(frames, path, fps)


def video_row_gif(videos: list[np.ndarray], path: str | os.PathLike, fps: float, size: int = 112,
                  labels: Sequence[str] | None = None) -> Path:
    """GIF of videos side by side: each float ``(3, T, H, W)`` in [0, 1] (e.g. anatomy repeated, real, generated)
    resized to ``size`` px; videos with fewer frames hold their last frame. ``labels``: one caption per video,
    written in a black band under its tile (at most ``size`` / 8 characters show in full)."""
    if labels is not None and len(labels) != len(videos):
        raise ValueError(f"{path}: {len(labels)} labels for {len(videos)} videos; give one per video or none")
    band = None
    if labels is not None:  # each caption drawn in its own tile's width, so a long one is cut, not spilled over
        captions = [np.zeros((CAPTION_PX, size, 3), np.uint8) for _ in labels]
        for caption, label in zip(captions, labels, strict=True):
            cv2.putText(caption, str(label), (3, CAPTION_PX - 4), cv2.FONT_HERSHEY_PLAIN, 0.8, (255, 255, 255), 1,
                        cv2.LINE_AA)
        band = np.concatenate(captions, axis=1)
    length = max(v.shape[1] for v in videos)
    frames = []
    for t in range(length):
        tiles = []
        for video in videos:
            frame = video[:, min(t, video.shape[1] - 1)].transpose(1, 2, 0)
            tiles.append(cv2.resize(to_uint8(torch.from_numpy(np.ascontiguousarray(frame))), (size, size),
                                    interpolation=cv2.INTER_LINEAR))
        row = np.concatenate(tiles, axis=1)
        frames.append(row if band is None else np.concatenate([row, band], axis=0))
    return write_gif(frames, path, fps)


def beat_figure(curves: np.ndarray, real: np.ndarray | None, ylabel: str, fps: float,
                labels: list[str]) -> plt.Figure:
    """Per-frame curves ``(N, T)`` of generated videos (and ``real`` ``(T,)``, dashed) over time in s."""
    figure, ax = plt.subplots(figsize=(5.0, 2.4))
    t = np.arange(curves.shape[1]) / fps
    if real is not None:
        ax.plot(np.arange(len(real)) / fps, real, "k--", label="real clip")
    for curve, label in zip(curves, labels, strict=True):
        ax.plot(t, curve, label=label)
    ax.set(xlabel="time (s)", ylabel=ylabel)
    ax.legend(fontsize=7)
    figure.tight_layout()
    return figure


def sweep_figure(targets: np.ndarray, regressed: np.ndarray, true_ef: float | None = None) -> plt.Figure:
    """Regressed vs target EF (%) of every candidate of a sweep, with the identity line (and the anatomy's EF)."""
    figure, ax = plt.subplots(figsize=(3.2, 3.0))
    lo, hi = 0.0, 100.0
    ax.plot([lo, hi], [lo, hi], color="grey", lw=1, label="regressed = target")
    ax.scatter(targets, regressed, s=18, label="candidates")
    if true_ef is not None:
        ax.axhline(true_ef, color="k", ls=":", lw=1, label=f"anatomy's EF {true_ef:.0f} %")
    ax.set(xlabel="target EF (%)", ylabel="regressed EF (%)", xlim=(lo, hi), ylim=(lo, hi))
    ax.legend(fontsize=7)
    figure.tight_layout()
    return figure
