"""Test-session isolation: MLflow runs, caches and notebook outputs go to a temporary folder, not the repo's
store. Set at import, so nbval's kernels and the subprocesses that tests start inherit it."""

import os
import tempfile

_session = tempfile.mkdtemp(prefix="echodiff-tests-")
os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{_session}/mlflow.db")
os.environ.setdefault("ECHODIFF_CACHE", os.path.join(_session, "cache"))
os.environ.setdefault("ECHODIFF_OUTPUTS", os.path.join(_session, "outputs"))  # relative outputs/... paths
os.environ.setdefault("MPLBACKEND", "Agg")
