"""Training sets of the rebalancing variants: which real and synthetic TRAIN videos a regressor variant trains on.

``reference`` (real TRAIN), ``resample_N`` (N random real TRAIN videos), ``balance_Kpb`` (real + synthetic pooled in
EF bins, K drawn per bin with replacement), ``all_samples`` (real + every synthetic video), ``synthetic_only``.
Used by the EF trainer (:class:`echodiff.ef_training.EFTrainConfig`) and the rebalancing study.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from echodiff.config import resolve_path
from echodiff.data.echonet import DatasetError

VARIANT_PATTERN = re.compile(r"^(reference|all_samples|synthetic_only|resample_(\d+)|balance_(\d+)pb)$")


def bin_of(ef: np.ndarray | pd.Series, bin_width: float, origin: float = 0.0) -> np.ndarray:
    """Lower edge of the bin each EF (%) falls in (bins of ``bin_width`` aligned on ``origin``)."""
    ef = np.asarray(ef, dtype=float)
    return origin + np.floor((ef - origin) / bin_width + 1e-9) * bin_width


def parse_variant(name: str) -> dict[str, Any]:
    """``reference`` | ``resample_N`` | ``balance_Kpb`` | ``all_samples`` | ``synthetic_only`` -> the
    :class:`~echodiff.ef_training.EFTrainConfig` fields that make it (``train_subset``, ``per_bin``,
    ``use_synthetic``, ``real_train``)."""
    match = VARIANT_PATTERN.match(name)
    if not match:
        raise ValueError(f"unknown regressor variant {name!r}: use reference, resample_N, balance_Kpb, "
                         "all_samples or synthetic_only")
    if match.group(2):
        return {"train_subset": int(match.group(2))}
    if match.group(3):
        return {"per_bin": int(match.group(3)), "use_synthetic": True}
    return {"all_samples": {"use_synthetic": True}, "synthetic_only": {"use_synthetic": True, "real_train": False},
            "reference": {}}[name]


def training_indices(labels: np.ndarray, is_real: np.ndarray, train_subset: int | None = None,
                     per_bin: int | None = None, bin_width: float = 1.0, seed: int = 0) -> np.ndarray:
    """Indices into a pooled training set (``labels`` EF %, ``is_real`` mask) for one variant.

    ``train_subset``: that many real videos, drawn without replacement. ``per_bin``: every occupied bin of width
    ``bin_width`` drawn to exactly ``per_bin`` items, with replacement (the seed's ``balance_*pb``). Neither:
    everything.
    """
    rng = np.random.default_rng(seed)
    everything = np.arange(len(labels))
    if train_subset is not None:
        real = everything[is_real]
        if train_subset > len(real):
            raise ValueError(f"resample_{train_subset}: only {len(real)} real TRAIN videos")
        return np.sort(rng.choice(real, size=train_subset, replace=False))
    if per_bin is not None:
        bins = bin_of(labels, bin_width)
        return np.concatenate([rng.choice(everything[bins == b], size=per_bin, replace=True)
                               for b in np.unique(bins)])
    return everything


def training_set(real_root: str | os.PathLike, synthetic_roots: Sequence[str | os.PathLike], real_train: bool,
                 make: Any, train_subset: int | None = None, per_bin: int | None = None, bin_width: float = 1.0,
                 seed: int = 0) -> torch.utils.data.Dataset:
    """The pooled, resampled TRAIN set of a variant. ``make(root)`` builds one folder's TRAIN dataset."""
    parts, labels, is_real = [], [], []
    roots = ([real_root] if real_train else []) + list(synthetic_roots)
    if not roots:
        raise ValueError("no training data: real_train is False and no synthetic_roots are given")
    for root in roots:
        dataset = make(root)
        parts.append(dataset)
        labels.append(pd.to_numeric(dataset.filelist.EF).to_numpy(float))
        is_real.append(np.full(len(dataset), root == real_root and real_train))
        if len(dataset) == 0:
            raise DatasetError(f"{resolve_path(root) / 'FileList.csv'}: no TRAIN videos")
    indices = training_indices(np.concatenate(labels), np.concatenate(is_real), train_subset, per_bin, bin_width,
                               seed)
    pooled = torch.utils.data.ConcatDataset(parts)
    subset = torch.utils.data.Subset(pooled, indices.tolist())
    subset.labels = np.concatenate(labels)[indices]
    return subset
