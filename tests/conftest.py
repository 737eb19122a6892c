"""Shared fixtures: one small phantom written once per test session (real AVIs, real CSVs)."""

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
