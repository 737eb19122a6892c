"""Do the EF judges compress EF on blurred videos? (docs/generator-experiments.md, E34; inference only, ~1 min on a CPU)

Every VAL clip of the phantom, taken as stage 03 takes it (from the traced ED frame, the cascade's length and frame
rate), is read by the EF regressor and the segmentation judge as it is and after the losses the cascade's videos
have: 32 px (stage 2's size), 16 px (stage 1's) brought back to 32 px, every other frame (4 fps, stage 1's frame
rate) brought back by trilinear interpolation, and stage 1's training target exactly as the built cascade makes it
(``imagen.resize_to`` down to stage 1's size and frames, and up again as stage 2 receives it). It prints r, slope, MAE
and bias of each judge against the CSV's EF. If the judges' slope fell below 1 on blurred real clips, a generator's
slope below 1 could be the judge's; it does not (E34). The last row is what stage 1 is trained to make: with the demo's
``resize_mode: area`` imagen averages frame pairs, and its target reads 10 EF points low (E39)::

    python benchmarks/judge_degradation.py --model outputs/diffusion/demo/model \\
        --regressor outputs/ef_regression/demo/best.pt --seg-judge outputs/evaluate/demo/scores/lv_segmenter.pt

The phantom's VAL hearts lie within 25-75 %. ``--grid LO HI N`` instead writes N new phantom hearts (VAL) with EFs
evenly spaced over LO-HI % (the same renderer, other anatomies) and reads those, to see how the judges read hearts
beyond the range the phantom populates, where stage 03's counterfactual targets go (15-85 %). ``--regressor`` may be
repeated as NAME=PATH: with stage 04's variants (``<out_dir>/regressors/<variant>/best.pt``) it says whether
rebalancing taught a regressor the ends of the range, on real hearts there rather than the few VAL/TEST ones.
"""
from __future__ import annotations

import argparse
import tempfile

import numpy as np
import torch

from echodiff.data.transforms import resize
from echodiff.diffusion.imagen import CascadeModel, cascade_clips, load_model_folder
from echodiff.ef_training import load_regressor
from echodiff.evaluation import ScoreConfig, seg_judge_config, to_size, video_item
from echodiff.metrics.regression import ef_scores
from echodiff.models.ef_regressor import regress_ef
from echodiff.phantom import make_heart, write_hearts
from echodiff.seg_judge import SegJudge


def degraded(real: torch.Tensor, model: CascadeModel) -> dict[str, torch.Tensor]:
    """The real clips ``(B, 3, T, H, W)`` as they are and after each of the cascade's losses, at their own shape."""
    shape = tuple(real.shape[-3:])
    size = model.image_size
    every_other = real[:, :, ::2]
    imagen = model.imagen
    first_size = int(imagen.image_sizes[0])
    first_frames = shape[0] // int(imagen.temporal_downsample_factor[0])
    stage1 = imagen.resize_to(real, first_size, target_frames=first_frames)  # stage 1's training target
    return {"as read": real,
            f"{size} px": to_size(resize(real, size), shape),
            f"{size // 2} px": to_size(to_size(resize(real, size // 2), (shape[0], size, size)), shape),
            f"{size} px, every other frame": to_size(resize(every_other, size), shape),
            f"{size // 2} px, every other frame": to_size(resize(every_other, size // 2), shape),
            f"stage 1's target ({first_size} px, {first_frames} fr.)":
                to_size(imagen.resize_to(stage1, size, target_frames=shape[0]), shape)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a stage-02 model folder (its clip format and output size)")
    parser.add_argument("--regressor", action="append", required=True,
                        help="stage 01's best.pt, or NAME=PATH; repeat to compare (e.g. stage 04's variants)")
    parser.add_argument("--seg-judge", default=None, help="a stage-03 lv_segmenter.pt made for this cascade")
    parser.add_argument("--data-root", default="data/phantom")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--seg-steps", type=int, default=300, help="the judge's settings, as stage 03 made it")
    parser.add_argument("--grid", nargs=3, type=float, metavar=("LO", "HI", "N"), default=None,
                        help="read N new VAL hearts with EFs evenly spaced over LO-HI %% instead of --data-root's")
    args = parser.parse_args()
    if not args.grid:
        read_clips(args, args.data_root, args.cache_dir)
        return
    with tempfile.TemporaryDirectory(prefix="judge-grid-phantom-") as root:  # the grid's hearts are not kept
        lo, hi, n = args.grid
        write_hearts(root, [make_heart(1000, i, ef) for i, ef in enumerate(np.linspace(lo, hi, int(n)))],
                     ["VAL"] * int(n), workers=2)
        read_clips(args, root, None)


def read_clips(args: argparse.Namespace, data_root: str, cache_dir: str | None) -> None:
    """Read ``data_root``'s VAL clips with every judge in ``args``, as they are and degraded; print the figures."""
    model = load_model_folder(args.model)
    fps = float(model.config["fps"])
    cfg = ScoreConfig(mode="factual", data_root=data_root, cache_dir=cache_dir, seg_steps=args.seg_steps)
    data = cascade_clips(model.config, data_root, "val", cache_dir)
    items = [video_item(data, i, cfg) for i in range(len(data))]
    real = torch.stack([clip for _, _, clip, _ in items])
    efs = np.array([ef for _, ef, _, _ in items])
    judges = {}  # name -> videos (B, 3, T, H, W) at the clips' shape -> EF (%) per video
    for spec in args.regressor:
        name, _, path = spec.rpartition("=")
        regressor = load_regressor(path)
        judges[name or "regressor"] = lambda v, r=regressor: regress_ef(r, v, fps).numpy()
    if args.seg_judge:
        segmenter = SegJudge.load(args.seg_judge, seg_judge_config(model, cfg))
        judges["segmentation"] = segmenter.ef  # it area-resizes to its own size (the cascade's output size)
    print(f"{len(efs)} VAL clips {tuple(real.shape[1:])}, EF {efs.min():.0f}-{efs.max():.0f} %")
    for degradation, videos in degraded(real, model).items():
        reads = {name: judge(videos) for name, judge in judges.items()}
        if degradation == "as read" and args.grid:  # where along the range each judge levels off
            for low in np.arange(np.floor(efs.min() / 10) * 10, efs.max(), 10):
                inside = (efs >= low) & (efs < low + 10)
                if inside.any():
                    print(f"  true EF {low:.0f}-{low + 10:.0f} % ({inside.sum()}): "
                          + ", ".join(f"{name} reads {read[inside].mean():.1f}" for name, read in reads.items()))
        print(f"{degradation:34s} " + " | ".join(
            f"{name} r {s['r']:.3f} slope {s['slope']:.2f} MAE {s['mae']:.2f} bias {np.mean(read - efs):+.1f}"
            for name, s, read in ((name, ef_scores(efs, read), read) for name, read in reads.items())))


if __name__ == "__main__":
    main()
