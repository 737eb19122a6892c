"""The slurm/ scripts on a real single-node Slurm started by the test (see slurm_cluster.py)."""

import os
import subprocess
import time

import mlflow
import pandas as pd
import pytest
import torch
import yaml
from helpers import tiny_config
from slurm_cluster import available, slurm_cluster, wait_for_jobs

from echodiff.config import load_params, notebook_parameters, repo_root
from echodiff.diffusion import CascadeModel, save_model_folder
from echodiff.ef_training import EFTrainConfig, train_ef_regressor

pytestmark = [pytest.mark.real_component, pytest.mark.skipif(available() is not None, reason=str(available()))]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with slurm_cluster(tmp_path_factory.mktemp("slurm")) as env:
        yield env


#: parameters that make the paper study the paper study: where data, checkpoints and results go, the stage of the
#: cascade, the names its runs and models are registered under, and what ``inputs:`` fills in
STUDY_KEYS = {"data_root", "make_phantom", "stage", "checkpoint_dir", "out_dir", "registered_name", "model_name",
              "model", "regressor", "rebalance_run_id"}


def tiny_paper_study(path, data_root, cache):
    """params/pipeline/paper_2SCM.yaml as it is (its stages, recipe files, inputs, experiment), each stage's
    sizes overridden with its notebook's seconds-long defaults, on the test's phantom."""
    spec = yaml.safe_load((repo_root() / "params/pipeline/paper_2SCM.yaml").read_text())
    for stage in spec["stages"]:
        recipe = load_params(stage.get("params"), stage.get("overrides") or {})
        defaults = notebook_parameters(stage["notebook"])
        sizes = {k: v for k, v in defaults.items() if k in recipe and k not in STUDY_KEYS and v != recipe[k]}
        stage["overrides"] = {**(stage.get("overrides") or {}), **sizes, **(
            {"data_root": str(data_root)} if "data_root" in recipe else {}), **(
            {"cache_dir": str(cache)} if "cache_dir" in recipe else {})}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return spec


@pytest.mark.timeout(1800)  # seven stage jobs, twice
def test_the_paper_study_submitted_twice_is_one_parent_run_with_one_run_per_stage(cluster, tmp_path, phantom_root):
    pipeline = tmp_path / "paper_2SCM_tiny.yaml"
    spec = tiny_paper_study(pipeline, phantom_root, tmp_path / "cache")
    stages = [s["name"] for s in spec["stages"]]
    assert stages == ["data", "ef_regression", "diffusion_stage1", "diffusion", "evaluate", "rebalance", "report"]
    jobs_env = dict(cluster, GPUS="0", ECHODIFF_OUTPUTS=str(tmp_path / "outputs"))  # not nbval's output folders
    submit = ["slurm/submit_pipeline.sh", str(pipeline), "-p", "epochs=2", "--out", str(tmp_path / "runs")]
    proc = subprocess.run(submit, cwd=repo_root(), capture_output=True, text=True, env=jobs_env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    jobs = dict(line.split() for line in proc.stdout.splitlines())
    parent = jobs.pop("parent")
    assert list(jobs) == stages
    dependency = subprocess.run(["scontrol", "show", "job", jobs["ef_regression"]], capture_output=True,
                                text=True, env=cluster).stdout
    assert f"afterok:{jobs['data']}" in dependency
    states = wait_for_jobs(cluster, list(jobs.values()), timeout=1500)
    logs = {s: (repo_root() / "slurm" / "logs" / f"echodiff-{s}-{j}.out") for s, j in jobs.items()}
    assert set(states.values()) == {"COMPLETED"}, {s: p.read_text()[-2000:] for s, p in logs.items() if p.exists()}
    mlflow.set_tracking_uri(cluster["MLFLOW_TRACKING_URI"])  # the store the jobs wrote to
    runs = mlflow.search_runs(experiment_names=["echodiff-paper"])  # the study's own experiment
    children = runs[runs["tags.mlflow.parentRunId"] == parent]  # one study, one parent, whichever job ran
    assert sorted(children["tags.mlflow.runName"]) == sorted(stages)
    nested = runs[runs["tags.mlflow.parentRunId"].notna()]  # and below the stages only their own runs (variants)
    assert set(nested["tags.mlflow.parentRunId"]) <= {parent, *children.run_id}
    assert (children.status == "FINISHED").all()
    by_name = children.set_index("tags.mlflow.runName")
    assert by_name.loc["ef_regression", "params.epochs"] == "2"  # -p reached the job
    assert by_name.loc["evaluate", "params.model"] == by_name.loc["diffusion", "run_id"]  # inputs by run id
    assert by_name.loc["rebalance", "params.regressor"] == by_name.loc["ef_regression", "run_id"]
    assert by_name.loc["diffusion", "params.stage"] == "2" and by_name.loc["diffusion_stage1", "params.stage"] == "1"
    assert by_name.filter(like="metrics.").loc["evaluate"].notna().sum() > 10  # the evaluation's metrics
    # the same study submitted again: same parent, every finished stage reused, no new stage runs
    executed = sorted(p.parent.name for p in (tmp_path / "runs" / parent).glob("*/*.ipynb"))  # --out reached all
    assert executed == sorted(stages), executed  # one per stage, also for the two stages of 02_diffusion
    again = subprocess.run(submit, cwd=repo_root(), capture_output=True, text=True, env=jobs_env, timeout=120)
    assert again.returncode == 0, again.stderr
    jobs2 = dict(line.split() for line in again.stdout.splitlines())
    assert jobs2.pop("parent") == parent
    states = wait_for_jobs(cluster, list(jobs2.values()), timeout=900)
    assert set(states.values()) == {"COMPLETED"}
    again_runs = mlflow.search_runs(experiment_names=["echodiff-paper"])
    extra = again_runs[~again_runs.run_id.isin(runs.run_id)]  # not one run more
    assert extra.empty, extra[["tags.mlflow.runName", "tags.mlflow.parentRunId", "status"]].to_string()
    for stage, job in jobs2.items():
        log = (repo_root() / "slurm" / "logs" / f"echodiff-{stage}-{job}.out").read_text()
        assert "unchanged since run" in log and "skipped" in log, (stage, log[-2000:])


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


def test_a_signalled_score_chunk_is_requeued_and_resumes(cluster, tmp_path, phantom_root):
    """slurm/evaluate_chunk.sbatch as documented (the paper's evaluation recipe, a tiny cascade and regressor): the
    time-limit signal after its first batch requeues the task, which keeps that batch and scores the rest."""
    torch.manual_seed(0)
    model = save_model_folder(tmp_path / "model", CascadeModel(tiny_config(channels=3)))
    train_ef_regressor(EFTrainConfig(data_root=str(phantom_root), epochs=1, frames=4, fps=8.0, image_size=16,
                                     width=4, batch_size=4, mixed_precision="no", num_workers=0, bias=None, pad=None),
                       tmp_path / "ef")
    out = tmp_path / "evaluate"
    params = tmp_path / "evaluate.yaml"
    params.write_text(yaml.safe_dump({
        **load_params("params/paper/evaluate_2SCM.yaml"), "model": str(model),
        "regressor": str(tmp_path / "ef" / "best.pt"), "data_root": str(phantom_root), "modes": ["counterfactual"],
        "split": "train", "max_videos": 4, "num_noise": 1, "batch_videos": 1, "sample_steps": 96, "lpips": False,
        "fid_fvd": False, "out_dir": str(out)}))
    proc = subprocess.run(["sbatch", "--parsable", "--array=0-0", "slurm/evaluate_chunk.sbatch", str(params)],
                          cwd=repo_root(), capture_output=True, text=True, env=cluster, timeout=60)
    assert proc.returncode == 0, proc.stderr
    job = f"{proc.stdout.strip()}_0"
    log = repo_root() / "slurm" / "logs" / f"echodiff-score-{job}.out"
    csv = out / "scores" / "counterfactual_chunk000of001.csv"
    deadline = time.time() + 600
    while not csv.exists():  # the first batch is scored
        assert time.time() < deadline, log.read_text()[-3000:] if log.exists() else "no log"
        time.sleep(0.5)
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], env=cluster, check=True)  # as --signal=B:USR1@300
    first = pd.read_csv(csv)
    states = wait_for_jobs(cluster, [job], timeout=900)
    text = log.read_text()
    assert states[job] == "COMPLETED", text[-3000:]
    assert "requeueing job" in text and "restart 1" in text, text[-3000:]
    rows = pd.read_csv(csv)
    assert len(first) < 4 and len(rows) == 4 and rows.FileName.is_unique  # 4 videos (batches) x 1 candidate
    assert text.index("restart 1") < text.rindex("rows")  # the requeued task finished the chunk
    kept = rows[rows.FileName.isin(first.FileName)]
    assert list(kept.seconds) == list(first.seconds)  # the batches scored before the stop were kept, not redone
