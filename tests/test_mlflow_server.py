"""The pipeline against a real `mlflow server` (SQLite backend, local artifact root) on 127.0.0.1, started and
stopped here: nested runs, the executed notebook as an artifact, the model registry, artifacts fetched back."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest
import yaml

from echodiff import tracking


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    port = _free_port()
    cmd = [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}", "--serve-artifacts",
           "--artifacts-destination", (tmp_path / "server-artifacts").as_uri(), "--workers", "1"]
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                if urllib.request.urlopen(f"{url}/health", timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(0.5)
            assert proc.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
        else:
            pytest.fail("mlflow server did not answer /health in 120 s: " + (tmp_path / "server.log").read_text())
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    with socket.socket() as s:  # nothing left listening
        assert s.connect_ex(("127.0.0.1", port)) != 0


def test_pipeline_and_registry_against_a_real_mlflow_server(server, tmp_path, monkeypatch):
    stage_params = tmp_path / "data.yaml"
    stage_params.write_text(yaml.safe_dump({"data_root": str(tmp_path / "phantom"), "phantom_videos": 6,
                                            "phantom_seed": 2}))
    spec = tmp_path / "pipeline.yaml"
    spec.write_text(yaml.safe_dump({"experiment": "server-test", "stages": [
        {"name": "data", "notebook": "notebooks/00_data.ipynb", "params": str(stage_params)}]}))
    env = dict(os.environ, MLFLOW_TRACKING_URI=server)
    proc = subprocess.run([sys.executable, "-m", "echodiff.pipeline", "-f", str(spec), "--out", str(tmp_path / "runs")],
                          capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]

    previous = mlflow.get_tracking_uri()  # the suite's store: later tests read it through mlflow's global URI
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    try:
        check_server_store(server, tmp_path)
    finally:
        mlflow.set_tracking_uri(previous)


def check_server_store(server: str, tmp_path: Path) -> None:
    tracking.setup("server-test")
    runs = mlflow.search_runs(experiment_names=["server-test"])
    parent = runs[runs["tags.mlflow.runName"] == "pipeline"].iloc[0]
    child = runs[runs["tags.mlflow.runName"] == "data"].iloc[0]
    assert child["tags.mlflow.parentRunId"] == parent.run_id and child.status == "FINISHED"
    assert child["params.phantom_videos"] == "6" and child["metrics.ef_tracing_max_abs_diff"] < 1e-3
    # artifacts went through the server into its artifact root, and come back by run id
    notebook = tracking.fetch_artifact(child.run_id, "00_data.ipynb")
    assert notebook.stat().st_size > 1000
    assert any((tmp_path / "server-artifacts").rglob("00_data.ipynb"))

    # the model registry of the server: a folder registered as a new version
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.yaml").write_text("frames: 16\n")
    with tracking.stage_run("register", {"what": "folder"}, experiment="server-test"):
        tracking.log_file(folder / "config.yaml", "model")
        first = tracking.register_artifact("model", "server-test-model")
        second = tracking.register_artifact("model", "server-test-model")
    assert (first, second) == ("1", "2")
    client = mlflow.tracking.MlflowClient(server)
    assert {v.version for v in client.search_model_versions("name='server-test-model'")} == {"1", "2"}
