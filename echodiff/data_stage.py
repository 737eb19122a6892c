"""Stage 00: make (only where asked) or read the EchoNet-Dynamic folder, check it, and log its summary to MLflow.

Checks that every split loads, and that the EF of ``VolumeTracings.csv`` (method of discs) agrees with
``FileList.csv``'s: to rounding on the phantom, within a few points on the real dataset. Notebook 00, ``python -m
echodiff.data_stage -f FILE`` and the pipeline's ``data`` stage all run :func:`run_stage`.

    python -m echodiff.data_stage -f params/data_echonet.yaml data_root=/data/EchoNet-Dynamic
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from echodiff import phantom, plots, preempt, tracking
from echodiff.config import print_settings, resolve_path, stage_cli
from echodiff.data import EchoNetDynamic, tracing_efs
from echodiff.tracking import mlflow

#: where the stage writes its tracing GIF (under ``$ECHODIFF_OUTPUTS`` when set, as every ``outputs/`` path)
OUT_DIR = "outputs/00_data"


@dataclass
class DataStage:
    """What stage 00 returns (:func:`run_stage`); it also logged it to the active MLflow run."""

    root: Path
    filelist: pd.DataFrame  # FileList.csv as the loader reads it, with EF_tracings (NaN: < 2 traced frames)
    notes: list[str]  # what reading FileList.csv dropped or fixed
    sizes: dict[str, int]  # videos per split (train, val, test)
    agreement: pd.Series  # |EF from tracings - CSV EF| (EF points), one per traced video
    figures: dict[str, Any]  # ef_histogram, frames
    gif: Path  # the first video with its tracings (ES green, ED red)
    phantom_seconds: float | None  # time to write the phantom, None when the folder was read as found


def run_stage(params: dict[str, Any]) -> DataStage:
    """Stage 00 with its parameters (``data_root``, the phantom's, ``gif_fps``): write the phantom where
    ``make_phantom`` asks (:func:`echodiff.phantom.prepare`), read and check the folder, and log the file list, the
    EF histogram, a frame grid, a tracing GIF and the metrics ``n_{train,val,test}``, ``ef_mean``,
    ``ef_tracing_max_abs_diff`` (and ``phantom_videos_per_s``) to the active MLflow run."""
    root = resolve_path(params["data_root"])
    start = time.perf_counter()
    wrote = phantom.prepare(params)
    seconds = time.perf_counter() - start if wrote else None
    data = EchoNetDynamic(root, "all")  # reads and checks FileList.csv and VolumeTracings.csv, once
    filelist = data.filelist.copy()
    counts = filelist["Split"].value_counts()
    sizes = {split: int(counts.get(split.upper(), 0)) for split in ("train", "val", "test")}
    filelist["EF_tracings"] = filelist["FileName"].map(tracing_efs(data.tracings))
    agreement = (filelist["EF_tracings"] - filelist["EF"]).abs().dropna()
    shown = list(range(min(3, len(data))))
    videos = [data.video(i) for i in shown]
    figures = {"ef_histogram": plots.ef_histogram(filelist),
               "frames": plots.frame_grid(videos, [f"EF {data.filelist.EF[i]:.0f}%" for i in shown])}
    name = data.filelist.FileName[0]
    gif = plots.tracing_gif(videos[0], data.tracings.get(name, {}), resolve_path(OUT_DIR) / f"{name}_tracing.gif",
                            fps=int(params.get("gif_fps", 25)))
    tracking.log_table(filelist.drop(columns=["csv_row"]), "FileList.csv")
    for key, figure in figures.items():
        tracking.log_figure(figure, f"{key}.png")
    tracking.log_file(gif)
    metrics = {**{f"n_{s}": float(n) for s, n in sizes.items()}, "ef_mean": float(filelist.EF.mean())}
    if len(agreement):
        metrics["ef_tracing_max_abs_diff"] = float(agreement.max())
    if seconds is not None:
        metrics["phantom_videos_per_s"] = len(filelist) / seconds
    mlflow.log_metrics(metrics)
    return DataStage(root, filelist, data.notes, sizes, agreement, figures, gif, seconds)


def main(argv: list[str] | None = None) -> int:
    """Check and summarise one dataset folder from a params file, in one MLflow run: what notebook 00 does."""
    args, params = stage_cli("data", "python -m echodiff.data_stage", __doc__.split("\n\n")[0], argv)
    if args.dry_run:
        print_settings({"run": params})
        return 0
    with tracking.stage_run(params.get("run_name", "data"), params, run_id=params.get("mlflow_run_id"),
                            experiment=params.get("experiment", tracking.DEFAULT_EXPERIMENT)) as run:
        result = run_stage(params)
    worst = f"{result.agreement.max():.3f}" if len(result.agreement) else "n/a (no tracings)"
    print(f"data_stage: {len(result.filelist)} videos in {result.root} ({result.sizes}); max |EF(tracings) - EF(csv)| "
          f"{worst}; MLflow run {run.info.run_id}")
    return 0


if __name__ == "__main__":
    preempt.run_main(main, "data_stage")
