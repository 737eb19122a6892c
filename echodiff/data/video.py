"""The one video reader and writer of echodiff (OpenCV), and the optional decoded-video cache.

Arrays are uint8 ``(C=3, T, H, W)`` in RGB order, as EchoNet-Dynamic's ``loadvideo`` returns them.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import torch

from echodiff.io import atomic_path


class CacheSpaceError(OSError):
    """The decoded-video cache would not fit on its disk."""


class VideoError(ValueError):
    """A video file that is missing, unreadable, truncated or of an unexpected size."""


def read_video(path: str | os.PathLike, cache: VideoCache | None = None) -> np.ndarray:
    """Decode a whole video file to uint8 ``(3, T, H, W)`` RGB.

    With ``cache``, a previously decoded copy is memory-mapped instead (see :class:`VideoCache`).
    Raises :class:`VideoError` naming the file for a missing, unreadable or truncated video.
    """
    if cache is not None:
        return cache.load(path)
    path = Path(path)
    if not path.is_file():
        raise VideoError(f"{path}: video file not found. Check the dataset root and that Videos/ holds this file.")
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise VideoError(f"{path}: OpenCV cannot open this file (corrupt or not a video); replace or remove it.")
        expected = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        frames = []
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            frames.append(frame)
    finally:
        capture.release()
    if not frames:
        raise VideoError(f"{path}: no frame could be decoded (corrupt or empty video); replace or remove it.")
    if expected > 0 and len(frames) < expected:
        raise VideoError(
            f"{path}: truncated video, decoded {len(frames)} of the {expected} frames its header announces; "
            "re-copy or re-export the file."
        )
    video = np.stack(frames)[..., ::-1]  # BGR -> RGB, (T, H, W, 3)
    return np.ascontiguousarray(video.transpose(3, 0, 1, 2))


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """A float tensor in [0, 1] (any shape, e.g. ``(3, T, H, W)``) as contiguous uint8 0-255, clamped and rounded
    half up: what the writers below take."""
    return np.ascontiguousarray((video.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy())


def _checked(video: np.ndarray, who: str) -> np.ndarray:
    video = np.asarray(video)
    if video.ndim != 4 or video.shape[0] != 3 or video.dtype != np.uint8:
        raise ValueError(f"{who} expects uint8 (3, T, H, W), got {video.dtype} {tuple(video.shape)}")
    return video


def _write_frames(writer: cv2.VideoWriter, video: np.ndarray, failure: str) -> None:
    """Write uint8 ``(3, T, H, W)`` RGB frame by frame to an OpenCV ``writer`` (BGR) and release it."""
    if not writer.isOpened():
        raise OSError(failure)
    try:
        for frame in video.transpose(1, 2, 3, 0):
            writer.write(np.ascontiguousarray(frame[..., ::-1]))
    finally:
        writer.release()


def write_video(path: str | os.PathLike, video: np.ndarray, fps: float) -> Path:
    """Write uint8 ``(3, T, H, W)`` RGB as an MJPG AVI (EchoNet-Dynamic's format), atomically."""
    video = _checked(video, "write_video")
    _, _, height, width = video.shape
    with atomic_path(path) as tmp:
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"MJPG"), float(fps), (width, height))
        _write_frames(writer, video, f"{path}: OpenCV could not open an MJPG writer")
    return Path(path)


@contextlib.contextmanager
def _stderr_silenced() -> Iterator[None]:
    """Discard what C code writes to file descriptor 2 meanwhile."""
    saved = os.dup(2)
    with open(os.devnull, "wb") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def web_video(video: np.ndarray, fps: float) -> bytes:
    """Encode uint8 ``(3, T, H, W)`` RGB as a WebM (VP8) file's bytes, which browsers play in a ``<video>``."""
    video = _checked(video, "web_video")
    _, _, height, width = video.shape
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "video.webm"
        with _stderr_silenced():  # OpenCV prints a harmless "tag ... is not supported" for any WebM fourcc
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"vp80"), float(fps), (width, height))
        _write_frames(writer, video, "OpenCV could not open a VP8 WebM writer (its FFmpeg build lacks libvpx)")
        return path.read_bytes()


def video_header(path: str | os.PathLike) -> dict[str, float]:
    """Frame count, height, width and FPS from a video's header, without decoding it."""
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise VideoError(f"{path}: OpenCV cannot open this file (corrupt or not a video); replace or remove it.")
        return {
            "frames": int(capture.get(cv2.CAP_PROP_FRAME_COUNT)),
            "height": int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)),
            "width": int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
            "fps": float(capture.get(cv2.CAP_PROP_FPS)),
        }
    finally:
        capture.release()


class VideoCache:
    """Decoded videos stored once as ``.npy`` files and memory-mapped on later reads.

    A cache entry is keyed by the video's absolute path, size and modification time, so an edited or replaced
    video is decoded again. Entries are written atomically; the folder can be deleted at any time.
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def _entry(self, path: Path) -> Path:
        stat = path.stat()
        key = hashlib.sha1(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
        return self.directory / f"{path.stem}-{key}.npy"

    def check_space(self, videos: list[Path], decoded_bytes: list[float], headroom: float = 2**30) -> None:
        """Refuse to start filling the cache when the ``videos`` not cached yet (``decoded_bytes`` each, e.g. from
        FileList.csv's frame counts and sizes) would not fit on its disk with ``headroom`` bytes to spare: a disk
        that fills mid-epoch kills a loader worker hours into a job. Raises :class:`CacheSpaceError`."""
        needed = sum(b for v, b in zip(videos, decoded_bytes, strict=True) if v.is_file() and not self._entry(v).exists())
        free = shutil.disk_usage(self.directory).free
        if needed + headroom > free:
            raise CacheSpaceError(
                f"{self.directory}: the decoded-video cache needs {needed / 2**30:.1f} GiB more for these "
                f"{len(videos)} videos, but its disk has {free / 2**30:.1f} GiB free (EchoNet-Dynamic decodes to "
                "about 50 GiB). Point cache_dir at a bigger disk (e.g. node-local scratch), or set cache_dir to "
                "null to decode the AVIs every epoch.")

    def load(self, path: str | os.PathLike) -> np.ndarray:
        """uint8 ``(3, T, H, W)`` of ``path``, decoded on the first call and memory-mapped afterwards."""
        path = Path(path)
        if not path.is_file():
            raise VideoError(f"{path}: video file not found. Check the dataset root and that Videos/ holds this file.")
        entry = self._entry(path)
        if entry.exists():
            return np.load(entry, mmap_mode="r")
        video = read_video(path)
        with atomic_path(entry) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, video)
        return video
