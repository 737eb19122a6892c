"""EchoNet-Dynamic dataset reader: ``FileList.csv``, ``VolumeTracings.csv`` and ``Videos/*.avi``.

Reads the real dataset unchanged (and the phantom, written in the same format). Semantics follow
EchoNet-Dynamic's own ``echonet.datasets.Echo`` -- clips of ``length`` frames every ``period`` frames, zero
padding of short videos after normalisation, ``clips`` = 1, n or ``"all"`` -- with two additions: clips can be
resampled to a frame rate (``fps``, linear interpolation in time) and every bad input gets an error that names
the file, the CSV row and the fix (or, with ``skip_invalid=True``, is dropped and reported in ``.skipped``).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch

from echodiff.data.video import VideoCache, VideoError, read_video, video_header
from echodiff.io import atomic_write_text

SPLITS = ("TRAIN", "VAL", "TEST")
REQUIRED_COLUMNS = ("FileName", "EF", "Split")
#: EchoNet-Dynamic's two CSVs, column by column (what the phantom and the synthetic datasets write)
FILELIST_COLUMNS = ["FileName", "EF", "ESV", "EDV", "FrameHeight", "FrameWidth", "FPS", "NumberOfFrames", "Split"]
TRACING_COLUMNS = ["FileName", "X1", "Y1", "X2", "Y2", "Frame"]
#: Targets needing the two traced frames (EchoNet: "Large" = end-diastole, listed last; "Small" = end-systole).
TRACE_TARGETS = ("LargeIndex", "SmallIndex", "LargeFrame", "SmallFrame", "LargeTrace", "SmallTrace")
#: where a diffusion item's anatomy frame comes from (:class:`DiffusionClips`)
ANATOMY_FRAMES = ("clip", "ed")
#: what :class:`DiffusionClips` does with a video shorter than one clip: EchoNet's zero padding, or leave it out
SHORT_VIDEOS = ("pad", "drop")
#: where a :class:`DiffusionClips` clip starts: a random frame (EchoNet's rule) or the traced end-diastolic frame
CLIP_STARTS = ("random", "ed")
TARGETS = ("EF", "EDV", "ESV", "FileName", "Filename", *TRACE_TARGETS)


class DatasetError(ValueError):
    """A dataset folder or CSV that cannot be read as EchoNet-Dynamic; the message says what to fix."""


def default_cache_dir() -> Path:
    """``$ECHODIFF_CACHE`` if set, else ``~/.cache/echodiff``."""
    return Path(os.environ.get("ECHODIFF_CACHE", Path.home() / ".cache" / "echodiff"))


def _csv_row(index: int) -> int:
    """Line number in the CSV file of DataFrame row ``index`` (header is line 1)."""
    return int(index) + 2


def read_filelist(root: str | os.PathLike) -> tuple[pd.DataFrame, list[str]]:
    """Read and check ``root/FileList.csv``; return it (FileName without ``.avi``, Split upper case) and notes.

    The returned frame keeps a ``csv_row`` column (line number in the file) for error messages.
    Raises :class:`DatasetError` for a missing root, file or required column.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(
            f"{root}: dataset folder not found. Pass the EchoNet-Dynamic folder (holding FileList.csv, "
            "VolumeTracings.csv and Videos/), or write a phantom there: python -m echodiff.phantom --out "
            f"{root} --n 400"
        )
    path = root / "FileList.csv"
    if not path.is_file():
        raise DatasetError(f"{path}: FileList.csv not found; {root} must be an EchoNet-Dynamic folder.")
    try:
        frame = pd.read_csv(path, dtype={"FileName": str})  # names such as 000001 stay names
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: not a readable CSV ({exc}); restore the file from the dataset.") from exc
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise DatasetError(
            f"{path}: missing column(s) {missing}; found {list(frame.columns)}. EchoNet-Dynamic's header is "
            "FileName,EF,ESV,EDV,FrameHeight,FrameWidth,FPS,NumberOfFrames,Split."
        )
    notes = []
    frame = frame.copy()
    frame["csv_row"] = [_csv_row(i) for i in range(len(frame))]
    names = frame["FileName"].astype(str)
    with_avi = names.str.lower().str.endswith(".avi")
    if with_avi.any():
        notes.append(f"{path}: {int(with_avi.sum())} FileName(s) carry '.avi'; read as the name without it")
        names = names.where(~with_avi, names.str[:-4])
    frame["FileName"] = names
    splits = frame["Split"].astype(str).str.strip()
    upper = splits.str.upper()
    if (upper != splits).any():
        notes.append(f"{path}: {int((upper != splits).sum())} Split value(s) not in upper case; read as upper case")
    frame["Split"] = upper
    return frame, notes


def read_tracings(root: str | os.PathLike) -> dict[str, dict[int, np.ndarray]]:
    """``root/VolumeTracings.csv`` as {FileName without .avi: {frame: (N, 4) X1, Y1, X2, Y2}} in file order.

    Returns an empty dict when the file is absent. EchoNet-Dynamic lists the end-systolic frame first and the
    end-diastolic frame last; the first row of each frame is the long axis, the rest the disc chords.
    """
    path = Path(root) / "VolumeTracings.csv"
    if not path.is_file():
        return {}
    try:
        frame = pd.read_csv(path, dtype={"FileName": str})  # names such as 000001 stay names
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: not a readable CSV ({exc}); restore the file from the dataset.") from exc
    if list(frame.columns) != TRACING_COLUMNS:
        raise DatasetError(f"{path}: header is {list(frame.columns)}, expected {TRACING_COLUMNS}.")
    names = frame["FileName"].astype(str)
    frame["FileName"] = names.where(~names.str.lower().str.endswith(".avi"), names.str[:-4])
    out: dict[str, dict[int, np.ndarray]] = {}
    coords = frame[["X1", "Y1", "X2", "Y2"]].to_numpy(np.float64)
    for name, frame_index, rows in zip(frame["FileName"], frame["Frame"], range(len(frame)), strict=True):
        out.setdefault(name, {}).setdefault(int(frame_index), []).append(coords[rows])
    return {name: {f: np.stack(r) for f, r in frames.items()} for name, frames in out.items()}


def trace_mask(coords: np.ndarray, height: int, width: int) -> np.ndarray:
    """LV mask (H, W) float32 from tracing rows ``(N, 4)`` as EchoNet draws it: the polygon of chord ends."""
    x = np.concatenate([coords[1:, 0], coords[1:, 2][::-1]])
    y = np.concatenate([coords[1:, 1], coords[1:, 3][::-1]])
    mask = np.zeros((height, width), np.uint8)
    cv2.fillPoly(mask, [np.stack([np.rint(x), np.rint(y)], 1).astype(np.int32)], 1)
    return mask.astype(np.float32)


def disc_volume(coords: np.ndarray) -> float:
    """Method-of-discs volume (px^3) of one traced frame: ``pi/4 * sum(d_i^2) * L / n`` (single plane)."""
    axis = np.hypot(coords[0, 2] - coords[0, 0], coords[0, 3] - coords[0, 1])
    chords = np.hypot(coords[1:, 2] - coords[1:, 0], coords[1:, 3] - coords[1:, 1])
    return float(np.pi / 4.0 * np.sum(chords**2) * axis / len(chords))


def tracing_efs(tracings: dict[str, dict[int, np.ndarray]]) -> dict[str, float]:
    """EF (%) of every video with two traced frames: ``100 (EDV - ESV) / EDV`` by the method of discs, ED being
    the larger traced volume (EchoNet-Dynamic lists ES first, ED last). ``tracings`` as :func:`read_tracings`."""
    out = {}
    for name, frames in tracings.items():
        if len(frames) >= 2:
            volumes = [disc_volume(coords) for coords in frames.values()]
            out[name] = 100.0 * (max(volumes) - min(volumes)) / max(volumes)
    return out


def clip_positions(n_frames: int, length: int | None, step: float, max_length: int | None) -> tuple[int, int]:
    """Clip length and number of possible integer start frames for a video of ``n_frames`` frames.

    ``step`` is the distance between clip frames in source frames (the period, or ``fps_in / fps_out``).
    As in EchoNet-Dynamic, ``length=None`` takes as many frames as fit and ``max_length`` caps it.
    """
    if length is None:
        length = max(1, int(n_frames // step))
    if max_length is not None:
        length = min(length, max_length)
    starts = max(1, int(np.floor(n_frames - (length - 1) * step)))
    return length, starts


def sample_clip(video: np.ndarray, start: int, length: int, step: float) -> tuple[np.ndarray, int]:
    """Frames ``start + k * step`` (k < length) of ``(C, F, H, W)`` (any dtype); return float32
    ``((C, T, H, W), valid)``.

    Only the frames needed are read (cheap on a memory-mapped video). Fractional positions are linearly
    interpolated between neighbouring frames; positions past the last frame are zeros (padding), and ``valid``
    counts the frames that are not padding.
    """
    c, f, h, w = video.shape
    pos = start + step * np.arange(length)
    valid = int(np.sum(pos <= f - 1 + 1e-6))
    out = np.zeros((c, length, h, w), np.float32)
    if valid == 0:
        return out, 0
    p = pos[:valid]
    lo = np.floor(p + 1e-6).astype(int).clip(0, f - 1)
    frac = (p - lo).astype(np.float32)
    out[:, :valid] = video[:, lo]
    if np.any(frac >= 1e-6):
        hi = np.minimum(lo + 1, f - 1)
        frac = frac[None, :, None, None]
        out[:, :valid] += frac * (video[:, hi].astype(np.float32) - out[:, :valid])
    return out, valid


class EchoNetDynamic(torch.utils.data.Dataset):
    """EchoNet-Dynamic videos and targets, in the spirit of ``echonet.datasets.Echo``.

    Args:
        root: folder holding ``FileList.csv``, ``VolumeTracings.csv`` and ``Videos/``.
        split: ``"train"``, ``"val"``, ``"test"`` (any case) or ``"all"``.
        target_type: one name or a list of: EF (%), EDV, ESV (mL), FileName, LargeIndex/SmallIndex (ED/ES frame
            index), LargeFrame/SmallFrame (normalised ED/ES frame ``(C, H, W)``), LargeTrace/SmallTrace (LV mask).
        length: frames per clip; ``None`` = as many as fit (capped by ``max_length``).
        period: take every ``period``-th frame (ignored when ``fps`` is given).
        fps: if set, resample clips to this frame rate by linear interpolation (source rate from the CSV's FPS
            column, else the video header).
        clips: number of random clips per video, ``"first"`` (one clip starting at frame 0: deterministic
            evaluation), or ``"all"`` (every start; then the video is ``(n, C, T, H, W)``).
        max_length: cap on ``length``.
        pad: pixels of zero padding on each side before a random crop of the original size (augmentation).
        mean, std: per-channel (length 3) or scalar normalisation applied to 0-255 values, or ``"train"`` to use
            statistics of this root's TRAIN split (computed once, cached; see :func:`channel_stats`).
        skip_invalid: drop rows with problems (bad EF, missing or unreadable video, wrong frame size, missing
            tracings when tracing targets are asked for) instead of raising; they are listed in ``.skipped``.
            This decodes every video once, so pass ``cache`` to keep the work.
        cache: a :class:`VideoCache` or a folder for one, so videos are decoded once and memory-mapped after.

    Items are ``(video, target)``: video float32 tensor ``(C, T, H, W)`` (``(clips, C, T, H, W)`` if several
    clips); target a float32 scalar tensor for EF/EDV/ESV, a tuple when several targets are asked for.
    Random clip starts and crops use torch's RNG, so ``torch.manual_seed`` and DataLoader workers reproduce.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        target_type: str | Sequence[str] = "EF",
        length: int | None = 16,
        period: int = 2,
        clips: int | str = 1,
        max_length: int | None = 250,
        pad: int | None = None,
        mean: float | Sequence[float] | str = 0.0,
        std: float | Sequence[float] | str = 1.0,
        fps: float | None = None,
        skip_invalid: bool = False,
        cache: VideoCache | str | os.PathLike | None = None,
    ):
        self.root = Path(root)
        self.split = str(split).upper()
        if self.split not in (*SPLITS, "ALL"):
            raise DatasetError(f"split must be one of train, val, test or all (any case), got {split!r}")
        self.target_type = [target_type] if isinstance(target_type, str) else list(target_type)
        unknown = [t for t in self.target_type if t not in TARGETS]
        if unknown:
            raise DatasetError(f"unknown target_type {unknown}; choose from {list(TARGETS)}")
        if clips not in ("all", "first") and (not isinstance(clips, int) or clips < 1):
            raise DatasetError(f"clips must be a positive int, 'first' or 'all', got {clips!r}")
        if period < 1 or (length is not None and length < 1):
            raise DatasetError(f"length and period must be positive, got length={length}, period={period}")
        self.length, self.period, self.clips, self.max_length, self.pad, self.fps = (
            length, period, clips, max_length, pad, fps)
        self.cache = VideoCache(cache) if isinstance(cache, (str, os.PathLike)) else cache

        filelist, notes = read_filelist(self.root)
        self.notes = notes
        for note in notes:
            warnings.warn(note, stacklevel=2)
        if self.split != "ALL":
            filelist = filelist[filelist["Split"] == self.split]
        self.tracings = read_tracings(self.root)
        problems = self._check_rows(filelist)
        if skip_invalid:
            problems += self._check_videos(filelist.drop(index=[p[0] for p in problems], errors="ignore"))
        self.skipped = pd.DataFrame(
            [{"FileName": filelist.at[i, "FileName"], "csv_row": filelist.at[i, "csv_row"], "problem": why}
             for i, why in problems], columns=["FileName", "csv_row", "problem"])
        if problems and not skip_invalid:
            shown = "\n".join(f"  {self.root / 'FileList.csv'} line {r.csv_row} ({r.FileName}): {r.problem}"
                              for r in self.skipped.head(10).itertuples())
            more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
            raise DatasetError(f"{len(problems)} invalid row(s) in split {self.split}:\n{shown}{more}\n"
                               "Fix these rows, or pass skip_invalid=True to drop them and list them in .skipped.")
        if problems:
            warnings.warn(f"{self.root}: skipped {len(problems)} invalid row(s) of split {self.split}; "
                          "see .skipped", stacklevel=2)
        self.filelist = filelist.drop(index=[i for i, _ in problems]).reset_index(drop=True)
        if self.cache is not None:
            sizes = 3 * np.prod([pd.to_numeric(self.filelist[c], errors="coerce").fillna(0).to_numpy(float)
                                 for c in ("NumberOfFrames", "FrameHeight", "FrameWidth")], axis=0)  # uint8 RGB
            self.cache.check_space([self.root / "Videos" / f"{n}.avi" for n in self.filelist.FileName], list(sizes))
        self.mean = self._stat(mean, "mean")
        self.std = self._stat(std, "std")

    # -- validation ------------------------------------------------------------------------------------
    def _check_rows(self, filelist: pd.DataFrame) -> list[tuple[int, str]]:
        """Problems found from the CSVs and the folder listing alone: (DataFrame index, reason)."""
        problems = []
        ef = pd.to_numeric(filelist["EF"], errors="coerce")
        videos_dir = self.root / "Videos"
        present = set(os.listdir(videos_dir)) if videos_dir.is_dir() else set()
        needs_trace = any(t in TRACE_TARGETS for t in self.target_type)
        for i, name, value in zip(filelist.index, filelist["FileName"], ef, strict=True):
            if not np.isfinite(value):
                problems.append((i, f"EF is missing or not a number ({filelist.at[i, 'EF']!r}); give EF in %"))
            elif not 0.0 <= value <= 100.0:
                problems.append((i, f"EF {value} is outside 0-100; EF is a percentage"))
            elif f"{name}.avi" not in present:
                problems.append((i, f"video {videos_dir / (name + '.avi')} not found; add it or remove the row"))
            elif needs_trace and len(self.tracings.get(name, {})) < 2:
                problems.append((i, "fewer than 2 traced frames in VolumeTracings.csv (needed for the trace "
                                    "targets); add the tracings or drop the trace targets"))
        return problems

    def _check_videos(self, filelist: pd.DataFrame) -> list[tuple[int, str]]:
        """Decode every video of ``filelist`` and report unreadable ones and frame sizes that differ from the CSV."""
        problems = []
        for i in filelist.index:
            try:
                self._load(filelist.loc[i])
            except (VideoError, DatasetError) as exc:
                problems.append((i, str(exc)))
        return problems

    def _load(self, row: pd.Series) -> np.ndarray:
        """uint8 ``(3, F, H, W)`` of a FileList row, checked against the row's FrameHeight/FrameWidth."""
        path = self.root / "Videos" / f"{row['FileName']}.avi"
        video = read_video(path, cache=self.cache)
        for column, size in (("FrameHeight", video.shape[2]), ("FrameWidth", video.shape[3])):
            if column in row.index and pd.notna(row[column]) and int(row[column]) != size:
                raise DatasetError(
                    f"{path}: frames are {video.shape[2]}x{video.shape[3]} but FileList.csv line {row['csv_row']} "
                    f"says {column}={int(row[column])}; correct the CSV or re-export the video at that size.")
        return video

    def _stat(self, value: float | Sequence[float] | str, which: str) -> np.ndarray:
        """Normalisation constant as an array broadcastable to ``(C, F, H, W)``."""
        if isinstance(value, str):
            if value != "train":
                raise DatasetError(f"{which} must be a number, 3 numbers or 'train', got {value!r}")
            value = channel_stats(self.root, cache=self.cache)[which]
        array = np.asarray(value, np.float32).reshape(-1)
        if array.size not in (1, 3):
            raise DatasetError(f"{which} must be a scalar or one value per channel (3), got {array.size} values")
        return array.reshape(-1, 1, 1, 1)

    # -- items -----------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.filelist)

    def step(self, index: int) -> float:
        """Clip frame spacing of item ``index`` in source frames: ``period``, or source FPS / ``fps``."""
        if self.fps is None:
            return float(self.period)
        return self._listed(index, "FPS", "fps") / float(self.fps)

    def _listed(self, index: int, column: str, header_key: str) -> float:
        """Item ``index``'s ``column`` in FileList.csv, else (absent, not a number or <= 0) its AVI header's
        ``header_key`` (``"fps"`` or ``"frames"``)."""
        row = self.filelist.iloc[index]
        value = pd.to_numeric(row.get(column), errors="coerce")
        if value is None or not np.isfinite(value) or value <= 0:
            value = video_header(self.root / "Videos" / f"{row['FileName']}.avi")[header_key]
        return float(value)

    def video(self, index: int) -> np.ndarray:
        """The whole video of item ``index``, uint8 ``(3, F, H, W)``."""
        return self._load(self.filelist.iloc[index])

    def clip(self, index: int, raw: np.ndarray | None = None, start: int | None = None,
             ) -> tuple[np.ndarray, np.ndarray]:
        """Normalised clip(s) of item ``index`` (of its decoded video ``raw``, if given): float32
        ``(n, C, T, H, W)`` and the valid (unpadded) frame counts. ``start``: one clip from this frame instead."""
        raw = self.video(index) if raw is None else raw
        step = self.step(index)
        length, n_starts = clip_positions(raw.shape[1], self.length, step, self.max_length)
        if start is not None:
            starts = np.array([start])
        elif self.clips == "all":
            starts = np.arange(n_starts)
        elif self.clips == "first":
            starts = np.zeros(1, int)
        else:
            starts = torch.randint(n_starts, (self.clips,)).numpy()
        clips, valid = zip(*(sample_clip(raw, int(s), length, step) for s in starts), strict=True)
        out = np.stack(clips)
        for clip, n in zip(out, valid, strict=True):  # normalise real frames only: padding stays 0 (= the mean)
            clip[:, :n] -= self.mean
            clip[:, :n] /= self.std
        if self.pad:
            out = self._pad_crop(out)
        return out, np.array(valid)

    def _pad_crop(self, clips: np.ndarray) -> np.ndarray:
        """Zero-pad every frame by ``pad`` pixels and crop back to the original size at one random offset."""
        n, c, t, h, w = clips.shape
        p = self.pad
        padded = np.zeros((n, c, t, h + 2 * p, w + 2 * p), clips.dtype)
        padded[..., p:p + h, p:p + w] = clips
        i, j = torch.randint(0, 2 * p + 1, (2,)).tolist()
        return padded[..., i:i + h, j:j + w]

    def traced_index(self, index: int, large: bool = True) -> int:
        """Frame index of item ``index``'s traced end-diastolic (``large``) or end-systolic frame (EchoNet lists
        the small trace first and the large one last)."""
        frames = list(self.tracings[self.filelist.FileName.iloc[index]])
        return frames[-1] if large else frames[0]

    def systole_seconds(self, index: int) -> float:
        """Item ``index``'s ED -> ES interval in seconds: (traced ES frame - traced ED frame) / FPS.

        Raises :class:`DatasetError`, naming the video and ``VolumeTracings.csv``, when it has fewer than two traced
        frames or its traced ES frame is not after its ED frame (then the interval to the next end-systole is
        unknown)."""
        name = self.filelist.FileName.iloc[index]
        if len(self.tracings.get(name, {})) < 2:
            raise DatasetError(f"{name}: the ED -> ES interval needs its two traced frames in "
                               f"{self.root / 'VolumeTracings.csv'}; it has {len(self.tracings.get(name, {}))}")
        ed, es = self.traced_index(index, large=True), self.traced_index(index, large=False)
        if es <= ed:
            raise DatasetError(f"{name}: its traced ES frame ({es}) is not after its ED frame ({ed}) in "
                               f"{self.root / 'VolumeTracings.csv'}, so the ED -> ES interval is unknown; leave the "
                               "video out, or use a cascade without condition_on_systole")
        return (es - ed) / self._listed(index, "FPS", "fps")

    def normalised_frame(self, raw: np.ndarray, frame: int) -> torch.Tensor:
        """Frame ``frame`` of a decoded video ``raw`` (uint8 ``(3, F, H, W)``), normalised as the clips are:
        float32 ``(3, H, W)``."""
        image = (raw[:, frame].astype(np.float32) - self.mean[:, 0]) / self.std[:, 0]
        return torch.from_numpy(np.ascontiguousarray(image))

    def target(self, index: int, raw: np.ndarray | None = None) -> object:
        """The target(s) of item ``index`` (see the class docstring)."""
        row = self.filelist.iloc[index]
        out = []
        for t in self.target_type:
            if t in ("FileName", "Filename"):
                out.append(row["FileName"])
            elif t in ("EF", "EDV", "ESV"):
                out.append(torch.tensor(float(row[t]), dtype=torch.float32))
            else:
                frame = self.traced_index(index, large=t.startswith("Large"))
                if t.endswith("Index"):
                    out.append(frame)
                elif t.endswith("Frame"):
                    raw = self.video(index) if raw is None else raw  # decoded once for both traced frames
                    out.append(self.normalised_frame(raw, frame))
                else:
                    coords = self.tracings[row["FileName"]][frame]
                    size = (int(row.get("FrameHeight", 112)), int(row.get("FrameWidth", 112)))
                    out.append(torch.from_numpy(trace_mask(coords, *size)))
        return out[0] if len(out) == 1 else tuple(out)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, object]:
        clips, _ = self.clip(index)
        video = torch.from_numpy(np.ascontiguousarray(clips[0] if self.clips in (1, "first") else clips))
        return video, self.target(index)


def channel_stats(
    root: str | os.PathLike, samples: int = 128, cache: VideoCache | None = None, seed: int = 0
) -> dict[str, list[float]]:
    """Per-channel mean and std (0-255 scale) over all frames of up to ``samples`` random TRAIN videos.

    Cached as JSON under :func:`default_cache_dir`, keyed by the root, its FileList.csv and ``samples``/``seed``.
    """
    root = Path(root).resolve()
    filelist_path = root / "FileList.csv"
    stat = filelist_path.stat() if filelist_path.is_file() else None
    key = hashlib.sha1(f"{root}|{stat and stat.st_mtime_ns}|{stat and stat.st_size}|{samples}|{seed}"
                       .encode()).hexdigest()[:16]
    path = default_cache_dir() / "stats" / f"{key}.json"
    if path.is_file():
        return json.loads(path.read_text())
    data = EchoNetDynamic(root, "train", cache=cache)
    if len(data) == 0:
        raise DatasetError(f"{root}: no TRAIN rows to compute mean/std from; give mean and std explicitly.")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(data), min(samples, len(data)), replace=False)
    s1, s2, n = np.zeros(3), np.zeros(3), 0
    for i in chosen:
        v = data.video(int(i)).reshape(3, -1).astype(np.float64)
        s1 += v.sum(1)
        s2 += (v**2).sum(1)
        n += v.shape[1]
    mean = s1 / n
    out = {"mean": mean.tolist(), "std": np.sqrt(s2 / n - mean**2).tolist()}
    atomic_write_text(json.dumps(out), path)
    return out


class DiffusionClips(EchoNetDynamic):
    """Training view for the diffusion models: ``(anatomy (C, H, W), EF in %, clip (C, T, H, W))``, all in [0, 1].

    The clip is ``frames`` frames every ``period`` frames, or resampled to ``fps`` (e.g. 2 s at 8 fps = 16
    frames, as EchoDiffusion's 1SCM). The clip starts at a random frame (``start="random"``) or at the video's
    traced end-diastolic frame (``"ed"``: every clip begins with the same phase, the largest LV of the beat). A
    video too short for one clip from there is zero-padded (``short_videos="pad"``, EchoNet's rule: the clip ends
    in black frames) or left out (``"drop"``; its names in ``.dropped_short``, judged from the CSV's
    ``NumberOfFrames`` and ``FPS`` and the tracings, without decoding). The anatomy frame is, with
    ``anatomy="clip"`` (EchoDiffusion's choice), a random unpadded frame of that same clip; with ``"ed"``, the
    video's traced end-diastolic frame (the larger of its two VolumeTracings frames, EchoNet's ``LargeFrame``),
    which may lie outside the clip: every video is then conditioned on the same phase, whose LV is the largest
    of the beat. Other arguments as :class:`EchoNetDynamic`.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", frames: int = 16, period: int = 2,
                 fps: float | None = None, anatomy: str = "clip", start: str = "random", short_videos: str = "pad",
                 **kwargs):
        if anatomy not in ANATOMY_FRAMES:
            raise DatasetError(f"anatomy must be one of {ANATOMY_FRAMES}, got {anatomy!r}")
        if start not in CLIP_STARTS:
            raise DatasetError(f"start must be one of {CLIP_STARTS}, got {start!r}")
        if short_videos not in SHORT_VIDEOS:
            raise DatasetError(f"short_videos must be one of {SHORT_VIDEOS}, got {short_videos!r}")
        super().__init__(root, split, target_type="EF", length=frames, period=period, fps=fps, clips=1,
                         max_length=None, mean=0.0, std=255.0, **kwargs)
        self.anatomy, self.start = anatomy, start
        if "ed" in (anatomy, start):
            untraced = [n for n in self.filelist.FileName if len(self.tracings.get(n, {})) < 2]
            if untraced:
                which = " and ".join(f"{name}='ed'" for name, value in (("anatomy", anatomy), ("start", start))
                                     if value == "ed")
                raise DatasetError(
                    f"{which} need(s) the traced end-diastolic frame of every video, but "
                    f"{len(untraced)} video(s) of split {self.split} have fewer than 2 traced frames in "
                    f"{self.root / 'VolumeTracings.csv'} (e.g. {untraced[:3]}); add their tracings, or use a cascade "
                    f"with anatomy_frame: clip and clip_start: random")
        self.dropped_short: list[str] = []
        if short_videos == "drop":
            first = [self.traced_index(i) if start == "ed" else 0 for i in range(len(self.filelist))]
            short = [i for i in range(len(self.filelist))
                     if self._listed(i, "NumberOfFrames", "frames") - 1 - first[i] < (frames - 1) * self.step(i) - 1e-6]
            self.dropped_short = self.filelist.FileName.iloc[short].tolist()
            self.filelist = self.filelist.drop(index=short).reset_index(drop=True)
            if not len(self.filelist):
                raise DatasetError(f"every video of split {self.split} in {self.root / 'FileList.csv'} is too short "
                                   f"for one clip ({frames} frames) from its start: use short_videos='pad' or "
                                   f"shorter clips")

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raw = self.video(index)
        ed = self.traced_index(index) if "ed" in (self.anatomy, self.start) else None
        clips, valid = self.clip(index, raw, ed if self.start == "ed" else None)
        clip = torch.from_numpy(np.ascontiguousarray(clips[0]))
        if self.anatomy == "ed":
            anatomy = self.normalised_frame(raw, ed)
        else:
            anatomy = clip[:, int(torch.randint(max(int(valid[0]), 1), ()))].clone()
        return anatomy, self.target(index), clip
