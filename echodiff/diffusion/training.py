"""Train one stage of the cascade at a time, wrapping imagen-pytorch's ``ImagenTrainer`` (accelerate, mixed
precision, multi-GPU, gradient accumulation over micro-batches, EMA).

Every ``checkpoint_every`` steps ``checkpoint_dir/trainer.pt`` is written atomically: model, EMA, optimizers,
grad scalers, per-stage step counts and the RNG states. Data order is a function of (seed, epoch), so an
interrupted run resumes at the exact batch where it stopped. The stages of one cascade share a checkpoint
folder: training stage 2 starts from stage 1's weights, and :func:`export_model` writes the cascade as
``config.yaml`` + ``merged.pt`` (EchoDiffusion's released layout).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from echodiff import phantom, plots, preempt, tracking
from echodiff.config import changed_settings, load_params, print_settings, resolve_path, settings, stage_cli
from echodiff.data import DatasetError, DiffusionClips
from echodiff.data.transforms import resize
from echodiff.device import compute_device
from echodiff.diffusion.imagen import (
    CascadeModel,
    cascade_clips,
    cascade_config,
    condition_embedding,
    import_imagen,
    load_model_folder,
    save_model_folder,
    training_target,
)
from echodiff.diffusion.sampling import sample
from echodiff.io import CheckpointMismatch, read_checkpoint, resume_source, rotate_checkpoint
from echodiff.rng import rng_state, seed_everything, set_rng_state

#: learning-rate schedules of one stage's training (:func:`scheduled_lr`)
LR_SCHEDULES = ("constant", "cosine")


@dataclass
class DiffusionTrainConfig:
    """One stage's training run (batch sizes in videos, steps in optimizer updates)."""

    model_config: str = "params/cascades/demo.yaml"  # the cascade's architecture config file
    stage: int = 1  # 1-based, as the seed's --stage
    data_root: str = "data/phantom"
    batch_size: int = 4  # per process (the seed's --bs)
    max_batch_size: int | None = None  # micro-batch for gradient accumulation (None: the whole batch)
    ignore_time: float = 0.25  # the seed's --ignore_time: every round(1/p)-th step trains without temporal layers
    window_frames: int | None = None  # train on random windows of this many consecutive frames (None: whole clips)
    short_videos: str = "pad"  # a video shorter than one clip: zero-padded (EchoNet's rule) or "drop"ped
    lr: float = 5e-4
    lr_schedule: str = "constant"  # constant | cosine (annealed from lr at step 0 to 0 at `steps`)
    steps: int = 1000  # total optimizer steps for this stage
    checkpoint_every: int = 100
    val_every: int = 100
    val_batches: int = 2
    precision: str = "fp16"  # no | fp16 | bf16 (falls back to no on a CPU)
    ema_beta: float = 0.9999  # EMA of the U-Net weights (imagen-pytorch's defaults; short CPU demos need less)
    ema_update_after_step: int = 100
    ema_update_every: int = 10
    num_workers: int = 0
    seed: int = 0
    cache_dir: str | None = None
    keep_checkpoints: int = 1  # replaced trainer.pt files kept as trainer.1.pt ... (a resume falls back to them)
    resume_from: str | None = None  # resume from this checkpoint file (e.g. trainer.2.pt) instead of trainer.pt

    def __post_init__(self) -> None:
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> DiffusionTrainConfig:
        """The config from a parameter mapping: the keys it declares, type- and range-checked
        (:func:`echodiff.config.settings`); the other keys are the caller\'s."""
        return settings(cls, params, "DiffusionTrainConfig")


#: settings that may change when a stage resumes (they do not shape the trained weights; ``model_config`` is the
#: file's path: its content, the cascade, is compared with the checkpoint's own copy instead, so a moved or renamed
#: file resumes and a changed architecture does not)
RESUMABLE_CHANGES = ("steps", "checkpoint_every", "val_every", "val_batches", "num_workers", "cache_dir",
                     "keep_checkpoints", "resume_from", "model_config")
#: settings added after checkpoints were first written: a checkpoint without one was trained with this value
LATER_SETTINGS = {"lr_schedule": "constant"}


def scheduled_lr(cfg: DiffusionTrainConfig, step: int) -> float:
    """Learning rate of the optimizer update that follows ``step`` updates (0-based): ``cfg.lr`` throughout
    (``constant``), or half a cosine from ``cfg.lr`` at step 0 to 0 at ``cfg.steps`` (``cosine``). A function of
    the step alone, so a resumed or multi-process run follows the same curve."""
    if cfg.lr_schedule == "constant":
        return cfg.lr
    return 0.5 * cfg.lr * (1.0 + math.cos(math.pi * min(step, cfg.steps) / cfg.steps))


def resumable_changes(cfg: DiffusionTrainConfig) -> tuple[str, ...]:
    """:data:`RESUMABLE_CHANGES` for this run: a cosine schedule's length is ``steps``, so there it is fixed."""
    return tuple(k for k in RESUMABLE_CHANGES if not (k == "steps" and cfg.lr_schedule == "cosine"))


class _Conditioned(torch.utils.data.Dataset):
    """Items ``(anatomy, ef, systole, clip)`` of a :class:`DiffusionClips`: its own, with the video's ED -> ES interval
    (s) when the cascade ``config`` is conditioned on it (``condition_on_systole``), else NaN (never read). Every
    interval is read up front, so a video without one stops the run before its first step, with every such video
    named."""

    def __init__(self, data: DiffusionClips, config: dict[str, Any]):
        self.data = data
        self.seconds = [math.nan] * len(data)
        if config.get("condition_on_systole"):
            errors = []
            for i in range(len(data)):
                try:
                    self.seconds[i] = data.systole_seconds(i)
                except DatasetError as exc:
                    errors.append(str(exc))
            if errors:
                raise DatasetError(f"{len(errors)} of {len(data)} videos of split {data.split} have no ED -> ES "
                                   f"interval for condition_on_systole: " + "; ".join(errors[:3]))

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, float, torch.Tensor]:
        anatomy, ef, clip = self.data[index]
        return anatomy, ef, self.seconds[index], clip


def _condition(config: dict[str, Any], ef: torch.Tensor, systole: torch.Tensor) -> torch.Tensor:
    """A training batch's condition tokens (:func:`condition_embedding`) from :class:`_Conditioned` items."""
    return condition_embedding(config, ef, systole if config.get("condition_on_systole") else None)


class _EpochOrder(torch.utils.data.Sampler):
    """Indices of epoch ``epoch`` in a (seed, epoch)-determined order, starting after ``skip`` of them.

    With ``processes`` > 1, this process's share: of every global batch (``batch`` x ``processes`` consecutive
    indices of the order) the ``rank``-th slice of ``batch``, so N processes see what one process would see with
    an N-times larger batch.
    """

    def __init__(self, n: int, seed: int, epoch: int, skip: int = 0, batch: int = 1, rank: int = 0,
                 processes: int = 1):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch)).tolist()[skip:]
        per_step = batch * processes
        order = order[:len(order) // per_step * per_step]
        self.order = [i for g in range(0, len(order), per_step) for i in order[g + rank * batch:g + (rank + 1) * batch]]

    def __iter__(self):
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)


def load_cascade_config(path: str | Path) -> dict[str, Any]:
    """A cascade config file (``params/cascades/*.yaml``), checked by :func:`cascade_config`."""
    return cascade_config(load_params(path), resolve_path(path))


def make_trainer(config: dict[str, Any], cfg: DiffusionTrainConfig) -> Any:
    """An ``ImagenTrainer`` over a fresh cascade, training only stage ``cfg.stage``."""
    imagen_pytorch = import_imagen()
    cascade = CascadeModel(config, seed=cfg.seed)  # each stage's initial weights from its own seed
    if not 1 <= cfg.stage <= cascade.num_stages:
        raise ValueError(f"stage {cfg.stage} does not exist: {cfg.model_config} has {cascade.num_stages} stage(s)")
    precision = cfg.precision if compute_device().type == "cuda" else "no"
    trainer = imagen_pytorch.ImagenTrainer(
        imagen=cascade.imagen, lr=cfg.lr, use_ema=True, only_train_unet_number=cfg.stage,
        precision=None if precision == "no" else precision, fp16=False, split_batches=False, verbose=False,
        ema_beta=cfg.ema_beta, ema_update_after_step=cfg.ema_update_after_step,
        ema_update_every=cfg.ema_update_every,
        accelerate_cpu=not torch.cuda.is_available())  # several CPU processes (torchrun, accelerate) use gloo
    # Under fp16 ImagenTrainer casts its inputs to half, which ElucidatedImagen refuses ("images tensor needs to be
    # floats but torch.float16 dtype found", first seen on an H100): inputs stay fp32 and accelerate's autocast
    # runs the network in fp16.
    trainer.cast_half_at_training = False
    return trainer


def train_stage(cfg: DiffusionTrainConfig, checkpoint_dir: str | Path, resume: bool = True,
                stop_after_steps: int | None = None) -> tuple[Any, pd.DataFrame]:
    """Train stage ``cfg.stage`` up to ``cfg.steps``; return the ``ImagenTrainer`` and the logged history.

    Logs ``train_loss`` (per step), ``val_loss`` (fixed VAL batches and noise, every ``val_every``) and ``lr`` to
    the active MLflow run, if any, in one request per checkpoint. ``stop_after_steps`` ends this call early (to
    resume later).
    """
    # The cascade (initial weights are part of the run: seeded first) and its trainer.
    checkpoint_dir = resolve_path(checkpoint_dir)
    config = load_cascade_config(cfg.model_config)
    seed_everything(cfg.seed)  # the run's noise and data draws; the initial weights: make_trainer, per stage
    trainer = make_trainer(config, cfg)
    say = trainer.accelerator.print  # the main process's stdout (ImagenTrainer.print is silent: verbose=False)
    size = int(config["imagen"]["image_sizes"][-1])  # anatomy frames as sampling sees them (see sample())
    path = checkpoint_dir / "trainer.pt"
    # Resume from the last whole checkpoint, refusing one made with another cascade or other settings.
    history: list[dict[str, float]] = []
    stage_settings: dict[int, dict[str, Any]] = {}  # per stage: the settings it was trained with
    source, keep = resume_source(path, resolve_path(cfg.resume_from) if cfg.resume_from else None,
                                 cfg.keep_checkpoints)
    if resume and source.is_file():
        def load(file: Path) -> dict[str, Any]:  # the cascade config first: other shapes would fail opaquely
            if torch.load(file, map_location="cpu", weights_only=False, mmap=True).get("config") != config:
                raise CheckpointMismatch(f"{file} was trained with another cascade config than {cfg.model_config}; use "
                                         "another checkpoint_dir, or resume=False to start over")
            return trainer.load(str(file))

        extra, _ = read_checkpoint(source, load, keep)
        history = list(extra.get("history", []))
        saved = extra.get("settings", {}).get(cfg.stage)
        if saved is not None and "model" in saved:  # written before `model` was renamed `model_config`
            saved = {("model_config" if k == "model" else k): v for k, v in saved.items()}
        if saved is not None:
            saved = {**LATER_SETTINGS, **saved}
        changed = changed_settings(saved, dataclasses.asdict(cfg), resumable_changes(cfg))
        if changed:
            raise ValueError(f"{source}: stage {cfg.stage} was trained with other settings ({'; '.join(changed)}); "
                             "use another checkpoint_dir, pass resume=False to start over, or restore them")
        stage_settings = dict(extra.get("settings", {}))
        set_rng_state(extra["rng"])
        say(f"diffusion: resuming stage {cfg.stage} from {source} at step {int(trainer.steps[cfg.stage - 1])}")
    if trainer.accelerator.num_processes > 1 and trainer.accelerator.process_index > 0:
        # same initial weights everywhere (above), but each process draws its own noise levels and noise
        torch.manual_seed(cfg.seed + 1_000_003 * trainer.accelerator.process_index + int(trainer.steps[cfg.stage - 1]))
    # Data: TRAIN clips in a (seed, epoch) order that a resume continues exactly; fixed VAL batches.
    cache = resolve_path(cfg.cache_dir) if cfg.cache_dir else None
    data = cascade_clips(config, resolve_path(cfg.data_root), "train", cache, cfg.short_videos)
    val = cascade_clips(config, resolve_path(cfg.data_root), "val", cache, cfg.short_videos)
    if data.dropped_short:
        say(f"diffusion: {len(data.dropped_short)} of {len(data) + len(data.dropped_short)} TRAIN videos "
            f"are too short for one clip from its start and left out (short_videos: drop)")
    items, val_items = _Conditioned(data, config), _Conditioned(val, config)  # + ED -> ES intervals, when used
    stage_settings[cfg.stage] = dataclasses.asdict(cfg)
    every = round(1 / cfg.ignore_time) if cfg.ignore_time > 0 else 0
    rank, processes = trainer.accelerator.process_index, trainer.accelerator.num_processes
    if len(data) < cfg.batch_size * processes:  # drop_last would give no batch at all, and the loop would spin
        raise DatasetError(f"{resolve_path(cfg.data_root) / 'FileList.csv'}: stage {cfg.stage} needs at least "
                           f"batch_size x processes = {cfg.batch_size * processes} TRAIN clips, but only {len(data)} "
                           f"are usable ({len(data.dropped_short)} too short and left out); use a smaller batch_size "
                           "or more TRAIN videos")
    per_epoch = len(data) // (cfg.batch_size * processes)  # optimizer steps per epoch
    note = check_window(cfg, config)
    if note:
        say(note)
    step = int(trainer.steps[cfg.stage - 1])
    say(f"diffusion: stage {cfg.stage}/{len(trainer.imagen.unets)}, steps {step}..{cfg.steps - 1}, "
        f"{len(data)} TRAIN videos, batch {cfg.batch_size} x {processes} process(es), device {trainer.device}")
    # Train: one optimizer step per batch; metrics logged and a whole checkpoint written every checkpoint_every.
    ran, start, pending, saved_at = 0, time.perf_counter(), [], step  # pending: history rows not yet logged
    bar = tqdm(total=cfg.steps, initial=step, desc=f"stage {cfg.stage}", unit="step", disable=not trainer.is_main,
               mininterval=5.0)
    while step < cfg.steps and (stop_after_steps is None or ran < stop_after_steps):
        epoch, offset = divmod(step, per_epoch)
        loader = torch.utils.data.DataLoader(
            items, batch_size=cfg.batch_size, drop_last=True, num_workers=cfg.num_workers,
            sampler=_EpochOrder(len(data), cfg.seed, epoch, offset * cfg.batch_size * processes, cfg.batch_size,
                                rank, processes),
            generator=torch.Generator().manual_seed(cfg.seed + epoch))  # not the global RNG: resume stays exact
        for anatomy, ef, systole, clip in loader:
            clip = window(clip, cfg.window_frames)
            for group in getattr(trainer, f"optim{cfg.stage - 1}").param_groups:
                group["lr"] = scheduled_lr(cfg, step)
            loss = trainer(training_target(clip, anatomy, config), text_embeds=_condition(config, ef, systole),
                           cond_images=resize(anatomy, size), unet_number=cfg.stage,
                           max_batch_size=cfg.max_batch_size, ignore_time=bool(every) and step % every == every - 1)
            trainer.update(unet_number=cfg.stage)
            step += 1
            ran += 1
            row = {"step": step, "train_loss": float(loss), "lr": trainer.get_lr(cfg.stage)}
            if step % cfg.val_every == 0 or step == cfg.steps:
                row["val_loss"] = validation_loss(trainer, val_items, cfg, config)
            history.append(row)
            pending.append(row)
            bar.update(1)
            bar.set_postfix(loss=f"{row['train_loss']:.3f}", refresh=False)
            if step % cfg.checkpoint_every == 0 or step == cfg.steps or preempt.stop_requested():
                if trainer.is_main:
                    tracking.log_metric_rows(pending)  # one request per checkpoint, not per step
                pending = []
                save_trainer(trainer, path, config, history, stage_settings, cfg.keep_checkpoints)
                saved_at = step
                preempt.check(f"{path} (stage {cfg.stage}, step {step})")
            if step >= cfg.steps or (stop_after_steps is not None and ran >= stop_after_steps):
                break
    bar.close()
    if trainer.is_main:
        tracking.log_metric_rows(pending)
    if ran:
        if saved_at != step:  # stopped early (stop_after_steps) between checkpoints
            save_trainer(trainer, path, config, history, stage_settings, cfg.keep_checkpoints)
        say(f"diffusion: stage {cfg.stage} at step {step} ({(time.perf_counter() - start) / ran:.2f} s/step)")
    return trainer, pd.DataFrame(history)


def check_window(cfg: DiffusionTrainConfig, config: dict[str, Any]) -> str | None:
    """``window_frames`` must fit the clip and divide by every stage's temporal downsampling. Returns what a
    window shorter than the clip costs, for the training log (None for whole clips)."""
    if cfg.window_frames is None:
        return None
    factors = config["imagen"].get("temporal_downsample_factor") or [1]
    largest = max(int(f) for f in (factors if isinstance(factors, (list, tuple)) else [factors]))
    if not 1 <= cfg.window_frames <= int(config["frames"]) or cfg.window_frames % largest:
        raise ValueError(f"window_frames={cfg.window_frames} must be within 1-{config['frames']} (the clip) and a "
                         f"multiple of the largest temporal_downsample_factor ({largest})")
    if cfg.window_frames == int(config["frames"]):
        return None
    return (f"diffusion: stage {cfg.stage} learns from {cfg.window_frames}-frame windows but samples "
            f"{config['frames']}-frame clips: its temporal layers never relate frames more than "
            f"{cfg.window_frames - 1} apart (the demo's stage 2 on 4-frame windows made detail that changed from frame "
            "to frame instead of moving with the heart; docs/generator-experiments.md, E77-E78)")


def window(clip: torch.Tensor, frames: int | None) -> torch.Tensor:
    """Random windows of ``frames`` consecutive frames of clips ``(B, C, T, H, W)``, one start per clip, drawn from
    the global torch RNG (checkpointed, so a resumed run draws the same); ``None``: the clips unchanged.

    For a super-resolution stage: its U-Net is convolutional in time and its temporal attention takes any length,
    so it can learn from short windows (cost per step ~ frames) and still upsample the whole clip at sampling. But
    frames further apart than the window are never related in training: the demo's stage 2 beat less cleanly
    from 4-frame windows than from whole clips at the same cost (E78)."""
    if frames is None or frames >= clip.shape[2]:
        return clip
    starts = torch.randint(0, clip.shape[2] - frames + 1, (clip.shape[0],))
    return torch.stack([c[:, s:s + frames] for c, s in zip(clip, starts.tolist(), strict=True)])


@torch.no_grad()
def validation_loss(trainer: Any, val: _Conditioned, cfg: DiffusionTrainConfig, config: dict[str, Any]) -> float:
    """Mean denoising loss of the EMA stage on the first ``val_batches`` VAL batches, with fixed clips and noise."""
    losses = []
    with torch.random.fork_rng(), trainer.use_ema_unets():
        torch.manual_seed(12345)
        loader = torch.utils.data.DataLoader(val, batch_size=cfg.batch_size)
        for i, (anatomy, ef, systole, clip) in enumerate(loader):
            if i >= cfg.val_batches:
                break
            trainer.imagen.eval()
            clip = training_target(window(clip, cfg.window_frames), anatomy, config)
            losses.append(float(trainer.imagen(
                clip.to(trainer.device), text_embeds=_condition(config, ef, systole).to(trainer.device),
                cond_images=resize(anatomy, trainer.imagen.image_sizes[-1]).to(trainer.device), unet_number=cfg.stage)))
    trainer.imagen.train()
    return float(np.mean(losses))


def save_trainer(trainer: Any, path: Path, config: dict[str, Any], history: list[dict[str, float]],
                 settings_by_stage: dict[int, dict[str, Any]] | None = None, keep: int = 1) -> None:
    """ImagenTrainer.save to a temporary file beside ``path``, renamed into place. Every process must call it
    (ImagenTrainer.save starts with a barrier); only the main process writes."""
    if not trainer.is_main:
        trainer.save(str(path))  # the barrier; ImagenTrainer writes nothing on other processes
        return
    with rotate_checkpoint(path, keep) as tmp:
        trainer.save(str(tmp), config=config, history=history, rng=rng_state(), settings=settings_by_stage or {})


def export_model(trainer: Any, config: dict[str, Any], folder: str | Path) -> Path:
    """Write the cascade (online weights + EMA U-Nets) as ``folder/config.yaml`` + ``folder/merged.pt``."""
    if not trainer.is_main:  # one writer under accelerate launch
        return resolve_path(folder)
    cascade = CascadeModel(config, imagen=trainer.imagen)
    cascade.steps.copy_(trainer.steps.cpu())
    trainer.reset_ema_unets_all_one_device()
    return save_model_folder(resolve_path(folder), cascade, ema=trainer.ema_unets.state_dict())


#: settings a params file may give one value per stage, as a list in the order of ``stage``
PER_STAGE = ("steps", "batch_size", "window_frames", "lr", "lr_schedule")


def stage_configs(params: dict[str, Any]) -> list[DiffusionTrainConfig]:
    """One :class:`DiffusionTrainConfig` per stage listed in ``params["stage"]`` (an int or a list), in order;
    each :data:`PER_STAGE` key is one value for every stage or a list of one value per stage."""
    stage = params.get("stage", 1)
    stages = [int(s) for s in stage] if isinstance(stage, (list, tuple)) else [int(stage)]
    per_stage = {}
    for name in PER_STAGE:
        if name not in params:
            continue
        value = params[name]
        values = list(value) if isinstance(value, (list, tuple)) else [value] * len(stages)
        if len(values) != len(stages):
            raise ValueError(f"{name}={values} has {len(values)} values for stage={stages}: give one value for every "
                             f"stage or one per stage (e.g. stage={stages} {name}={values[0]})")
        per_stage[name] = values
    return [DiffusionTrainConfig.from_params({**params, "stage": s, **{k: v[i] for k, v in per_stage.items()}})
            for i, s in enumerate(stages)]


def train_stages(plan: list[DiffusionTrainConfig], checkpoint_dir: str | Path,
                 resume: bool = True) -> tuple[Any, pd.DataFrame]:
    """Train the stages of ``plan`` in order in one checkpoint folder (:func:`train_stage`); return the last
    ``ImagenTrainer`` and the history of every stage (with a ``stage`` column)."""
    histories = []
    for i, cfg in enumerate(plan):  # a chosen checkpoint starts the first stage; the next ones follow its file
        cfg = cfg if i == 0 else dataclasses.replace(cfg, resume_from=None)
        trainer, history = train_stage(cfg, checkpoint_dir, resume=resume)
        histories.append(history.assign(stage=cfg.stage))
    return trainer, pd.concat(histories, ignore_index=True)


@dataclass
class DiffusionStage:
    """What stage 02 returns (:func:`run_stage`); the main process also logged it to the active MLflow run."""

    model_dir: Path  # the exported model folder (config.yaml + merged.pt)
    history: pd.DataFrame  # per step: train_loss, val_loss (every val_every), lr, stage
    gifs: list[Path]  # per VAL anatomy: anatomy | real clip | one video per sample EF
    figures: dict[str, Any]  # loss


def sample_gifs(model_dir: Path, params: dict[str, Any], out: Path) -> list[Path]:
    """``n_samples`` VAL anatomy frames of ``data_root``, each sampled at every ``sample_efs`` target (seed =
    the anatomy's index), as GIFs in ``out``: anatomy | real clip | the generated videos."""
    cascade = load_model_folder(model_dir)
    config = cascade.config
    val = cascade_clips(config, resolve_path(params["data_root"]), "val")
    efs, gifs = list(params.get("sample_efs", [25.0, 70.0])), []
    for i in range(min(int(params.get("n_samples", 2)), len(val))):
        torch.manual_seed(i)
        anatomy, ef, clip = val[i]
        small = resize(anatomy[None], cascade.image_size).expand(len(efs), -1, -1, -1)
        systole = cascade.systole_of(val, [i], counterfactual=True)
        videos = sample(cascade, small, efs, steps=params.get("sample_steps"), churn=params.get("sample_churn"),
                        cond_scale=params.get("cond_scale", 5.0), seed=i, sigma_max=params.get("sample_sigma_max"),
                        systole=systole)
        row = [anatomy[:, None].numpy(), clip.numpy(), *videos.numpy()]
        labels = ["anatomy", plots.ef_caption(float(ef), who="real"), *(plots.ef_caption(e) for e in efs)]
        gifs.append(plots.video_row_gif(row, out / f"sample_{i}.gif", fps=config["fps"], labels=labels))
        print(f"sample_{i}.gif: " + " | ".join(labels) + " (EF in %)")
    return gifs


def run_stage(params: dict[str, Any]) -> DiffusionStage | None:
    """Stage 02 with its parameters: train the listed stages in ``checkpoint_dir`` (resuming), export the model
    folder, sample GIFs, and log the model folder (registered as ``registered_name`` unless None), the history,
    the loss curves and the GIFs to the active MLflow run. Notebook 02 and ``python -m
    echodiff.diffusion.training`` both call this; under ``accelerate launch`` the other processes only train."""
    checkpoint_dir = resolve_path(params.get("checkpoint_dir", "outputs/diffusion"))
    plan = stage_configs(params)
    trainer, history = train_stages(plan, checkpoint_dir, resume=bool(params.get("resume", True)))
    folder = export_model(trainer, load_cascade_config(plan[0].model_config), checkpoint_dir / "model")
    if not trainer.is_main:
        return None
    gifs = sample_gifs(folder, params, checkpoint_dir) if params.get("n_samples", 2) else []
    figures = {"loss": plots.loss_curves(history)}
    tracking.log_file(folder / "config.yaml", "model")
    tracking.log_file(folder / "merged.pt", "model")
    if params.get("registered_name"):  # the model folder, a new version in the registry
        tracking.register_artifact("model", params["registered_name"])
    for gif in gifs:
        tracking.log_file(gif, "samples")
    tracking.log_table(history, "history.csv")
    tracking.log_figure(figures["loss"], "loss.png")
    return DiffusionStage(folder, history, gifs, figures)


def main(argv: list[str] | None = None) -> int:
    """Train the listed stages from a params file, export and log the model folder: what notebook 02 does (the
    CLI for ``accelerate launch`` on GPU nodes)::

        accelerate launch --multi_gpu --num_processes 8 -m echodiff.diffusion.training \\
            -f params/paper/diffusion_4SCM_stage2.yaml
    """
    args, params = stage_cli("diffusion", "python -m echodiff.diffusion.training", main.__doc__, argv)
    plan = stage_configs(params)
    if args.dry_run:
        print_settings({**{f"stage{cfg.stage}": cfg for cfg in plan},
                        "checkpoint_dir": params.get("checkpoint_dir", "outputs/diffusion"),
                        "cascade": load_cascade_config(plan[0].model_config)})
        return 0
    phantom.prepare(params)
    if int(os.environ.get("RANK", "0")) != 0:
        run_stage(params)
        return 0
    with tracking.stage_run(params.get("run_name", "diffusion"), params, run_id=params.get("mlflow_run_id"),
                            experiment=params.get("experiment", tracking.DEFAULT_EXPERIMENT)) as run:
        result = run_stage(params)
    print(f"diffusion: model in {result.model_dir}, MLflow run {run.info.run_id}")
    return 0


if __name__ == "__main__":
    preempt.run_main(main, "diffusion")
