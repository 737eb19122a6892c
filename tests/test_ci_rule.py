"""Under CI=true a test of a real component that is missing fails; elsewhere it skips with its reason."""

import os
import subprocess
import sys

from echodiff.config import repo_root


def test_a_missing_real_component_skips_outside_ci_and_fails_under_ci(tmp_path):
    """tests/ci_rule.py (the hooks tests/conftest.py uses), on a probe test whose component is absent, run by a real
    pytest process."""
    (tmp_path / "conftest.py").write_text((repo_root() / "tests" / "ci_rule.py").read_text())
    (tmp_path / "test_probe.py").write_text(
        "import pytest\n\n@pytest.mark.real_component\n@pytest.mark.skipif(True, reason='probe component absent')\n"
        "def test_needs_it():\n    pass\n")
    runs = {}
    for ci in ("true", ""):
        env = {k: v for k, v in os.environ.items() if k != "CI"} | ({"CI": ci} if ci else {})
        runs[ci] = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
                                   str(tmp_path)], capture_output=True, text=True, timeout=300, env=env,
                                  cwd=tmp_path)
    assert runs["true"].returncode != 0 and "CI=true: a real component" in runs["true"].stdout
    assert "probe component absent" in runs["true"].stdout
    assert runs[""].returncode == 0 and "1 skipped" in runs[""].stdout
