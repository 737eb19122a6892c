"""The MLflow store location and the papermill pipeline runner, as real processes on a real SQLite store."""

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml

from echodiff import tracking
from echodiff.config import load_params, repo_root


def test_default_store_is_the_repos_mlruns_whatever_the_cwd(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("ECHODIFF_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "home").mkdir()
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path / 'home' / 'mlruns' / 'mlflow.db'}"
    with tracking.stage_run("unit", {"alpha": 1, "names": ["a", "b"]}, experiment="store-test") as run:
        tracking.log_table(pd.DataFrame({"x": [1, 2]}), "table.csv")
    stored = tmp_path / "home" / "mlruns" / "artifacts" / run.info.run_id / "artifacts" / "table.csv"
    assert pd.read_csv(stored).x.tolist() == [1, 2]
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlflow.db").exists()
    finished = mlflow.get_run(run.info.run_id)
    assert finished.info.status == "FINISHED" and finished.data.params == {"alpha": "1", "names": "['a', 'b']"}
    assert finished.data.tags["echodiff.stage"] == "unit"
    # the MLflow UI opens it in its model-training view (runs and metrics), not MLflow 3's GenAI view
    assert mlflow.get_experiment_by_name("store-test").tags["mlflow.experimentKind"] == "custom_model_development"


def test_failing_stage_body_marks_run_failed(tmp_path):
    with pytest.raises(RuntimeError), tracking.stage_run("boom", {}, experiment="store-test") as run:
        raise RuntimeError("boom")
    assert mlflow.get_run(run.info.run_id).info.status == "FAILED"


def test_a_requeued_slurm_job_carries_on_in_its_own_run(monkeypatch):
    """A stage CLI started again by `scontrol requeue` (same SLURM_JOB_ID, SLURM_RESTART_COUNT > 0) reopens the run
    its first start left KILLED, under the new process; another job, or a finished run, gets a new run."""
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    with pytest.raises(KeyboardInterrupt), tracking.stage_run("requeued", {"a": 1}, experiment="requeue-test") as first:
        raise KeyboardInterrupt  # the time-limit signal, as preempt turns it into an interrupt
    assert mlflow.get_run(first.info.run_id).info.status == "KILLED"
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # what Slurm sets in a requeued job
    with tracking.stage_run("requeued", {"a": 1}, experiment="requeue-test") as second:
        pass
    reopened = mlflow.get_run(second.info.run_id)
    assert second.info.run_id == first.info.run_id and reopened.info.status == "FINISHED"
    assert reopened.data.tags["echodiff.slurm_job"] == "4242"
    assert reopened.data.tags["echodiff.pid"] == str(os.getpid())
    with tracking.stage_run("requeued", {"a": 1}, experiment="requeue-test") as third:
        pass
    monkeypatch.setenv("SLURM_JOB_ID", "4243")
    with tracking.stage_run("requeued", {"a": 1}, experiment="requeue-test") as fourth:
        pass
    assert len({first.info.run_id, third.info.run_id, fourth.info.run_id}) == 3


def test_processes_opening_a_new_sqlite_store_together_all_succeed(tmp_path):
    """A Slurm array's tasks start together on a store nobody has opened: each creates the database's tables on
    first use, and without a lock all but one die with "table ... already exists"."""
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    code = "from echodiff import tracking; tracking.setup('together')"
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri)
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, "\n".join(e[-1500:] for e in errors)
    assert mlflow.tracking.MlflowClient(uri).get_experiment_by_name("together") is not None


def test_load_params_overrides(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("a: 1\nb: text\n")
    assert load_params(path, ["a=2", "c=[1, 2]"]) == {"a": 2, "b": "text", "c": [1, 2]}
    with pytest.raises(ValueError, match="key=value"):
        load_params(path, ["oops"])
    with pytest.raises(FileNotFoundError, match="parameter file not found"):
        load_params(tmp_path / "missing.yaml")


def _pipeline(tmp_path: Path, **params) -> Path:
    stage_params = tmp_path / "data.yaml"
    stage_params.write_text(yaml.safe_dump(params))
    spec = {"experiment": "pipeline-test", "stages": [
        {"name": "data", "notebook": "notebooks/00_data.ipynb", "params": str(stage_params)}]}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'store.db'}")
    return subprocess.run([sys.executable, "-m", "echodiff.pipeline", *args, "--out", str(tmp_path / "runs")],
                          capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)


def test_pipeline_runs_notebook_00_with_nested_run(tmp_path):
    root = tmp_path / "phantom"
    proc = _run(["-f", str(_pipeline(tmp_path, data_root=str(root), phantom_videos=6, phantom_seed=4))], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(pd.read_csv(root / "FileList.csv")) == 6
    assert "wall time per stage" in proc.stdout and "  data " in proc.stdout and "  total " in proc.stdout
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'store.db'}")
    try:
        runs = mlflow.search_runs(experiment_names=["pipeline-test"])
        parent = runs[runs["tags.mlflow.runName"] == "pipeline"].iloc[0]
        child = runs[runs["tags.mlflow.runName"] == "data"].iloc[0]
        assert child["tags.mlflow.parentRunId"] == parent.run_id
        assert child.status == "FINISHED" and child["params.phantom_videos"] == "6"
        assert child["metrics.ef_tracing_max_abs_diff"] < 1e-3 and child["metrics.stage_seconds"] > 0
        artifacts = {a.path for a in mlflow.tracking.MlflowClient().list_artifacts(child.run_id)}
        assert {"FileList.csv", "ef_histogram.png", "frames.png", "00_data.ipynb"} <= artifacts
        assert any(a.endswith("_tracing.gif") for a in artifacts)
    finally:
        mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    assert (tmp_path / "runs" / parent.run_id / "data" / "00_data.ipynb").is_file()


def test_failing_stage_stops_with_the_cells_error(tmp_path):
    proc = _run(["-f", str(_pipeline(tmp_path, data_root=str(tmp_path / "absent"), make_phantom=False))], tmp_path)
    assert proc.returncode == 1
    assert "DatasetError" in proc.stderr and "dataset folder not found" in proc.stderr
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'store.db'}")
    try:
        runs = mlflow.search_runs(experiment_names=["pipeline-test"])
        child = runs[runs["tags.mlflow.runName"] == "data"].iloc[0]
        assert child.status == "FAILED"
        assert "00_data.ipynb" in {a.path for a in mlflow.tracking.MlflowClient().list_artifacts(child.run_id)}
    finally:
        mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])


def test_unknown_stage_is_a_clear_error(tmp_path):
    proc = _run(["-f", str(_pipeline(tmp_path)), "--only", "nope"], tmp_path)
    assert proc.returncode == 2 and "unknown stage(s) ['nope']" in proc.stderr


def test_repo_root_is_the_checkout():
    assert (repo_root() / "pyproject.toml").is_file() and (repo_root() / "notebooks" / "00_data.ipynb").is_file()


def _tiny_notebook(path: Path, params: str, body: str) -> Path:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    cell = nbformat.v4.new_code_cell(params)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell, nbformat.v4.new_code_cell(body)]
    nbformat.write(nb, path)
    return path


def _produce_and_consume(tmp_path: Path) -> tuple[Path, Path]:
    """Two tiny stage notebooks: `produce` logs its `value` as an artifact, `consume` reads it from the run id
    `source` and logs it as a metric."""
    produce = _tiny_notebook(tmp_path / "produce.ipynb", "value = 1\nmlflow_run_id = None\nexperiment = 'x'", (
        "from echodiff import tracking\nimport pathlib, tempfile\n"
        "run = tracking.start_stage('produce', {'value': value}, run_id=mlflow_run_id, experiment=experiment)\n"
        "out = pathlib.Path(tempfile.mkdtemp()) / 'out.txt'\nout.write_text(str(value))\n"
        "tracking.log_file(out, 'result')\ntracking.end_stage()"))
    consume = _tiny_notebook(tmp_path / "consume.ipynb", "source = None\nmlflow_run_id = None\nexperiment = 'x'", (
        "from echodiff import tracking\nimport mlflow\n"
        "value = tracking.fetch_artifact(source, 'result/out.txt').read_text()\n"
        "run = tracking.start_stage('consume', {'source': source}, run_id=mlflow_run_id, experiment=experiment)\n"
        "mlflow.log_metric('value', float(value))\ntracking.end_stage()"))
    return produce, consume


def test_pipeline_skips_unchanged_stages_and_wires_run_ids(tmp_path):
    produce, consume = _produce_and_consume(tmp_path)
    spec = {"experiment": "pipeline-skip", "stages": [
        {"name": "produce", "notebook": str(produce)},
        {"name": "consume", "notebook": str(consume), "inputs": {"source": "produce"}}]}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(spec))
    first = _run(["-f", str(path)], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    second = _run(["-f", str(path)], tmp_path)
    assert second.returncode == 0 and second.stdout.count("skipped") == 2, second.stdout
    third = _run(["-f", str(path), "--from", "consume"], tmp_path)
    assert third.stdout.count("skipped") == 1 and "stage consume done" in third.stdout, third.stdout
    changed = _run(["-f", str(path), "-p", "value=7", "--only", "produce"], tmp_path)
    assert "stage produce done" in changed.stdout and "consume" not in changed.stdout, changed.stdout
    spec["stages"][0]["overrides"] = {"value": 3}  # a pipeline file's own override of a stage parameter
    path.write_text(yaml.safe_dump(spec))
    overridden = _run(["-f", str(path)], tmp_path)
    assert overridden.stdout.count("done") == 2, overridden.stdout
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'store.db'}")
    try:
        runs = mlflow.search_runs(experiment_names=["pipeline-skip"])
        produced = runs[runs["tags.mlflow.runName"] == "produce"].sort_values("start_time")
        consumed = runs[runs["tags.mlflow.runName"] == "consume"].sort_values("start_time")
        assert len(produced) == 3 and len(consumed) == 3  # the skipped runs were reused, not repeated
        assert (consumed["params.source"] == produced.run_id.iloc[[0, 0, 2]].values).all()  # wired by run id
        assert consumed["metrics.value"].tolist() == [1.0, 1.0, 3.0]
        assert (tmp_path / "artifacts").is_dir() and not (tmp_path / "mlruns").exists()  # beside the database
    finally:
        mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])


def test_stages_run_as_separate_jobs_share_one_parent_and_a_second_submission_reuses_them(tmp_path):
    """What slurm/submit_pipeline.sh does: --open-parent once, then one `--only STAGE --parent ID` process per stage;
    submitting again (same file, same -p) continues the same parent and re-runs nothing."""
    produce, consume = _produce_and_consume(tmp_path)
    report = _tiny_notebook(tmp_path / "report.ipynb", "source = None\nmlflow_run_id = None\nexperiment = 'x'", (
        "from echodiff import tracking\n"
        "tracking.start_stage('summary', {'source': source}, run_id=mlflow_run_id, experiment=experiment)\n"
        "tracking.end_stage()"))
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({"experiment": "pipeline-chain", "stages": [
        {"name": "produce", "notebook": str(produce)},
        {"name": "consume", "notebook": str(consume), "inputs": {"source": "produce"}},
        {"name": "report", "notebook": str(report), "inputs": {"source": "consume"}}]}))  # consume's run: later;
    # its notebook's own kind of stage ('summary') is not the pipeline's name for it: still found for reuse
    parents, outputs = [], []
    for _ in range(2):  # the chain, submitted twice
        opened = _run(["-f", str(path), "--open-parent", "-p", "value=5"], tmp_path)
        assert opened.returncode == 0, opened.stderr[-2000:]
        parents.append(opened.stdout.strip().splitlines()[-1])
        for stage in ("produce", "consume", "report"):
            job = _run(["-f", str(path), "--only", stage, "--parent", parents[-1], "-p", "value=5"], tmp_path)
            assert job.returncode == 0, job.stderr[-3000:]
            outputs.append(job.stdout)
    assert parents[0] == parents[1]
    assert [f"stage {s} done" in out for s, out in zip(["produce", "consume", "report"], outputs, strict=False)] == [
        True] * 3
    assert all("skipped" in out and " done" not in out.replace("pipeline: finished", "") for out in outputs[3:])
    other = _run(["-f", str(path), "--open-parent", "-p", "value=6"], tmp_path)  # another study: another parent
    assert other.returncode == 0 and other.stdout.strip().splitlines()[-1] != parents[0]
    unknown = _run(["-f", str(path), "--only", "produce", "--parent", "0" * 32], tmp_path)
    assert unknown.returncode == 2 and "0" * 32 in unknown.stderr
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'store.db'}")
    try:
        runs = mlflow.search_runs(experiment_names=["pipeline-chain"])
        children = runs[runs["tags.mlflow.parentRunId"].notna()]
        assert sorted(children["tags.mlflow.runName"]) == ["consume", "produce", "report"]  # none duplicated
        assert set(children["tags.mlflow.parentRunId"]) == {parents[0]}
        assert (children.status == "FINISHED").all()
        assert mlflow.get_run(parents[0]).info.status == "FINISHED"
        assert float(children[children["tags.mlflow.runName"] == "consume"]["metrics.value"].iloc[0]) == 5.0
    finally:
        mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])


def test_models_are_registered_with_new_versions():
    import mlflow.pytorch
    import torch

    client = mlflow.tracking.MlflowClient(tracking.tracking_uri())
    for _ in range(2):
        with tracking.stage_run("unit", {}, experiment="registry-test"):
            tracking.log_torch_model(torch.nn.Linear(2, 1), None, "model", "echodiff-registry-test")
    versions = client.search_model_versions("name='echodiff-registry-test'")
    assert sorted(int(v.version) for v in versions) == [1, 2]
    loaded = mlflow.pytorch.load_model("models:/echodiff-registry-test/2")
    assert isinstance(loaded, torch.nn.Linear)


def test_artifact_folders_are_registered(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.yaml").write_text("a: 1\n")
    client = mlflow.tracking.MlflowClient(tracking.tracking_uri())
    for _ in range(2):
        with tracking.stage_run("unit", {}, experiment="registry-test"):
            tracking.log_file(tmp_path / "model" / "config.yaml", "model")
            version = tracking.register_artifact("model", "echodiff-folder-test")
    assert version == "2"
    source = client.get_model_version("echodiff-folder-test", "2").source
    assert source.endswith("/model")


def test_a_terminated_pipeline_ends_its_runs_killed_and_orphans_are_closed(tmp_path):
    """SIGTERM (scancel, a time limit) mid-stage: parent and stage runs end KILLED, not RUNNING forever. A run left
    RUNNING by a process that died without a word (kill -9) is marked FAILED by the next pipeline on the host."""
    import signal
    import time

    from echodiff import tracking

    uri = f"sqlite:///{tmp_path / 'store.db'}"
    spec = _pipeline(tmp_path, data_root=str(tmp_path / "phantom"), phantom_videos=40, phantom_seed=4)
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri)
    client = mlflow.tracking.MlflowClient(uri)
    client.search_experiments()  # this process creates the store's tables before the pipeline opens it
    proc = subprocess.Popen([sys.executable, "-m", "echodiff.pipeline", "-f", str(spec), "--out",
                             str(tmp_path / "runs")], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and not (tmp_path / "phantom" / "Videos").is_dir():  # the stage is running
        time.sleep(0.5)
    time.sleep(2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out[-3000:]
    experiment = client.get_experiment_by_name("pipeline-test")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert runs["pipeline"].info.status == "KILLED" and runs["data"].info.status == "KILLED", out[-2000:]
    # an orphan: RUNNING, owned by a process of this host that no longer exists
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = client.create_run(experiment.experiment_id, run_name="orphan",
                               tags={**tracking.owner_tags(), "echodiff.pid": str(dead.pid)})
    alive = client.create_run(experiment.experiment_id, run_name="alive", tags=tracking.owner_tags())  # this test
    done = subprocess.run([sys.executable, "-m", "echodiff.pipeline", "-f", str(spec), "--out",
                           str(tmp_path / "runs")], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"run {orphan.info.run_id} (orphan) was left RUNNING" in done.stdout
    assert client.get_run(orphan.info.run_id).info.status == "FAILED"
    assert "ended without closing" in client.get_run(orphan.info.run_id).data.tags["echodiff.note"]
    assert client.get_run(alive.info.run_id).info.status == "RUNNING"
