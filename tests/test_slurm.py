"""The slurm/ scripts on a real single-node Slurm started by the test (see slurm_cluster.py)."""

import os
import subprocess
import time

import mlflow
import pytest
import torch
import yaml
from slurm_cluster import available, slurm_cluster, wait_for_jobs

from echodiff.config import repo_root

pytestmark = [pytest.mark.real_component, pytest.mark.skipif(available() is not None, reason=str(available()))]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with slurm_cluster(tmp_path_factory.mktemp("slurm")) as env:
        yield env


def test_submitted_pipeline_chains_stages_into_mlflow_runs(cluster, tmp_path):
    pipeline = tmp_path / "smoke.yaml"  # the notebooks' own (seconds-long) defaults
    jobs_env = dict(cluster, GPUS="0", ECHODIFF_OUTPUTS=str(tmp_path / "outputs"))  # not nbval's output folders
    pipeline.write_text(yaml.safe_dump({"experiment": "slurm-smoke", "stages": [
        {"name": "data", "notebook": "notebooks/00_data.ipynb"},
        {"name": "ef_regression", "notebook": "notebooks/01_ef_regression.ipynb"}]}))
    proc = subprocess.run(["slurm/submit_pipeline.sh", str(pipeline), "-p", "epochs=2"], cwd=repo_root(),
                          capture_output=True, text=True, env=jobs_env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    jobs = dict(line.split() for line in proc.stdout.splitlines())
    parent = jobs.pop("parent")
    assert list(jobs) == ["data", "ef_regression"]
    dependency = subprocess.run(["scontrol", "show", "job", jobs["ef_regression"]], capture_output=True,
                                text=True, env=cluster).stdout
    assert f"afterok:{jobs['data']}" in dependency
    states = wait_for_jobs(cluster, list(jobs.values()), timeout=900)
    logs = {s: (repo_root() / "slurm" / "logs" / f"echodiff-{s}-{j}.out") for s, j in jobs.items()}
    assert set(states.values()) == {"COMPLETED"}, {s: p.read_text()[-2000:] for s, p in logs.items()}
    mlflow.set_tracking_uri(cluster["MLFLOW_TRACKING_URI"])  # the store the jobs wrote to
    runs = mlflow.search_runs(experiment_names=["slurm-smoke"])
    children = runs[runs["tags.mlflow.parentRunId"].notna()]
    assert sorted(children["tags.mlflow.runName"]) == ["data", "ef_regression"]
    assert set(children["tags.mlflow.parentRunId"]) == {parent}  # one study, one parent, whichever job ran
    assert (children.status == "FINISHED").all()
    assert "metrics.test_mae" in children and children["metrics.test_mae"].notna().any()
    assert children[children["tags.mlflow.runName"] == "ef_regression"]["params.epochs"].iloc[0] == "2"  # -p
    # the same chain submitted again: same parent, finished stages reused, no new stage runs
    again = subprocess.run(["slurm/submit_pipeline.sh", str(pipeline), "-p", "epochs=2"], cwd=repo_root(),
                           capture_output=True, text=True, env=jobs_env, timeout=120)
    assert again.returncode == 0, again.stderr
    jobs2 = dict(line.split() for line in again.stdout.splitlines())
    assert jobs2.pop("parent") == parent
    states = wait_for_jobs(cluster, list(jobs2.values()), timeout=600)
    assert set(states.values()) == {"COMPLETED"}
    runs = mlflow.search_runs(experiment_names=["slurm-smoke"])
    assert sorted(runs[runs["tags.mlflow.parentRunId"].notna()]["tags.mlflow.runName"]) == ["data", "ef_regression"]
    assert len(runs[runs["tags.mlflow.parentRunId"].isna()]) == 1
    log = (repo_root() / "slurm" / "logs" / f"echodiff-ef_regression-{jobs2['ef_regression']}.out").read_text()
    assert "unchanged since run" in log and "skipped" in log


def test_time_limit_signal_checkpoints_and_the_requeued_job_resumes(cluster, tmp_path, phantom_root):
    params = tmp_path / "ef.yaml"
    checkpoints = tmp_path / "checkpoints"
    params.write_text(yaml.safe_dump({
        "data_root": str(phantom_root), "checkpoint_dir": str(checkpoints), "frames": 8, "fps": 8,
        "image_size": 28, "width": 4, "batch_size": 2, "lr": 1e-3, "epochs": 8, "mixed_precision": "no",
        "num_workers": 0, "bias": None, "eval_batch_size": 8, "pad": 4, "experiment": "slurm-requeue"}))
    proc = subprocess.run(["sbatch", "--parsable", "slurm/train_ef.sbatch", str(params)], cwd=repo_root(),
                          capture_output=True, text=True, env=cluster, timeout=60)
    assert proc.returncode == 0, proc.stderr
    job = proc.stdout.strip()
    log = repo_root() / "slurm" / "logs" / f"echodiff-ef-{job}.out"
    deadline = time.time() + 600
    while not (checkpoints / "last.pt").exists():  # epoch 0 is done
        assert time.time() < deadline, log.read_text()[-3000:] if log.exists() else "no log"
        time.sleep(1)
    # what Slurm does before the time limit with --signal=B:USR1@300
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], env=cluster, check=True)
    states = wait_for_jobs(cluster, [job], timeout=900)
    text = log.read_text()
    assert states[job] == "COMPLETED", text[-3000:]
    assert "requeueing job" in text and "restart 1" in text, text[-3000:]
    assert "ef_training: resuming from" in text, text[-3000:]
    final = torch.load(checkpoints / "last.pt", map_location="cpu", weights_only=False)
    assert final["epoch"] == 7 and [row["epoch"] for row in final["history"]] == list(range(8))
    show = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, env=cluster).stdout
    assert "Restarts=1" in show
    assert not os.path.exists(repo_root() / "slurm" / "logs" / f"stop-{job}")
