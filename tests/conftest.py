"""Shared fixtures: one small phantom written once per test session (real AVIs, real CSVs); and the rule for
tests of real components (Slurm, accelerate's launcher): they are marked ``real_component`` and skip with their
reason when the component is missing, except under ``CI=true``, where that skip is a failure."""

import os
from pathlib import Path

import pytest

from echodiff import phantom

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
    import shutil

    dst = tmp_path / "copy"
    shutil.copytree(phantom_root, dst)
    return dst


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "real_component: needs a real external component (Slurm, accelerate); "
                            "a skip for its absence fails under CI=true")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("CI") == "true" and item.get_closest_marker("real_component"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"CI=true: a real component this test needs is missing ({reason}); install it, see README"
