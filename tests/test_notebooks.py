"""Every stage notebook: a tagged `parameters` cell papermill can override, outputs stripped in git, and a
params file for `make demo` whose keys all exist in that cell (a typo would be silently ignored otherwise)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from echodiff.config import notebook_parameters, repo_root

NOTEBOOKS = sorted((repo_root() / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def parameters(path: Path) -> set[str]:
    return set(notebook_parameters(path))  # exactly one tagged cell, else a ValueError naming the notebook


def test_every_stage_notebook_is_parameterised_and_clean():
    assert [p.name[:2] for p in NOTEBOOKS] == ["00", "01", "02", "03", "04", "05", "06"]
    for path in NOTEBOOKS:
        # the pipeline's stages (00-05) log into the run it made for them; 06 (interactive) starts its own on Save
        expected = {"experiment"} if path.name.startswith("06") else {"experiment", "mlflow_run_id"}
        assert expected <= parameters(path), path.name
        for cell in json.loads(path.read_text())["cells"]:
            assert not cell.get("outputs") and cell.get("execution_count") is None, f"{path.name}: strip outputs"


PIPELINE_STAGES = [(path.name, stage) for path in sorted((repo_root() / "params/pipeline").glob("*.yaml"))
                   for stage in yaml.safe_load(path.read_text())["stages"]]


@pytest.mark.parametrize(("pipeline", "stage"), PIPELINE_STAGES, ids=lambda x: x if isinstance(x, str) else x["name"])
def test_pipeline_params_only_name_existing_parameters(pipeline, stage):
    names = parameters(repo_root() / stage["notebook"])
    given = set(yaml.safe_load((repo_root() / stage["params"]).read_text()) or {}) | set(stage.get("inputs") or {})
    given |= set(stage.get("overrides") or {})
    assert given <= names, f"{pipeline}, {stage['params']}: unknown parameters {sorted(given - names)}"


def test_make_lab_kernel_is_the_project_environment():
    """`make lab` starts the environment's own JupyterLab; its python3 kernel is this interpreter's."""
    import subprocess
    import sys

    jupyter = Path(sys.executable).with_name("jupyter")
    specs = json.loads(subprocess.run([str(jupyter), "kernelspec", "list", "--json"], capture_output=True,
                                      text=True, check=True).stdout)["kernelspecs"]
    assert Path(specs["python3"]["resource_dir"]).resolve().is_relative_to(Path(sys.prefix).resolve())
    assert "jupyter lab notebooks/" in (repo_root() / "Makefile").read_text()


def test_a_notebook_run_twice_with_its_defaults_trains_twice(tmp_path):
    """nbval runs the notebooks with their default output folders (`outputs/.../defaults`); under the test session's
    ECHODIFF_OUTPUTS each session gets fresh ones, so a second `make test` trains again instead of resuming."""
    logs = []
    for run in ("first", "second"):
        env = dict(os.environ, ECHODIFF_OUTPUTS=str(tmp_path / run / "outputs"))
        proc = subprocess.run([sys.executable, "-m", "papermill", "notebooks/01_ef_regression.ipynb",
                               str(tmp_path / f"{run}.ipynb"), "--log-output"], capture_output=True, text=True,
                              timeout=900, env=env, cwd=repo_root())
        assert proc.returncode == 0, proc.stderr[-3000:]
        logs.append(proc.stdout + proc.stderr)
        assert (tmp_path / run / "outputs" / "01_ef_regression" / "defaults" / "last.pt").is_file()
    assert all("epoch 0: train_loss" in log and "resuming from" not in log for log in logs)


def test_papermill_with_a_misspelt_parameter_stops_before_any_work(tmp_path):
    """papermill only warns about a parameter the notebook does not declare; the notebook's own parameter reading
    (config.notebook_params) makes it an error naming the key and the nearest declared one."""
    proc = subprocess.run([sys.executable, "-m", "papermill", "notebooks/01_ef_regression.ipynb",
                           str(tmp_path / "typo.ipynb"), "-p", "epochz", "3"], capture_output=True, text=True,
                          timeout=600, env=dict(os.environ, ECHODIFF_OUTPUTS=str(tmp_path / "outputs")),
                          cwd=repo_root())
    assert proc.returncode != 0 and "unknown parameter(s) ['epochz']" in proc.stderr, proc.stderr[-2000:]
    assert "did you mean ['epochs']" in proc.stderr
    assert not (tmp_path / "outputs" / "01_ef_regression").exists()
