"""Sampling: the seed's sampler settings versus echodiff's few-step deterministic sampler, at equal quality.

    .venv/bin/python benchmarks/sampling.py [--model outputs/diffusion/demo/model]
        [--regressor outputs/ef_regression/demo/best.pt] [--videos 4] [--num-noise 2] [--fast-steps 4 8]

Baseline: EDM's stochastic sampler with the model config's ``num_sample_steps`` and ``S_churn`` (what the seed
samples with), run twice with different seeds to measure run-to-run noise. Ours: the deterministic second-order
(Heun) ODE solver (``churn 0``) with ``--fast-steps`` steps per stage. Each setting scores the same VAL videos
(factual targets, ``num_noise`` candidates, the EF feedback loop) with :func:`echodiff.evaluation.generate_scores`;
printed per setting: network evaluations (U-Net forward passes, classifier-free guidance counted) per video,
seconds per video, EF MAE after selection and the regressor-space Fréchet distance FD_EFreg; then the ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from echodiff import evaluation
from echodiff.config import resolve_path
from echodiff.diffusion import load_model_folder
from echodiff.ef_training import load_regressor


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


def run(model, regressor, args, steps, churn, seed: int, folder: Path) -> dict[str, float]:
    """Score ``--videos`` VAL videos with one sampler setting; return cost and quality."""
    cfg = evaluation.ScoreConfig(data_root=args.data_root, split="val", mode="factual", num_noise=args.num_noise,
                                 max_videos=args.videos, batch_videos=args.batch_videos, steps=steps, churn=churn,
                                 cond_scale=args.cond_scale, seed=seed, cache_dir=args.cache_dir)
    csv = folder / f"scores_{steps}_{churn}_{seed}.csv"
    with count_network_evaluations(model) as counts:
        start = time.perf_counter()
        scores = evaluation.generate_scores(model, regressor, cfg, csv, progress=False)
        seconds = time.perf_counter() - start
    selected = evaluation.select_by_ef(scores)
    summary = evaluation.summarize(scores)
    sampling_calls = -(-args.videos // args.batch_videos)  # one sample() call per batch of videos x candidates
    # every video of a batch gets each of the call's network evaluations
    return {"nfe_per_video": sum(counts) / sampling_calls, "seconds_per_video": seconds / len(scores),
            "best_mae": summary["best_mae_gen"], "avg_mae": summary["avg_mae_gen"],
            "fd_efreg": evaluation.regressor_distance(selected, [csv])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="outputs/diffusion/demo/model")
    parser.add_argument("--regressor", default="outputs/ef_regression/demo/best.pt")
    parser.add_argument("--data-root", default="data/phantom")
    parser.add_argument("--cache-dir", default="data/cache")
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--num-noise", type=int, default=2)
    parser.add_argument("--batch-videos", type=int, default=2)
    parser.add_argument("--cond-scale", type=float, default=5.0)
    parser.add_argument("--fast-steps", type=int, nargs="+", default=[4, 8])
    args = parser.parse_args()
    for name in ("model", "regressor"):
        if not resolve_path(getattr(args, name)).exists():
            raise SystemExit(f"{getattr(args, name)} not found: run `make demo` (stages 01 and 02) first, or pass "
                             f"--{name}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_model_folder(resolve_path(args.model)).to(device)
    regressor = load_regressor(resolve_path(args.regressor)).to(device)
    hp = model.imagen.hparams
    print(f"model {args.model}: stages {model.num_stages}, config sampler steps "
          f"{[h.num_sample_steps for h in hp]}, S_churn {[h.S_churn for h in hp]}; device {device}; "
          f"{args.videos} VAL videos x {args.num_noise} candidates, cond_scale {args.cond_scale}")
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rows["seed sampler (seed 0)"] = run(model, regressor, args, None, None, 0, folder)
        rows["seed sampler (seed 1)"] = run(model, regressor, args, None, None, 1, folder)
        for steps in args.fast_steps:
            rows[f"Heun {steps} steps, churn 0"] = run(model, regressor, args, steps, 0.0, 0, folder)
    print(f"\n{'setting':28s} {'NFE/video':>10s} {'s/video':>8s} {'MAE sel.':>9s} {'MAE avg':>8s} {'FD_EFreg':>9s}")
    for name, r in rows.items():
        print(f"{name:28s} {r['nfe_per_video']:10.0f} {r['seconds_per_video']:8.2f} {r['best_mae']:9.2f} "
              f"{r['avg_mae']:8.2f} {r['fd_efreg']:9.1f}")
    a, b = rows["seed sampler (seed 0)"], rows["seed sampler (seed 1)"]
    noise_mae, noise_fd = abs(a["best_mae"] - b["best_mae"]), abs(a["fd_efreg"] - b["fd_efreg"])
    base_mae, base_fd = max(a["best_mae"], b["best_mae"]), max(a["fd_efreg"], b["fd_efreg"])
    print(f"\nrun-to-run noise of the baseline: MAE {noise_mae:.2f}, FD_EFreg {noise_fd:.1f}")
    for name, r in list(rows.items())[2:]:
        equal = r["best_mae"] <= base_mae + noise_mae and r["fd_efreg"] <= base_fd + noise_fd
        print(f"{name}: {a['nfe_per_video'] / r['nfe_per_video']:.1f}x fewer network evaluations, "
              f"{a['seconds_per_video'] / r['seconds_per_video']:.1f}x less wall time per video; quality "
              f"{'no worse than the baseline within its noise' if equal else 'WORSE than the baseline'}")


if __name__ == "__main__":
    main()
