"""Atomic file writes: every file that matters is written to a temporary name beside it, then renamed."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``, on error removed.

    The temporary name keeps ``path``'s extension, for writers that pick a format by it (OpenCV's ``.avi``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".part{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def atomic_write_csv(frame: pd.DataFrame, path: str | os.PathLike, **kwargs) -> Path:
    """Write ``frame`` to ``path`` as CSV (no index unless asked) atomically; return the path."""
    kwargs.setdefault("index", False)
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, **kwargs)
    return Path(path)


def atomic_write_text(text: str, path: str | os.PathLike) -> Path:
    """Write ``text`` to ``path`` atomically; return the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be read (truncated, corrupt, or not a checkpoint)."""


class CheckpointMismatch(ValueError):
    """A readable checkpoint made with other settings: a reader raises it, and :func:`read_checkpoint` passes it
    on at once (an older copy would not match either)."""


def previous_checkpoints(path: str | os.PathLike, keep: int = 1) -> list[Path]:
    """Older copies :func:`rotate_checkpoint` keeps beside ``path``: ``last.1.pt`` (newest) ... ``last.<keep>.pt``."""
    path = Path(path)
    return [path.with_name(f"{path.stem}.{i}{path.suffix}") for i in range(1, keep + 1)]


@contextlib.contextmanager
def rotate_checkpoint(path: str | os.PathLike, keep: int = 1) -> Iterator[Path]:
    """Like :func:`atomic_path`, but the replaced file is kept as ``<stem>.1<suffix>`` (and older ones shifted up to
    ``keep``), so that a checkpoint damaged later (a full disk, a copy cut short) leaves one to fall back to."""
    path = Path(path)
    with atomic_path(path) as tmp:
        yield tmp
        if path.exists() and keep > 0:
            older = previous_checkpoints(path, keep)
            for src, dst in zip(reversed(older[:-1]), reversed(older[1:]), strict=True):
                if src.exists():
                    os.replace(src, dst)
            os.replace(path, older[0])


def resume_source(last: Path, chosen: Path | None, keep: int) -> tuple[Path, int]:
    """The checkpoint a run resumes from, and how many older copies of it :func:`read_checkpoint` may fall back
    to: the ``resume_from`` file the user chose (it must exist; no fallback), else ``last`` with ``keep``."""
    if chosen is None:
        return last, keep
    if not chosen.is_file():
        raise FileNotFoundError(f"resume_from: {chosen} is not a file; name a checkpoint such as {last} or "
                                f"{last.with_name(last.stem + '.1' + last.suffix)}")
    return chosen, 0


def read_checkpoint(path: str | os.PathLike, reader: Callable[[Path], Any], keep: int = 1) -> tuple[Any, Path]:
    """``reader(path)``, or -- when ``path`` cannot be read -- ``reader`` of the newest readable older copy
    (:func:`rotate_checkpoint`), saying so. Returns ``(what reader returned, the file it came from)``.

    Raises :class:`CheckpointError` naming the file, why, and the ways out when no copy can be read.
    """
    path = Path(path)
    errors = []
    for candidate in [path, *previous_checkpoints(path, keep)]:
        if not candidate.is_file():
            continue
        try:
            result = reader(candidate)
        except CheckpointMismatch:
            raise
        except Exception as exc:  # torch.load raises RuntimeError, EOFError, UnpicklingError, zipfile errors...
            errors.append(f"{candidate.name}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            continue
        if candidate != path:
            print(f"checkpoint: {path} cannot be read ({errors[0]}); resuming from the previous one, {candidate}",
                  flush=True)
        return result, candidate
    raise CheckpointError(f"{path} cannot be read ({'; '.join(errors) or 'missing'}): it is truncated or corrupt, and "
                          "there is no readable earlier copy beside it. Restore it from a backup, or start over "
                          "with resume=False (or another checkpoint_dir).")
