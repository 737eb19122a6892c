"""Shared fixtures: one small phantom written once per test session (real AVIs, real CSVs); and the rule for
tests of real components (Slurm, accelerate's launcher): they are marked ``real_component`` and skip with their
reason when the component is missing, except under ``CI=true``, where that skip is a failure."""

import os
import shutil
from pathlib import Path

import pytest
import torch
from test_diffusion import tiny_config

from echodiff import phantom
from echodiff.diffusion import CascadeModel, save_model_folder
from echodiff.models.ef_regressor import EFRegressor

PHANTOM_N = 16
PHANTOM_SEED = 3


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


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "real_component: needs a real external component (Slurm, accelerate, Chromium); "
                            "a skip for its absence fails under CI=true")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("CI") == "true" and item.get_closest_marker("real_component"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"CI=true: a real component this test needs is missing ({reason}); install it, see README"
