"""The README's two interactive commands, run as documented: `make lab` serves the notebooks with the project's
kernel, and `mlflow ui` (its exact line, from a folder holding an `mlruns/` store) shows the runs a stage logged."""

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest

from echodiff.config import repo_root

pytestmark = pytest.mark.real_component
REPO = repo_root()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get_json(url: str, proc: subprocess.Popen, log: Path, body: dict | None = None, timeout: float = 180) -> dict:
    """GET ``url`` (POST ``body`` as JSON, if given) once the server answers; fail with the server's log if it
    exits or stays silent."""
    deadline = time.monotonic() + timeout
    data = None if body is None else json.dumps(body).encode()
    while True:
        try:
            request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=5) as answer:
                return json.loads(answer.read())
        except OSError:
            assert proc.poll() is None, f"the server exited:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no answer from {url}:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)


def _stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def test_make_lab_serves_the_notebooks_with_the_project_kernel(tmp_path):
    port, token = _free_port(), "echodiff-make-lab"
    env = dict(os.environ, JUPYTER_PORT=str(port), JUPYTER_TOKEN=token, BROWSER="true",  # no browser to open here
               JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"), JUPYTER_CONFIG_DIR=str(tmp_path / "config"),
               JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "workspaces"))
    log = tmp_path / "lab.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(["make", "lab"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        contents = _get_json(f"http://127.0.0.1:{port}/api/contents?token={token}", proc, log)
        specs = _get_json(f"http://127.0.0.1:{port}/api/kernelspecs?token={token}", proc, log)
    finally:
        _stop(proc)
    names = {item["name"] for item in contents["content"]}
    assert {f"0{i}_{n}.ipynb" for i, n in enumerate(["data", "ef_regression", "diffusion", "evaluate", "rebalance",
                                                       "report", "explore"])} <= names, names
    assert ".venv/bin/jupyter lab notebooks/" in log.read_text()  # the server runs from echodiff's environment,
    kernel = specs["kernelspecs"][specs["default"]]["spec"]["argv"][0]  # and so does its kernel: "python" is the
    assert kernel == "python" or Path(kernel).parent.resolve() == (REPO / ".venv/bin").resolve(), kernel  # server's


def test_the_readme_mlflow_ui_line_shows_a_logged_run(tmp_path):
    line = re.search(r"^(\.venv/bin/mlflow ui .*)$", (REPO / "README.md").read_text(), re.M).group(1)
    store = tmp_path / "mlruns"
    store.mkdir()
    mlflow.set_tracking_uri(f"sqlite:///{store / 'mlflow.db'}")  # what a stage writes, in a repository's mlruns/
    mlflow.set_experiment("ui-check")
    with mlflow.start_run(run_name="ef_regression"):
        mlflow.log_metric("test_mae", 4.2)
    port = _free_port()
    log = tmp_path / "ui.log"
    command = [str(REPO / shlex.split(line)[0]), *shlex.split(line)[1:], "--port", str(port)]
    with open(log, "w") as out:
        proc = subprocess.Popen(command, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow"
        experiments = _get_json(f"{url}/experiments/search?max_results=100", proc, log)
        experiment = next(e for e in experiments["experiments"] if e["name"] == "ui-check")
        runs = _get_json(f"{url}/runs/search", proc, log, {"experiment_ids": [experiment["experiment_id"]]})
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as page:
            assert page.status == 200 and b"<html" in page.read().lower()
    finally:
        _stop(proc)
    (run,) = runs["runs"]
    assert run["info"]["run_name"] == "ef_regression"
    assert {m["key"]: m["value"] for m in run["data"]["metrics"]} == {"test_mae": 4.2}
