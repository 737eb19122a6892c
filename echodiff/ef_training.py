"""The EF-regressor trainer shared by every regressor of the project (reference, balanced, resampled).

Config by plain fields (``EFTrainConfig``), filled from a params YAML. Defaults are the seed's
``config_reference`` (EchoDiffusion ``ef_regression/config_reference/ef_112_32_2.yaml`` + ``model.py``):
2-s clips resampled to 32 fps (64 frames, zero-padded when short), 112 px, inputs in [0, 1], Pad(12) +
RandomCrop(112) for training, Adam lr 1e-4 without schedule, batch 16, 100 epochs, MSE on EF in %, fp16,
output bias 55.6, best-on-VAL checkpoint.

Checkpoints (``last.pt`` every epoch, ``best.pt`` on a new best VAL loss) are written atomically and hold
model, optimizer, scheduler, epoch, RNG states and history: an interrupted run resumes at the next epoch.
Runs on one device or, under ``accelerate launch``, on several (only the main process logs and writes).

    accelerate launch -m echodiff.ef_training -f params/paper/ef_reference.yaml [key=value ...]
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from accelerate import Accelerator, PartialState
from tqdm.auto import tqdm

from echodiff import phantom, plots, preempt, tracking
from echodiff.config import changed_settings, print_settings, resolve_path, settings, stage_cli
from echodiff.data import DatasetError, EchoNetDynamic, channel_stats, read_filelist
from echodiff.data.transforms import resize
from echodiff.data.variants import parse_variant, training_set
from echodiff.device import compute_device
from echodiff.io import read_checkpoint, resume_source, rotate_checkpoint
from echodiff.metrics import regression_metrics
from echodiff.models.ef_regressor import EFRegressor, build_ef_regressor, regressor_from_checkpoint
from echodiff.rng import rng_state, seed_everything, set_rng_state
from echodiff.tracking import mlflow


@dataclass
class EFTrainConfig:
    """Everything that defines an EF-regressor training run (units: frames, px, EF %)."""

    data_root: str = "data/phantom"
    frames: int = 64  # clip length
    fps: float | None = 32.0  # resample clips to this rate by linear interpolation; None: every `period` frames
    period: int = 2
    image_size: int = 112  # clips are resized to this (area averaging) after augmentation
    pad: int | None = 12  # training augmentation: zero-pad then random crop back to 112 px
    train_clips: int | str = 1  # 1: a random 2-s window per video and epoch (EchoNet's); "first": the one at frame 0
    width: int = 64  # R(2+1)D channel width; 64 = torchvision's r2plus1d_18
    pretrained: str | None = None  # "kinetics" (local torch cache), a path, or None
    normalize: str = "none"  # none: the model sees [0, 1]; train: per-channel TRAIN mean/std (EchoNet's recipe)
    bias: float | None = 55.6  # initial EF head bias (%); None: the TRAIN mean EF
    optimizer: str = "adam"  # adam | sgd
    lr: float = 1e-4
    momentum: float = 0.9  # sgd only
    weight_decay: float = 0.0
    lr_step_period: int | None = None  # StepLR(gamma 0.1) every this many epochs; None: constant lr
    batch_size: int = 16  # per process (GPU); the global batch is batch_size x processes x grad_accum
    grad_accum: int = 1  # micro-batches per optimizer step
    epochs: int = 100
    mixed_precision: str = "fp16"  # no | fp16 | bf16 (fp16 falls back to no on a CPU)
    num_workers: int = 4
    seed: int = 42
    eval_protocol: str = "single"  # single: the 2-s window at frame 0 (the seed's); all: mean over every window
    eval_batch_size: int = 16
    cache_dir: str | None = None  # decoded-video cache folder (None: decode every epoch)
    keep_checkpoints: int = 1  # replaced last.pt files kept as last.1.pt ... (a resume falls back to them)
    resume_from: str | None = None  # resume from this checkpoint file (e.g. last.2.pt) instead of last.pt
    # The training set of the rebalancing variants (echodiff.rebalance); the defaults train on real TRAIN only.
    synthetic_roots: list[str] = dataclasses.field(default_factory=list)  # EchoNet-format synthetic folders
    use_synthetic: bool = False  # pool synthetic_roots' TRAIN rows with the real ones
    real_train: bool = True  # False: synthetic only (VAL and TEST stay real)
    train_subset: int | None = None  # resample_N: N random real TRAIN videos
    per_bin: int | None = None  # balance_Kpb: the pool drawn to K items per EF bin, with replacement
    bin_width: float = 1.0  # EF bin width (%) for per_bin

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> EFTrainConfig:
        """The config from a parameter mapping: the keys it declares, type- and range-checked
        (:func:`echodiff.config.settings`); the other keys are the caller\'s."""
        return settings(cls, params, "EFTrainConfig")

    @classmethod
    def for_variant(cls, params: dict[str, Any], variant: str) -> EFTrainConfig:
        """The config of a rebalancing variant (``reference``, ``resample_N``, ``balance_Kpb``, ``all_samples``,
        ``synthetic_only``; see :func:`echodiff.data.variants.parse_variant`) on top of ``params``."""
        return cls.from_params({**params, **parse_variant(variant)})

    def dataset(self, split: str, train: bool, clips: int | str = 1, root: str | None = None) -> EchoNetDynamic:
        """The clips this config trains or evaluates on (``root``: default ``data_root``), in [0, 1]."""
        return EchoNetDynamic(
            resolve_path(root or self.data_root), split, target_type=["EF", "FileName"], length=self.frames,
            period=self.period, fps=self.fps, clips=clips, max_length=None, mean=0.0, std=255.0,
            pad=self.pad if train else None, cache=resolve_path(self.cache_dir) if self.cache_dir else None)

    def train_dataset(self) -> torch.utils.data.Dataset:
        """The training clips: real TRAIN, or the variant's pooled and resampled set (``.labels``: EF %)."""
        if not (self.use_synthetic or self.train_subset or self.per_bin or not self.real_train):
            return self.dataset("train", train=True, clips=self.train_clips)
        return training_set(self.data_root, self.synthetic_roots if self.use_synthetic else [], self.real_train,
                            lambda root: self.dataset("train", train=True, clips=self.train_clips, root=root),
                            self.train_subset, self.per_bin, self.bin_width, self.seed)


#: settings that may change when a run resumes (they do not shape the trained weights)
RESUMABLE_CHANGES = ("epochs", "num_workers", "eval_batch_size", "eval_protocol", "cache_dir", "keep_checkpoints",
                     "resume_from")


def save_checkpoint(path: Path, state: dict[str, Any], keep: int = 0) -> None:
    """``torch.save`` to a temporary name beside ``path``, then rename: a checkpoint is whole or absent. ``keep``:
    how many replaced copies stay beside it (``last.1.pt`` ...), to fall back to."""
    with rotate_checkpoint(path, keep) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path, keep: int = 0) -> dict[str, Any]:
    """A checkpoint written by :func:`save_checkpoint` (CPU tensors); with ``keep``, the newest readable of it and
    its older copies. An unreadable file is a :class:`~echodiff.io.CheckpointError` naming it and the fix."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    state, _ = read_checkpoint(path, lambda p: torch.load(p, map_location="cpu", weights_only=False), keep)
    return state


def _check_splits(cfg: EFTrainConfig) -> float:
    """Fail clearly when TRAIN or VAL is empty; return the TRAIN mean EF (%)."""
    root = resolve_path(cfg.data_root)
    filelist, _ = read_filelist(root)
    counts = filelist["Split"].value_counts()
    for split in ("TRAIN", "VAL") if cfg.real_train else ("VAL",):
        if counts.get(split, 0) == 0:
            raise DatasetError(f"{root / 'FileList.csv'}: no {split} rows; the EF regressor needs TRAIN and VAL "
                               f"videos (found {counts.to_dict()}). Fix the Split column.")
    return float(pd.to_numeric(filelist.loc[filelist.Split == "TRAIN", "EF"], errors="coerce").mean())


def train_ef_regressor(cfg: EFTrainConfig, checkpoint_dir: str | Path, resume: bool = True,
                       stop_after_epochs: int | None = None) -> tuple[EFRegressor, pd.DataFrame]:
    """Train (or resume) and return the best-on-VAL regressor and the per-epoch history.

    Logs ``train_loss``, ``val_loss`` and ``lr`` per epoch to the active MLflow run, if any (main process).
    ``stop_after_epochs`` ends this call early after that many epochs (the checkpoint allows resuming).
    """
    # Data, precision and the process group.
    checkpoint_dir = resolve_path(checkpoint_dir)
    train_mean = _check_splits(cfg)
    train_data = cfg.train_dataset()
    if hasattr(train_data, "labels"):  # a variant's pooled set: its own mean EF
        train_mean = float(train_data.labels.mean())
    precision = cfg.mixed_precision
    if compute_device().type == "cpu" and precision == "fp16":
        print("ef_training: fp16 needs a GPU; training in fp32 on the CPU")
        precision = "no"
    accelerator = Accelerator(mixed_precision=precision, cpu=not torch.cuda.is_available(),  # CPU processes: gloo
                              gradient_accumulation_steps=cfg.grad_accum)
    # The model (initial weights are part of the run: seeded first) and its optimizer.
    seed_everything(cfg.seed)
    bias = train_mean if cfg.bias is None else cfg.bias
    mean, std = (0.0,) * 3, (1.0,) * 3
    if cfg.normalize == "train":
        stats = channel_stats(resolve_path(cfg.data_root))
        mean, std = tuple(m / 255 for m in stats["mean"]), tuple(s / 255 for s in stats["std"])
    elif cfg.normalize != "none":
        raise ValueError(f"normalize must be 'none' or 'train', got {cfg.normalize!r}")
    model = build_ef_regressor(cfg.width, bias, cfg.pretrained, mean, std)
    if cfg.optimizer == "adam":
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    elif cfg.optimizer == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                    weight_decay=cfg.weight_decay)
    else:
        raise ValueError(f"optimizer must be 'adam' or 'sgd', got {cfg.optimizer!r}")
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, cfg.lr_step_period or 10**9, gamma=0.1)
    # Resume from the last whole checkpoint, refusing one made with other settings.
    start_epoch, best_val, history = 0, float("inf"), []
    last = checkpoint_dir / "last.pt"
    source, keep = resume_source(last, resolve_path(cfg.resume_from) if cfg.resume_from else None,
                                 cfg.keep_checkpoints)
    if resume and source.is_file():
        state = load_checkpoint(source, keep)
        changed = changed_settings(state.get("train_config"), dataclasses.asdict(cfg), RESUMABLE_CHANGES)
        if changed:
            raise ValueError(f"{source} was trained with other settings ({'; '.join(changed)}): resuming it would "
                             "log a model these settings did not make. Use another checkpoint_dir, pass "
                             "resume=False to start over, or restore those settings.")
        if state.get("model_config") != model.config:
            raise ValueError(f"{source}: checkpoint is for {state.get('model_config')}, this run builds "
                             f"{model.config}; use another checkpoint_dir or resume=False")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, best_val, history = state["epoch"] + 1, state["best_val_loss"], state["history"]
        set_rng_state(state["rng"])
        accelerator.print(f"ef_training: resuming from {source} at epoch {start_epoch}")
        if accelerator.is_main_process and mlflow.active_run() is not None:  # the whole curve in this run too
            for row in history:
                mlflow.log_metrics({k: row[k] for k in ("train_loss", "val_loss", "lr")}, step=row["epoch"])
    model, optimizer = accelerator.prepare(model, optimizer)
    val_data = cfg.dataset("val", train=False, clips="first")
    val_loader = accelerator.prepare(torch.utils.data.DataLoader(
        val_data, batch_size=cfg.eval_batch_size, num_workers=cfg.num_workers))
    todo = f"epochs {start_epoch}..{cfg.epochs - 1}" if start_epoch < cfg.epochs else "all epochs already done"
    accelerator.print(f"ef_training: {len(train_data)} TRAIN / {len(val_data)} VAL videos, {todo}, width "
                      f"{cfg.width}, {cfg.frames} frames at {cfg.image_size} px, device {accelerator.device}")
    # Train: one epoch per pass, then VAL loss and a whole checkpoint (main process only).
    ran = 0
    for epoch in range(start_epoch, cfg.epochs):
        if stop_after_epochs is not None and ran >= stop_after_epochs:
            break
        start = time.perf_counter()
        loader = accelerator.prepare(torch.utils.data.DataLoader(
            train_data, batch_size=cfg.batch_size, shuffle=True, num_workers=cfg.num_workers, drop_last=False,
            generator=torch.Generator().manual_seed(cfg.seed + epoch)))
        model.train()
        total, count = 0.0, 0
        for video, (ef, _) in tqdm(loader, desc=f"epoch {epoch}", leave=False,
                                   disable=not accelerator.is_main_process):
            with accelerator.accumulate(model):  # BatchNorm sees one micro-batch per process, as on N GPUs
                with accelerator.autocast():
                    loss = F.mse_loss(model(resize(video, cfg.image_size)).float(), ef.float())
                accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            preempt.check(f"{checkpoint_dir / 'last.pt'} (epoch {epoch - 1}; epoch {epoch} restarts)")
            n = accelerator.gather_for_metrics(ef).numel()
            total += float(accelerator.reduce(loss.detach(), "mean")) * n
            count += n
        lr = optimizer.param_groups[0]["lr"]  # the rate this epoch trained with
        scheduler.step()
        val_loss = _val_loss(model, val_loader, cfg, accelerator)
        row = {"epoch": epoch, "train_loss": total / count, "val_loss": val_loss, "lr": lr,
               "seconds": time.perf_counter() - start}
        history.append(row)
        improved = val_loss < best_val
        best_val = min(best_val, val_loss)
        if accelerator.is_main_process:
            plain = accelerator.unwrap_model(model)
            state = {"model": plain.state_dict(), "model_config": plain.config,
                     "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "epoch": epoch,
                     "best_val_loss": best_val, "history": history, "rng": rng_state(),
                     "train_config": dataclasses.asdict(cfg)}
            save_checkpoint(last, state, cfg.keep_checkpoints)
            if improved:
                save_checkpoint(checkpoint_dir / "best.pt", state)
            if mlflow.active_run() is not None:
                mlflow.log_metrics({k: row[k] for k in ("train_loss", "val_loss", "lr")}, step=epoch)
            print(f"epoch {epoch}: train_loss {row['train_loss']:.2f} val_loss {val_loss:.2f} "
                  f"({row['seconds']:.0f} s){' *' if improved else ''}", flush=True)
        ran += 1
    # The best-on-VAL model, read back from its checkpoint.
    accelerator.wait_for_everyone()
    best = checkpoint_dir / "best.pt"
    if best.is_file():
        final = regressor_from_checkpoint(load_checkpoint(best), str(best))
    else:  # no epoch ran in this call and none before
        final = accelerator.unwrap_model(model)
    return final.eval(), pd.DataFrame(history)


@torch.no_grad()
def _val_loss(model: torch.nn.Module, loader: Any, cfg: EFTrainConfig, accelerator: Accelerator) -> float:
    """Mean squared EF error over VAL, one clip per video (the window at frame 0)."""
    model.eval()
    errors = []
    for video, (ef, _) in loader:
        with accelerator.autocast():
            pred = model(resize(video, cfg.image_size)).float()
        errors.append(accelerator.gather_for_metrics((pred - ef.float()) ** 2))
    return float(torch.cat(errors).mean())


@torch.no_grad()
def predict(model: EFRegressor, cfg: EFTrainConfig, split: str, protocol: str | None = None,
            device: str | torch.device | None = None) -> pd.DataFrame:
    """Predictions for every video of ``split``: columns FileName, Split, EF, EF_pred (%).

    ``protocol`` (default ``cfg.eval_protocol``): ``"single"`` = the 2-s window at frame 0, as the seed
    evaluates; ``"all"`` = the mean over every window (EchoNet-Dynamic's test-time averaging).
    """
    protocol = protocol or cfg.eval_protocol
    if protocol not in ("single", "all"):
        raise ValueError(f"protocol must be 'single' or 'all', got {protocol!r}")
    device = torch.device(device or compute_device())
    model = model.to(device).eval()
    data = cfg.dataset(split, train=False, clips="first" if protocol == "single" else "all")
    rows = []
    if protocol == "single":
        loader = torch.utils.data.DataLoader(data, batch_size=cfg.eval_batch_size, num_workers=cfg.num_workers)
        for video, (ef, names) in tqdm(loader, desc=f"predict {split}", leave=False):
            pred = model(resize(video.to(device), cfg.image_size)).cpu()
            rows += [(n, float(e), float(p)) for n, e, p in zip(names, ef, pred, strict=True)]
    else:
        for i in tqdm(range(len(data)), desc=f"predict {split} (all clips)", leave=False):
            clips, (ef, name) = data[i]
            preds = [model(resize(chunk.to(device), cfg.image_size)).cpu()
                     for chunk in clips.split(cfg.eval_batch_size)]
            rows.append((name, float(ef), float(torch.cat(preds).mean())))
    out = pd.DataFrame(rows, columns=["FileName", "EF", "EF_pred"])
    out.insert(1, "Split", split.upper())
    return out


def split_metrics(predictions: pd.DataFrame, bootstrap: int = 1000) -> dict[str, float]:
    """``<split>_mae``, ``<split>_rmse``, ``<split>_r2`` and their ``_ci_low``/``_ci_high`` per split."""
    out = {}
    for split, rows in predictions.groupby("Split"):
        for name, value in regression_metrics(rows.EF.to_numpy(), rows.EF_pred.to_numpy(), bootstrap).items():
            out[f"{split.lower()}_{name}"] = value
    return out


def load_regressor(source: str | Path) -> EFRegressor:
    """A trained regressor from a checkpoint path or an MLflow run id (its ``checkpoints/best.pt``)."""
    path = Path(str(source))
    if path.suffix == ".pt" or path.exists():
        return regressor_from_checkpoint(load_checkpoint(path), str(path)).eval()
    local = tracking.fetch_artifact(str(source), "checkpoints/best.pt")
    return regressor_from_checkpoint(load_checkpoint(local), f"run {source}").eval()


@dataclass
class EFStage:
    """What stage 01 returns (:func:`run_stage`); the main process also logged it to the active MLflow run."""

    model: EFRegressor  # best on VAL
    history: pd.DataFrame  # one row per epoch
    predictions: pd.DataFrame  # VAL and TEST: FileName, Split, EF, EF_pred
    metrics: dict[str, float]  # {val,test}_{mae,rmse,r2} with bootstrap CIs, train_seconds
    figures: dict[str, Any]  # ef_scatter, bland_altman


def run_stage(params: dict[str, Any]) -> EFStage | None:
    """Stage 01 with its parameters: train (or resume) the regressor in ``checkpoint_dir``, score VAL and TEST
    with bootstrap intervals, and log metrics, predictions, history, figures, ``best.pt`` and the model (registered
    as ``registered_name`` unless None) to the active MLflow run. Notebook 01 and ``python -m
    echodiff.ef_training`` both call this; under ``accelerate launch`` the other processes only train (None)."""
    cfg = EFTrainConfig.from_params(params)
    checkpoint_dir = resolve_path(params.get("checkpoint_dir", "outputs/ef_regression"))
    start = time.perf_counter()
    model, history = train_ef_regressor(cfg, checkpoint_dir, resume=bool(params.get("resume", True)))
    if not PartialState().is_main_process:
        return None
    predictions = pd.concat([predict(model, cfg, split) for split in ("val", "test")], ignore_index=True)
    metrics = {**split_metrics(predictions, int(params.get("bootstrap", 1000))),
               "train_seconds": time.perf_counter() - start}
    figures = {"ef_scatter": plots.ef_scatter(predictions), "bland_altman": plots.bland_altman(predictions)}
    mlflow.log_metrics(metrics)
    tracking.log_table(predictions, "predictions.csv")
    tracking.log_table(history, "history.csv")
    for name, figure in figures.items():
        tracking.log_figure(figure, f"{name}.png")
    tracking.log_file(checkpoint_dir / "best.pt", "checkpoints")
    example = np.zeros((1, 3, cfg.frames, cfg.image_size, cfg.image_size), np.float32)  # (B, C, T, H, W) in [0, 1]
    tracking.log_torch_model(model, example, "model", params.get("registered_name"))
    return EFStage(model, history, predictions, metrics, figures)


def main(argv: list[str] | None = None) -> int:
    """Train, evaluate and log one regressor from a params file (the CLI for ``accelerate launch``): what
    notebook 01 does, in one MLflow run."""
    args, params = stage_cli("ef_regression", "python -m echodiff.ef_training", __doc__.split("\n\n")[0], argv)
    cfg = EFTrainConfig.from_params(params)
    if args.dry_run:
        print_settings({"train": cfg, "checkpoint_dir": params.get("checkpoint_dir", "outputs/ef_regression"),
                        "run": {k: v for k, v in params.items() if k not in cfg.__dataclass_fields__}})
        return 0
    phantom.prepare(params)
    Accelerator(cpu=not torch.cuda.is_available())  # the process group, before anything asks who is main
    if not PartialState().is_main_process:
        run_stage(params)
        return 0
    with tracking.stage_run(params.get("run_name", "ef_regression"), params, run_id=params.get("mlflow_run_id"),
                            experiment=params.get("experiment", tracking.DEFAULT_EXPERIMENT)) as run:
        result = run_stage(params)
    print(f"ef_training: TEST MAE {result.metrics['test_mae']:.2f}, R2 {result.metrics['test_r2']:.3f}; "
          f"MLflow run {run.info.run_id}")
    return 0


if __name__ == "__main__":
    preempt.run_main(main, "ef_training")
