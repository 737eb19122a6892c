"""Capture and restore every RNG a training run draws from, as tensors and plain Python values, so that a
checkpoint holding them loads with ``torch.load(weights_only=True)``."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def rng_state() -> dict[str, Any]:
    """The torch (CPU and CUDA), NumPy and Python RNG states."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore states captured by :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def seed_everything(seed: int) -> None:
    """Seed torch, NumPy and Python's RNGs."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def derived_seed(*parts: int, bits: int = 32) -> int:
    """A seed for the stream named by the integers ``parts`` (NumPy's ``SeedSequence``: distinct tuples give
    independent streams), ``bits`` wide: 32 (one uint32 word) or 63 (one uint64 word shifted right by one)."""
    if bits not in (32, 63):
        raise ValueError(f"bits must be 32 or 63, got {bits!r}")
    sequence = np.random.SeedSequence([int(p) for p in parts])
    if bits == 32:
        return int(sequence.generate_state(1)[0])
    return int(sequence.generate_state(1, np.uint64)[0] >> 1)
