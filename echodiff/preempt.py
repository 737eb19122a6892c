"""Stopping cleanly before a time limit, so that a requeued job resumes from a fresh checkpoint.

Slurm signals the batch script shortly before the limit (``#SBATCH --signal=B:USR1@300``); the script's trap
creates the file named by ``$ECHODIFF_STOP_FILE`` (a file works across papermill's kernel and accelerate's
processes, where a signal would not reach). Training loops call :func:`check` after every step: when the file
exists they write their checkpoint and raise :class:`StopRequested`; the script then requeues the job.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

STOP_FILE_ENV = "ECHODIFF_STOP_FILE"
#: Exit status of a command-line trainer that stopped on request (EX_TEMPFAIL: "try again").
EXIT_CODE = 75


class StopRequested(RuntimeError):
    """Training stopped on request after writing its checkpoint; run again (or requeue) to resume."""


def stop_requested() -> bool:
    """Whether ``$ECHODIFF_STOP_FILE`` is set and exists."""
    path = os.environ.get(STOP_FILE_ENV)
    return bool(path) and Path(path).exists()


def check(where: str) -> None:
    """Raise :class:`StopRequested` (mentioning ``where``) when a stop was requested."""
    if stop_requested():
        raise StopRequested(f"stop requested via {os.environ[STOP_FILE_ENV]}; checkpoint written at {where}")


def terminate_on_sigterm() -> None:
    """Turn SIGTERM (``scancel``, a preemption, Slurm's time limit) into ``KeyboardInterrupt``, so that open MLflow
    runs end as KILLED instead of staying RUNNING (main thread only)."""
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)


def run_main(main: Callable[[], int], name: str) -> NoReturn:
    """Exit with ``main()``'s status; a stop on request exits with :data:`EXIT_CODE` and one line, no traceback;
    SIGTERM ends the open MLflow runs as KILLED (:func:`terminate_on_sigterm`)."""
    terminate_on_sigterm()
    try:
        raise SystemExit(main())
    except StopRequested as stop:
        print(f"{name}: {stop}")
        raise SystemExit(EXIT_CODE) from None
