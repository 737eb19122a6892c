"""The rule for tests of real components (Slurm, accelerate's launcher, Chromium): they are marked
``real_component`` and skip with their reason when the component is missing, except under ``CI=true``, where that
skip is a failure. A plugin of its own (tests/conftest.py re-exports its hooks) so that tests/test_ci_rule.py can
run it alone."""

import os

import pytest


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
