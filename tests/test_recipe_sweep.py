"""benchmarks/recipe_sweep.py, the generator experiments' whole-cascade sweep: run end to end at tiny sizes on real
phantom AVIs, as on a lent GPU machine (no MLflow there), in parallel worker processes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from echodiff import phantom
from echodiff.models.ef_regressor import EFRegressor

REPO = Path(__file__).resolve().parents[1]
SWEEP = REPO / "benchmarks" / "recipe_sweep.py"


def _regressor(tmp_path: Path) -> Path:
    """An untrained EF regressor checkpoint for the demo cascade's clips (16 frames at 8 fps, 32 px)."""
    torch.manual_seed(0)
    regressor = EFRegressor(width=4, bias=50.0)
    torch.save({"model": regressor.state_dict(), "model_config": regressor.config,
                "train_config": {"frames": 16, "fps": 8.0, "image_size": 32}}, tmp_path / "regressor.pt")
    return tmp_path / "regressor.pt"


def _tiny_params(tmp_path: Path, phantom_root: Path) -> tuple[Path, Path]:
    """Stage 02's and stage 03's demo parameters, cut to seconds: 2 + 2 training steps on ``phantom_root``, 1 VAL video
    x 2 candidates."""
    train = yaml.safe_load((REPO / "params/diffusion_demo.yaml").read_text())
    train.update(steps=[2, 2], checkpoint_every=1, val_every=2, n_samples=0, data_root=str(phantom_root),
                 make_phantom=False)
    score = yaml.safe_load((REPO / "params/evaluate_demo.yaml").read_text())
    score.update(max_videos=1, num_noise=2, sample_steps=[2, 2], seg_steps=4)
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(train))
    (tmp_path / "score.yaml").write_text(yaml.safe_dump(score))
    return tmp_path / "train.yaml", tmp_path / "score.yaml"


def test_sweep_trains_scores_and_tabulates_every_variant_and_seed(phantom_root, tmp_path):
    train, score = _tiny_params(tmp_path, phantom_root)
    blocker = tmp_path / "no_mlflow" / "mlflow"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('no MLflow on the GPU machine')\n")
    env = {**os.environ, "PYTHONPATH": str(blocker.parent)}
    out = tmp_path / "sweep"
    other = tmp_path / "phantom-other"  # the second variant trains on other hearts, scored on --data-root's VAL
    phantom.write_phantom(other, n=24, seed=5, workers=1)
    command = [sys.executable, str(SWEEP), "--regressor", str(_regressor(tmp_path)), "--train", str(train), "--score",
               str(score), "--data-root", str(phantom_root), "--cache-dir", str(tmp_path / "cache"), "--workers", "2",
               "--seeds", "0", "--out", str(out), "--variant", "base",
               "--variant", f"flag cascade.ef_embedding=ef_flag score.cond_scale=[4.0,1.0] train.data_root={other}"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    runs = {p.stem: json.loads(p.read_text()) for p in (out / "runs").glob("*.json")}
    assert sorted(runs) == ["base_s0", "flag_s0"]
    for name, run in runs.items():
        for mode in ("factual", "counterfactual"):
            assert run[mode]["candidates"] == 2 and pd.notna(run[mode]["avg_mae_gen"])
            assert pd.notna(run[mode]["seg_avg_mae_gen"])  # the shared segmentation judge scored every run
            assert 0 <= run[mode]["gen_cardiac_fraction"] <= 1
        assert run["minutes"]["train"] > 0 and len(run["final_train_loss"]) == 2
        work = out / "work" / name
        scores = pd.read_csv(work / "scores" / "counterfactual.csv")
        wanted = "ef_flag" if name.startswith("flag") else "ef_fourier_clamped"  # the demo cascade's
        assert yaml.safe_load((work / "model" / "config.yaml").read_text())["ef_embedding"] == wanted
        assert set(scores.cond_scale) == {"[4.0, 1.0]" if name.startswith("flag") else "[2.5, 1.0]"}
    assert runs["flag_s0"]["edits"]["cascade"] == {"ef_embedding": "ef_flag"}
    assert runs["flag_s0"]["train_data_root"] == str(other)
    assert runs["base_s0"]["train_data_root"] == str(Path(phantom_root).resolve())
    table = (out / "sweep.md").read_text()
    assert "| base | 0 |" in table and "| **flag** | mean of 1 |" in table
    assert json.loads((out / "seg_judge.json").read_text())["val_clips"] > 0  # trained once, accuracy kept
    # a second call finds every run finished and trains nothing
    again = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 0 and "started" not in again.stdout


@pytest.mark.parametrize("variant, message", [
    ("bad steps=[1,1]", "is not cascade.<key>=<value>"),
    ("bad cascade.imagen.no_such.key=1", "no 'no_such' in the config"),
    ("bad train.stepz=9", "unknown train key(s) ['stepz']"),
])
def test_a_malformed_variant_is_an_error(tmp_path, variant, message):
    train, score = _tiny_params(tmp_path, tmp_path / "never-read")
    done = subprocess.run([sys.executable, str(SWEEP), "--regressor", str(_regressor(tmp_path)), "--variant", variant,
                           "--seeds", "0", "--score", str(score), "--train", str(train), "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and message in done.stdout + done.stderr
