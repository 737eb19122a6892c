"""Shared fixtures: one small phantom written once per test session (real AVIs, real CSVs) and tiny untrained
models on disk; and the rule for tests of real components, whose hooks live in tests/ci_rule.py."""

import os
import shutil
from pathlib import Path

import mlflow
import pytest
import torch
from ci_rule import pytest_configure, pytest_runtest_makereport  # noqa: F401 -- the hooks, re-exported to pytest
from helpers import PHANTOM_N, PHANTOM_SEED, tiny_config

from echodiff import phantom
from echodiff.diffusion import CascadeModel, save_model_folder
from echodiff.models.ef_regressor import EFRegressor


@pytest.fixture(scope="session")
def phantom_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 16-video phantom (seed 3); tests must not modify it -- copy it first (see ``phantom_copy``)."""
    root = tmp_path_factory.mktemp("phantom")
    phantom.write_phantom(root, n=PHANTOM_N, seed=PHANTOM_SEED, workers=2)
    return root


@pytest.fixture
def phantom_copy(phantom_root: Path, tmp_path: Path) -> Path:
    """A private copy of the session phantom that a test may break."""
    dst = tmp_path / "copy"
    shutil.copytree(phantom_root, dst)
    return dst


@pytest.fixture(autouse=True)
def _mlflow_reads_the_session_store():
    """After every test, mlflow's process-wide tracking URI is the session's store again: a test that pointed it
    elsewhere (its own SQLite file, a server, the Slurm jobs' store) must not send later tests' reads there."""
    yield
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])


@pytest.fixture(scope="module")
def cascade_and_regressor() -> tuple[CascadeModel, EFRegressor]:
    """An untrained one-stage cascade (``tiny_config(1)``) and EF regressor in memory, the same in every module."""
    torch.manual_seed(0)
    return CascadeModel(tiny_config(1)).eval(), EFRegressor(width=4, bias=50.0).eval()


@pytest.fixture(scope="session")
def saved_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An untrained one-stage cascade folder (``tiny_config(1)``: 4 frames at 16 px, 8 fps) and an untrained
    EF-regressor checkpoint for those clips, on disk as stages 02 and 01 write them."""
    folder = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    save_model_folder(folder / "cascade", CascadeModel(tiny_config(1)).eval())
    regressor = EFRegressor(width=4, bias=50.0)
    torch.save({"model": regressor.state_dict(), "model_config": regressor.config,
                "train_config": {"frames": 4, "fps": 8.0, "image_size": 16}}, folder / "regressor.pt")
    return folder / "cascade", folder / "regressor.pt"
