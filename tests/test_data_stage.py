"""Stage 00 as one function: the command line makes the same MLflow record the notebook does, and a wrong folder
is a clear error, never a phantom written there."""

import os
import subprocess
import sys

import mlflow
import yaml

from echodiff.data import read_filelist, read_tracings, tracing_efs


def _cli(params, tmp_path, *overrides):
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'store.db'}",
               ECHODIFF_OUTPUTS=str(tmp_path / "outputs"))
    return subprocess.run([sys.executable, "-m", "echodiff.data_stage", "-f", str(params), *overrides],
                          env=env, capture_output=True, text=True, timeout=600)


def test_data_stage_command_line_checks_and_logs_a_phantom(phantom_root, tmp_path):
    params = tmp_path / "data.yaml"
    params.write_text(yaml.safe_dump({"data_root": str(phantom_root), "make_phantom": False,
                                      "experiment": "data-stage-test"}))
    done = _cli(params, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "max |EF(tracings) - EF(csv)| 0.000" in done.stdout, done.stdout
    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path / 'store.db'}")
    run = client.search_runs([client.get_experiment_by_name("data-stage-test").experiment_id])[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "data"
    assert run.data.metrics["n_train"] + run.data.metrics["n_val"] + run.data.metrics["n_test"] == 16
    assert run.data.metrics["ef_tracing_max_abs_diff"] < 1e-3
    logged = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"FileList.csv", "ef_histogram.png", "frames.png"} <= logged, logged
    assert any(p.endswith("_tracing.gif") for p in logged), logged
    assert (tmp_path / "outputs" / "00_data").is_dir()  # the GIF went under $ECHODIFF_OUTPUTS, not the checkout


def test_data_stage_with_a_wrong_folder_writes_no_phantom(tmp_path):
    params = tmp_path / "data.yaml"
    missing = tmp_path / "EchoNet-Dynamic" / "EchoNet-Dynamic"  # a nested unzip
    params.write_text(yaml.safe_dump({"data_root": str(missing), "make_phantom": False}))
    done = _cli(params, tmp_path)
    assert done.returncode != 0 and "dataset folder not found" in done.stderr, done.stderr[-2000:]
    assert not missing.exists()


def test_tracing_efs_reads_ed_as_the_larger_volume(phantom_root):
    tracings = read_tracings(phantom_root)
    efs = tracing_efs(tracings)
    listed = read_filelist(phantom_root)[0].set_index("FileName").EF
    assert set(efs) == set(listed.index) and max(abs(efs[n] - listed[n]) for n in efs) < 1e-3
    name = next(iter(tracings))
    swapped = {name: dict(reversed(list(tracings[name].items())))}  # ED listed first: same EF
    assert abs(tracing_efs(swapped)[name] - efs[name]) < 1e-9
    assert tracing_efs({name: dict(list(tracings[name].items())[:1])}) == {}  # one traced frame: no EF
