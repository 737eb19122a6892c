"""Pretrained weights, read only from local files: nothing is ever downloaded.

Every file lives in torch's cache folder, ``$TORCH_HOME/hub/checkpoints/`` (default
``~/.cache/torch/hub/checkpoints/``), where torchvision itself would put it, unless a path is given.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch


class MissingWeightsError(FileNotFoundError):
    """Weights a computation needs are not on this machine; the message names the file and where to put it."""


def cache_path(filename: str) -> Path:
    """Where ``filename`` is expected: ``$TORCH_HOME/hub/checkpoints/<filename>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def require(filename: str, url: str, purpose: str, path: str | os.PathLike | None = None) -> Path:
    """The weights file for ``purpose``: ``path`` if given, else the cache copy of ``filename``.

    Raises :class:`MissingWeightsError` telling where to download it from and where to copy it.
    """
    target = Path(path) if path else cache_path(filename)
    if not target.is_file():
        raise MissingWeightsError(
            f"{purpose} needs {filename}, not found at {target}. Download {url} on a machine with internet "
            f"access and copy it to {cache_path(filename)} (or set TORCH_HOME, or pass its path).")
    return target
