"""Loader throughput: clips/s decoding AVIs per item (baseline) versus the decoded-video cache, same run.

    .venv/bin/python benchmarks/data_throughput.py [--root data/phantom] [--n 64] [--epochs 2]

Writes a phantom of ``--n`` videos if ``--root`` has none. Prints clips/s for each path and the ratio.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from echodiff import phantom
from echodiff.config import resolve_path
from echodiff.data import EchoNetDynamic


def clips_per_second(data: EchoNetDynamic, epochs: int) -> float:
    """Clips/s over ``epochs`` passes of ``data`` in the main process."""
    start = time.perf_counter()
    for _ in range(epochs):
        for i in range(len(data)):
            data[i]
    return epochs * len(data) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="data/bench-phantom")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--length", type=int, default=32)
    parser.add_argument("--period", type=int, default=2)
    args = parser.parse_args()
    root = resolve_path(args.root)
    if not (root / "FileList.csv").is_file():
        phantom.write_phantom(root, n=args.n, seed=0)
    torch.manual_seed(0)
    kwargs = dict(split="all", length=args.length, period=args.period)
    baseline = clips_per_second(EchoNetDynamic(root, **kwargs), args.epochs)
    with tempfile.TemporaryDirectory() as cache:
        cached_data = EchoNetDynamic(root, cache=Path(cache), **kwargs)
        clips_per_second(cached_data, 1)  # fill the cache (first epoch decodes, as the baseline does)
        cached = clips_per_second(cached_data, args.epochs)
    print(f"clips of {args.length} frames every {args.period}, {len(cached_data)} videos, {args.epochs} epochs")
    print(f"decode per item (baseline): {baseline:8.1f} clips/s")
    print(f"decoded-video cache:        {cached:8.1f} clips/s")
    print(f"ratio cache / baseline:     {cached / baseline:8.2f}x")


if __name__ == "__main__":
    main()
