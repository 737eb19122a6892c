"""GPU check at the paper's sizes: one command, <= 8 min on one GPU, JSON + Markdown out, no MLflow, no data.

    python benchmarks/gpu_check.py --out gpu_check/            # on a GPU node (random weights and clips)
    python benchmarks/gpu_check.py --tiny --out /tmp/check     # CPU smoke run at tiny sizes (the tests run this)

For every stage of 1SCM, 2SCM and 4SCM (params/cascades/*.yaml) at the seed's per-GPU batch size
(params/paper/diffusion_*.yaml) and real shapes: training steps/s and peak GPU memory, fp16 as requested by the
seed's accelerate config; sampling seconds per video, from timed network evaluations of each stage times the
evaluations the sampler makes (the seed's steps and churn: 2 per Heun step but the last, x2 for guidance; and
Heun 8 steps per stage, churn 0); the paper's EF regressor (R(2+1)D-18, 64 frames, 112 px, batch 16): training
and inference clips/s. Every measurement runs in its own process, so peak memory is that measurement's alone.
Figures go to ``<out>/gpu_check.json`` and ``<out>/gpu_check.md``; benchmarks/README.md records them.
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from echodiff.io import atomic_write_text

REPO = Path(__file__).resolve().parents[1]
#: the seed's per-GPU batch size per stage (diffusion/slurms/train_<name>_stage<k>.sh, --bs)
BATCH = {"1SCM": [4], "2SCM": [16, 10], "4SCM": [16, 20, 8, 5]}


def cascade(name: str, tiny: bool) -> dict:
    """The cascade config; ``tiny``: the same structure at 1/8 width, 1/7 size and 8 frames."""
    from echodiff.diffusion.imagen import cascade_config

    config = cascade_config(yaml.safe_load((REPO / f"params/cascades/{name}.yaml").read_text()), name)
    if tiny:
        config = copy.deepcopy(config)
        for unet in config["unets"].values():
            unet["dim"] = 8
        config["imagen"]["image_sizes"] = [s // 7 for s in config["imagen"]["image_sizes"]]
        crops = config["imagen"].get("random_crop_sizes")
        if crops:
            config["imagen"]["random_crop_sizes"] = [c // 7 if c else None for c in crops]
        config["frames"] = 8 * max(config["imagen"]["temporal_downsample_factor"]) // 4 or 8
    return config


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _peak_gib() -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")


def train_stage(name: str, stage: int, tiny: bool, steps: int) -> dict:
    from echodiff.diffusion.imagen import condition_embedding, video_channels
    from echodiff.diffusion.training import DiffusionTrainConfig, make_trainer

    config = cascade(name, tiny)
    batch = 1 if tiny else BATCH[name][stage - 1]
    trainer = make_trainer(config, DiffusionTrainConfig(stage=stage, batch_size=batch, precision="fp16"))
    size, frames = config["imagen"]["image_sizes"][-1], config["frames"]
    clip = torch.rand(batch, video_channels(config), frames, size, size)
    anatomy = torch.rand(batch, 3, size, size)
    systole = torch.rand(batch) * 0.3 + 0.2 if config.get("condition_on_systole") else None  # s, ED -> ES
    embeds = condition_embedding(config, torch.rand(batch) * 80 + 10, systole)
    for i in range(steps + 1):
        if i == 1:
            _sync()
            start = time.perf_counter()
        trainer(clip, text_embeds=embeds, cond_images=anatomy, unet_number=stage)
        trainer.update(unet_number=stage)
    _sync()
    return {"steps_per_s": steps / (time.perf_counter() - start), "batch": batch, "peak_gib": _peak_gib()}


def sample_cost(name: str, tiny: bool, evals: int) -> dict:
    """Seconds per network evaluation of each stage (one video, guidance on: a conditional and an unconditional
    pass per evaluation), and seconds per video for the seed's sampler and for Heun 8 steps per stage."""
    from echodiff.diffusion.imagen import CascadeModel, condition_embedding

    config = cascade(name, tiny)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = CascadeModel(config).to(device).eval()
    imagen = model.imagen
    frames_per_stage = [config["frames"] // f for f in config["imagen"]["temporal_downsample_factor"]]
    per_eval = []
    with torch.no_grad(), torch.autocast(device.type, enabled=device.type == "cuda"):
        for k, unet in enumerate(imagen.unets):
            size = imagen.image_sizes[k]
            x = torch.randn(1, imagen.channels, frames_per_stage[k], size, size, device=device)
            systole = [0.3] if config.get("condition_on_systole") else None  # s, ED -> ES
            kwargs = dict(text_embeds=condition_embedding(config, [50.0], systole).to(device),
                          cond_images=torch.rand(1, 3, size, size, device=device), cond_scale=5.0)
            if k > 0:
                kwargs.update(lowres_cond_img=x, lowres_noise_times=torch.zeros(1, device=device))
            for i in range(evals + 1):
                if i == 1:
                    _sync()
                    start = time.perf_counter()
                unet.forward_with_cond_scale(x, torch.ones(1, device=device), **kwargs)
            _sync()
            per_eval.append((time.perf_counter() - start) / evals)
    hp = imagen.hparams

    def evaluations(steps: int) -> int:  # Heun: a second evaluation at every step but the last (churn or not)
        return 2 * steps - 1

    seed = sum(evaluations(h.num_sample_steps) * t for h, t in zip(hp, per_eval, strict=True))
    fast = sum(evaluations(8) * t for t in per_eval)
    return {"seconds_per_evaluation": per_eval, "seed_steps": [h.num_sample_steps for h in hp],
            "seed_churn": [h.S_churn for h in hp], "seed_seconds_per_video": seed, "heun8_seconds_per_video": fast,
            "evaluations_seed": sum(evaluations(h.num_sample_steps) for h in hp),
            "evaluations_heun8": len(hp) * evaluations(8)}


def regressor(tiny: bool, steps: int) -> dict:
    from echodiff.models.ef_regressor import EFRegressor

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    batch, frames, size, width = (2, 8, 16, 4) if tiny else (16, 64, 112, 64)
    model = EFRegressor(width, bias=55.6).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(enabled=device.type == "cuda")
    video, target = torch.rand(batch, 3, frames, size, size, device=device), torch.rand(batch, device=device) * 100
    result = {}
    for mode in ("train", "infer"):
        for i in range(steps + 1):
            if i == 1:
                _sync()
                start = time.perf_counter()
            with torch.autocast(device.type, enabled=device.type == "cuda"):
                if mode == "train":
                    loss = torch.nn.functional.mse_loss(model(video).float(), target)
                else:
                    with torch.no_grad():
                        model.eval()(video)
            if mode == "train":
                optimizer.zero_grad()
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
        _sync()
        result[f"{mode}_clips_per_s"] = steps * batch / (time.perf_counter() - start)
    result.update(batch=batch, peak_gib=_peak_gib())
    return result


def _child(args: list[str], timeout: float) -> dict:
    try:
        done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"over its {timeout:.0f} s limit"}
    if done.returncode:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"rc {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def markdown(report: dict) -> str:
    sizes = "tiny sizes" if report["tiny"] else "paper sizes"
    lines = [f"GPU check on {report['device']} (torch {report['torch']}), {sizes}",
             "", "| cascade | stage | batch | train steps/s | peak GiB |", "|---|---|---|---|---|"]
    for name, stages in report["training"].items():
        for k, r in enumerate(stages, 1):
            lines.append(f"| {name} | {k} | {r.get('batch', '')} | {r.get('steps_per_s', float('nan')):.3f} | "
                         f"{r.get('peak_gib', float('nan')):.1f} |" if "error" not in r else
                         f"| {name} | {k} | | error: {r['error']} | |")
    lines += ["", "| cascade | seed sampler (evaluations) | s/video | Heun 8/stage (evaluations) | s/video |",
              "|---|---|---|---|---|"]
    for name, r in report["sampling"].items():
        lines.append(f"| {name} | {r['seed_steps']} steps, churn {r['seed_churn']} ({r['evaluations_seed']}) | "
                     f"{r['seed_seconds_per_video']:.1f} | {r['evaluations_heun8']} | "
                     f"{r['heun8_seconds_per_video']:.1f} |"
                     if "error" not in r else f"| {name} | error: {r['error']} | | | |")
    r = report.get("regressor", {})
    lines += ["", f"EF regressor (batch {r.get('batch')}): train {r.get('train_clips_per_s', float('nan')):.1f} "
              f"clips/s, inference {r.get('infer_clips_per_s', float('nan')):.1f} clips/s, peak "
              f"{r.get('peak_gib', float('nan')):.1f} GiB", "", f"wall time {report['seconds']:.0f} s"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="folder for gpu_check.json and gpu_check.md (required)")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (a CPU smoke run)")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per stage")
    parser.add_argument("--evals", type=int, default=2, help="timed network evaluations per stage")
    parser.add_argument("--cascades", nargs="+", default=list(BATCH), choices=list(BATCH))
    parser.add_argument("--one", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        kind, *rest = args.one
        result = {"train": lambda: train_stage(rest[0], int(rest[1]), args.tiny, args.steps),
                  "sample": lambda: sample_cost(rest[0], args.tiny, args.evals),
                  "regressor": lambda: regressor(args.tiny, args.steps)}[kind]()
        print(json.dumps(result))
        return
    if not args.out:
        parser.error("--out is required")
    start = time.perf_counter()
    flags = ["--steps", str(args.steps), "--evals", str(args.evals)] + (["--tiny"] if args.tiny else [])
    report = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
              "torch": torch.__version__, "tiny": args.tiny, "training": {}, "sampling": {}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after every measurement: a lease that ends early still leaves what was measured
        report["seconds"] = time.perf_counter() - start
        atomic_write_text(json.dumps(report, indent=1), out / "gpu_check.json")  # whole or the previous one
        atomic_write_text(markdown(report), out / "gpu_check.md")

    for name, batches in ((n, BATCH[n]) for n in args.cascades):
        report["training"][name] = []
        for k in range(1, len(batches) + 1):
            report["training"][name].append(_child(["--one", "train", name, str(k), *flags], 300))
            save()
        report["sampling"][name] = _child(["--one", "sample", name, *flags], 300)
        save()
    report["regressor"] = _child(["--one", "regressor", *flags], 300)
    save()
    print(markdown(report))
    failed = [r for stages in report["training"].values() for r in stages if "error" in r] + [
        r for r in (*report["sampling"].values(), report["regressor"]) if "error" in r]
    if failed:
        raise SystemExit(f"gpu_check: {len(failed)} measurement(s) failed: {[r['error'] for r in failed]}")


if __name__ == "__main__":
    main()
