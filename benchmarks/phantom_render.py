"""Phantom rendering: frame by frame (``render_frame`` for every frame, the baseline) versus ``render_video``, which
draws each phase's anatomy once and reuses it on the frames of c's plateaus; same run, same hearts.

    .venv/bin/python benchmarks/phantom_render.py [--n 40] [--seed 0]

Prints both times, the ratio, and whether every frame is bit-identical (it must be: the phantom's videos, and so
every figure computed from them, do not change).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from echodiff import phantom


def frame_by_frame(heart: phantom.Heart) -> np.ndarray:
    """The whole video ``(T, H, W)`` rendered one frame at a time, anatomy included."""
    rng = np.random.default_rng(heart.speckle_seed)
    static = phantom._speckle(rng)
    return np.stack([phantom.render_frame(heart, f, static, rng) for f in range(heart.n_frames)])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=40, help="hearts")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    hearts = phantom.hearts(args.n, args.seed)[0]
    start = time.perf_counter()
    baseline = [frame_by_frame(h) for h in hearts]
    base_s = time.perf_counter() - start
    start = time.perf_counter()
    shared = [phantom.render_video(h)[0] for h in hearts]
    shared_s = time.perf_counter() - start
    identical = all(np.array_equal(a, b) for a, b in zip(baseline, shared, strict=True))
    frames = sum(h.n_frames for h in hearts)
    print(f"{args.n} hearts, {frames} frames: frame by frame {base_s:.1f} s, render_video {shared_s:.1f} s, "
          f"ratio {base_s / shared_s:.2f}x; bit-identical: {identical}")
    return 0 if identical else 1


if __name__ == "__main__":
    raise SystemExit(main())
