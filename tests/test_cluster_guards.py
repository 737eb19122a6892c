"""No silent fallbacks on a cluster: a mistyped data path, GPUs that torch cannot use, an unreadable checkpoint,
a score chunk at its time limit."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from helpers import tiny_config

from echodiff import evaluation, phantom
from echodiff.device import compute_device, gpus_allocated
from echodiff.diffusion import CascadeModel
from echodiff.diffusion.training import DiffusionTrainConfig, train_stage
from echodiff.ef_training import EFTrainConfig, train_ef_regressor
from echodiff.io import CheckpointError
from echodiff.models.ef_regressor import EFRegressor
from echodiff.preempt import STOP_FILE_ENV, StopRequested

REPO = Path(__file__).resolve().parents[1]
TINY_EF = dict(frames=4, fps=8.0, image_size=16, width=4, batch_size=4, lr=1e-3, mixed_precision="no",
               num_workers=0, bias=None, eval_batch_size=8, pad=None)


def test_a_phantom_is_written_only_where_one_was_asked_for(tmp_path):
    typo = tmp_path / "EchoNet-Dynamc"
    with pytest.raises(FileNotFoundError, match=r"dataset folder not found: .*EchoNet-Dynamc/FileList.csv"):
        phantom.ensure_phantom(typo, 4, 0)
    assert not typo.exists()
    assert phantom.ensure_phantom(tmp_path / "phantom-x", 3, 0) and (tmp_path / "phantom-x" / "FileList.csv").is_file()


def test_notebook_with_a_mistyped_data_root_fails_clearly(tmp_path):
    import papermill

    with pytest.raises(papermill.PapermillExecutionError, match="dataset folder not found"):
        papermill.execute_notebook(str(REPO / "notebooks/01_ef_regression.ipynb"), str(tmp_path / "out.ipynb"),
                                   parameters={"data_root": str(tmp_path / "EchoNet"), "checkpoint_dir":
                                               str(tmp_path / "ckpt")}, cwd=str(REPO), progress_bar=False)


def test_gpus_given_but_unusable_is_an_error_not_a_cpu_run(monkeypatch, phantom_root, tmp_path):
    for name in ("SLURM_GPUS_ON_NODE", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(name, raising=False)
    assert gpus_allocated() is None and compute_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
    if torch.cuda.is_available():
        pytest.skip("this machine has a usable GPU: the failure cannot be provoked")
    monkeypatch.setenv("SLURM_GPUS_ON_NODE", "8")  # what Slurm sets for --gres=gpu:8
    with pytest.raises(RuntimeError, match=r"given GPUs \(SLURM_GPUS_ON_NODE=8\).*CUDA 13.0 build.*driver >= 580"):
        compute_device()
    # the same through a real command line: it stops before training, saying why
    env = dict(os.environ, SLURM_GPUS_ON_NODE="", CUDA_VISIBLE_DEVICES="0")
    done = subprocess.run([sys.executable, "-m", "echodiff.ef_training", "-f", "params/ef_demo.yaml",
                           f"data_root={phantom_root}", "make_phantom=false", f"checkpoint_dir={tmp_path / 'ckpt'}",
                           "epochs=1"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "CUDA_VISIBLE_DEVICES=0" in done.stderr and "torch cannot use" in done.stderr
    assert not (tmp_path / "ckpt" / "last.pt").exists()


def _truncate(path: Path, size: int = 100) -> None:
    data = path.read_bytes()[:size]
    path.write_bytes(data)


def test_ef_trainer_falls_back_to_the_previous_checkpoint_or_says_why(phantom_root, tmp_path, capsys):
    cfg = dict(TINY_EF, data_root=str(phantom_root))
    train_ef_regressor(EFTrainConfig(**cfg, epochs=2), tmp_path)
    assert (tmp_path / "last.pt").is_file() and (tmp_path / "last.1.pt").is_file()  # epoch 1, and epoch 0
    _truncate(tmp_path / "last.pt")
    _, resumed = train_ef_regressor(EFTrainConfig(**cfg, epochs=3), tmp_path)
    assert "resuming from the previous one" in capsys.readouterr().out
    assert list(resumed.epoch) == [0, 1, 2]  # epoch 0 from last.1.pt, then 1 and 2 trained again
    # a chosen checkpoint: last.1.pt (epoch 1) instead of last.pt (epoch 2)
    _, chosen = train_ef_regressor(EFTrainConfig(**cfg, epochs=3, resume_from=str(tmp_path / "last.1.pt")), tmp_path)
    assert f"resuming from {tmp_path / 'last.1.pt'} at epoch 2" in capsys.readouterr().out
    assert list(chosen.epoch) == [0, 1, 2]
    with pytest.raises(FileNotFoundError, match=r"resume_from: .*last.9.pt is not a file; name a checkpoint"):
        train_ef_regressor(EFTrainConfig(**cfg, epochs=3, resume_from="last.9.pt"), tmp_path)
    _truncate(tmp_path / "last.pt")
    _truncate(tmp_path / "last.1.pt")
    with pytest.raises(CheckpointError, match=r"last.pt cannot be read .*truncated or corrupt.*resume=False"):
        train_ef_regressor(EFTrainConfig(**cfg, epochs=4), tmp_path)


def test_diffusion_trainer_falls_back_to_the_previous_checkpoint_or_says_why(phantom_root, tmp_path, capsys):
    cascade = tmp_path / "tiny.yaml"
    cascade.write_text(yaml.safe_dump(tiny_config(channels=1)))
    cfg = dict(model_config=str(cascade), data_root=str(phantom_root), batch_size=2, checkpoint_every=1, val_every=10,
               val_batches=1, precision="no", seed=1)
    train_stage(DiffusionTrainConfig(**cfg, steps=2), tmp_path / "ckpt")
    _truncate(tmp_path / "ckpt" / "trainer.pt", 1000)
    trainer, history = train_stage(DiffusionTrainConfig(**cfg, steps=3), tmp_path / "ckpt")
    assert "resuming from the previous one" in capsys.readouterr().out
    assert int(trainer.steps[0]) == 3 and list(history.step) == [1, 2, 3]  # step 1 from trainer.1.pt
    chosen, last = tmp_path / "ckpt" / "trainer.1.pt", tmp_path / "ckpt" / "trainer.pt"  # steps 2 and 3
    before = last.read_bytes()
    train_stage(DiffusionTrainConfig(**cfg, steps=3), tmp_path / "ckpt")
    assert last.read_bytes() == before  # resumed at step 3 of 3: nothing to train, nothing written
    trainer, history = train_stage(DiffusionTrainConfig(**cfg, steps=3, resume_from=str(chosen)), tmp_path / "ckpt")
    assert last.read_bytes() != before  # from step 2 of the chosen file: step 3 trained again and saved
    assert int(trainer.steps[0]) == 3 and list(history.step) == [1, 2, 3]
    for name in ("trainer.pt", "trainer.1.pt"):
        _truncate(tmp_path / "ckpt" / name, 1000)
    with pytest.raises(CheckpointError, match=r"trainer.pt cannot be read"):
        train_stage(DiffusionTrainConfig(**cfg, steps=4), tmp_path / "ckpt")


def test_a_score_chunk_stops_after_its_batch_when_asked_and_resumes(phantom_root, tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = CascadeModel(tiny_config(channels=3)).eval()
    regressor = EFRegressor(4, bias=50.0).eval()
    cfg = evaluation.ScoreConfig(data_root=str(phantom_root), max_videos=2, batch_videos=1, sample_steps=2)
    out = tmp_path / "scores.csv"
    stop = tmp_path / "stop"
    stop.touch()
    monkeypatch.setenv(STOP_FILE_ENV, str(stop))
    with pytest.raises(StopRequested, match="1 rows"):
        evaluation.generate_scores(model, regressor, cfg, out, "m", "r", progress=False)
    assert len(pd.read_csv(out)) == 1
    stop.unlink()
    rows = evaluation.generate_scores(model, regressor, cfg, out, "m", "r", progress=False)
    assert len(rows) == 2 and rows.FileName.nunique() == 2  # the second batch only


def test_the_score_chunk_job_is_signalled_before_its_limit():
    script = (REPO / "slurm" / "evaluate_chunk.sbatch").read_text()
    assert "#SBATCH --signal=B:USR1@" in script and "#SBATCH --requeue" in script and "run_requeueable" in script
