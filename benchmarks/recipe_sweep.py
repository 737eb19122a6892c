"""Whole-cascade recipe sweep for the generator experiments (docs/generator-experiments.md).

Each run trains every stage of a cascade from scratch with stage 02's parameters (``params/diffusion_demo.yaml``
unless ``--train``), then scores it as `make demo`'s stage 03 does (``params/evaluate_demo.yaml`` unless
``--score``: 12 VAL videos x 3 candidates, factual and counterfactual, Heun 8 + 8, guidance [2.5, 1]) by the three
judges: the EF regressor, the LV-area judge and the LV segmentation judge, all over **all** candidates. A run is a
recipe variant x a training seed, so a verdict can rest on the spread between seeds (one training run of the demo
cascade moves its counterfactual slope by ~0.1: E20, E23). Runs go to parallel worker processes (``--workers``):
on a GPU a demo-sized run is bound by kernel launches, so several share one card.

A variant is a name and assignments, e.g. ``"fourier cascade.ef_embedding=ef_fourier"``: ``cascade.<key>`` edits
the cascade config (dotted paths, YAML values), ``train.<key>`` stage 02's parameters (``train.steps=[1200,500]``),
``score.<key>`` stage 03's (``score.cond_scale=[4.0,1.0]``). A run trains on stage 02's ``data_root`` (the demo's:
``data/phantom_uniform``, written first where its parameters ask for a phantom) or on ``train.data_root=<folder>``
(e.g. a larger phantom), and is scored on ``--data-root``'s VAL videos. Every run writes
``<out>/runs/<variant>_s<seed>.json`` (its summaries and minutes), and ``<out>/sweep.md`` is rewritten as runs finish,
so a run cut short still reports what finished. The segmentation judge is trained once (or read from
``--seg-judge``) and shared by every run::

    python benchmarks/recipe_sweep.py --regressor outputs/ef_regression/demo/best.pt --seeds 0 1 2 \\
        --variant base --variant "fourier cascade.ef_embedding=ef_fourier" --workers 6 --out sweep/
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from echodiff import phantom
from echodiff.config import resolve_path, with_edits

REPO = Path(__file__).resolve().parents[1]
#: the numbers the table shows per run, stage 03's names, per mode (all candidates; motion: EF-selected, as stage 03)
COLUMNS = {"counterfactual": ("avg_r_gen", "avg_slope_gen", "avg_mae_gen", "seg_avg_r_gen", "seg_avg_slope_gen",
                              "seg_avg_mae_gen", "area_avg_r_gen"),
           "factual": ("avg_r_gen", "avg_slope_gen", "avg_mae_gen", "seg_avg_mae_gen", "avg_ssim",
                       "gen_cardiac_fraction", "gen_temporal_std")}


def parse_variant(text: str) -> tuple[str, dict[str, dict]]:
    """``"name a.b=v c=w"`` -> (name, {"cascade": {...}, "train": {...}, "score": {...}}) with YAML values."""
    name, *assignments = text.split()
    edits: dict[str, dict] = {"cascade": {}, "train": {}, "score": {}}
    for item in assignments:
        key, sep, value = item.partition("=")
        section, dot, rest = key.partition(".")
        if not sep or not dot or section not in edits:
            raise ValueError(f"variant {name!r}: {item!r} is not cascade.<key>=<value>, train.<key>=<value> or "
                             "score.<key>=<value>")
        edits[section][rest] = yaml.safe_load(value)
    return name, edits


def check_variant(name: str, edits: dict[str, dict], cascade: str | Path) -> None:
    """Refuse a variant before any run starts: a cascade edit must give a valid cascade config, and a train or score
    key must be one that stage 02 or stage 03 reads (they ignore other keys, so a typo would change nothing)."""
    from echodiff.diffusion.imagen import cascade_config
    from echodiff.diffusion.training import PER_STAGE, DiffusionTrainConfig
    from echodiff.evaluation import ScoreConfig

    try:
        cascade_config(with_edits(yaml.safe_load(Path(cascade).read_text()), edits["cascade"]), f"variant {name!r}")
    except KeyError as error:
        raise SystemExit(f"variant {name!r}: {error.args[0]}") from None
    for section, known in (("train", {f.name for f in dataclasses.fields(DiffusionTrainConfig)} | set(PER_STAGE)),
                           ("score", {f.name for f in dataclasses.fields(ScoreConfig)})):
        unknown = sorted(set(edits[section]) - known - {"stage", "model_config", "checkpoint_dir", "modes"})
        if unknown:
            raise SystemExit(f"variant {name!r}: unknown {section} key(s) {unknown}; known: {sorted(known)}")


def train_params(train: str | Path, edits: dict) -> dict:
    """Stage 02's parameters from the file ``train`` with a variant's ``train.`` edits, ``data_root`` absolute (a
    relative one is the repository's, as the stage reads it)."""
    params = {**yaml.safe_load(Path(train).read_text()), **edits}
    params["data_root"] = str(resolve_path(params["data_root"]).resolve())
    return params


def run_one(job: dict) -> dict:
    """Train and score one (variant, seed); returns the summaries per mode and the minutes each part took."""
    from echodiff import tracking
    from echodiff.diffusion.imagen import cascade_config, load_model_folder
    from echodiff.diffusion.training import export_model, stage_configs, train_stages
    from echodiff.ef_training import load_regressor
    from echodiff.evaluation import (
        ScoreConfig,
        generate_scores,
        motion_summary,
        real_clips,
        saved_candidates,
        seg_judge_path,
        select_by_ef,
        summarize,
    )

    tracking.log_metric_rows = lambda rows: None  # no MLflow run here: the JSON is the record
    torch.set_num_threads(job["threads"])
    out = Path(job["out"])
    out.mkdir(parents=True, exist_ok=True)
    config = cascade_config(with_edits(yaml.safe_load(Path(job["cascade"]).read_text()), job["edits"]["cascade"]))
    (out / "cascade.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    params = {**train_params(job["train"], job["edits"]["train"]), "model_config": str(out / "cascade.yaml"),
              "checkpoint_dir": str(out / "checkpoints"), "seed": job["seed"], "cache_dir": job["cache_dir"],
              "precision": job["precision"]}
    start = time.perf_counter()
    trainer, history = train_stages(stage_configs(params), out / "checkpoints")
    folder = export_model(trainer, config, out / "model")
    trained = time.perf_counter()
    model = load_model_folder(folder).to(job["device"])
    regressor = load_regressor(job["regressor"]).to(job["device"])
    score = {**yaml.safe_load(Path(job["score"]).read_text()), **job["edits"]["score"],
             "data_root": job["data_root"], "cache_dir": job["cache_dir"]}
    result = {"variant": job["variant"], "seed": job["seed"], "edits": job["edits"],
              "train_data_root": params["data_root"],
              "final_train_loss": [float(history[history.stage == s].train_loss.tail(50).mean())
                                   for s in sorted(history.stage.unique())]}
    for mode in score.get("modes", ["factual", "counterfactual"]):
        cfg = ScoreConfig.from_params({**score, "mode": mode})
        csv = out / "scores" / f"{mode}.csv"
        csv.parent.mkdir(exist_ok=True)
        if job["seg_judge"]:
            shutil.copyfile(job["seg_judge"], seg_judge_path(csv))
        scores = generate_scores(model, regressor, cfg, csv, videos_dir=out / "videos", progress=False)
        picked = select_by_ef(scores)  # motion as stage 03 reports it: the EF-selected candidates vs their clips
        result[mode] = {**summarize(scores), **motion_summary(real_clips(config, cfg, picked.FileName),
                                                              saved_candidates(picked, out / "videos"),
                                                              float(config["fps"]))}
    result["minutes"] = {"train": (trained - start) / 60, "score": (time.perf_counter() - trained) / 60}
    return result


def _decode(cache_dir: Path, video: Path) -> None:
    from echodiff.data.video import VideoCache

    VideoCache(cache_dir).load(video)


def warm_cache(data_root: Path, cache_dir: Path, workers: int) -> None:
    """Decode every video of ``data_root`` into the shared cache once, before the runs read it side by side."""
    from concurrent.futures import ProcessPoolExecutor

    videos = sorted((data_root / "Videos").glob("*.avi"))
    start = time.perf_counter()
    with ProcessPoolExecutor(max(1, workers)) as pool:
        list(pool.map(_decode, [cache_dir] * len(videos), videos, chunksize=8))
    print(f"cache: {len(videos)} videos decoded into {cache_dir} ({time.perf_counter() - start:.0f} s)", flush=True)


def fit_shared_seg_judge(args: argparse.Namespace, out: Path) -> str | None:
    """The segmentation judge every run reads: ``--seg-judge``, or trained here once with stage 03's settings."""
    from echodiff.diffusion.imagen import CascadeModel, cascade_config
    from echodiff.evaluation import ScoreConfig, load_or_fit_seg_judge

    if args.seg_judge:
        return str(Path(args.seg_judge).resolve())
    score = {**yaml.safe_load(Path(args.score).read_text()), "data_root": args.data_root, "cache_dir": args.cache_dir}
    cfg = ScoreConfig.from_params(score)
    if not cfg.seg_steps:
        return None
    model = CascadeModel(cascade_config(yaml.safe_load(Path(args.cascade).read_text())))
    path = out / "lv_segmenter.pt"
    judge = load_or_fit_seg_judge(model, cfg, path)
    (out / "seg_judge.json").write_text(json.dumps(judge.accuracy, default=float))
    print(f"segmentation judge on real VAL clips: {judge.accuracy}", flush=True)
    return str(path.resolve())


def table(results: list[dict]) -> str:
    """Markdown: one row per run, then per variant the mean and the spread (max - min) over its seeds."""
    head = (["variant", "seed"] + [f"{mode[0]} {c}" for mode, names in COLUMNS.items() for c in names]
            + ["train min"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def row(r: dict) -> list[float]:
        return [r.get(mode, {}).get(c, float("nan")) for mode, names in COLUMNS.items() for c in names] + [
            r["minutes"]["train"]]

    by_variant: dict[str, list[list[float]]] = {}
    for r in sorted(results, key=lambda r: (r["variant"], r["seed"])):
        values = row(r)
        by_variant.setdefault(r["variant"], []).append(values)
        lines.append(f"| {r['variant']} | {r['seed']} | " + " | ".join(f"{v:.2f}" for v in values) + " |")
    for name, rows in by_variant.items():
        a = np.array(rows)
        lines.append(f"| **{name}** | mean of {len(rows)} | " + " | ".join(
            f"**{m:.2f}** ±{s / 2:.2f}" for m, s in zip(a.mean(0), np.ptp(a, 0), strict=True)) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", action="append", default=[], help='"name [cascade.|train.|score.]k=v ..."')
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--regressor", default=None, help="stage 01's best.pt (the demo's EF regressor)")
    parser.add_argument("--seg-judge", default=None, help="a stage-03 lv_segmenter.pt (default: train one here)")
    parser.add_argument("--cascade", default=str(REPO / "params/cascades/demo.yaml"))
    parser.add_argument("--train", default=str(REPO / "params/diffusion_demo.yaml"))
    parser.add_argument("--score", default=str(REPO / "params/evaluate_demo.yaml"))
    parser.add_argument("--data-root", default=str(REPO / "data/phantom"))
    parser.add_argument("--cache-dir", default=None, help="decoded-video cache shared by the runs (faster epochs)")
    parser.add_argument("--workers", type=int, default=1, help="runs at the same time")
    parser.add_argument("--precision", default="no", help="training precision on a GPU (default fp32, as on a CPU)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run (default: cores / workers)")
    parser.add_argument("--deadline", type=float, default=None, help="start no run after this many seconds")
    parser.add_argument("--out", default=None)
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # a worker: the job's JSON file
    args = parser.parse_args()
    if args.one:
        job = json.loads(Path(args.one).read_text())
        result = run_one(job)
        Path(job["result"]).write_text(json.dumps(result, indent=1, default=float))
        return 0
    if not args.variant or not args.regressor or not args.out:
        parser.error("--variant (one or more), --regressor and --out are required")
    out = Path(args.out).resolve()
    (out / "runs").mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(exist_ok=True)
    try:
        variants = [parse_variant(v) for v in args.variant]
    except ValueError as error:
        raise SystemExit(str(error)) from None
    for name, edits in variants:
        check_variant(name, edits, args.cascade)
    if len({name for name, _ in variants}) != len(variants):
        raise SystemExit("variant names must differ")
    if not Path(args.regressor).is_file():  # a run id would need MLflow, which a GPU node may lack
        raise SystemExit(f"--regressor {args.regressor}: no such file (stage 01 of `make demo` writes "
                         "outputs/ef_regression/demo/best.pt)")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.workers)
    if args.cache_dir:
        warm_cache(Path(args.data_root), Path(args.cache_dir), args.workers)
    for _, edits in variants:  # each TRAIN set once, before the runs read it side by side
        phantom.prepare(train_params(args.train, edits["train"]))
    seg = fit_shared_seg_judge(args, out)
    jobs = []  # seed-major: every variant's seed 0 first, so a sweep cut short still compares the variants
    for seed in args.seeds:
        for name, edits in variants:
            run = out / "work" / f"{name}_s{seed}"
            job = {"variant": name, "seed": seed, "edits": edits, "out": str(run), "cascade": args.cascade,
                   "train": args.train, "score": args.score, "data_root": str(Path(args.data_root).resolve()),
                   "cache_dir": str(Path(args.cache_dir).resolve()) if args.cache_dir else None,
                   "regressor": str(Path(args.regressor).resolve()), "seg_judge": seg, "device": device,
                   "threads": threads, "precision": args.precision,
                   "result": str(out / "runs" / f"{name}_s{seed}.json")}
            if not Path(job["result"]).exists():  # finished runs are kept: a rerun only does the rest
                jobs.append(job)
    start, running, failed = time.perf_counter(), [], []
    while jobs or running:
        late = args.deadline is not None and time.perf_counter() - start > args.deadline
        while jobs and len(running) < args.workers and not late:
            job = jobs.pop(0)
            spec = Path(job["out"] + ".json")
            spec.parent.mkdir(parents=True, exist_ok=True)
            spec.write_text(json.dumps(job))
            log = open(out / "logs" / f"{job['variant']}_s{job['seed']}.log", "w")
            env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
            proc = subprocess.Popen([sys.executable, __file__, "--one", str(spec)], stdout=log,
                                    stderr=subprocess.STDOUT, env=env)
            running.append((proc, job, log))
            print(f"[{time.perf_counter() - start:6.0f} s] started {job['variant']} seed {job['seed']}", flush=True)
        if late and jobs:
            print(f"deadline: {len(jobs)} run(s) not started", flush=True)
            jobs = []
        time.sleep(2)
        for item in list(running):
            proc, job, log = item
            if proc.poll() is None:
                continue
            running.remove(item)
            log.close()
            ok = proc.returncode == 0 and Path(job["result"]).exists()
            print(f"[{time.perf_counter() - start:6.0f} s] {'finished' if ok else 'FAILED'} {job['variant']} seed "
                  f"{job['seed']}", flush=True)
            if not ok:
                failed.append(job)
            results = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))]
            (out / "sweep.md").write_text(table(results))
    results = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))]
    if results:
        (out / "sweep.md").write_text(table(results))
        print(table(results))
    for job in failed:
        print(f"FAILED: {job['variant']} seed {job['seed']}: see {out / 'logs'}/{job['variant']}_s{job['seed']}.log")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
