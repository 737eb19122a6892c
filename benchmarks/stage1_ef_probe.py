"""Stage-1 EF probe (docs/generator-experiments.md, E49): train stage 1 of the demo cascade with stage 02's demo
settings, then read the contraction of its own low-resolution videos in EF points, with no network.

Stage 1 is trained as `make demo` trains it (``params/diffusion_demo.yaml``'s stage-1 values, ``--steps``, training
``--seed``), edited by ``--set key=value`` (cascade config, e.g. ``--set condition_on_systole=true``). It is sampled
for ``--videos`` VAL anatomy frames (traced ED frame, clips from it) at targets 20 / 35 / 50 / 65 / 80 % (Heun 8,
guidance 2.5, fixed noise; a ``condition_on_systole`` cascade gets each video's own ED -> ES interval). Each video is
judged at stage 1's size (real clips area-resized to it): the dark-area LV judge of stage 03
(:mod:`echodiff.metrics.lv_area`) and the range of the mean intensity inside the ED outline, both mapped to EF by a
line fitted on 64 real TRAIN clips at that size. Printed: slope / r / MAE / bias of each judge's EF on target, its
mean per target, the LV-area range and the power spectrum of the area curve (generated and real). Usage (one job per
core on a 2-core box, ~5 min each)::

    python benchmarks/stage1_ef_probe.py --seed 0 --out /tmp/probe_base
    python benchmarks/stage1_ef_probe.py --seed 0 --set condition_on_systole=true --out /tmp/probe_systole
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from echodiff.config import load_params, with_edits
from echodiff.data import DiffusionClips
from echodiff.data.transforms import resize
from echodiff.diffusion.imagen import load_model_folder
from echodiff.diffusion.sampling import sample
from echodiff.diffusion.training import export_model, load_cascade_config, stage_configs, train_stage
from echodiff.metrics.lv_area import AreaJudge, area_curve, contraction, ed_outline

TARGETS = np.array([20.0, 35.0, 50.0, 65.0, 80.0])


def intensity_range(video: torch.Tensor, outline: np.ndarray) -> float:
    """Range over time of the mean intensity inside ``outline`` of a ``(C, T, H, W)`` video."""
    grey = video.float().mean(0)
    mask = F.interpolate(torch.as_tensor(outline, dtype=torch.float32)[None, None], size=grey.shape[-2:],
                         mode="area")[0, 0]
    curve = (grey * mask).sum((1, 2)) / mask.sum()
    return float(curve.max() - curve.min())


def agreement(target: np.ndarray, read: np.ndarray) -> dict[str, float]:
    slope = np.polyfit(target, read, 1)[0]
    return {"slope": round(float(slope), 3), "r": round(float(np.corrcoef(target, read)[0, 1]), 3),
            "mae": round(float(np.abs(read - target).mean()), 2), "bias": round(float((read - target).mean()), 2)}


def curves(videos: list[torch.Tensor], outlines: list[np.ndarray]) -> dict[str, object]:
    """Mean LV-area range and power share per frequency bin of the area curves."""
    ranges, power = [], []
    for video, outline in zip(videos, outlines, strict=True):
        c = area_curve(video, outline)
        ranges.append(c.max() - c.min())
        p = np.abs(np.fft.rfft(c - c.mean()))[1:] ** 2
        power.append(p / max(p.sum(), 1e-12))
    return {"range": round(float(np.mean(ranges)), 4), "power": [round(float(x), 3) for x in np.mean(power, 0)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", action="append", default=[], help="cascade config edit, e.g. residual_gain=2")
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--videos", type=int, default=30)
    parser.add_argument("--data-root", default="data/phantom")
    parser.add_argument("--cache-dir", default="data/cache")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    # Stage 1, trained as the demo trains it.
    config = with_edits(load_cascade_config("params/cascades/demo.yaml"), args.set)
    (out / "cascade.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    params = load_params("params/diffusion_demo.yaml")
    params.update(model_config=str(out / "cascade.yaml"), stage=[1], steps=[args.steps], batch_size=[8],
                  window_frames=[None], seed=args.seed, data_root=args.data_root, cache_dir=args.cache_dir)
    cfg = stage_configs(params)[0]
    start = time.perf_counter()
    trainer, _ = train_stage(cfg, out / "checkpoint")
    model = load_model_folder(export_model(trainer, config, out / "model")).eval()
    train_s = time.perf_counter() - start
    factor = int(config["imagen"]["temporal_downsample_factor"][0])
    size = (int(config["frames"]) // factor, *[int(config["imagen"]["image_sizes"][0])] * 2)

    def low(clip: torch.Tensor) -> torch.Tensor:  # a real clip as stage 1's target: area-averaged in time and space
        return F.interpolate(clip[None], size=size, mode="area")[0]

    # The two judges, fitted on real TRAIN clips at stage 1's size; the VAL anatomies.
    root = Path(args.data_root)
    kwargs = dict(frames=int(config["frames"]), fps=config["fps"], anatomy="ed", start="ed", cache=args.cache_dir,
                  short_videos="drop")
    train = DiffusionClips(root, "train", **kwargs)
    dark, bright, efs = [], [], []
    for i in range(min(64, len(train))):
        _, ef, clip = train[i]
        outline = ed_outline(train.tracings[train.filelist.FileName.iloc[i]])
        dark.append(contraction(low(clip), outline))
        bright.append(intensity_range(low(clip), outline))
        efs.append(float(ef))
    dark_judge, bright_judge = AreaJudge.fit(np.array(dark), np.array(efs)), AreaJudge.fit(np.array(bright),
                                                                                           np.array(efs))
    val = DiffusionClips(root, "val", **kwargs)
    n = min(args.videos, len(val))
    items = [val[i] for i in range(n)]
    outlines = [ed_outline(val.tracings[val.filelist.FileName.iloc[i]]) for i in range(n)]
    real = [low(clip) for _, _, clip in items]
    true_ef = np.array([float(ef) for _, ef, _ in items])

    # Every anatomy at every target, the same noise for every arm.
    anatomy = resize(torch.stack([a for a, _, _ in items]), model.image_size).repeat_interleave(len(TARGETS), 0)
    target = np.tile(TARGETS, n)
    systole = model.systole_of(val, list(range(n)), len(TARGETS), counterfactual=True)
    with torch.no_grad():
        videos = sample(model, anatomy, target.tolist(), steps=8, churn=0.0, cond_scale=2.5, seed=0, last_stage=1,
                        systole=systole)
    per_video = [o for o in outlines for _ in TARGETS]
    dark_ef = dark_judge.ef([contraction(v, o) for v, o in zip(videos, per_video, strict=True)])
    bright_ef = bright_judge.ef([intensity_range(v, o) for v, o in zip(videos, per_video, strict=True)])
    result = {
        "set": args.set, "seed": args.seed, "steps": args.steps, "train_s": round(train_s, 1),
        "dark_area": agreement(target, dark_ef), "intensity": agreement(target, bright_ef),
        "intensity_by_target": {int(t): round(float(bright_ef[target == t].mean()), 1) for t in TARGETS},
        "real_dark_area": agreement(true_ef, dark_judge.ef([contraction(v, o) for v, o in zip(real, outlines)])),
        "real_intensity": agreement(true_ef, bright_judge.ef([intensity_range(v, o) for v, o in zip(real, outlines)])),
        "generated_curves": curves(list(videos), per_video), "real_curves": curves(real, outlines),
    }
    print(json.dumps(result))
    (out / "probe.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
