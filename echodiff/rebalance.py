"""The rebalancing study: top up a skewed TRAIN EF histogram with synthetic videos, train regressor variants.

Three steps, as EchoDiffusion's ``ef_balancing.ipynb``, ``generate_dataset.py`` and ``train_balanced.py``:

1. :func:`balancing_plan` -- from the TRAIN EF histogram, one target EF (%) per missing video, so that every bin
   of ``ef_range`` holds ``per_bin`` videos (seed: 1 % bins from 10 to 90 %, 100 per bin; targets bin + U(0, w)).
2. :func:`generate_dataset` -- one video per target from a random TRAIN anatomy frame, the candidate (of
   ``num_noise``) whose regressed EF is closest to the target kept, written as an EchoNet-Dynamic folder
   (``Videos/000000.avi``, ``FileList.csv`` with Split TRAIN, EF = TargetEF, and the report columns
   CondImageFileName, ID, TargetEF, EstimatedEF in %). Resumable: finished IDs are kept, writes are atomic.
3. the regressor variants, whose training sets :mod:`echodiff.data.variants` builds (the EF trainer reads them):
   ``resample_N`` (N random real TRAIN videos), ``balance_Kpb`` (real + synthetic pooled in bins, K drawn per
   bin with replacement), ``all_samples`` (real + every synthetic video), ``synthetic_only``; and
   :func:`per_bin_metrics` / :func:`balanced_subset` for evaluating them per EF bin.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from echodiff import phantom, plots, preempt, tracking
from echodiff.config import changed_settings, print_settings, resolve_path, settings, stage_cli
from echodiff.data import DiffusionClips, read_filelist
from echodiff.data.echonet import FILELIST_COLUMNS, TRACING_COLUMNS
from echodiff.data.transforms import resize
from echodiff.data.variants import bin_of
from echodiff.data.video import read_video, write_video
from echodiff.diffusion.imagen import cascade_clips
from echodiff.diffusion.sampling import sample
from echodiff.ef_training import RESUMABLE_CHANGES, EFTrainConfig, predict, train_ef_regressor
from echodiff.evaluation import check_resume_settings, load_inputs, read_text_columns, scale_text
from echodiff.io import atomic_write_csv
from echodiff.metrics import regression_metrics
from echodiff.models.ef_regressor import regress_ef
from echodiff.tracking import mlflow

PLAN_COLUMNS = ["ID", "Bin", "TargetEF"]
REPORT_COLUMNS = ["CondImageFileName", "ID", "TargetEF", "EstimatedEF"]


def bin_edges(bin_width: float, ef_range: Sequence[float]) -> np.ndarray:
    """Lower edges (%) of the bins ``[lo, lo + bin_width)`` that tile ``ef_range``."""
    lo, hi = float(ef_range[0]), float(ef_range[1])
    if not 0 <= lo < hi <= 100 or bin_width <= 0:
        raise ValueError(f"need 0 <= ef_range[0] < ef_range[1] <= 100 and bin_width > 0, got {ef_range}, {bin_width}")
    return lo + bin_width * np.arange(int(np.ceil((hi - lo) / bin_width - 1e-9)))


def balancing_plan(efs: Sequence[float] | np.ndarray, bin_width: float = 1.0, per_bin: int = 100,
                   ef_range: Sequence[float] = (10.0, 90.0), seed: int = 0) -> pd.DataFrame:
    """Target EFs that top every bin of ``ef_range`` up to ``per_bin`` videos.

    Args:
        efs: the TRAIN EFs (%).
        bin_width: bin width (%), bins ``[lo, lo + w)`` from ``ef_range[0]``; bins outside the range are left alone.
        per_bin: videos wanted per bin (bins already above it are left alone).
    Returns:
        columns ID (0..n-1), Bin (lower edge, %), TargetEF (Bin + U(0, bin_width), %).
    """
    efs = np.asarray(efs, dtype=float)
    if efs.size == 0 or np.isnan(efs).any():
        raise ValueError("balancing_plan needs the TRAIN EFs (non-empty, no NaN)")
    edges = bin_edges(bin_width, ef_range)
    counts = pd.Series(bin_of(efs, bin_width, edges[0])).value_counts()
    missing = [(lo, max(0, int(per_bin) - int(counts.get(lo, 0)))) for lo in edges]
    bins = np.concatenate([np.full(m, lo) for lo, m in missing]) if missing else np.zeros(0)
    rng = np.random.default_rng(seed)
    targets = bins + rng.uniform(0.0, bin_width, size=bins.size)
    targets = np.minimum(targets, np.nextafter(bins + bin_width, bins))  # stays inside its bin
    return pd.DataFrame({"ID": np.arange(bins.size), "Bin": bins, "TargetEF": targets})


def train_efs(data_root: str | os.PathLike) -> np.ndarray:
    """EFs (%) of the TRAIN rows of an EchoNet-format folder."""
    filelist, _ = read_filelist(resolve_path(data_root))
    return pd.to_numeric(filelist.loc[filelist.Split == "TRAIN", "EF"], errors="coerce").dropna().to_numpy()


def write_plan(plan: pd.DataFrame, path: str | os.PathLike) -> Path:
    """The plan as CSV, atomically."""
    return atomic_write_csv(plan[PLAN_COLUMNS], resolve_path(path), index=False)


def read_plan(path: str | os.PathLike) -> pd.DataFrame:
    """A plan CSV, checked for its columns and EF range."""
    path = resolve_path(path)
    try:
        plan = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise ValueError(f"{path}: not a readable plan CSV ({exc}); write it with echodiff.rebalance.write_plan"
                         ) from exc
    missing = [c for c in PLAN_COLUMNS if c not in plan.columns]
    if missing:
        raise ValueError(f"{path}: plan is missing columns {missing} (expected {PLAN_COLUMNS})")
    bad = plan[(plan.TargetEF < 0) | (plan.TargetEF > 100) | plan.TargetEF.isna()]
    if len(bad):
        raise ValueError(f"{path}: TargetEF outside 0-100 % on IDs {bad.ID.tolist()[:10]}")
    return plan


@dataclass
class GenerateConfig:
    """How the synthetic dataset is generated (EF in %, steps per stage)."""

    data_root: str = "data/phantom"  # real EchoNet-format folder: the TRAIN anatomy frames
    num_noise: int = 3  # candidates per target; the one whose regressed EF is closest is kept
    cond_scale: float | list[float] = 1.0  # the seed generates its dataset with guidance scale 1; or one per stage
    sample_steps: Any = None  # sampler steps (one or per stage); None: the model's
    sample_churn: Any = None  # EDM S_churn (one or per stage); None: the model's
    sample_sigma_max: Any = None  # noise level each stage's sampler starts from (one or per stage); None: the model's
    solver: str = "heun"  # heun (the seed's EDM sampler) | dpmpp_2m (DPM-Solver++(2M), deterministic)
    batch_targets: int = 4  # targets per sampling batch (x num_noise videos); FileList.csv is rewritten after each
    size: int = 112  # written frame size (px), EchoNet-Dynamic's
    seed: int = 0
    cache_dir: str | None = None


def generate_config(params: dict[str, Any]) -> GenerateConfig:
    """The :class:`GenerateConfig` of stage-04 ``params`` (its keys type-checked; the rest are the study's)."""
    return settings(GenerateConfig, params, "rebalance parameters")


def _anatomy(data: DiffusionClips, target_id: int, seed: int) -> tuple[torch.Tensor, int]:
    """A random frame of a random 2-s window of a random TRAIN video, fixed by (seed, ID), and the video's index."""
    rng = np.random.default_rng([seed, target_id])
    index = int(rng.integers(len(data)))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(rng.integers(2**31)))
        anatomy, _, _ = data[index]
    return anatomy, index


def read_synthetic(out_root: str | os.PathLike) -> pd.DataFrame:
    """The FileList.csv of a synthetic dataset (empty frame when there is none yet)."""
    path = resolve_path(out_root) / "FileList.csv"
    if not path.exists():
        return pd.DataFrame(columns=[*FILELIST_COLUMNS, *REPORT_COLUMNS])
    frame = read_text_columns(pd.read_csv(path, dtype={"FileName": str, "CondImageFileName": str}), path,
                              ["Model", "Steps", "Churn", "Solver", "SigmaMax"])
    missing = [c for c in REPORT_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: not a synthetic dataset of echodiff (missing {missing}); use another out_root")
    return frame




def generate_dataset(model: Any, regressor: Any, plan: pd.DataFrame, out_root: str | os.PathLike,
                     cfg: GenerateConfig, model_id: str = "", progress: bool = True) -> pd.DataFrame:
    """Generate one video per plan row into ``out_root`` (EchoNet-Dynamic layout); return its FileList.

    Each target gets ``num_noise`` candidates from the same anatomy frame; the one whose regressed EF is closest
    to the target is written as ``Videos/{ID:06d}.avi`` (``size`` px, the model's frame rate). Rows already in
    ``FileList.csv`` are kept (resume: they must come from the same ``model_id``, e.g. the stage-02 run id, and
    settings, else this raises rather than mix two generators in one dataset); the CSV is rewritten atomically
    after every batch, videos first, so a listed video always exists. Same (seed, ID) -> same anatomy and noise,
    so a redone batch is the same batch.
    """
    out_root = resolve_path(out_root)
    (out_root / "Videos").mkdir(parents=True, exist_ok=True)
    if cfg.num_noise < 1:
        raise ValueError(f"num_noise must be >= 1, got {cfg.num_noise}")
    frames, fps = int(model.config["frames"]), float(model.config["fps"])
    data = cascade_clips(model.config, resolve_path(cfg.data_root), "train",
                         resolve_path(cfg.cache_dir) if cfg.cache_dir else None)
    done = read_synthetic(out_root)
    settings = {"Model": str(model_id), "Candidates": cfg.num_noise, "CondScale": scale_text(cfg.cond_scale),
                "Steps": "config" if cfg.sample_steps is None else str(cfg.sample_steps),
                "Churn": "config" if cfg.sample_churn is None else str(cfg.sample_churn), "Solver": cfg.solver,
                "SigmaMax": "config" if cfg.sample_sigma_max is None else str(cfg.sample_sigma_max)}
    check_resume_settings(done, settings, out_root / "FileList.csv")
    known = set(done.ID.astype(int)) if len(done) else set()
    dupes = plan.ID[plan.ID.duplicated()].tolist()
    if dupes:
        raise ValueError(f"plan has duplicate IDs {dupes[:10]}")
    todo = plan[~plan.ID.astype(int).isin(known)]
    device = model.device
    batches = [todo.iloc[i:i + cfg.batch_targets] for i in range(0, len(todo), cfg.batch_targets)]
    for batch in tqdm(batches, desc="synthetic dataset", disable=not progress or not batches):
        ids = batch.ID.astype(int).tolist()
        items = [_anatomy(data, i, cfg.seed) for i in ids]
        sources = [index for _, index in items]
        anatomy = torch.stack([a for a, _ in items]).repeat_interleave(cfg.num_noise, 0)
        targets = torch.tensor(batch.TargetEF.to_numpy(float), dtype=torch.float32).repeat_interleave(cfg.num_noise)
        noise_seed = int(np.random.default_rng([cfg.seed, ids[0], 1]).integers(2**31))
        videos = sample(model, resize(anatomy, model.image_size), targets, steps=cfg.sample_steps,
                        churn=cfg.sample_churn, cond_scale=cfg.cond_scale, seed=noise_seed, device=device,
                        solver=cfg.solver, sigma_max=cfg.sample_sigma_max,
                        systole=model.systole_of(data, sources, cfg.num_noise, counterfactual=True))
        estimated = regress_ef(regressor, videos, fps).reshape(len(ids), cfg.num_noise)
        pick = (estimated - targets.reshape(len(ids), cfg.num_noise)).abs().argmin(1)
        rows = []
        for k, (target_id, source) in enumerate(zip(ids, sources, strict=True)):
            video = videos[k * cfg.num_noise + int(pick[k])]
            video = resize(video[None], cfg.size)[0] if video.shape[-1] != cfg.size else video
            name = f"{target_id:06d}"
            write_video(out_root / "Videos" / f"{name}.avi", (video.clamp(0, 1) * 255).round().byte().numpy(), fps)
            target = float(batch.TargetEF.iloc[k])
            rows.append({"FileName": name, "EF": target, "ESV": np.nan, "EDV": np.nan, "FrameHeight": cfg.size,
                         "FrameWidth": cfg.size, "FPS": fps, "NumberOfFrames": frames, "Split": "TRAIN",
                         "CondImageFileName": str(data.filelist.FileName.iloc[source]), "ID": target_id,
                         "TargetEF": target, "EstimatedEF": float(estimated[k, int(pick[k])]), **settings})
        done = pd.concat([done, pd.DataFrame(rows)], ignore_index=True) if len(done) else pd.DataFrame(rows)
        atomic_write_csv(done.sort_values("ID"), out_root / "FileList.csv", index=False)
        preempt.check(f"{out_root / 'FileList.csv'} ({len(done)} videos; the next run keeps them)")
    if not (out_root / "VolumeTracings.csv").exists():  # the format's second file: no tracings for synthetic videos
        atomic_write_csv(pd.DataFrame(columns=TRACING_COLUMNS),
                         out_root / "VolumeTracings.csv", index=False)
    return read_synthetic(out_root)


def balanced_subset(predictions: pd.DataFrame, per_bin: int = 10, bin_width: float = 1.0,
                    ef_range: Sequence[float] = (10.0, 90.0), seed: int = 0) -> pd.DataFrame:
    """At most ``per_bin`` rows per EF bin of ``ef_range`` (the seed's balanced VAL+TEST set), drawn without
    replacement with a fixed seed, so every variant is scored on the same videos."""
    edges = bin_edges(bin_width, ef_range)
    bins = bin_of(predictions.EF, bin_width, edges[0])
    inside = (predictions.EF >= edges[0]) & (predictions.EF < edges[-1] + bin_width)
    frame = predictions[inside].assign(Bin=bins[inside.to_numpy()])
    return (frame.groupby("Bin", group_keys=False)
            .apply(lambda g: g.sample(n=min(per_bin, len(g)), random_state=seed))
            .reset_index(drop=True))


def per_bin_metrics(predictions: pd.DataFrame, bin_width: float = 10.0) -> pd.DataFrame:
    """MAE and count per EF bin (lower edge, %) of predictions with columns EF, EF_pred."""
    error = (predictions.EF_pred - predictions.EF).abs()
    frame = predictions.assign(Bin=bin_of(predictions.EF, bin_width), error=error)
    return frame.groupby("Bin").agg(n=("error", "size"), mae=("error", "mean")).reset_index()


def evaluate_regressor(model: Any, cfg: Any, balanced_per_bin: int = 10, bin_width: float = 1.0,
                       ef_range: Sequence[float] = (10.0, 90.0), report_bin_width: float = 10.0,
                       seed: int = 0, balanced_root: str | os.PathLike | None = None,
                       ) -> tuple[pd.DataFrame, dict[str, float]]:
    """Score one regressor variant on the real VAL and TEST splits and the balanced VAL+TEST set.

    The balanced set is drawn from the VAL+TEST videos of ``cfg.data_root`` (the seed's) or, when given, of
    ``balanced_root``: another real folder whose VAL+TEST hearts cover the EF range, for a dataset whose own VAL+TEST
    hold too few hearts in the bins that rebalancing fills. Returns the predictions (columns FileName, Split, EF,
    EF_pred, Root: the folder, Balanced) and metrics ``{val,test,balanced}_{mae,rmse,r2,r}`` plus
    ``balanced_mae_bin_<lo>`` per ``report_bin_width`` bin (same names for every variant, so MLflow's compare view
    lines them up).
    """
    def scored(root: str | os.PathLike) -> pd.DataFrame:
        on = replace(cfg, data_root=str(root))
        return pd.concat([predict(model, on, split) for split in ("val", "test")],
                         ignore_index=True).assign(Root=str(root))

    natural = scored(cfg.data_root)
    pool = scored(balanced_root) if balanced_root is not None else natural
    balanced = balanced_subset(pool, balanced_per_bin, bin_width, ef_range, seed)
    pool = pool.assign(Balanced=pool.FileName.isin(balanced.FileName))
    predictions = pool if balanced_root is None else pd.concat(
        [natural.assign(Balanced=False), pool[pool.Balanced]], ignore_index=True)
    metrics: dict[str, float] = {}
    for name, frame in (("val", natural[natural.Split == "VAL"]), ("test", natural[natural.Split == "TEST"]),
                        ("balanced", balanced)):
        if len(frame) >= 2:
            scores = regression_metrics(frame.EF.to_numpy(), frame.EF_pred.to_numpy(), bootstrap=0)
            metrics.update({f"{name}_{k}": v for k, v in scores.items()})
    for row in per_bin_metrics(balanced, report_bin_width).itertuples():
        metrics[f"balanced_mae_bin_{int(row.Bin):02d}"] = float(row.mae)
    return predictions, metrics


#: settings a reused reference regressor may differ in: those a resumed run may change, except its length, and the
#: variants' synthetic pool, which the reference variant does not train on
REUSE_IGNORES = (*(k for k in RESUMABLE_CHANGES if k != "epochs"), "synthetic_roots", "bin_width")


def variant_run_name(variant: str, seed: int, study_seed: int) -> str:
    """The name of a variant trained with ``seed``: its nested run, checkpoint folder and metric prefix (the study's
    own seed keeps the bare variant name, as before ``variant_extra_seeds``)."""
    return variant if seed == study_seed else f"{variant}_seed{seed}"


def seed_summary(results: pd.DataFrame) -> pd.DataFrame:
    """Each variant's MAE metrics over its training seeds (``results``: one row per variant and seed, as
    :func:`run_study` returns them): columns variant, metric, seeds, mean, min, max and, for every variant but
    ``reference``, ``seeds_better``: in how many seeds its MAE was below the reference's of the same seed (NaN
    without a reference variant). A bin's verdict that holds in one seed of three is not one (E82)."""
    metrics = [c for c in results.columns if c in ("val_mae", "test_mae", "balanced_mae")
               or c.startswith("balanced_mae_bin_")]
    long = results.melt(id_vars=["variant", "seed"], value_vars=metrics, var_name="metric", value_name="mae")
    reference = long[long.variant == "reference"][["seed", "metric", "mae"]].rename(columns={"mae": "reference"})
    long = long.merge(reference, on=["seed", "metric"], how="left")
    long["better"] = (long.mae < long.reference).where(long.reference.notna() & (long.variant != "reference"))
    summary = (long.groupby(["variant", "metric"], sort=False)
               .agg(seeds=("mae", "count"), mean=("mae", "mean"), min=("mae", "min"), max=("mae", "max"),
                    seeds_better=("better", lambda b: b.sum() if b.notna().any() else np.nan))
               .reset_index())
    return summary


def check_same_training(regressor: Any, cfg: EFTrainConfig, source: str) -> None:
    """Refuse ``regressor`` (read by :func:`echodiff.ef_training.load_regressor`) as the ``reference`` variant
    unless it was trained with ``cfg``'s settings, epochs and data folder included: else the study would compare
    variants that differ in more than their training videos."""
    saved = dict(getattr(regressor, "train_config", None) or {})
    if not saved:
        raise ValueError(f"rebalance: {source} records no training settings, so it cannot stand in for the "
                         "reference variant: set `reference: train`")
    current = asdict(cfg)
    for item in (saved, current):
        item["data_root"] = str(resolve_path(item["data_root"])) if item.get("data_root") else None
    changed = changed_settings(saved, current, REUSE_IGNORES)
    if changed:
        raise ValueError(f"rebalance: {source} was not trained as the reference variant would be "
                         f"({'; '.join(changed)}): set `reference: train`, or give `ef_train` and `seed` the "
                         "regressor's settings")


REFERENCES = ("train", "regressor")  # StudyConfig.reference: how the reference variant is made


@dataclass
class StudyConfig:
    """The rebalancing study's settings beyond generation (:class:`GenerateConfig`); defaults: the seed's study."""

    data_root: str = "data/phantom"  # real EchoNet-format folder: TRAIN histogram, anatomy frames, VAL/TEST scoring
    bin_width: float = 1.0  # plan bins (%)
    per_bin: int = 100  # videos wanted per plan bin
    ef_range: list[float] = field(default_factory=lambda: [10.0, 90.0])  # bins outside are left alone
    max_targets: int | None = None  # the first N targets of the plan (None: all)
    variants: list[str] = field(default_factory=lambda: [
        "reference", "resample_395", "resample_790", "resample_1580", "resample_3950", "resample_7900", "balance_5pb",
        "balance_10pb", "balance_20pb", "balance_50pb", "balance_100pb", "all_samples"])
    variant_bin_width: float = 1.0  # bins of balance_Kpb (%)
    ef_train: dict[str, Any] = field(default_factory=dict)  # EFTrainConfig settings shared by every variant
    reference: str = "train"  # train: the reference variant is trained like the others; regressor: it IS the
    # study's `regressor` (stage 01's model), which must have been trained with the reference variant's settings
    variant_extra_seeds: list[int] = field(default_factory=list)  # every variant is trained again under each of
    # these seeds besides `seed` (plan, anatomy frames and balanced set keep `seed`): with ~10 hearts in a bin, one
    # training seed cannot settle that bin's verdict (docs/generator-experiments.md, E82)
    eval_per_bin: int = 10  # balanced VAL+TEST set: at most this many videos per eval_bin_width bin
    balanced_root: str | None = None  # the real folder whose VAL+TEST videos the balanced set is drawn from (None:
    # data_root, the seed's); its hearts must be new to every regressor and to the cascade's TRAIN split
    eval_bin_width: float = 1.0
    report_bin_width: float = 10.0  # per-bin MAE reported in bins this wide
    seed: int = 0
    cache_dir: str | None = None
    out_dir: str = "outputs/rebalance"

    def __post_init__(self) -> None:
        if self.reference not in REFERENCES:
            raise ValueError(f"rebalance: reference must be one of {list(REFERENCES)}, got {self.reference!r}")
        if self.reference == "regressor" and "reference" not in self.variants:
            raise ValueError(f"rebalance: `reference: regressor` needs the reference variant in variants, got "
                             f"{self.variants}")
        if self.seed in self.variant_extra_seeds or len(set(self.variant_extra_seeds)) < len(self.variant_extra_seeds):
            raise ValueError(f"rebalance: variant_extra_seeds must be distinct and differ from seed {self.seed}, got "
                             f"{self.variant_extra_seeds}")


def check_balanced_root(cfg: StudyConfig) -> Path | None:
    """The folder of the balanced VAL+TEST set (None: ``data_root``'s own), checked to hold a FileList.csv."""
    if cfg.balanced_root is None or resolve_path(cfg.balanced_root) == resolve_path(cfg.data_root):
        return None
    root = resolve_path(cfg.balanced_root)
    if not (root / "FileList.csv").is_file():
        raise FileNotFoundError(
            f"rebalance: balanced_root {root} has no FileList.csv. It is the folder whose VAL+TEST hearts make the "
            "balanced evaluation set: `make demo`'s stage 02 writes data/phantom_uniform (or `python -m "
            "echodiff.phantom --out data/phantom_uniform --n 400 --seed 1 --ef-range 10 85`); or set "
            "`balanced_root: null` to draw it from data_root's VAL+TEST")
    return root


@dataclass
class Study:
    """What the rebalancing stage returns (:func:`run_study`); every part is also logged to its MLflow run."""

    plan: pd.DataFrame  # ID, Bin, TargetEF
    synthetic: pd.DataFrame  # the synthetic dataset's FileList (TargetEF, EstimatedEF, CondImageFileName, ...)
    results: pd.DataFrame  # one row per variant and training seed: train_videos, {val,test,balanced}_{mae,rmse,r2,r},
    # per-bin MAE
    summary: pd.DataFrame  # per variant and metric, over its training seeds (:func:`seed_summary`)
    predictions: pd.DataFrame  # every variant's VAL/TEST predictions (variant, seed, Balanced columns)
    figures: dict[str, Any]  # plan_histogram, synthetic_frames, per_bin_mae


def run_study(model: Any, regressor: Any, params: dict[str, Any], model_id: str = "", regressor_id: str = "",
              progress: bool = True) -> Study:
    """The rebalancing stage with stage-04 ``params`` (:class:`StudyConfig` and :class:`GenerateConfig` keys):
    plan, synthetic dataset (cascade ``model``, candidates selected by ``regressor``), one regressor per variant,
    logged to the active MLflow run (each variant a nested run). Resumable at every step: finished synthetic
    videos and trained variants are kept under ``out_dir``. With ``reference: regressor`` the ``reference``
    variant is ``regressor`` itself, not trained again (``regressor_id``: where it came from, tagged on that
    variant's run). Notebook 04, ``python -m echodiff.rebalance`` and ``slurm/rebalance.sbatch`` all call this."""
    cfg = settings(StudyConfig, params, "rebalance parameters")
    out = resolve_path(cfg.out_dir)
    real_efs = train_efs(cfg.data_root)
    plan = balancing_plan(real_efs, cfg.bin_width, cfg.per_bin, cfg.ef_range, cfg.seed)
    if cfg.max_targets is not None:
        plan = plan.head(cfg.max_targets)
    write_plan(plan, out / "plan.csv")
    figures = {"plan_histogram": plots.plan_histogram(real_efs, plan.TargetEF.to_numpy(), cfg.bin_width, cfg.per_bin)}
    tracking.log_table(plan, "plan.csv")
    tracking.log_figure(figures["plan_histogram"], "plan_histogram.png")
    mlflow.log_metrics({"train_videos": len(real_efs), "synthetic_targets": len(plan)})

    synthetic_root = out / "synthetic"
    base = {**cfg.ef_train, "data_root": cfg.data_root, "synthetic_roots": [str(synthetic_root)],
            "bin_width": cfg.variant_bin_width, "seed": cfg.seed, "cache_dir": cfg.cache_dir}
    source = regressor_id or "the study's regressor"
    if cfg.reference == "regressor":  # checked before any video is generated
        check_same_training(regressor, EFTrainConfig.for_variant(base, "reference"), source)
    balanced_root = check_balanced_root(cfg)
    synthetic = generate_dataset(model, regressor, plan, synthetic_root, generate_config(params), model_id, progress)
    error = (synthetic.EstimatedEF - synthetic.TargetEF).abs()
    tracking.log_table(synthetic, "synthetic_FileList.csv")
    mlflow.log_metrics({"synthetic_videos": len(synthetic), "synthetic_target_mae": float(error.mean())})
    shown = synthetic.head(3)
    figures["synthetic_frames"] = plots.frame_grid(
        [read_video(synthetic_root / "Videos" / f"{name}.avi") for name in shown.FileName],
        [f"target {t:.0f}%, read {e:.0f}%" for t, e in zip(shown.TargetEF, shown.EstimatedEF, strict=True)])
    tracking.log_figure(figures["synthetic_frames"], "synthetic_frames.png")

    results, predictions = [], []
    for variant in cfg.variants:
        for seed in [cfg.seed, *cfg.variant_extra_seeds]:
            name = variant_run_name(variant, seed, cfg.seed)
            train_cfg = EFTrainConfig.for_variant({**base, "seed": seed}, variant)
            n_train = len(train_cfg.train_dataset())
            reused = variant == "reference" and cfg.reference == "regressor" and seed == cfg.seed
            tags = {"echodiff.variant": variant, "echodiff.variant_seed": str(seed)}
            if reused:
                tags["echodiff.reference_from"] = source
            with tracking.child_run(name, {**vars(train_cfg), "variant": variant}, tags):
                trained = regressor if reused else train_ef_regressor(train_cfg, out / "regressors" / name)[0]
                preds, scores = evaluate_regressor(trained, train_cfg, cfg.eval_per_bin, cfg.eval_bin_width,
                                                   cfg.ef_range, cfg.report_bin_width, cfg.seed, balanced_root)
                mlflow.log_metrics({**scores, "train_videos": n_train})
                tracking.log_table(preds, "predictions.csv")
            results.append({"variant": variant, "seed": seed, "train_videos": n_train, **scores})
            predictions.append(preds.assign(variant=variant, seed=seed))
    results_frame, predictions_frame = pd.DataFrame(results), pd.concat(predictions, ignore_index=True)
    summary = seed_summary(results_frame)
    tracking.log_table(results_frame, "variants.csv")
    tracking.log_table(summary, "variant_summary.csv")
    tracking.log_table(predictions_frame, "variant_predictions.csv")
    mlflow.log_metrics({f"{variant_run_name(r.variant, r.seed, cfg.seed)}_test_mae": r.test_mae
                        for r in results_frame.itertuples()})
    if cfg.variant_extra_seeds:
        test = summary[summary.metric == "test_mae"]
        mlflow.log_metrics({f"{r.variant}_seed_mean_test_mae": r.mean for r in test.itertuples()})
    balanced = predictions_frame[predictions_frame.Balanced]
    binned = balanced.assign(Bin=bin_of(balanced.EF, cfg.report_bin_width).astype(int),
                             error=(balanced.EF_pred - balanced.EF).abs())
    figures["per_bin_mae"] = plots.per_bin_mae(binned, cfg.report_bin_width)
    tracking.log_figure(figures["per_bin_mae"], "per_bin_mae.png")
    return Study(plan, synthetic, results_frame, summary, predictions_frame, figures)


def main(argv: list[str] | None = None) -> int:
    """Run the rebalancing study from a params file (``model``/``regressor``: model folder / checkpoint or the
    MLflow run ids of stages 02 and 01), in one MLflow ``rebalance`` run -- what notebook 04 runs."""
    args, params = stage_cli("rebalance", "python -m echodiff.rebalance", __doc__.split("\n\n")[0], argv)
    if args.dry_run:
        print_settings({"study": settings(StudyConfig, params, "rebalance parameters"),
                        "generate": generate_config(params), "run": params})
        return 0
    for key in ("model", "regressor"):
        if params.get(key) is None:
            raise SystemExit(f"rebalance: `{key}` is required (a model folder / checkpoint or an MLflow run id)")
    phantom.prepare(params)
    model, regressor = load_inputs(params)
    with tracking.stage_run("rebalance", params, run_id=params.get("mlflow_run_id"),
                            experiment=params.get("experiment", tracking.DEFAULT_EXPERIMENT)) as run:
        study = run_study(model, regressor, params, model_id=str(params["model"]),
                          regressor_id=str(params["regressor"]))
    shown = ["variant", "seed", "train_videos", "val_mae", "test_mae", "balanced_mae"]
    print(study.results[shown].round(2).to_string())
    print(f"rebalance: study in {resolve_path(params.get('out_dir', 'outputs/rebalance'))}, MLflow run "
          f"{run.info.run_id}")
    return 0


if __name__ == "__main__":
    preempt.run_main(main, "rebalance")
