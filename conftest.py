"""Test-session isolation: MLflow runs, caches and notebook outputs go to a temporary folder, not the repo's
store. Set at import, so nbval's kernels and the subprocesses that tests start inherit it.

Under pytest-xdist (``make test`` runs two workers) every worker gets its own folder: the workers inherit the
controller's environment, and two processes writing one SQLite store would contend for its lock. Each worker's
PyTorch uses one thread (two workers, two cores): two 2-thread OpenMP pools on two cores slow each other
several-fold."""

import os
import tempfile

import pytest
from xdist.scheduler import LoadFileScheduling

_worker = os.environ.get("PYTEST_XDIST_WORKER")
_inherited = os.environ.get("ECHODIFF_TEST_SESSION")  # the controller's folder, when this is a worker
_session = tempfile.mkdtemp(prefix=f"echodiff-tests-{_worker or 'main'}-")
for _key, _value in {"MLFLOW_TRACKING_URI": f"sqlite:///{_session}/mlflow.db",
                     "ECHODIFF_CACHE": os.path.join(_session, "cache"),
                     "ECHODIFF_OUTPUTS": os.path.join(_session, "outputs")}.items():  # relative outputs/... paths
    if _key not in os.environ or (_worker and _inherited and _inherited in os.environ[_key]):
        os.environ[_key] = _value
os.environ["ECHODIFF_TEST_SESSION"] = _session
os.environ.setdefault("MPLBACKEND", "Agg")
if _worker:
    os.environ.setdefault("OMP_NUM_THREADS", "1")


class _OneWorkerPerFile(LoadFileScheduling):
    """``make test``'s xdist scheduling: each test file goes whole to one worker (its module fixtures, e.g. the Slurm
    cluster, live in one process), and all notebooks go, in order, to one worker and its MLflow store: nbval's 05
    reports the pipeline runs of 00-04, 06 explores the cascade that 02 trained."""

    def _split_scope(self, nodeid: str) -> str:
        return "notebooks" if nodeid.startswith("notebooks/") else super()._split_scope(nodeid)


@pytest.hookimpl(tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log) -> LoadFileScheduling:
    return _OneWorkerPerFile(config, log)
