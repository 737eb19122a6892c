"""Stage-1 probe of the generator experiments (docs/generator-experiments.md): train stage 1 of a cascade config for
N steps, then ask two questions of its 16-px videos, with no EF regressor involved.

* Does it follow EF? 8 VAL anatomy frames are sampled at target EF 15 % and 85 % with the same noise (deterministic
  Heun, guidance 5). In each video the LV's contraction is the range over time of the mean intensity inside the
  video's traced end-diastolic outline; ``frac_of_ideal`` = (mean range at 85 % - at 15 %) / the same difference
  real clips show for 70 EF points (a straight line fitted on all VAL clips at the stage's size and frame rate).
  1 follows EF as real hearts do, 0 ignores it.
* Does it reproduce its anatomy? SSIM to the real clip (each VAL video at its own EF) at the stage's size, and the
  mean brightness of generated and real clips.

Usage (one PyTorch job at a time on a 2-core box)::

    python benchmarks/generator_probe.py --steps 450 --set residual_gain=2 --set imagen.sigma_data=0.12
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from echodiff.config import with_edits
from echodiff.data.transforms import resize
from echodiff.diffusion.imagen import cascade_clips, load_model_folder
from echodiff.diffusion.sampling import sample
from echodiff.diffusion.training import DiffusionTrainConfig, export_model, load_cascade_config, train_stage
from echodiff.metrics.lv_area import ed_outline
from echodiff.metrics.video import ssim


def lv_range(videos: torch.Tensor, outlines: list[np.ndarray]) -> np.ndarray:
    """Range over time of the mean intensity inside each video's ED outline; videos ``(B, C, T, H, W)``."""
    size = videos.shape[-1]
    out = []
    for video, outline in zip(videos, outlines, strict=True):
        mask = torch.nn.functional.interpolate(torch.as_tensor(outline)[None, None].float(), size=(size, size),
                                               mode="area")[0, 0] >= 0.5
        curve = video.mean(0)[:, mask].mean(1)
        out.append(float(curve.max() - curve.min()))
    return np.array(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="params/cascades/demo.yaml")
    parser.add_argument("--set", action="append", default=[], help="cascade config override, e.g. residual_gain=2")
    parser.add_argument("--steps", type=int, default=450)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--data-root", default="data/phantom")
    parser.add_argument("--probe-root", default="data/phantom", help="VAL videos probed (and the real calibration)")
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--out", default=None, help="keep the run here (default: a temporary folder)")
    args = parser.parse_args()

    out = Path(args.out or tempfile.mkdtemp(prefix="probe-"))
    out.mkdir(parents=True, exist_ok=True)
    config = with_edits(load_cascade_config(args.model), args.set)
    (out / "cascade.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    cfg = DiffusionTrainConfig(model_config=str(out / "cascade.yaml"), stage=1, data_root=args.data_root,
                               batch_size=args.batch_size, lr=args.lr, steps=args.steps, checkpoint_every=10**9,
                               val_every=10**9, ema_beta=0.99, ema_update_after_step=20, ema_update_every=1,
                               cache_dir="data/cache")
    start = time.perf_counter()
    trainer, _ = train_stage(cfg, out / "checkpoint", resume=False)
    train_s = time.perf_counter() - start
    model = load_model_folder(export_model(trainer, config, out / "model"))
    size = int(config["imagen"]["image_sizes"][0])
    frames = int(config["frames"]) // int(config["imagen"].get("temporal_downsample_factor", [1])[0])

    # real clips at the stage's size and frame rate: calibration line and SSIM references
    val = cascade_clips(config, args.probe_root, "val", "data/cache")
    stride = int(config["frames"]) // frames
    real, outlines, efs, anatomy = [], [], [], []
    for i in range(len(val)):
        a, ef, clip = val[i]
        real.append(resize(clip[:, ::stride][None], size)[0])
        outlines.append(ed_outline(val.tracings[str(val.filelist.FileName[i])]))
        efs.append(float(ef))
        anatomy.append(a)
    real = torch.stack(real)
    efs = np.array(efs)
    real_range = lv_range(real, outlines)
    slope = np.polyfit(efs, real_range, 1)[0]
    ideal = slope * 70.0

    n = args.videos
    big = resize(torch.stack(anatomy[:n]), model.image_size)
    kwargs = dict(steps=8, churn=0.0, cond_scale=5.0, seed=0, last_stage=1, systole=model.systole_of(val, range(n),
                                                                                         counterfactual=True))
    low = sample(model, big, [15.0] * n, **kwargs)
    high = sample(model, big, [85.0] * n, **kwargs)
    own = sample(model, big, efs[:n].tolist(), **kwargs)
    r_low, r_high = lv_range(low, outlines[:n]), lv_range(high, outlines[:n])
    scores = ssim(own, real[:n].expand(-1, 3, -1, -1, -1))
    result = {
        "setting": args.set, "steps": args.steps, "train_s": round(train_s, 1),
        "frac_of_ideal": round(float((r_high.mean() - r_low.mean()) / ideal), 3),
        "right_direction": f"{int((r_high > r_low).sum())}/{n}",
        "range_gen": round(float(np.concatenate([r_low, r_high]).mean()), 4),
        "range_real": round(float(real_range.mean()), 4),
        "ssim_own_ef": [round(float(s), 3) for s in scores],
        "ssim_mean": round(float(scores.mean()), 3),
        "brightness_gen": round(float(own.mean()), 3), "brightness_real": round(float(real[:n].mean()), 3),
    }
    print(json.dumps(result))
    (out / "probe.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
