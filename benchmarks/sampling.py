"""Few-step sampling at equal quality: the seed's sampler versus training-free few-step solvers, on one cascade.

    .venv/bin/python benchmarks/sampling.py [--model outputs/diffusion/demo/model]
        [--regressor outputs/ef_regression/demo/best.pt] [--videos 8] [--num-noise 2]
        [--settings heun:4,4@5,1 dpmpp_2m:8,4 heun:8] [--json out.json]

Baseline: the seed's sampler, i.e. imagen-pytorch's stochastic EDM sampler with the model config's
``num_sample_steps`` and ``S_churn``, run twice with different seeds: the difference between the two runs is the
run-to-run spread that "equal quality" is judged against. Each setting (``solver:steps`` or
``solver:steps1,steps2`` per stage, optionally ``@sigma_max`` or ``@sigma_max1,sigma_max2``: the noise level each
stage starts from, default the config's; ``heun`` settings run deterministic, churn 0) scores the same VAL videos with
counterfactual targets (EF ~ U(15, 85) %, ``num_noise`` candidates each) through
:func:`echodiff.evaluation.generate_scores`. Printed per setting: network evaluations (U-Net forward passes,
classifier-free guidance counted) per video, seconds per video, and over **all** candidates: EF MAE, r and slope of
regressed on target EF, the LV-area judge's r (which owes nothing to the regressor), FD_EFreg, and the motion
metrics (temporal std, cardiac fraction); then each setting's cost ratios and whether every quality number lies
within the baseline's spread.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from echodiff import evaluation
from echodiff.config import resolve_path
from echodiff.diffusion import load_model_folder
from echodiff.ef_training import load_regressor

# quality numbers, and whether larger is better
QUALITY = {"avg_mae_gen": False, "avg_r_gen": True, "avg_slope_gen": True, "fd_efreg_all": False}
COLUMNS = ["nfe_per_video", "seconds_per_video", "avg_mae_gen", "avg_r_gen", "avg_slope_gen", "area_avg_r_gen",
           "fd_efreg_all", "gen_temporal_std", "gen_cardiac_fraction"]


@contextlib.contextmanager
def count_network_evaluations(model: torch.nn.Module) -> Iterator[list[int]]:
    """Count forward passes of every U-Net of the cascade (a list, one count per stage). imagen-pytorch calls
    ``unet.forward`` directly (classifier-free guidance: twice per step), so the method itself is wrapped."""
    counts = [0] * len(model.imagen.unets)

    def counting(i: int, forward):
        def wrapper(*args, **kwargs):
            counts[i] += 1
            return forward(*args, **kwargs)
        return wrapper

    for i, unet in enumerate(model.imagen.unets):
        unet.forward = counting(i, unet.forward)
    try:
        yield counts
    finally:
        for unet in model.imagen.unets:
            del unet.forward  # back to the class's method


def parse_setting(text: str) -> tuple[str, int | list[int], float | list[float] | None]:
    """``dpmpp_2m:6`` -> ('dpmpp_2m', 6, None); ``heun:4,4@5,1`` -> ('heun', [4, 4], [5.0, 1.0])."""
    solver, _, rest = text.partition(":")
    steps, _, sigma_max = rest.partition("@")
    values = [int(s) for s in steps.split(",") if s]
    levels = [float(s) for s in sigma_max.split(",") if s]
    if not values:
        raise SystemExit(f"setting {text!r}: write solver:steps[@sigma_max], e.g. dpmpp_2m:6 or heun:4,4@5,1")
    return (solver, values[0] if len(values) == 1 else values,
            None if not levels else levels[0] if len(levels) == 1 else levels)


def run(model, regressor, args, solver: str, steps, churn, seed: int, folder: Path, sigma_max=None) -> dict[str, float]:
    """Score ``--videos`` VAL videos with one sampler setting; return its cost and quality."""
    cfg = evaluation.ScoreConfig(data_root=args.data_root, split="val", mode="counterfactual",
                                 num_noise=args.num_noise, max_videos=args.videos, batch_videos=args.batch_videos,
                                 solver=solver, sample_steps=steps, sample_churn=churn, cond_scale=args.cond_scale,
                                 seed=seed, cache_dir=args.cache_dir, sample_sigma_max=sigma_max)
    tag = f"{solver}_{steps}_{churn}_{seed}_{sigma_max}".replace(" ", "")
    csv, videos = folder / f"scores_{tag}.csv", folder / f"videos_{tag}"
    with count_network_evaluations(model) as counts:
        start = time.perf_counter()
        scores = evaluation.generate_scores(model, regressor, cfg, csv, videos_dir=videos, progress=False)
        seconds = time.perf_counter() - start
    summary = evaluation.summarize(scores)
    real = evaluation.real_clips(model.config, cfg, scores.FileName.drop_duplicates())
    motion = evaluation.motion_summary(real, evaluation.saved_candidates(scores, videos), model.config.get("fps") or 8)
    calls = -(-args.videos // args.batch_videos)  # one sample() call per batch; each video gets all its passes
    out = {"nfe_per_video": sum(counts) / calls,
           "seconds_per_video": seconds / len(scores), "fd_efreg_all": evaluation.regressor_distance(scores, [csv]),
           **summary, **motion}
    return {k: float(out.get(k, float("nan"))) for k in COLUMNS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="outputs/diffusion/demo/model")
    parser.add_argument("--regressor", default="outputs/ef_regression/demo/best.pt")
    parser.add_argument("--data-root", default="data/phantom")
    parser.add_argument("--cache-dir", default="data/cache")
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--num-noise", type=int, default=2)
    parser.add_argument("--batch-videos", type=int, default=4)
    parser.add_argument("--cond-scale", type=float, nargs="+", default=[2.5, 1.0],
                        help="guidance, one value or one per stage (the demo's: 2.5 on stage 1, 1 after)")
    parser.add_argument("--settings", nargs="+", default=["heun:4,4@5,1", "dpmpp_2m:8,4", "heun:8"])
    parser.add_argument("--json", help="also write the table as JSON here")
    args = parser.parse_args()
    args.cond_scale = args.cond_scale[0] if len(args.cond_scale) == 1 else args.cond_scale
    for name in ("model", "regressor"):
        if not resolve_path(getattr(args, name)).exists():
            raise SystemExit(f"{getattr(args, name)} not found: run `make demo` (stages 01 and 02) first, or pass "
                             f"--{name}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_model_folder(resolve_path(args.model)).to(device)
    regressor = load_regressor(resolve_path(args.regressor)).to(device)
    hp = model.imagen.hparams
    print(f"model {args.model}: {model.num_stages} stages, config sampler steps {[h.num_sample_steps for h in hp]}, "
          f"S_churn {[h.S_churn for h in hp]}; device {device}; {args.videos} VAL videos x {args.num_noise} "
          f"candidates, counterfactual targets, cond_scale {args.cond_scale}", flush=True)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in (0, 1):
            rows[f"seed sampler, seed {seed}"] = run(model, regressor, args, "heun", None, None, seed, Path(tmp))
            print(f"{list(rows)[-1]}: {rows[list(rows)[-1]]}", flush=True)
        for text in args.settings:
            solver, steps, sigma_max = parse_setting(text)
            name = f"{solver} {steps} steps" + (f", sigma_max {sigma_max}" if sigma_max is not None else "")
            rows[name] = run(model, regressor, args, solver, steps, 0.0, 0, Path(tmp), sigma_max)
            print(f"{list(rows)[-1]}: {rows[list(rows)[-1]]}", flush=True)
    print(f"\n| setting | {' | '.join(COLUMNS)} |\n|---|{'---|' * len(COLUMNS)}")
    for name, r in rows.items():
        print(f"| {name} | " + " | ".join(f"{r[c]:.3g}" for c in COLUMNS) + " |")
    a, b = rows["seed sampler, seed 0"], rows["seed sampler, seed 1"]
    spread = {k: abs(a[k] - b[k]) for k in QUALITY}
    print("\nbaseline run-to-run spread: " + ", ".join(f"{k} {v:.3g}" for k, v in spread.items()))
    for name, r in list(rows.items())[2:]:
        worse = [k for k, larger_better in QUALITY.items()
                 if (r[k] < min(a[k], b[k]) - spread[k] if larger_better else r[k] > max(a[k], b[k]) + spread[k])]
        print(f"{name}: {a['nfe_per_video'] / r['nfe_per_video']:.1f}x fewer network evaluations, "
              f"{a['seconds_per_video'] / r['seconds_per_video']:.1f}x less wall time per video; "
              + ("every quality number within the baseline's spread" if not worse else f"WORSE: {', '.join(worse)}"))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
