"""Diffusion training speed: imagen-pytorch's default U-Net settings in fp32 versus echodiff's fastest safe ones.

    .venv/bin/python benchmarks/training.py [--config params/cascades/demo.yaml] [--batch 8] [--steps 5]

Baseline: the config's U-Nets with imagen-pytorch's default attention (8 heads x 64, cross-embedding stem,
global-context attention) and fp32. Ours: the config as written (narrow attention, no cross-embedding stem or
global-context attention), plus mixed precision (bf16) where a GPU is present. Every (setting, stage) runs in its own
process on random clips of the stage's shape (no data loading), so peak memory is that stage's alone: peak RSS on
the CPU, ``torch.cuda.max_memory_allocated`` on a GPU. Prints steps/s, peak memory and the ratio per stage.
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import subprocess
import sys
import time

import torch

IMAGEN_DEFAULTS = {"attn_heads": 8, "attn_dim_head": 64, "init_cross_embed": True, "use_global_context_attn": True}


def one(config_path: str, setting: str, stage: int, batch: int, steps: int) -> dict[str, float]:
    """Time ``steps`` training steps of ``stage`` (after 2 warm-up steps) in this process."""
    from echodiff.diffusion.imagen import condition_embedding, video_channels
    from echodiff.diffusion.training import DiffusionTrainConfig, load_cascade_config, make_trainer

    config = load_cascade_config(config_path)
    if setting == "baseline":
        config = copy.deepcopy(config)
        for unet in config["unets"].values():
            unet.update(IMAGEN_DEFAULTS)
    cuda = torch.cuda.is_available()
    precision = "bf16" if cuda and setting == "echodiff" else "no"
    cfg = DiffusionTrainConfig(model_config=config_path, stage=stage, batch_size=batch, precision=precision)
    trainer = make_trainer(config, cfg)
    size, frames = config["imagen"]["image_sizes"][-1], config["frames"]
    clip = torch.rand(batch, video_channels(config), frames, size, size)
    anatomy = torch.rand(batch, 3, size, size)
    systole = torch.rand(batch) * 0.3 + 0.2 if config.get("condition_on_systole") else None  # s, ED -> ES
    embeds = condition_embedding(config, torch.rand(batch) * 80 + 10, systole)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    for i in range(steps + 2):
        if i == 2:
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
        trainer(clip, text_embeds=embeds, cond_images=anatomy, unet_number=stage)
        trainer.update(unet_number=stage)
    if cuda:
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    memory = (torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"steps_per_second": 1 / seconds, "peak_memory_gib": memory / 2**30, "precision": precision}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="params/cascades/demo.yaml")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--stages", type=int, nargs="+", default=None)
    parser.add_argument("--one", nargs=2, metavar=("SETTING", "STAGE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.config, args.one[0], int(args.one[1]), args.batch, args.steps)))
        return
    from echodiff.diffusion.training import load_cascade_config

    stages = args.stages or list(range(1, len(load_cascade_config(args.config)["unets"]) + 1))
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(f"{args.config}, batch {args.batch}, {args.steps} timed steps, device {device}")
    for stage in stages:
        result = {}
        for setting in ("baseline", "echodiff"):
            proc = subprocess.run([sys.executable, __file__, "--config", args.config, "--batch", str(args.batch),
                                   "--steps", str(args.steps), "--one", setting, str(stage)],
                                  capture_output=True, text=True)
            if proc.returncode:
                raise SystemExit(proc.stderr[-3000:])
            result[setting] = json.loads(proc.stdout.strip().splitlines()[-1])
            r = result[setting]
            print(f"stage {stage} {setting:9s} ({r['precision']:4s}): {r['steps_per_second']:.3f} steps/s, "
                  f"peak memory {r['peak_memory_gib']:.2f} GiB")
        ratio = result["echodiff"]["steps_per_second"] / result["baseline"]["steps_per_second"]
        print(f"stage {stage}: {ratio:.1f}x training steps/s")


if __name__ == "__main__":
    main()
