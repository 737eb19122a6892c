"""Loader throughput: clips/s decoding AVIs per item (baseline) versus the decoded-video cache, same run.

    .venv/bin/python benchmarks/data_throughput.py [--root data/phantom] [--n 64] [--epochs 2]

Writes a phantom of ``--n`` videos if ``--root`` has none. Prints clips/s for each path and the ratio, then times
one EF-regressor training epoch (the demo's sizes: width 16, 16 frames at 8 fps, 56 px, batch 8, ``--workers``
loader processes) on the cached data and reports the share of step time spent waiting for the next batch.
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


def training_epoch_wait_share(root: Path, cache: Path, workers: int) -> tuple[float, float]:
    """(seconds per step, share of it spent waiting on the loader) for one EF-regressor training epoch."""
    import torch.nn.functional as F

    from echodiff.data.transforms import resize
    from echodiff.models.ef_regressor import build_ef_regressor

    data = EchoNetDynamic(root, "train", length=16, fps=8.0, clips=1, max_length=None, mean=0.0, std=255.0, pad=12,
                          cache=cache)
    loader = torch.utils.data.DataLoader(data, batch_size=8, shuffle=True, num_workers=workers, drop_last=True,
                                         persistent_workers=False)
    model = build_ef_regressor(16, 55.0, None, (0.0,) * 3, (1.0,) * 3)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    wait = total = 0.0
    batches = iter(loader)
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        try:
            video, ef = next(batches)
        except StopIteration:
            break
        wait += time.perf_counter() - t0
        loss = F.mse_loss(model(resize(video, 56)), ef.float())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    total = time.perf_counter() - start
    return total / len(loader), wait / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="data/bench-phantom")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--length", type=int, default=32)
    parser.add_argument("--period", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1)
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
        step, share = training_epoch_wait_share(root, Path(cache), args.workers)
    print(f"clips of {args.length} frames every {args.period}, {len(cached_data)} videos, {args.epochs} epochs")
    print(f"decode per item (baseline): {baseline:8.1f} clips/s")
    print(f"decoded-video cache:        {cached:8.1f} clips/s")
    print(f"ratio cache / baseline:     {cached / baseline:8.2f}x")
    print(f"EF-regressor training epoch on the cache ({args.workers} loader worker(s)): {step:.2f} s/step, "
          f"{100 * share:.1f}% of it waiting for data ({'not ' if share < 0.1 else ''}input-bound)")


if __name__ == "__main__":
    main()
