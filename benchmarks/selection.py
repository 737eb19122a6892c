"""Selection loop: ``num_noise`` candidates per video generated in one batch versus one after the other.

    .venv/bin/python benchmarks/selection.py [--model outputs/diffusion/demo/model] [--num-noise 3] [--steps 8]

Same anatomy frames, targets and sampler (deterministic Heun, ``--steps`` per stage); prints seconds per candidate
for each path and the ratio. Without ``--model`` (or when it is missing) an untrained cascade built from
``--config`` is timed: speed does not depend on the weights.
"""

from __future__ import annotations

import argparse
import time

import torch

from echodiff.config import resolve_path
from echodiff.diffusion import CascadeModel, load_model_folder, sample
from echodiff.diffusion.training import load_cascade_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="outputs/diffusion/demo/model")
    parser.add_argument("--config", default="params/cascades/demo.yaml")
    parser.add_argument("--videos", type=int, default=2)
    parser.add_argument("--num-noise", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    path = resolve_path(args.model)
    model = (load_model_folder(path) if path.exists() else CascadeModel(load_cascade_config(args.config)).eval())
    model = model.to(device)
    size = model.image_size
    torch.manual_seed(0)
    anatomy = torch.rand(args.videos, 3, size, size)
    targets = torch.linspace(20, 80, args.videos)
    kwargs = dict(steps=args.steps, churn=0.0, cond_scale=5.0, device=device,
                  systole=0.3 if model.config.get("condition_on_systole") else None)  # s, ED -> ES, for every video

    def batched() -> None:
        sample(model, anatomy.repeat_interleave(args.num_noise, 0), targets.repeat_interleave(args.num_noise),
               seed=0, **kwargs)

    def one_by_one() -> None:
        for v in range(args.videos):
            for k in range(args.num_noise):
                sample(model, anatomy[v:v + 1], targets[v:v + 1], seed=k, **kwargs)

    n = args.videos * args.num_noise
    sample(model, anatomy[:1], targets[:1], **kwargs)  # warm-up
    timings = {}
    for name, fn in (("one after the other", one_by_one), ("batched", batched)):
        best = float("inf")
        for _ in range(args.repeats):
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
        timings[name] = best / n
        print(f"{name:20s} {timings[name]:.3f} s per candidate ({n} candidates, best of {args.repeats})")
    print(f"batched selection: {timings['one after the other'] / timings['batched']:.2f}x faster "
          f"(device {device}, {args.videos} videos x {args.num_noise} candidates, {args.steps} Heun steps/stage)")


if __name__ == "__main__":
    main()
