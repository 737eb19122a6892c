"""Evaluation of a cascade: score files (one row per generated candidate), chunking, merging, the EF
feedback loop (selection), and the paper's metrics table.

A score row follows EchoDiffusion's ``generate_score_file_chunk.py``: FileName, GT EF (the target, %),
Gen EF (regressed on the generated clip), Ref EF (regressed on the real clip), SSIM, LPIPS -- plus what makes
the row reproducible: the candidate index ``noise``, the batch ``seed``, sampler ``steps``/``churn``,
``cond_scale``, ``mode`` (factual: target = the video's EF; counterfactual: one target per video in ``ef_range``,
U(15, 85) % as the seed draws it, or stratified over the range: :func:`counterfactual_target`)
and the model and regressor ids.

Work is split into fixed batches of ``batch_videos`` videos x ``num_noise`` candidates, each sampled with a
seed derived from (seed, mode, first video): re-running a chunk skips finished batches and redoes unfinished
ones, so an interrupted chunk ends with exactly the rows an uninterrupted one has.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from echodiff import preempt, tracking
from echodiff.config import print_settings, resolve_path, settings, stage_cli
from echodiff.data import DiffusionClips
from echodiff.data.transforms import resize, sector_mask
from echodiff.data.video import read_video
from echodiff.device import compute_device
from echodiff.diffusion.imagen import CascadeModel, cascade_clips, load_model_config, load_model_folder
from echodiff.diffusion.sampling import SOLVERS, sample, write_avis
from echodiff.ef_training import load_regressor
from echodiff.io import atomic_path, atomic_write_csv
from echodiff.metrics import frechet
from echodiff.metrics.frechet import frechet_distance_of
from echodiff.metrics.lv_area import AreaJudge, contraction, ed_outline
from echodiff.metrics.regression import ef_scores
from echodiff.metrics.video import LPIPS, chamber_excess, motion_correlation, ssim, temporal_profile
from echodiff.models.ef_regressor import EFRegressor, regress_ef
from echodiff.phantom import twins, write_hearts
from echodiff.plots import ef_caption, target_scatter, video_row_gif
from echodiff.rng import derived_seed
from echodiff.seg_judge import SegJudge, SegJudgeConfig, fit_seg_judge
from echodiff.tracking import mlflow
from echodiff.weights import MissingWeightsError

#: The seed's score columns, in its order.
SCORE_COLUMNS = ["FileName", "GT EF", "Gen EF", "Ref EF", "SSIM", "LPIPS"]
#: What makes each row reproducible and traceable; ``seconds``: wall time of its batch per candidate (sampling
#: and scoring), what the paper table's sampling time averages.
RUN_COLUMNS = ["noise", "mode", "seed", "solver", "steps", "churn", "sigma_max", "cond_scale", "model_id",
               "regressor_id", "chunk", "seconds"]
MODES = ("factual", "counterfactual")
#: how counterfactual targets are drawn over ef_range (:func:`counterfactual_target`)
TARGET_DRAWS = ("uniform", "stratified")


@dataclass
class ScoreConfig:
    """What one score-file chunk generates (EF in %, sizes in px)."""

    data_root: str = "data/phantom"
    split: str = "val"
    mode: str = "factual"  # factual (target = the video's EF) | counterfactual (the seed's --rand_ef)
    num_noise: int = 1  # candidates per video (the seed's --num_noise)
    chunk: int = 0
    chunks: int = 1
    max_videos: int | None = None  # the first N videos of the split (the seed's --max_samples)
    batch_videos: int = 1  # videos per sampling batch (each with num_noise candidates)
    sample_steps: int | list[int] | None = None  # sampler steps per stage (None: the model config's)
    sample_churn: float | list[float] | None = None  # S_churn per stage (None: the model config's)
    sample_sigma_max: float | list[float] | None = None  # noise level each stage starts from (None: the config's)
    solver: str = "heun"  # heun (the seed's EDM sampler) | dpmpp_2m (DPM-Solver++(2M), deterministic)
    cond_scale: float | list[float] = 5.0  # one value, or one per stage
    seed: int = 0
    ef_range: tuple[float, float] = (15.0, 85.0)  # counterfactual targets lie in ef_range (%)
    target_draw: str = "uniform"  # uniform (the seed's) | stratified: see counterfactual_target
    lpips: bool = False  # needs the VGG-16 weights file (see echodiff.metrics.video.LPIPS)
    cache_dir: str | None = None
    seg_steps: int = 0  # training steps of the segmentation judge (echodiff.seg_judge); 0: no segmentation judge
    seg_videos: int = 1000  # TRAIN videos whose two traced frames it learns from
    truth: bool = False  # score each candidate against the true video too: the phantom's own heart rendered at the
    # target EF (echodiff.phantom.twins; needs a phantom data_root): SSIM truth, Motion r, and a still-frame baseline

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> ScoreConfig:
        """The config from a parameter mapping: the keys it declares, type- and range-checked
        (:func:`echodiff.config.settings`); the other keys are the caller\'s."""
        return settings(cls, params, "ScoreConfig")

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.num_noise < 1 or self.batch_videos < 1:
            raise ValueError(f"num_noise and batch_videos must be >= 1, got {self.num_noise}, {self.batch_videos}")
        if not 0 <= self.chunk < self.chunks:
            raise ValueError(f"chunk {self.chunk} is out of range for chunks={self.chunks} (0 to {self.chunks - 1})")
        lo, hi = self.ef_range
        if not 0 < lo < hi <= 100:
            raise ValueError(f"ef_range must lie within (0, 100] %, got {self.ef_range}")
        if self.target_draw not in TARGET_DRAWS:
            raise ValueError(f"target_draw must be one of {TARGET_DRAWS}, got {self.target_draw!r}")
        if self.solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {self.solver!r}")
        if self.seg_steps < 0 or self.seg_videos < 1:
            raise ValueError(f"seg_steps must be >= 0 and seg_videos >= 1, got {self.seg_steps}, {self.seg_videos}")


def chunk_indices(n: int, chunk: int, chunks: int) -> range:
    """The contiguous slice of ``range(n)`` that ``chunk`` of ``chunks`` covers (sizes differ by at most 1)."""
    if not 0 <= chunk < chunks:
        raise ValueError(f"chunk {chunk} is out of range for chunks={chunks} (0 to {chunks - 1})")
    return range(n * chunk // chunks, n * (chunk + 1) // chunks)


def scored_videos(data: DiffusionClips, cfg: ScoreConfig) -> int:
    """How many of the split's videos are scored: the first ``max_videos`` (all when None)."""
    return len(data) if cfg.max_videos is None else min(cfg.max_videos, len(data))


def counterfactual_target(index: int, n: int, cfg: ScoreConfig) -> float:
    """The counterfactual target EF (%) of video ``index`` of the ``n`` scored. ``uniform``: U(ef_range) per video,
    as the seed's ``--rand_ef`` (12 such draws once all fell in 19-68 % and hid a fold beyond 75 %, E29).
    ``stratified``: ef_range cut into ``n`` equal strata, shuffled over the videos, one draw inside each, so the
    targets cover the range evenly. Both depend on (seed, index, n) only, so chunks agree."""
    rng = np.random.default_rng(derived_seed(cfg.seed, index, 1))
    lo, hi = cfg.ef_range
    if cfg.target_draw == "uniform":
        return float(rng.uniform(lo, hi))
    # the strata's order: one stream per (seed, n), named by four parts so that no per-video stream shares it
    stratum = np.random.default_rng(derived_seed(cfg.seed, n, 0, 0)).permutation(n)[index]
    return float(lo + (hi - lo) * (stratum + rng.uniform()) / n)


def _clips(config: dict[str, Any], cfg: ScoreConfig) -> DiffusionClips:
    """The split's clips in the format (frames, fps) of the cascade ``config``, as scored and as compared against."""
    return cascade_clips(config, resolve_path(cfg.data_root), cfg.split,
                         resolve_path(cfg.cache_dir) if cfg.cache_dir else None)


def drawn_as(data: DiffusionClips, position: int, index: int,
             cfg: ScoreConfig) -> tuple[torch.Tensor, float, torch.Tensor]:
    """Item ``position`` of ``data`` (anatomy, EF, clip) drawn as video ``index`` of the split is: its window and
    anatomy frame depend on (seed, index) only, so a heart rendered again elsewhere gets the same ones."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derived_seed(cfg.seed, index))
        return data[position]


def video_item(data: DiffusionClips, index: int, cfg: ScoreConfig) -> tuple[torch.Tensor, float, torch.Tensor, float]:
    """The evaluation item of video ``index``: anatomy ``(3, H, W)``, its EF, the real clip ``(3, T, H, W)``
    and the target EF. The window, anatomy frame and counterfactual target depend on (seed, index) only."""
    anatomy, ef, clip = drawn_as(data, index, index, cfg)
    target = counterfactual_target(index, scored_videos(data, cfg), cfg) if cfg.mode == "counterfactual" else float(ef)
    return anatomy, float(ef), clip, target


def truth_clips(data: DiffusionClips, indices: Sequence[int], targets: Sequence[float], cfg: ScoreConfig,
                config: dict[str, Any]) -> torch.Tensor:
    """The true videos ``(B, 3, T, H, W)`` of ``indices``: each phantom heart rendered again at its target EF
    (:func:`echodiff.phantom.twins`), written to a temporary EchoNet-format folder and read back through the same
    loader and window as the real clip (:func:`video_item`); at the heart's own EF, the real clip itself."""
    names = [str(data.filelist.FileName.iloc[i]) for i in indices]
    with tempfile.TemporaryDirectory() as folder:
        write_hearts(folder, twins(resolve_path(cfg.data_root), names, targets), [cfg.split.upper()] * len(names),
                     workers=1, progress=False)
        rendered = cascade_clips(config, folder, cfg.split)
        return torch.stack([drawn_as(rendered, k, index, cfg)[2] for k, index in enumerate(indices)])


def truth_scores(videos: torch.Tensor, real: torch.Tensor, truth: torch.Tensor, anatomy: torch.Tensor,
                 size: int) -> dict[str, np.ndarray]:
    """Score columns against the true videos (``(B, C, T, H, W)`` at one size; ``anatomy`` ``(B, C, H, W)``):
    ``SSIM truth``, ``Motion r`` (:func:`echodiff.metrics.video.motion_correlation` at ``size`` px), ``Chamber
    excess`` (:func:`echodiff.metrics.video.chamber_excess`: grey where the true video's chambers are dark), and the
    same for baselines: ``Still SSIM truth`` and ``Still chamber excess`` (the anatomy frame repeated, a video that
    does not move) and ``Ref Motion r`` (the real clip: the same heart at its own EF; 1 in the factual mode)."""
    still = anatomy[:, :, None].expand_as(truth)
    return {"SSIM truth": ssim(videos, truth).numpy(),
            "Motion r": motion_correlation(videos, truth, anatomy, size).numpy(),
            "Chamber excess": chamber_excess(videos, truth, anatomy, size).numpy(),
            "Still SSIM truth": ssim(still, truth).numpy(),
            "Still chamber excess": chamber_excess(still, truth, anatomy, size).numpy(),
            "Ref Motion r": motion_correlation(real, truth, anatomy, size).numpy()}


def read_scores(path: str | os.PathLike) -> pd.DataFrame:
    """A score CSV, checked for the seed's columns."""
    path = Path(path)
    try:
        frame = pd.read_csv(path, dtype={"FileName": str})
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise ValueError(f"{path}: not a readable score CSV ({exc})") from exc
    missing = [c for c in SCORE_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: score file is missing columns {missing} (expected at least {SCORE_COLUMNS})")
    return read_text_columns(frame, path, SETTINGS_COLUMNS)


def read_text_columns(frame: pd.DataFrame, path: str | os.PathLike, columns: Sequence[str]) -> pd.DataFrame:
    """``frame`` (read from CSV ``path``) with ``columns`` re-read as the exact text written: pandas would turn
    a setting such as ``None`` or ``NA`` into a missing value, and a resumed run would no longer match it."""
    present = [c for c in columns if c in frame.columns]
    if present and len(frame):
        frame[present] = pd.read_csv(path, usecols=present, dtype=str, keep_default_na=False)[present]
    return frame


def check_resume_settings(rows: pd.DataFrame, settings: dict[str, Any], path: str | os.PathLike) -> None:
    """Refuse to resume ``path`` when its ``rows`` were made with other ``settings`` (column -> value): one file
    never mixes two models or samplers. Rows read with :func:`read_text_columns` compare as written."""
    for key, value in settings.items():
        found = set(rows[key].astype(type(value))) if key in rows else {"(none)"}
        if len(rows) and found != {value}:
            raise ValueError(f"{path} was made with {key}={sorted(map(str, found))}, not {value!r}: "
                             "write to another place (or delete it to start over)")


def check_resume_targets(rows: pd.DataFrame, data: DiffusionClips, n: int, cfg: ScoreConfig,
                         path: str | os.PathLike) -> None:
    """Refuse to resume counterfactual ``rows`` whose targets are not the ones ``cfg`` draws (another ef_range,
    target_draw, seed or number of videos): finished batches would keep the old targets."""
    if cfg.mode != "counterfactual" or not len(rows):
        return
    index = {name: i for i, name in enumerate(data.filelist.FileName[:n])}
    wanted = [counterfactual_target(index[name], n, cfg) if name in index else np.nan for name in rows.FileName]
    if not np.allclose(rows["GT EF"].astype(float), wanted, atol=1e-3):
        raise ValueError(f"{path} was made with other counterfactual targets (ef_range, target_draw, seed or "
                         "max_videos differ): write to another place (or delete it to start over)")


#: what ScoreConfig.truth adds (NaN without it): :func:`truth_scores`
TRUTH_COLUMNS = ["SSIM truth", "Motion r", "Chamber excess", "Still SSIM truth", "Still chamber excess",
                 "Ref Motion r"]
#: columns that must agree between a score file and the settings that extend it
SETTINGS_COLUMNS = ["mode", "solver", "steps", "churn", "sigma_max", "cond_scale", "model_id", "regressor_id"]


def scale_text(cond_scale: float | list[float]) -> str:
    """A guidance setting as score and dataset CSVs record it: ``5.0``, or ``[5.0, 1.0]`` per stage."""
    if isinstance(cond_scale, (list, tuple)):
        return str([float(c) for c in cond_scale])
    return str(float(cond_scale))


def _settings(cfg: ScoreConfig, model_id: str, regressor_id: str) -> dict[str, Any]:
    steps, churn, sigma_max = cfg.sample_steps, cfg.sample_churn, cfg.sample_sigma_max
    return {"mode": cfg.mode, "solver": cfg.solver, "steps": "config" if steps is None else str(steps),
            "churn": "config" if churn is None else str(churn),
            "sigma_max": "config" if sigma_max is None else str(sigma_max), "cond_scale": scale_text(cfg.cond_scale),
            "model_id": str(model_id), "regressor_id": str(regressor_id)}


def fit_area_judge(model: CascadeModel, cfg: ScoreConfig, clips: int = 64) -> AreaJudge | None:
    """The LV-area judge (:mod:`echodiff.metrics.lv_area`) fitted on up to ``clips`` real TRAIN clips of
    ``cfg.data_root`` at the cascade's output size and clip length; None when the dataset has no tracings."""
    train = cascade_clips(model.config, resolve_path(cfg.data_root), "train",
                          resolve_path(cfg.cache_dir) if cfg.cache_dir else None)
    x, y = [], []
    for index in range(min(clips, len(train))):
        name = train.filelist.FileName.iloc[index]
        if name not in train.tracings:
            continue
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derived_seed(cfg.seed, 7, index))
            _, ef, clip = train[index]
        x.append(contraction(resize(clip[None], model.image_size)[0], ed_outline(train.tracings[name])))
        y.append(float(ef))
    return AreaJudge.fit(np.array(x), np.array(y)) if len(x) >= 3 else None


def seg_judge_path(score_csv: str | os.PathLike) -> Path:
    """Where the segmentation judge of a stage-03 run is kept: beside its score files, shared by modes and chunks."""
    return Path(score_csv).parent / "lv_segmenter.pt"


def seg_judge_config(model: CascadeModel, cfg: ScoreConfig) -> SegJudgeConfig:
    """The segmentation judge a stage-03 run of ``cfg`` uses for ``model``: at the cascade's output size (px)."""
    return SegJudgeConfig(size=model.image_size, steps=cfg.seg_steps, videos=cfg.seg_videos, seed=cfg.seed)


def load_or_fit_seg_judge(model: CascadeModel, cfg: ScoreConfig, path: str | os.PathLike) -> SegJudge | None:
    """The segmentation judge (:mod:`echodiff.seg_judge`) at the cascade's output size: read from ``path`` when an
    earlier mode or chunk trained it (same settings, or an error naming the file), else trained on ``cfg.data_root``
    (TRAIN's traced frames) and written there atomically. None when ``cfg.seg_steps`` is 0."""
    if not cfg.seg_steps:
        return None
    wanted = seg_judge_config(model, cfg)
    path = Path(path)
    if path.exists():
        return SegJudge.load(path, wanted)
    root, cache = resolve_path(cfg.data_root), resolve_path(cfg.cache_dir) if cfg.cache_dir else None
    judge = fit_seg_judge(cascade_clips(model.config, root, "train", cache), cascade_clips(model.config, root, "val",
                                                                                            cache), wanted)
    judge.save(path)
    return judge


def _area_efs(judge: AreaJudge | None, data: DiffusionClips, names: list[str], videos: torch.Tensor,
              real: torch.Tensor, size: int, num_noise: int) -> tuple[np.ndarray, np.ndarray]:
    """LV-area EF (%) of each candidate and (repeated per candidate) of its real clip, both at ``size`` px."""
    gen, ref = np.full(len(videos), np.nan), np.full(len(videos), np.nan)
    if judge is None:
        return gen, ref
    real = resize(real, size)  # area averaging, as the cascade's training clips
    for k, name in enumerate(names):
        if name not in data.tracings:
            continue
        outline = ed_outline(data.tracings[name])
        ref[k * num_noise:(k + 1) * num_noise] = judge.ef(contraction(real[k], outline))
        for j in range(k * num_noise, (k + 1) * num_noise):
            gen[j] = judge.ef(contraction(videos[j], outline))
    return gen, ref


def generate_scores(model: CascadeModel, regressor: EFRegressor, cfg: ScoreConfig, out_csv: str | os.PathLike,
                    model_id: str = "", regressor_id: str = "", videos_dir: str | os.PathLike | None = None,
                    lpips_metric: LPIPS | None = None, progress: bool = True) -> pd.DataFrame:
    """Generate ``num_noise`` candidates for every video of this chunk, score them, and write ``out_csv``.

    The CSV is rewritten atomically after every batch; an existing CSV is resumed (it must have been made with
    the same settings). ``videos_dir`` also keeps each candidate as an EchoNet-format AVI
    (``Videos/<FileName>_<mode>_<noise>.avi``, see :func:`write_video_filelist`) and a GIF per video
    (real | candidates). Returns this chunk's rows.
    """
    # This chunk's videos, and what an earlier run of it already scored (same settings, or an error).
    out_csv = Path(out_csv)
    data = _clips(model.config, cfg)
    n = scored_videos(data, cfg)
    indices = list(chunk_indices(n, cfg.chunk, cfg.chunks))
    settings = _settings(cfg, model_id, regressor_id)
    rows = pd.DataFrame(columns=SCORE_COLUMNS + RUN_COLUMNS)
    features = read_features(out_csv)
    if out_csv.exists():
        rows = read_scores(out_csv)
        check_resume_settings(rows, settings, out_csv)
        check_resume_targets(rows, data, n, cfg, out_csv)
        missing = [c for c in TRUTH_COLUMNS if c not in rows]
        if cfg.truth and len(rows) and (missing or rows["Motion r"].isna().any()):
            raise ValueError(f"{out_csv} was made with truth: false (or by an earlier echodiff, without the columns "
                             f"{missing}); with truth: true write to another place (or delete it to start over)")
    if cfg.lpips and lpips_metric is None:
        lpips_metric = LPIPS()
    device = model.device
    fps = model.config.get("fps")
    judge = fit_area_judge(model, cfg)
    segmenter = load_or_fit_seg_judge(model, cfg, seg_judge_path(out_csv))
    batches = [indices[i:i + cfg.batch_videos] for i in range(0, len(indices), cfg.batch_videos)]
    # Per batch of videos: sample num_noise candidates each, judge them (regressor, LV area, SSIM, LPIPS), and
    # rewrite the CSV (features first) so that a killed job resumes after the last whole batch.
    for batch in tqdm(batches, desc=f"{cfg.mode} chunk {cfg.chunk}/{cfg.chunks}", disable=not progress):
        names = [data.filelist.FileName.iloc[i] for i in batch]
        done = rows[rows.FileName.isin(names)]
        if len(done) == len(batch) * cfg.num_noise and done.groupby("FileName").noise.nunique().eq(cfg.num_noise).all():
            continue
        rows = rows[~rows.FileName.isin(names)]  # an unfinished batch is redone whole, with the same seed
        start = time.perf_counter()
        items = [video_item(data, i, cfg) for i in batch]
        anatomy = torch.stack([a for a, *_ in items]).repeat_interleave(cfg.num_noise, 0)
        real = torch.stack([c for *_, c, _ in items])
        targets = torch.tensor([t for *_, t in items]).repeat_interleave(cfg.num_noise)
        seed = derived_seed(cfg.seed, MODES.index(cfg.mode), batch[0])
        videos = sample(model, resize(anatomy, model.image_size), targets, steps=cfg.sample_steps,
                        churn=cfg.sample_churn, cond_scale=cfg.cond_scale, seed=seed, device=device, solver=cfg.solver,
                        sigma_max=cfg.sample_sigma_max, systole=model.systole_of(data, batch, cfg.num_noise,
                                                             counterfactual=cfg.mode == "counterfactual"))
        area_ef, ref_area_ef = _area_efs(judge, data, names, videos, real, model.image_size, cfg.num_noise)
        no_judge = np.full(len(videos), np.nan)
        seg_ef = segmenter.ef(videos) if segmenter is not None else no_judge
        ref_seg_ef = np.repeat(segmenter.ef(real), cfg.num_noise) if segmenter is not None else no_judge
        videos = to_size(videos, real.shape[-3:])
        real_rep = real.repeat_interleave(cfg.num_noise, 0)
        gen_ef, gen_feat = regress_ef(regressor, videos, fps, features=True)
        ref_ef, ref_feat = regress_ef(regressor, real, fps, features=True)
        ref_ef = ref_ef.repeat_interleave(cfg.num_noise)
        similarity = ssim(videos, real_rep)
        in_sector = ssim(videos, real_rep, inside=sector_mask(resize(anatomy, real.shape[-1]))[:, 0])
        perceptual = lpips_metric(videos, real_rep) if lpips_metric is not None else torch.full_like(similarity, np.nan)
        truth = {}
        if cfg.truth:
            true = truth_clips(data, batch, [t for *_, t in items], cfg, model.config)
            truth = truth_scores(videos, real_rep, true.repeat_interleave(cfg.num_noise, 0), anatomy, model.image_size)
        new = pd.DataFrame({
            "FileName": np.repeat(names, cfg.num_noise), "GT EF": targets.numpy(), "Gen EF": gen_ef.numpy(),
            "Ref EF": ref_ef.numpy(), "SSIM": similarity.numpy(), "LPIPS": perceptual.numpy(),
            "SSIM sector": in_sector.numpy(),
            "Area EF": area_ef, "Ref Area EF": ref_area_ef, "Seg EF": seg_ef, "Ref Seg EF": ref_seg_ef,
            **{c: truth.get(c, np.full(len(names) * cfg.num_noise, np.nan)) for c in TRUTH_COLUMNS},
            "noise": np.tile(np.arange(cfg.num_noise), len(batch)), "seed": seed, "chunk": cfg.chunk, **settings,
            "seconds": (time.perf_counter() - start) / (len(batch) * cfg.num_noise)})
        if videos_dir is not None:
            _save_videos(videos, real, new, Path(videos_dir), fps or 8.0, cfg.num_noise, [ef for _, ef, *_ in items])
        for k, name in enumerate(names):
            features[(name, -1)] = ref_feat[k].numpy()
            for j in range(cfg.num_noise):
                features[(name, j)] = gen_feat[k * cfg.num_noise + j].numpy()
        rows = pd.concat([rows, new], ignore_index=True) if len(rows) else new
        _write_features(features, features_path(out_csv))  # before the CSV: a row is never without features
        atomic_write_csv(rows, out_csv, index=False)
        preempt.check(f"{out_csv} ({len(rows)} rows; the next run skips them)")
    if not out_csv.exists():  # an empty chunk still leaves its (empty) file, so the merge can list it
        atomic_write_csv(rows, out_csv, index=False)
    return read_scores(out_csv)  # exactly what is on disk


def features_path(score_csv: str | os.PathLike) -> Path:
    """The regressor-feature file beside a score CSV: ``<name>.features.npz``."""
    path = Path(score_csv)
    return path.with_name(path.stem + ".features.npz")


def _write_features(features: dict[tuple[str, int], np.ndarray], path: Path) -> None:
    keys = sorted(features)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, names=np.array([k[0] for k in keys]), noise=np.array([k[1] for k in keys]),
                 features=np.stack([features[k] for k in keys]))


def read_features(score_csv: str | os.PathLike) -> dict[tuple[str, int], np.ndarray]:
    """EF-regressor features saved with a score file: ``(FileName, noise) -> (D,)``; noise -1 = the real clip."""
    path = features_path(score_csv)
    if not path.is_file():
        return {}
    with np.load(path) as data:
        return {(str(n), int(j)): f for n, j, f in zip(data["names"], data["noise"], data["features"], strict=True)}


def to_size(videos: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resample ``(B, C, T, H, W)`` videos in [0, 1] to ``size = (T, H, W)`` (trilinear, as the seed does before
    scoring a candidate against its real clip)."""
    if tuple(videos.shape[-3:]) == tuple(size):
        return videos
    return F.interpolate(videos, size=tuple(size), mode="trilinear", align_corners=False).clamp(0, 1)


def _save_videos(videos: torch.Tensor, real: torch.Tensor, rows: pd.DataFrame, folder: Path, fps: float,
                 num_noise: int, real_efs: Sequence[float]) -> None:
    write_avis(videos, folder / "Videos", [f"{r.FileName}_{r['mode']}_{r.noise}" for _, r in rows.iterrows()], fps)
    for k, clip in enumerate(real):
        group = rows.iloc[k * num_noise:(k + 1) * num_noise]
        video_row_gif([clip.numpy(), *videos[k * num_noise:(k + 1) * num_noise].numpy()],
                      folder / "gifs" / f"{group.FileName.iloc[0]}_{group['mode'].iloc[0]}.gif", fps=fps,
                      labels=[ef_caption(real_efs[k], who="real"),
                              *(ef_caption(r["GT EF"], r["Gen EF"]) for _, r in group.iterrows())])


def write_video_filelist(scores: pd.DataFrame, folder: str | os.PathLike, fps: float, frames: int, size: int,
                         split: str = "VAL") -> Path:
    """``folder/FileList.csv`` for AVIs saved by :func:`generate_scores`, so ``EchoNetDynamic`` reads them:
    EF = the target EF, plus the regressed EF and the source video."""
    names = scores.FileName + "_" + scores["mode"] + "_" + scores.noise.astype(str)
    filelist = pd.DataFrame({"FileName": names, "EF": scores["GT EF"], "ESV": np.nan, "EDV": np.nan,
                             "FrameHeight": size, "FrameWidth": size, "FPS": fps, "NumberOfFrames": frames,
                             "Split": split.upper(), "EstimatedEF": scores["Gen EF"], "Source": scores.FileName})
    return atomic_write_csv(filelist, Path(folder) / "FileList.csv", index=False)


def merge_scores(paths: Sequence[str | os.PathLike], num_noise: int,
                 expected: Sequence[str] | None = None) -> pd.DataFrame:
    """Concatenate chunk CSVs and check that every video has exactly ``num_noise`` distinct candidates.

    ``expected``: the FileNames that must all be present (e.g. the whole VAL split). Raises ``ValueError``
    listing missing videos, videos with too few candidates, and duplicated candidates.
    """
    if not paths:
        raise ValueError("no score files to merge")
    scores = pd.concat([read_scores(p) for p in paths], ignore_index=True)
    if "noise" not in scores:
        scores["noise"] = scores.groupby("FileName").cumcount()
    problems = []
    duplicated = scores[scores.duplicated(["FileName", "noise"], keep=False)]
    if len(duplicated):
        pairs = sorted(set(zip(duplicated.FileName, duplicated.noise, strict=True)))
        problems.append(f"{len(pairs)} duplicated candidates (FileName, noise): {pairs[:10]}")
    counts = scores.drop_duplicates(["FileName", "noise"]).groupby("FileName").size()
    short = counts[counts != num_noise]
    if len(short):
        problems.append(f"{len(short)} videos without exactly {num_noise} candidates: "
                        f"{dict(list(short.items())[:10])}")
    if expected is not None:
        missing = sorted(set(expected) - set(counts.index))
        if missing:
            problems.append(f"{len(missing)} videos missing: {missing[:10]}")
    if problems:
        raise ValueError(f"score files {[str(p) for p in paths]} are incomplete or overlap: " + "; ".join(problems)
                         + ". Re-run the chunks that hold them (finished batches are skipped).")
    return scores.sort_values(["FileName", "noise"]).reset_index(drop=True)


def select_by_ef(scores: pd.DataFrame) -> pd.DataFrame:
    """The feedback loop: per video, the candidate whose regressed EF is closest to the target."""
    error = (scores["Gen EF"] - scores["GT EF"]).abs()
    return scores.loc[error.groupby(scores.FileName).idxmin()].reset_index(drop=True)


def summarize(scores: pd.DataFrame) -> dict[str, float]:
    """Every number of the seed's ``compute_metrics.py`` plus the honest protocol, for one mode's scores.

    ``avg_*``: all candidates. ``best_*`` (EF): the EF-selected candidate per video. SSIM/LPIPS, two protocols:
    ``seed_best_ssim``/``seed_best_lpips`` take each video's best SSIM and best LPIPS independently of each
    other and of the EF selection (the seed's); ``selected_ssim``/``selected_lpips`` are those of the
    EF-selected candidate (what a user of the feedback loop actually gets). Scored with ``truth``: ``avg_motion_r``
    and ``avg_ssim_truth`` against the true video, beside ``still_ssim_truth`` (the anatomy frame repeated) and
    ``ref_motion_r`` (the real clip, the same heart at its own EF); ``avg_chamber_excess`` beside
    ``still_chamber_excess``.
    """
    out: dict[str, float] = {"videos": float(scores.FileName.nunique()), "candidates": float(len(scores))}
    gt, gen, ref = (scores[c].to_numpy(float) for c in ("GT EF", "Gen EF", "Ref EF"))
    for name, (y, p) in {"gen": (gt, gen), "ref": (gt, ref), "gen_ref": (ref, gen)}.items():
        out.update({f"avg_{k}_{name}": v for k, v in ef_scores(y, p).items()})
    best = select_by_ef(scores)
    out.update({f"best_{k}_gen": v for k, v in ef_scores(best["GT EF"].to_numpy(float),
                                                       best["Gen EF"].to_numpy(float)).items()})
    for prefix, judge in (("area_avg", "Area EF"), ("seg_avg", "Seg EF")):  # judges that owe nothing to the regressor
        judged = scores.dropna(subset=[judge, f"Ref {judge}"]) if judge in scores else scores.iloc[:0]
        if len(judged) >= 2:
            judge_gt = judged["GT EF"].to_numpy(float)
            for name, column in (("gen", judge), ("ref", f"Ref {judge}")):
                scores_ = ef_scores(judge_gt, judged[column].to_numpy(float))
                out.update({f"{prefix}_{k}_{name}": v for k, v in scores_.items()})
    per_video = scores.groupby("FileName")
    out["avg_ssim"] = float(scores.SSIM.mean())
    out["seed_best_ssim"] = float(per_video.SSIM.max().mean())
    out["selected_ssim"] = float(best.SSIM.mean())
    if "SSIM sector" in scores and scores["SSIM sector"].notna().all():  # the windows centred inside the scan
        # sector, the black background left out (absent from score files written before it existed)
        out["avg_ssim_sector"] = float(scores["SSIM sector"].mean())
    if "Motion r" in scores and scores["Motion r"].notna().all():  # against the true video (ScoreConfig.truth)
        out["avg_motion_r"] = float(scores["Motion r"].mean())
        out["avg_ssim_truth"] = float(scores["SSIM truth"].mean())
        out["still_ssim_truth"] = float(per_video["Still SSIM truth"].first().mean())  # a video that does not move
        out["ref_motion_r"] = float(per_video["Ref Motion r"].first().mean())  # the same heart at its own EF
        if "Chamber excess" in scores:  # grey where the true chambers are dark; the still video's beside it
            out["avg_chamber_excess"] = float(scores["Chamber excess"].mean())
            out["still_chamber_excess"] = float(per_video["Still chamber excess"].first().mean())
    out["avg_lpips"] = float(scores.LPIPS.mean())
    out["seed_best_lpips"] = float(per_video.LPIPS.min().mean())
    out["selected_lpips"] = float(best.LPIPS.mean())
    return out


def judges_table(summaries: dict[str, dict[str, float]]) -> pd.DataFrame:
    """EF agreement over **all** candidates by both judges side by side, per mode: the EF regressor (``avg_*``) and
    the LV-area judge (``area_avg_*``) and the segmentation judge (``seg_avg_*``), which owe nothing to the regressor;
    ``real clips`` rows are each judge
    on the real clips of the same videos (its own accuracy, meaningful in the factual mode)."""
    rows = []
    for mode, s in summaries.items():
        for judge, prefix in (("EF regressor", "avg"), ("LV area", "area_avg"), ("LV segmentation", "seg_avg")):
            for what, suffix in (("generated", "gen"), ("real clips", "ref")):
                if f"{prefix}_r_{suffix}" in s:
                    rows.append({"mode": mode, "judge": judge, "videos": what, "r": s[f"{prefix}_r_{suffix}"],
                                 "slope": s[f"{prefix}_slope_{suffix}"], "MAE": s[f"{prefix}_mae_{suffix}"]})
    return pd.DataFrame(rows)


#: The reference README's table (EchoDiffusion, ~1200 VAL videos, A100).
REFERENCE = pd.DataFrame(
    [["1SCM", "Generation", 16, 62, 0.64, 9.65, 12.2, 0.53, 0.21, 12.3, 60.5],
     ["2SCM", "Generation", 32, 146, 0.89, 4.81, 6.69, 0.53, 0.24, 31.7, 141],
     ["4SCM", "Generation", 32, 279, 0.93, 3.77, 5.26, 0.48, 0.25, 24.6, 230],
     ["1SCM", "Reconstruction", 16, 62, 0.76, 4.51, 6.07, 0.53, 0.21, 13.6, 89.7],
     ["2SCM", "Reconstruction", 32, 146, 0.93, 2.22, 3.35, 0.54, 0.24, 31.4, 147],
     ["4SCM", "Reconstruction", 32, 279, 0.90, 2.42, 3.87, 0.48, 0.25, 24.0, 228]],
    columns=["Model", "Task", "Frames", "Sampling time (s)", "R2", "MAE", "RMSE", "SSIM", "LPIPS", "FID", "FVD"])


def paper_table(model_name: str, summaries: dict[str, dict[str, float]], frames: int, seconds_per_video: float,
                distances: dict[str, dict[str, float]] | None = None, protocol: str = "best") -> pd.DataFrame:
    """Rows in the reference README's layout for one model: Generation (counterfactual) and Reconstruction
    (factual). ``protocol``: ``"best"`` = EF-selected candidate with the seed's best SSIM/LPIPS, ``"selected"``
    = everything from the EF-selected candidate, ``"avg"`` = all candidates. ``distances[mode]`` may hold
    ``FID``, ``FVD`` (only when computed with their real networks) and ``FD_EFreg``."""
    pick = {"best": ("best", "seed_best"), "selected": ("best", "selected"), "avg": ("avg", "avg")}[protocol]
    rows = []
    for mode, task in (("counterfactual", "Generation"), ("factual", "Reconstruction")):
        if mode not in summaries:
            continue
        s = summaries[mode]
        ef, sim = pick
        extra = (distances or {}).get(mode, {})
        rows.append({"Model": model_name, "Task": task, "Protocol": protocol, "Frames": frames,
                     "Sampling time (s)": round(seconds_per_video, 2), "R2": s[f"{ef}_r2_gen"],
                     "MAE": s[f"{ef}_mae_gen"], "RMSE": s[f"{ef}_rmse_gen"], "SSIM": s[f"{sim}_ssim"],
                     "LPIPS": _computed(s[f"{sim}_lpips"]), "FID": _computed(extra.get("FID")),
                     "FVD": _computed(extra.get("FVD")), "FD_EFreg": extra.get("FD_EFreg", np.nan),
                     "Videos": int(s["videos"])})
    return pd.DataFrame(rows)


def _computed(value: float | None) -> float | str:
    """A metric, or ``"not computed"`` (its network's weight file was absent): never a number made another way."""
    return "not computed" if value is None or not np.isfinite(value) else float(value)


def regressor_distance(scores: pd.DataFrame, score_csvs: Sequence[str | os.PathLike]) -> float:
    """``FD_EFreg``: Fréchet distance between EF-regressor features of the real clips of the scored videos and
    of the candidates in ``scores`` (all of them, or the selected ones), read from the score files' feature files.
    """
    features: dict[tuple[str, int], np.ndarray] = {}
    for path in score_csvs:
        features.update(read_features(path))
    keys = list(zip(scores.FileName, scores.noise.astype(int), strict=True))
    missing = [k for k in keys if k not in features] + [(n, -1) for n in scores.FileName.unique()
                                                         if (n, -1) not in features]
    if missing:
        raise ValueError(f"no EF-regressor features for {len(missing)} candidates (e.g. {missing[:3]}) in "
                         f"{[str(features_path(p)) for p in score_csvs]}: re-generate those score files")
    real = np.stack([features[(n, -1)] for n in scores.FileName.unique()])
    fake = np.stack([features[k] for k in keys])
    return frechet_distance_of(real, fake)


def real_clips(config: dict[str, Any], cfg: ScoreConfig, names: Sequence[str]) -> torch.Tensor:
    """The real clips ``(N, 3, T, H, W)`` the named videos were scored against (same windows), in the format
    (frames, fps) of the cascade ``config``."""
    data = _clips(config, cfg)
    index = {name: i for i, name in enumerate(data.filelist.FileName)}
    return torch.stack([video_item(data, index[name], cfg)[2] for name in names])


def motion_summary(real: torch.Tensor, generated: torch.Tensor, fps: float) -> dict[str, float]:
    """Does the generated heart beat like the real one? Means of :func:`temporal_profile` over the real clips and
    the generated ones, ``(N, C, T, H, W)`` each: ``{real,gen}_temporal_std``, ``{real,gen}_cardiac_fraction``."""
    out = {}
    for who, clips in (("real", real), ("gen", generated)):
        out.update({f"{who}_{k}": float(v.nanmean()) for k, v in temporal_profile(clips, fps).items()})
    return out


def saved_candidates(scores: pd.DataFrame, videos_dir: str | os.PathLike) -> torch.Tensor:
    """The AVIs :func:`generate_scores` kept for these score rows, ``(N, 3, T, H, W)`` in [0, 1]."""
    folder = Path(videos_dir) / "Videos"
    return torch.stack([torch.from_numpy(read_video(folder / f"{r.FileName}_{r.mode}_{r.noise}.avi")).float() / 255
                        for r in scores.itertuples()])


@dataclass
class Evaluation:
    """What stage 03 reports for merged scores (:func:`report`); the same whether the chunks ran here or on Slurm."""

    scores: dict[str, pd.DataFrame]  # mode -> every candidate's score row
    summaries: dict[str, dict[str, float]]  # mode -> summarize() + motion + mae_first_candidate
    distances: dict[str, dict[str, float]]  # mode -> FD_EFreg (selected), FD_EFreg_all, FID/FVD when computed
    paper_table: pd.DataFrame  # ours (best and selected protocols) beside the reference README's rows
    judges: pd.DataFrame  # every EF judge over all candidates
    seg_judge: dict[str, float]  # the segmentation judge's own accuracy on real VAL clips (empty without it)
    gifs: list[Path]  # real | factual | counterfactual, EF-selected, captioned "EF target -> regressed"
    scatter: Any  # seaborn FacetGrid: regressed vs target EF, all and EF-selected candidates

    def metrics(self) -> dict[str, float]:
        """The MLflow metrics: ``<mode>_<name>`` for every finite summary and distance."""
        out = {f"{mode}_{k}": float(v) for mode in self.scores
               for k, v in {**self.summaries[mode], **self.distances[mode]}.items() if np.isfinite(v)}
        return out | {f"seg_judge_{k}": float(v) for k, v in self.seg_judge.items() if np.isfinite(v)}


def score_all(model: CascadeModel, regressor: EFRegressor, params: dict[str, Any], progress: bool = True,
              ) -> dict[str, pd.DataFrame]:
    """Score every chunk of every mode of stage-03 ``params`` here, one after the other (on Slurm each chunk is
    one ``score`` array task instead), and merge each mode's chunks; finished batches on disk are skipped."""
    out, chunks = resolve_path(params.get("out_dir", "outputs/evaluate")), int(params.get("chunks", 1))
    scores = {}
    for mode in params.get("modes", ["factual"]):
        paths = [score_path(out, mode, c, chunks) for c in range(chunks)]
        for chunk, path in enumerate(paths):
            cfg = ScoreConfig.from_params({**params, "mode": mode, "chunk": chunk, "chunks": chunks})
            generate_scores(model, regressor, cfg, path, str(params.get("model")), str(params.get("regressor")),
                            videos_dir=out / "videos", progress=progress)
        scores[mode] = merge_scores(paths, int(params.get("num_noise", 1)))
    return scores


def merge_all(params: dict[str, Any], config: dict[str, Any]) -> dict[str, pd.DataFrame]:
    """Merge the chunk files of every mode of stage-03 ``params``, checking that every video the chunks were to
    score is there with ``num_noise`` candidates; writes ``<out_dir>/scores_<mode>.csv``. ``config``: the cascade's
    model config (frames, fps: the clips the chunks scored), not its weights."""
    out, chunks = resolve_path(params.get("out_dir", "outputs/evaluate")), int(params.get("chunks", 1))
    scores = {}
    for mode in params.get("modes", ["factual"]):
        cfg = ScoreConfig.from_params({**params, "mode": mode, "chunk": 0})
        paths = [score_path(out, mode, c, chunks) for c in range(chunks)]
        absent = [str(p) for p in paths if not p.exists()]
        if absent:
            raise FileNotFoundError(f"missing chunk files (run `python -m echodiff.evaluation score` with chunk=K "
                                    f"for them first): {absent}")
        data = _clips(config, cfg)
        n = scored_videos(data, cfg)
        expected = [str(name) for name in data.filelist.FileName[:n]]  # every video the chunks were to score
        scores[mode] = merge_scores(paths, cfg.num_noise, expected)
        atomic_write_csv(scores[mode], out / f"scores_{mode}.csv", index=False)
    return scores


def report(scores: dict[str, pd.DataFrame], config: dict[str, Any], params: dict[str, Any],
           log: bool = True) -> Evaluation:
    """Everything stage 03 reports from merged ``scores`` (mode -> rows) of a cascade with model ``config``:
    EF agreement by both judges (all and EF-selected candidates), SSIM/LPIPS, FD_EFreg, FID/FVD when their
    weights are on disk, motion of the selected candidates beside the real clips, the paper table, GIFs and the
    EF scatter; ``log``: to the active MLflow run (metrics ``<mode>_<name>``, score CSVs, tables, figure, GIFs).
    The notebook and ``python -m echodiff.evaluation merge`` both call this, so both leave the same record."""
    out, chunks = resolve_path(params.get("out_dir", "outputs/evaluate")), int(params.get("chunks", 1))
    fps = config.get("fps") or 8.0
    summaries, distances, selected, reals = {}, {}, {}, {}
    for mode, rows in scores.items():
        summaries[mode] = summarize(rows)
        selected[mode] = select_by_ef(rows)
        paths = [score_path(out, mode, c, chunks) for c in range(chunks)]
        distances[mode] = {"FD_EFreg": regressor_distance(selected[mode], paths),
                           "FD_EFreg_all": regressor_distance(rows, paths)}
        cfg = ScoreConfig.from_params({**params, "mode": mode, "chunk": 0})
        real = reals[mode] = real_clips(config, cfg, selected[mode].FileName)
        fake = saved_candidates(selected[mode], out / "videos")
        summaries[mode].update(motion_summary(real, fake, fps))  # a beat, not flicker: beside the real clips
        if params.get("export_frames"):
            frechet.export_frames(real, list(selected[mode].FileName), out / "frames" / mode / "real")
            frechet.export_frames(fake, list(selected[mode].FileName), out / "frames" / mode / "fake")
        if params.get("fid_fvd"):  # the real networks or nothing: the table says "not computed"
            try:
                distances[mode].update(FID=frechet.fid(real, fake), FVD=frechet.fvd(real, fake))
            except MissingWeightsError as exc:
                print(exc)
        first = rows[rows.noise == 0]  # what the feedback loop buys: one candidate alone vs the best of num_noise
        summaries[mode]["mae_first_candidate"] = float((first["GT EF"] - first["Gen EF"]).abs().mean())
    seconds = float(pd.concat(scores.values()).get("seconds", pd.Series([np.nan])).mean())
    ours = pd.concat([paper_table(str(params.get("model_name", "")), summaries, config["frames"], seconds, distances,
                                  protocol) for protocol in ("best", "selected")], ignore_index=True)
    table = pd.concat([ours, REFERENCE.assign(Protocol="best (reference README)")], ignore_index=True)
    gifs = []
    if "factual" in scores and "counterfactual" in scores:
        picks = {m: selected[m].set_index("FileName") for m in ("factual", "counterfactual")}
        for i, name in enumerate(list(picks["factual"].index)[:int(params.get("n_gifs", 0))]):
            real = reals["factual"][i]  # the clip the factual candidates were scored against
            fake = [saved_candidates(picks[m].loc[[name]].reset_index(), out / "videos")[0]
                    for m in ("factual", "counterfactual")]
            labels = [ef_caption(picks["factual"].loc[name, "GT EF"], who="real"),
                      *(ef_caption(picks[m].loc[name, "GT EF"], picks[m].loc[name, "Gen EF"])
                        for m in ("factual", "counterfactual"))]
            gifs.append(video_row_gif([real.numpy(), *(f.numpy() for f in fake)], out / "gifs" / f"{name}.gif",
                                      fps=fps, labels=labels))
    both = pd.concat([rows.assign(mode=m, candidate="all") for m, rows in scores.items()]
                     + [selected[m].assign(mode=m, candidate="EF-selected") for m in scores])
    seg_file = seg_judge_path(score_path(out, next(iter(scores)), 0, chunks))
    seg_accuracy = SegJudge.load(seg_file).accuracy if seg_file.exists() else {}
    result = Evaluation(scores, summaries, distances, table, judges_table(summaries), seg_accuracy, gifs,
                        target_scatter(both))
    if log:
        for mode, rows in scores.items():
            tracking.log_table(rows, f"scores_{mode}.csv")
        mlflow.log_metrics(result.metrics())
        tracking.log_table(result.paper_table, "paper_table.csv")
        tracking.log_table(result.judges, "judges.csv")
        if seg_file.exists():
            tracking.log_file(seg_file, "judges")
        tracking.log_figure(result.scatter.figure, "ef_scatter.png")
        for gif in gifs:
            tracking.log_file(gif, "gifs")
    return result


def score_path(out_dir: str | os.PathLike, mode: str, chunk: int, chunks: int) -> Path:
    """Where chunk ``chunk`` of ``chunks`` of ``mode`` writes its scores."""
    return resolve_path(out_dir) / "scores" / f"{mode}_chunk{chunk:03d}of{chunks:03d}.csv"


def load_inputs(params: dict[str, Any]) -> tuple[CascadeModel, EFRegressor]:
    """The cascade (``model``: model folder or stage-02 run id) and EF regressor (``regressor``: checkpoint or
    stage-01 run id) an evaluation params mapping names."""
    device = compute_device()
    model = load_model_folder(local_or_run_id(params["model"])).to(device)
    regressor = load_regressor(local_or_run_id(params["regressor"])).to(device)
    return model, regressor


def local_or_run_id(value: str) -> str | Path:
    """A path (relative to the repository) when it exists, else the value itself (an MLflow run id)."""
    path = resolve_path(value)
    return path if path.exists() else value


def main(argv: list[str] | None = None) -> int:
    """``score``: chunk ``chunk`` of every mode (one Slurm array task; no MLflow run); ``merge``: check and merge
    every chunk, then compute and log to one MLflow ``evaluate`` run everything notebook 03 logs."""
    args, params = stage_cli("evaluate", "python -m echodiff.evaluation", __doc__.split("\n\n")[0], argv,
                             commands=("score", "merge"))
    if args.dry_run:
        print_settings({**{mode: ScoreConfig.from_params({**params, "mode": mode})
                           for mode in params.get("modes", ["factual"])},
                        "run": {k: v for k, v in params.items() if k not in ScoreConfig.__dataclass_fields__}})
        return 0
    out_dir = params.get("out_dir", "outputs/evaluate")
    if args.command == "score":
        model, regressor = load_inputs(params)
        for mode in params.get("modes", ["factual"]):
            cfg = ScoreConfig.from_params({**params, "mode": mode})
            path = score_path(out_dir, mode, cfg.chunk, cfg.chunks)
            rows = generate_scores(model, regressor, cfg, path, str(params["model"]), str(params["regressor"]),
                                   videos_dir=resolve_path(out_dir) / "videos")
            print(f"{path}: {len(rows)} rows")
        return 0
    config = load_model_config(local_or_run_id(params["model"]))  # frames and fps; no weights needed
    scores = merge_all(params, config)
    with tracking.stage_run("evaluate", params, run_id=params.get("mlflow_run_id"),
                            experiment=params.get("experiment", tracking.DEFAULT_EXPERIMENT)) as run:
        result = report(scores, config, params)
    for mode, summary in result.summaries.items():
        print(f"{mode}: {len(scores[mode])} candidates; EF MAE all {summary['avg_mae_gen']:.2f}, EF-selected "
              f"{summary['best_mae_gen']:.2f}; r(target, regressed) {summary['avg_r_gen']:.2f}")
    print(f"evaluation: merged scores in {resolve_path(out_dir)}, MLflow run {run.info.run_id}")
    return 0


if __name__ == "__main__":
    preempt.run_main(main, "evaluation")
