"""The data path at EchoNet-Dynamic's size: index build time, memory, decoded-cache size and clips/s.

    .venv/bin/python benchmarks/data_scale.py --root data/phantom-10030 [--n 10030] [--sample 256] [--workers 2]

Writes a phantom of ``--n`` videos at ``--root`` first if it has none (EchoNet-Dynamic has 10,030; resumable: the
videos already written are kept). Then, on that folder: the time and memory to build the EF loader's index over
every split (FileList.csv, VolumeTracings.csv, the folder listing) and the diffusion loader's; the decoded-video
cache's size per video, measured on ``--sample`` videos and extrapolated from FileList.csv's frame counts to the
whole set, beside the disk's free space; clips/s of both loaders straight from the AVIs (the baseline) and from the
cache, in the main process and through a DataLoader with ``--workers`` processes; the time a loader with a cache
takes to check that the videos not cached yet fit on the cache's disk (``VideoCache.check_space``).
Prints a Markdown table and writes it with the raw numbers as JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from echodiff import phantom
from echodiff.config import resolve_path
from echodiff.data import CacheSpaceError, DiffusionClips, EchoNetDynamic, VideoCache


def rss_mib() -> float:
    """Resident memory of this process now (MiB)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def timed(make):
    """(result, seconds, MiB of resident memory added) of ``make()``."""
    before, start = rss_mib(), time.perf_counter()
    result = make()
    return result, time.perf_counter() - start, rss_mib() - before


def clips_per_second(data: torch.utils.data.Dataset, indices: list[int], workers: int = 0) -> float:
    """Items of ``data`` at ``indices`` per second, in this process (``workers`` 0) or through a DataLoader."""
    subset = torch.utils.data.Subset(data, indices)
    start = time.perf_counter()
    if workers == 0:
        for i in range(len(subset)):
            subset[i]
    else:
        for _ in torch.utils.data.DataLoader(subset, batch_size=8, num_workers=workers):
            pass
    return len(indices) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="data/phantom-10030")
    parser.add_argument("--n", type=int, default=10030, help="videos of the phantom written when --root has none")
    parser.add_argument("--sample", type=int, default=256, help="videos decoded for the per-video figures")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default="outputs/benchmarks/data_scale.json")
    args = parser.parse_args()
    root = resolve_path(args.root)
    report: dict[str, float | str] = {"root": str(root)}
    if not (root / "FileList.csv").is_file():
        _, report["phantom_write_s"], _ = timed(lambda: phantom.write_phantom(root, n=args.n, seed=0))
    filelist = pd.read_csv(root / "FileList.csv")
    report["videos"] = len(filelist)
    report["avi_gib"] = sum(p.stat().st_size for p in (root / "Videos").iterdir()) / 2**30

    ef_kwargs = dict(length=32, period=2, max_length=None)  # the EF reference's clips (params/paper/ef_reference)
    diff_kwargs = dict(frames=64, fps=32.0)  # the paper cascades' 2-s clips at 32 fps
    splits, report["ef_index_s"], report["ef_index_mib"] = timed(
        lambda: {s: EchoNetDynamic(root, s, **ef_kwargs) for s in ("train", "val", "test")})
    _, report["ef_train_index_s"], _ = timed(lambda: EchoNetDynamic(root, "train", **ef_kwargs))
    diffusion, report["diffusion_index_s"], report["diffusion_index_mib"] = timed(
        lambda: DiffusionClips(root, "train", **diff_kwargs))
    train = splits["train"]

    rng = np.random.default_rng(0)
    sample = sorted(rng.choice(len(train), size=min(args.sample, len(train)), replace=False).tolist())
    frames = filelist.NumberOfFrames.to_numpy(float) * filelist.FrameHeight * filelist.FrameWidth * 3
    with tempfile.TemporaryDirectory(dir=root.parent) as folder:
        cache = VideoCache(folder)
        start = time.perf_counter()
        try:  # a disk too small for the whole cache is refused here, at once (then the sample is cached anyway)
            EchoNetDynamic(root, "train", cache=cache, **ef_kwargs)
            report["cache_check"] = "fits"
        except CacheSpaceError as error:
            report["cache_check"] = f"refused: {error}"
        report["ef_train_index_with_cache_check_s"] = time.perf_counter() - start
        names = [train.filelist.FileName.iloc[i] for i in sample]
        _, report["cache_fill_s_per_video"], _ = timed(
            lambda: [cache.load(root / "Videos" / f"{n}.avi") for n in names])
        report["cache_fill_s_per_video"] /= len(names)
        stored = sum(p.stat().st_size for p in Path(folder).glob("*.npy"))
        sampled_bytes = float(frames[filelist.FileName.isin(names).to_numpy()].sum())
        report["cache_bytes_per_decoded_byte"] = stored / sampled_bytes
        report["cache_gib_whole_set"] = stored / sampled_bytes * frames.sum() / 2**30
        report["disk_free_gib"] = shutil.disk_usage(folder).free / 2**30
        for name, data in (("ef", train), ("diffusion", diffusion)):
            data.cache = None
            torch.manual_seed(0)
            report[f"{name}_avi_clips_s"] = clips_per_second(data, sample)
            report[f"{name}_avi_clips_s_{args.workers}workers"] = clips_per_second(data, sample, args.workers)
            data.cache = cache
            clips_per_second(data, sample[:1])
            report[f"{name}_cache_clips_s"] = clips_per_second(data, sample)
            report[f"{name}_cache_clips_s_{args.workers}workers"] = clips_per_second(data, sample, args.workers)
    report["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    lines = ["| measure | value |", "|---|---|"] + [
        f"| {k} | {v:.3g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in report.items()]
    print("\n".join(lines))
    out = resolve_path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
