"""Explore a trained cascade: one anatomy frame + a target EF -> candidate videos, their regressed EF and beat.

The logic behind ``notebooks/06_explore.ipynb`` (whose widgets are :mod:`echodiff.explore_ui`), usable and tested
without a browser:

- :func:`load_explorer`: a cascade and an EF regressor by path or MLflow run id (default: the latest finished
  ``diffusion`` and ``ef_regression`` stage runs of the experiment), and a dataset split to take anatomy frames from;
- :meth:`Explorer.dataset_anatomy` or :func:`upload_anatomy` (an uploaded AVI/PNG/JPEG; :class:`UploadError` says
  what is wrong with it and what to upload instead);
- :meth:`Explorer.generate` (candidates at one EF) and :meth:`Explorer.sweep` (one anatomy at several EFs);
- :func:`save_generations`: AVIs, GIFs and a CSV of settings and regressed EFs, optionally logged to MLflow.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import torch

from echodiff import tracking
from echodiff.config import resolve_path
from echodiff.data import DiffusionClips
from echodiff.data.transforms import resize
from echodiff.data.video import VideoError, read_video
from echodiff.device import compute_device
from echodiff.diffusion.imagen import CascadeModel, cascade_clips, load_model_folder
from echodiff.diffusion.sampling import sample, write_avis
from echodiff.ef_training import load_regressor
from echodiff.evaluation import local_or_run_id
from echodiff.io import atomic_write_csv
from echodiff.metrics.lv_area import area_curve, ed_outline
from echodiff.models.ef_regressor import EFRegressor, regress_ef
from echodiff.plots import ef_caption, video_row_gif
from echodiff.tracking import mlflow

FRAME_SIZE = 112  # px: EchoNet-Dynamic's frames; uploaded frames are area-resampled to it
UPLOAD_TYPES = (".avi", ".png", ".jpg", ".jpeg")
Progress = Callable[[int, int], None]  # (candidates done, candidates in all)


class UploadError(ValueError):
    """An uploaded anatomy file that cannot be used; the message names the file and what to upload instead."""


@dataclass
class Anatomy:
    """An anatomy frame to generate from: ``frame`` ``(3, 112, 112)`` in [0, 1]; when it comes from the dataset,
    also its real clip ``(3, T, 112, 112)``, the clip's EF (%) and the traced end-diastolic LV outline
    ``(112, 112)``."""

    name: str
    frame: torch.Tensor
    ef: float | None = None
    clip: torch.Tensor | None = None
    outline: np.ndarray | None = None
    systole: float | None = None  # s, its video's ED -> ES interval, when the cascade is conditioned on it


@dataclass
class Generation:
    """``N`` candidates from one anatomy frame at one target EF."""

    anatomy: Anatomy
    target_ef: float  # %
    videos: torch.Tensor  # (N, 3, T, H, W) in [0, 1], at the cascade's output size
    regressed_ef: np.ndarray  # (N,) %, read by the EF regressor
    curves: np.ndarray  # (N, T): see curve_name
    real_curve: np.ndarray | None  # (T,) the same curve for the real clip, when there is one
    curve_name: str
    settings: dict[str, Any]  # the sampler settings, seed and candidate count
    seconds: float  # wall time from the call to the regressed EFs


def beat_curve(videos: torch.Tensor, outline: np.ndarray | None) -> tuple[np.ndarray, str]:
    """Per-frame curve that shows the beat of ``(N, 3, T, H, W)`` videos in [0, 1]: the LV cavity's share of the
    traced outline (:func:`echodiff.metrics.lv_area.area_curve`) when there is an outline, else mean brightness."""
    if outline is not None:
        return np.stack([area_curve(v, outline) for v in videos]), "LV cavity (share of the traced outline)"
    return videos.float().mean(dim=(1, 3, 4)).numpy(), "mean brightness"


def upload_anatomy(name: str, content: bytes) -> Anatomy:
    """An anatomy frame from an uploaded file: the first frame of an AVI (EchoNet-Dynamic's format), or a PNG/JPEG
    of one frame. Square-ish grey frames of the apical four-chamber view, at any size (resampled to 112 px)."""
    suffix = Path(name).suffix.lower()
    if suffix not in UPLOAD_TYPES:
        raise UploadError(f"{name}: {suffix or 'no extension'} is not a supported upload; upload an EchoNet-Dynamic "
                          f"AVI or a PNG/JPEG of one apical four-chamber frame ({', '.join(UPLOAD_TYPES)}).")
    if not content:
        raise UploadError(f"{name}: the file is empty; upload it again.")
    if suffix == ".avi":
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "upload.avi"
            path.write_bytes(content)
            try:
                frame = read_video(path)[:, 0]  # (3, H, W) uint8 RGB
            except VideoError as exc:
                raise UploadError(f"{name}: not a readable AVI ({str(exc).split(': ', 1)[-1]})") from exc
    else:
        image = cv2.imdecode(np.frombuffer(content, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise UploadError(f"{name}: not a readable {suffix[1:].upper()} image; export the frame again.")
        frame = np.ascontiguousarray(image[..., ::-1].transpose(2, 0, 1))
    _, height, width = frame.shape
    if min(height, width) < 16 or not 0.8 <= height / width <= 1.25:
        raise UploadError(f"{name}: a {width}x{height} px frame; the cascade takes square frames like "
                          f"EchoNet-Dynamic's 112x112 (crop to the ultrasound sector, at least 16 px).")
    if int(frame.max()) - int(frame.min()) < 10:
        raise UploadError(f"{name}: the frame is blank (one grey level); upload a frame that shows the heart.")
    grey = torch.from_numpy(frame).float().mean(0, keepdim=True) / 255  # echocardiograms are grey
    frame = resize(grey[None], FRAME_SIZE)[0].expand(3, -1, -1).contiguous()
    return Anatomy(name=Path(name).stem, frame=frame.clamp(0, 1))


class Explorer:
    """A cascade, an EF regressor and (optionally) a dataset split to take anatomy frames from."""

    def __init__(self, cascade: CascadeModel, regressor: EFRegressor, data: DiffusionClips | None = None,
                 cascade_id: str = "", regressor_id: str = ""):
        spec = getattr(regressor, "clip_spec", {})
        frames, fps = cascade.config.get("frames"), cascade.config.get("fps")
        if spec.get("frames") not in (None, frames) or (spec.get("fps") and fps and spec["fps"] != fps):
            raise ValueError(f"the EF regressor {regressor_id or '(given)'} was trained on {spec.get('frames')}-frame "
                             f"clips at {spec.get('fps')} fps, the cascade {cascade_id or '(given)'} makes {frames} "
                             f"frames at {fps} fps: choose a regressor trained on the cascade's clip length and "
                             "frame rate")
        self.cascade, self.regressor, self.data = cascade, regressor, data
        self.cascade_id, self.regressor_id = cascade_id, regressor_id

    @property
    def fps(self) -> float:
        return float(self.cascade.config.get("fps") or 8.0)

    @property
    def num_stages(self) -> int:
        return self.cascade.num_stages

    def choices(self) -> list[tuple[str, str]]:
        """``(label, FileName)`` of every video of the split, the label giving its EF."""
        if self.data is None:
            return []
        files = self.data.filelist
        return [(f"{name} · EF {ef:.1f} %", str(name)) for name, ef in zip(files.FileName, files.EF, strict=True)]

    def dataset_anatomy(self, name: str, seed: int = 0) -> Anatomy:
        """Video ``name`` of the split: a 2-s window and a frame of it as the anatomy (both fixed by ``seed``)."""
        if self.data is None:
            raise ValueError("this explorer has no dataset: upload an anatomy frame instead")
        matches = np.flatnonzero(self.data.filelist.FileName.astype(str).to_numpy() == name)
        if not len(matches):
            raise KeyError(f"{name} is not a video of the {self.data.split} split of {self.data.root}")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            frame, ef, clip = self.data[int(matches[0])]
        outline = ed_outline(self.data.tracings[name]) if name in self.data.tracings else None
        systole = self.cascade.systole_of(self.data, [int(matches[0])])
        return Anatomy(name=name, frame=resize(frame[None], FRAME_SIZE)[0], ef=float(ef),
                       clip=resize(clip[None], FRAME_SIZE)[0], outline=outline,
                       systole=None if systole is None else float(systole[0]))

    def generate(self, anatomy: Anatomy, ef: float, candidates: int = 2, steps: int | list[int] | None = None,
                 churn: float | list[float] | None = None, cond_scale: float | list[float] = 5.0, seed: int = 0,
                 solver: str = "heun", progress: Progress | None = None,
                 systole: float | None = None) -> Generation:
        """``candidates`` videos of ``anatomy`` at target ``ef`` (%); candidate ``k`` uses seed ``seed + k``, so it
        does not change with the number of candidates. Sampler arguments as :func:`echodiff.diffusion.sample`;
        ``systole`` (s, for a cascade with ``condition_on_systole``) defaults to the cascade's
        ``counterfactual_systole`` where it sets one (the video is made at a chosen EF), else the anatomy video's
        own."""
        if not 0 < float(ef) <= 100:
            raise ValueError(f"the target EF must be within (0, 100] %, got {ef}")
        if candidates < 1:
            raise ValueError(f"candidates must be >= 1, got {candidates}")
        if systole is None:
            asked = self.cascade.counterfactual_systole
            systole = anatomy.systole if asked is None else asked
        if systole is None and self.cascade.config.get("condition_on_systole"):
            raise ValueError(f"{anatomy.name}: this cascade is conditioned on the ED -> ES interval, which an uploaded "
                             "frame does not carry: pick a dataset video, or pass systole (seconds, e.g. 0.3) to "
                             "Explorer.generate")
        start = time.perf_counter()
        frame = resize(anatomy.frame[None], self.cascade.image_size)
        videos = []
        for k in range(candidates):
            videos.append(sample(self.cascade, frame, float(ef), steps=steps, churn=churn, cond_scale=cond_scale,
                                 seed=seed + k, solver=solver, systole=systole))
            if progress is not None:
                progress(k + 1, candidates)
        videos = torch.cat(videos)
        regressed = regress_ef(self.regressor, videos, self.fps).numpy()
        curves, name = beat_curve(videos, anatomy.outline)
        real = None
        if anatomy.clip is not None:
            real = beat_curve(resize(anatomy.clip[None], self.cascade.image_size), anatomy.outline)[0][0]
        settings = {"solver": solver, "steps": steps, "churn": churn, "cond_scale": cond_scale, "seed": seed,
                    "candidates": candidates, **({"systole": systole} if systole is not None else {})}
        return Generation(anatomy, float(ef), videos, regressed, curves, real, name, settings,
                          time.perf_counter() - start)

    def sweep(self, anatomy: Anatomy, efs: Sequence[float] = (20.0, 40.0, 60.0, 80.0), candidates: int = 1,
              progress: Progress | None = None, **sampler: Any) -> list[Generation]:
        """The same anatomy (and seeds) at several target EFs; ``sampler`` as :meth:`generate`."""
        if not efs:
            raise ValueError("a sweep needs at least one target EF")
        done, total, out = 0, len(efs) * candidates, []
        for ef in efs:
            step = (lambda k, _n, base=done: progress(base + k, total)) if progress is not None else None
            out.append(self.generate(anatomy, ef, candidates=candidates, progress=step, **sampler))
            done += candidates
        return out


def load_explorer(cascade: str | None = None, regressor: str | None = None, data_root: str | None = None,
                  split: str = "val", experiment: str = tracking.DEFAULT_EXPERIMENT,
                  cache_dir: str | None = None) -> Explorer:
    """An :class:`Explorer` for ``cascade`` (model folder or stage-02 run id) and ``regressor`` (checkpoint or
    stage-01 run id); None takes the latest finished ``diffusion`` / ``ef_regression`` run of ``experiment``.
    Anatomy frames come from ``split`` of ``data_root``; None: the dataset the cascade's run was trained on
    (its ``data_root`` parameter); ``""``: no dataset (uploaded anatomy frames only)."""
    ids = {}
    for key, value, stage in (("cascade", cascade, "diffusion"), ("regressor", regressor, "ef_regression")):
        ids[key] = value or tracking.latest_stage_run(stage, experiment)
        if ids[key] is None:
            raise LookupError(f"no finished `{stage}` run in MLflow experiment {experiment!r} "
                              f"({tracking.tracking_uri()}): run `make demo` first, or set `{key}` to a "
                              f"{'model folder' if key == 'cascade' else 'checkpoint'} or an MLflow run id")
    device = compute_device()
    source = local_or_run_id(ids["cascade"])  # a Path, or a run id (str)
    model = load_model_folder(source).to(device).eval()
    reader = load_regressor(local_or_run_id(ids["regressor"])).to(device).eval()
    if data_root is None:
        data_root = tracking.run_param(source, "data_root") if isinstance(source, str) else None
        if data_root is None:
            raise ValueError(f"set data_root: the cascade {ids['cascade']} is a model folder, not a stage-02 run "
                             "that names the dataset it was trained on")
    data = None
    if data_root:
        data = cascade_clips(model.config, resolve_path(data_root), split,
                             resolve_path(cache_dir) if cache_dir else None)
    return Explorer(model, reader, data, str(ids["cascade"]), str(ids["regressor"]))


def generations_table(generations: Sequence[Generation], explorer: Explorer) -> pd.DataFrame:
    """One row per candidate: anatomy, true and target EF, regressed EF, settings, models and seconds."""
    rows = []
    for g in generations:
        for k, ef in enumerate(g.regressed_ef):
            rows.append({"anatomy": g.anatomy.name, "true_ef": g.anatomy.ef, "target_ef": g.target_ef,
                         "candidate": k, "regressed_ef": float(ef), **{k_: str(v) for k_, v in g.settings.items()},
                         "seconds": g.seconds, "cascade": explorer.cascade_id, "regressor": explorer.regressor_id})
    return pd.DataFrame(rows)


def save_generations(generations: Sequence[Generation], explorer: Explorer, folder: str | os.PathLike,
                     log: bool = False, experiment: str = tracking.DEFAULT_EXPERIMENT) -> list[Path]:
    """Write each candidate as an EchoNet-format AVI, one GIF per generation (anatomy | real clip | candidates)
    and ``explore.csv``; with ``log``, also log them and the settings to a new MLflow ``explore`` run."""
    if not generations:
        raise ValueError("nothing to save: generate or sweep first")
    folder = resolve_path(folder)
    paths = []
    for g in generations:
        stem = f"{g.anatomy.name}_ef{g.target_ef:g}_seed{g.settings['seed']}"
        paths += write_avis(g.videos, folder / "videos", [f"{stem}_{k}" for k in range(len(g.videos))], explorer.fps)
        row = [g.anatomy.frame[:, None].expand(-1, g.videos.shape[2], -1, -1).numpy()]
        row += [g.anatomy.clip.numpy()] if g.anatomy.clip is not None else []
        row += [v.numpy() for v in g.videos]
        labels = ["anatomy"] + ([ef_caption(g.anatomy.ef, who="real")] if g.anatomy.clip is not None else [])
        labels += [ef_caption(g.target_ef, read) for read in g.regressed_ef]
        paths.append(video_row_gif(row, folder / "gifs" / f"{stem}.gif", explorer.fps, labels=labels))
    table = generations_table(generations, explorer)
    paths.append(atomic_write_csv(table, folder / "explore.csv", index=False))
    if log:
        params = {"cascade": explorer.cascade_id, "regressor": explorer.regressor_id,
                  "anatomies": sorted({g.anatomy.name for g in generations}),
                  "target_efs": [g.target_ef for g in generations], **generations[0].settings}
        with tracking.stage_run("explore", params, experiment=experiment):
            for path in paths:
                tracking.log_file(path, path.parent.name if path.parent != folder else None)
            mlflow.log_metric("regressed_ef_mae", float((table.regressed_ef - table.target_ef).abs().mean()))
    return paths
