"""Which device a job computes on -- and a clear error, not a silent CPU run, when it was given GPUs it cannot use.

The pinned torch wheels are CUDA builds (``torch.version.cuda``); a cluster node whose NVIDIA driver is older than
that CUDA needs makes ``torch.cuda.is_available()`` False, and every trainer would fall back to the CPU: a 48-hour
GPU job would crawl. A job counts as given GPUs when Slurm allocated some (``SLURM_GPUS_ON_NODE``,
``SLURM_JOB_GPUS``, ``SLURM_STEP_GPUS``) or ``CUDA_VISIBLE_DEVICES`` names any.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import torch

#: oldest Linux driver per CUDA major version (NVIDIA's CUDA toolkit release notes)
MIN_DRIVER = {"11": "450.80", "12": "525.60", "13": "580.65"}


def gpus_allocated() -> str | None:
    """What says this job has GPUs (e.g. ``"SLURM_GPUS_ON_NODE=8"``), or None."""
    count = os.environ.get("SLURM_GPUS_ON_NODE", "").strip()
    if count.isdigit() and int(count) > 0:
        return f"SLURM_GPUS_ON_NODE={count}"
    for name in ("SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "CUDA_VISIBLE_DEVICES"):  # GPU indices, e.g. "0,1"
        value = os.environ.get(name, "").strip()
        if value and value not in ("-1", "NoDevFiles"):
            return f"{name}={value}"
    return None


def driver_version() -> str:
    """The NVIDIA driver version nvidia-smi reports, or why there is none."""
    if shutil.which("nvidia-smi") is None:
        return "nvidia-smi not found on this node"
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"nvidia-smi failed: {exc}"
    return done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else \
        f"nvidia-smi failed: {done.stderr.strip()[:200]}"


def compute_device() -> torch.device:
    """``cuda`` when torch sees a GPU; ``cpu`` when the job has none. A job given GPUs that torch cannot use
    raises ``RuntimeError`` naming the allocation, torch's CUDA build, the driver it needs and the node's."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    allocated = gpus_allocated()
    if allocated is None:
        return torch.device("cpu")
    cuda = torch.version.cuda
    need = MIN_DRIVER.get(str(cuda).split(".")[0], "?") if cuda else None
    build = (f"torch {torch.__version__} is a CUDA {cuda} build, which needs NVIDIA driver >= {need}"
             if cuda else f"torch {torch.__version__} is a CPU-only build")
    raise RuntimeError(
        f"this job was given GPUs ({allocated}) but torch cannot use them: {build}; this node: {driver_version()}. "
        "Install a torch build for the node's driver -- pip: `pip install torch==2.14.1 torchvision==0.29.1 "
        "--index-url https://download.pytorch.org/whl/cu126` (pick the cuXYZ your driver supports); conda: "
        "`conda install pytorch pytorch-cuda=12.6 -c pytorch -c nvidia` -- or run without GPUs on purpose "
        "(no --gres, CUDA_VISIBLE_DEVICES unset). README: 'GPU jobs and the CUDA driver'.")
