"""The paper's recipes, exact and strict: our files equal the original's values (tests/fixtures/echodiffusion/),
every parameter is read by its stage, wrong keys and values fail clearly, and command lines parse as written."""

import importlib
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers import tiny_config

from echodiff import evaluation
from echodiff.config import load_params, stage_keys, stage_params, with_edits
from echodiff.data.video import read_video
from echodiff.diffusion import CascadeModel, load_model_folder
from echodiff.diffusion.imagen import CASCADE_KEYS, cascade_config, import_imagen
from echodiff.diffusion.training import DiffusionTrainConfig, load_cascade_config, train_stage
from echodiff.ef_training import EFTrainConfig, train_ef_regressor
from echodiff.models.ef_regressor import EFRegressor
from echodiff.pipeline import run_pipeline

REPO = Path(__file__).resolve().parents[1]
ORIGINAL = REPO / "tests" / "fixtures" / "echodiffusion"
#: ours -> the original config file it reproduces
CASCADES = {"1SCM": "1SCM.yaml", "2SCM": "2SCM.yaml", "4SCM": "4SCM_v2.yaml"}
#: where we deliberately differ from the original, and why (also in the README's table)
DELIBERATE = {
    "text_embed_dim": "EF embedding [EF/100, 1] (ef_flag, 2-d) instead of EF/100: EF 0 is never the all-zero "
                      "'no condition' token",
    "elucidated": "echodiff always builds ElucidatedImagen (all three originals set it true)",
}
#: (per-GPU batch size, stage) of the seed's diffusion/slurms/train_<name>.sh (--bs, --stage; --ignore_time 0.25)
SEED_TRAINING = {"1SCM_stage1": (4, 1), "2SCM_stage1": (16, 1), "2SCM_stage2": (10, 2), "4SCM_stage1": (16, 1),
                 "4SCM_stage2": (20, 2), "4SCM_stage3": (8, 3), "4SCM_stage4": (5, 4)}


def _original(name: str) -> dict:
    return yaml.safe_load((ORIGINAL / CASCADES[name]).read_text())


@pytest.mark.parametrize("name", sorted(CASCADES))
def test_cascade_architectures_equal_the_originals_field_for_field(name):
    ours, original = load_cascade_config(f"params/cascades/{name}.yaml"), _original(name)
    assert list(ours["unets"]) == list(original["unets"])
    for unet, fields in original["unets"].items():
        mine = {k: v for k, v in ours["unets"][unet].items()}
        # yaml lists vs the original's lists; every field the original sets, and no other
        assert mine == fields, f"{name} {unet}: ours {mine} != original {fields}"
    for key, value in original["imagen"].items():
        if key in DELIBERATE:
            continue
        assert ours["imagen"].get(key) == value, f"{name} imagen.{key}: ours {ours['imagen'].get(key)} != {value}"
    extra = set(ours["imagen"]) - set(original["imagen"])
    assert extra <= {"cond_drop_prob", "resize_mode"}, extra  # imagen-pytorch defaults, written out
    assert ours["imagen"].get("cond_drop_prob", 0.1) == 0.1
    dataset = original["dataset"]
    assert ours["fps"] == dataset["fps"] and ours["frames"] == round(dataset["fps"] * dataset["duration"])


def test_4scm_unets_differ_where_the_original_does():
    """The 4SCM that was wrong before: U-Nets 2-3 memory-efficient, U-Net 4 without cross-attention."""
    model = CascadeModel(load_cascade_config("params/cascades/4SCM.yaml"))
    u1, u2, u3, u4 = model.imagen.unets
    count = [sum(p.numel() for p in u.parameters()) for u in (u1, u2, u3, u4)]
    assert count[1] == count[2] != count[0]  # memory_efficient changes the network
    assert count[3] != count[0]  # no cross-attention, nothing at the middle
    config = load_cascade_config("params/cascades/4SCM.yaml")["unets"]
    assert config["unet4"]["layer_cross_attns"] is False and config["unet4"]["attend_at_middle"] is False


@pytest.mark.parametrize("recipe", sorted(SEED_TRAINING))
def test_training_recipes_use_the_seeds_values(recipe):
    params = stage_params("diffusion", f"params/paper/diffusion_{recipe}.yaml")
    batch, stage = SEED_TRAINING[recipe]
    name = recipe.split("_")[0]
    assert params["model_config"] == f"params/cascades/{name}.yaml" and params["stage"] == stage
    cfg = DiffusionTrainConfig.from_params(params)
    assert cfg.batch_size == batch and cfg.ignore_time == 0.25 and cfg.lr == float(_original(name)["trainer"]["lr"])
    assert cfg.precision == "no"  # ImagenTrainer(**config.trainer) got no precision: fp32
    assert (cfg.ema_beta, cfg.ema_update_after_step, cfg.ema_update_every) == (0.9999, 100, 10)  # its defaults
    assert cfg.checkpoint_every == _original(name)["checkpoint"]["save_every_x_it"]
    assert params["cond_scale"] == _original(name)["checkpoint"]["cond_scale"]
    assert not params["make_phantom"] and params["data_root"] == "data/EchoNet-Dynamic"


def test_ef_reference_recipe_trains_on_the_first_window():
    cfg = EFTrainConfig.from_params(stage_params("ef_regression", "params/paper/ef_reference.yaml"))
    assert cfg.train_clips == "first"  # train_reference.py: fix_samples=True
    assert (cfg.frames, cfg.fps, cfg.image_size, cfg.pad, cfg.lr, cfg.batch_size, cfg.epochs, cfg.bias) == (
        64, 32.0, 112, 12, 1e-4, 16, 100, 55.6)


@pytest.mark.parametrize("name", sorted(CASCADES))
def test_evaluation_recipes_use_the_seeds_values(name):
    params = stage_params("evaluate", f"params/paper/evaluate_{name}.yaml")
    cfg = evaluation.ScoreConfig.from_params({**params, "mode": "counterfactual"})
    assert (cfg.num_noise, cfg.cond_scale, cfg.chunks, cfg.max_videos, cfg.sample_steps, cfg.sample_churn,
            cfg.split) == (3, 5.0, 8, None, None, None, "val")
    assert params["data_root"] == "data/EchoNet-Dynamic" and not params["make_phantom"]


def _params_files():
    prefix = {"data": "data", "ef": "ef_regression", "diffusion": "diffusion", "evaluate": "evaluate",
              "rebalance": "rebalance", "report": "report"}
    files = sorted(REPO.glob("params/*.yaml")) + sorted(REPO.glob("params/paper/*.yaml"))
    return [(f.relative_to(REPO).as_posix(), prefix[f.stem.split("_")[0]]) for f in files]


@pytest.mark.parametrize(("path", "stage"), _params_files())
def test_every_key_of_every_params_file_is_read_by_its_stage(path, stage):
    params = load_params(path)
    assert set(params) <= stage_keys(stage)
    stage_params(stage, path)  # and in range


@pytest.mark.parametrize("path", sorted(p.relative_to(REPO).as_posix() for p in REPO.glob("params/cascades/*.yaml")))
def test_cascade_files_hold_only_what_the_cascade_reads(path):
    assert set(load_params(path)) <= set(CASCADE_KEYS)
    assert set(CASCADE_KEYS) == {"ef_embedding", "channels", "frames", "fps", "unets", "imagen", "residual_gain",
                                 "lowres_noise_max", "anatomy_frame", "clip_start", "condition_on_systole",
                                 "counterfactual_systole", "ef_extrapolation", "low_ef_guidance", "guidance_update",
                                 "sector_mask", "frame_resize"}
    load_cascade_config(path)


def test_unknown_keys_wrong_types_and_values_fail_with_the_name(tmp_path):
    with pytest.raises(ValueError, match=r"'epochz'.*did you mean \['epochs'\]"):
        stage_params("ef_regression", "params/ef_demo.yaml", ["epochz=3"])
    with pytest.raises(ValueError, match=r"epochs=-3 is out of range"):
        stage_params("ef_regression", "params/ef_demo.yaml", ["epochs=-3"])
    with pytest.raises(ValueError, match=r"ignore_time=1.5 is out of range"):
        stage_params("diffusion", "params/diffusion_demo.yaml", ["ignore_time=1.5"])
    with pytest.raises(ValueError, match=r"sample_efs=.*out of range"):
        stage_params("diffusion", "params/diffusion_demo.yaml", ["sample_efs=[20, 120]"])
    with pytest.raises(ValueError, match=r"lr='fast' must be a number"):
        stage_params("diffusion", "params/diffusion_demo.yaml", ["lr=fast"])
    with pytest.raises(ValueError, match=r"width=.*wrong type"):
        EFTrainConfig.from_params({"width": "16"})
    bad = tmp_path / "cascade.yaml"
    bad.write_text(yaml.safe_dump({**load_params("params/cascades/demo.yaml"), "trainer": {"lr": 1.0}}))
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['trainer'\]"):
        load_cascade_config(bad)


@pytest.mark.parametrize(("module", "args"), [
    ("echodiff.ef_training", ["-f", "params/ef_demo.yaml", "epochz=3"]),
    ("echodiff.diffusion.training", ["-f", "params/diffusion_demo.yaml", "step=10"]),
    ("echodiff.evaluation", ["score", "-f", "params/evaluate_demo.yaml", "chunk=0", "num_nosie=3"]),
    ("echodiff.rebalance", ["-f", "params/rebalance_demo.yaml", "varients=[reference]"]),
])
def test_every_stage_cli_refuses_a_misspelt_key(module, args):
    done = subprocess.run([sys.executable, "-m", module, *args, "--dry-run"], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode != 0 and "did you mean" in done.stderr, done.stderr[-2000:]


def test_pipeline_refuses_unknown_and_conflicting_overrides(tmp_path):
    with pytest.raises(ValueError, match=r"-p \['epochz'\]: no stage"):
        run_pipeline("params/pipeline/demo.yaml", overrides=["epochz=3"], out=tmp_path)
    with pytest.raises(ValueError, match=r"would be replaced by stage 'evaluate'"):
        run_pipeline("params/pipeline/demo.yaml", overrides=["model=elsewhere"], out=tmp_path)


def test_dotted_edits_copy_the_config_and_refuse_a_path_it_lacks():
    config = {"imagen": {"sigma_data": 0.12, "image_sizes": [16, 32]}, "frames": 16}
    edited = with_edits(config, ["imagen.sigma_data=0.2", "imagen.image_sizes=[32, 64]", "frames=8"])
    assert edited == {"imagen": {"sigma_data": 0.2, "image_sizes": [32, 64]}, "frames": 8}
    assert config["imagen"]["sigma_data"] == 0.12  # a copy: the caller's config is unchanged
    assert with_edits(config, {"imagen.S_churn": [40, 80]})["imagen"]["S_churn"] == [40, 80]  # a new last key
    with pytest.raises(KeyError, match="no 'imagin' in the config"):
        with_edits(config, ["imagin.sigma_data=0.2"])
    with pytest.raises(ValueError, match="must look like key=value"):
        with_edits(config, ["imagen.sigma_data"])


def _readme_and_slurm_commands() -> list[list[str]]:
    """Every `-m echodiff.<stage CLI>` command of the README, and the command line of every sbatch script with
    the usage its header gives (``$1`` etc. filled from that usage)."""
    commands = []
    code = "\n".join(re.findall(r"^```bash\n(.*?)^```", (REPO / "README.md").read_text(), re.M | re.S))
    clis = r"echodiff\.(?:data_stage|ef_training|diffusion\.training|evaluation|rebalance)"
    for line in re.findall(r"^.*-m " + clis + r" .*$", code, re.M):
        words = shlex.split(line.split("#")[0].replace("\\", ""))
        start = words.index("-m")
        commands.append(words[start + 1:])
    for script in sorted((REPO / "slurm").glob("*.sbatch")):
        body = script.read_text()
        usage = re.search(r"^#\s+sbatch .*?slurm/" + re.escape(script.name) + r" (.*)$", body, re.M)
        call = re.search(r"(?:python -m|launch) (" + clis + r") (.*)$",
                         body.replace("\\\n", " "), re.M)
        if not (usage and call):
            continue
        given = [w for w in shlex.split(usage.group(1)) if not re.search(r"[\[\]]|\.\.\.", w)]
        args = call.group(2).replace('"$1"', given[0]).replace('"$@"', " ".join(given))
        args = args.replace('"${@:2}"', " ".join(given[1:]))
        args = args.replace('"${SLURM_ARRAY_TASK_ID}"', "3").replace('"${SLURM_ARRAY_TASK_COUNT}"', "8")
        commands.append([call.group(1), *shlex.split(args)])
    return commands


def test_readme_and_slurm_command_lines_parse_as_written(capsys):
    """Each command's own ``main`` with ``--dry-run`` (in this process: the same parser, without an interpreter
    start per command)."""
    commands = _readme_and_slurm_commands()
    modules = {c[0] for c in commands}
    assert {"echodiff.data_stage", "echodiff.ef_training", "echodiff.diffusion.training", "echodiff.evaluation",
            "echodiff.rebalance"} <= modules, commands
    assert any("chunk=3" in c for c in commands)  # the cluster evaluation, as slurm/evaluate_chunk.sbatch runs it
    for command in commands:
        capsys.readouterr()
        assert importlib.import_module(command[0]).main([*command[1:], "--dry-run"]) == 0, command
        assert yaml.safe_load(capsys.readouterr().out), command  # the effective settings, as YAML


def test_resuming_with_other_settings_is_refused(phantom_root, tmp_path):
    tiny = dict(data_root=str(phantom_root), frames=4, fps=8.0, image_size=16, width=4, batch_size=4, lr=1e-3,
                epochs=1, mixed_precision="no", num_workers=0, bias=None, eval_batch_size=8, pad=None)
    train_ef_regressor(EFTrainConfig(**tiny), tmp_path / "ef")
    train_ef_regressor(EFTrainConfig(**{**tiny, "epochs": 2}), tmp_path / "ef")  # more epochs: a resume
    with pytest.raises(ValueError, match=r"other settings \(lr: 0.001 -> 0.01\)"):
        train_ef_regressor(EFTrainConfig(**{**tiny, "epochs": 3, "lr": 1e-2}), tmp_path / "ef")
    cascade = tmp_path / "tiny.yaml"
    cascade.write_text(yaml.safe_dump(tiny_config(channels=1)))
    cfg = dict(model_config=str(cascade), data_root=str(phantom_root), batch_size=2, steps=1, checkpoint_every=1,
               val_every=10, val_batches=1, precision="no", seed=1)
    train_stage(DiffusionTrainConfig(**cfg), tmp_path / "diffusion")
    train_stage(DiffusionTrainConfig(**{**cfg, "steps": 2}), tmp_path / "diffusion")  # more steps: a resume
    with pytest.raises(ValueError, match=r"stage 1 was trained with other settings \(batch_size: 2 -> 4\)"):
        train_stage(DiffusionTrainConfig(**{**cfg, "steps": 3, "batch_size": 4}), tmp_path / "diffusion")


def test_a_folder_in_the_original_release_layout_samples_and_evaluates(phantom_root, tmp_path):
    """1SCM_v2/ as published: the original's 1SCM.yaml as config.yaml (training-config layout: dataset.fps and
    duration, trainer/dataloader/wandb/checkpoint sections, text_embed_dim 1) beside ImagenTrainer's merged.pt."""
    original = (ORIGINAL / "1SCM.yaml").read_text()
    config = cascade_config(yaml.safe_load(original), "1SCM.yaml")
    assert (config["frames"], config["fps"], config["ef_embedding"], config["channels"]) == (16, 8.0, "ef", 3)
    torch.manual_seed(0)
    trainer = import_imagen().ImagenTrainer(imagen=CascadeModel(config).imagen, use_ema=True, lr=1e-4)
    folder = tmp_path / "1SCM_v2"
    folder.mkdir()
    trainer.save(str(folder / "merged.pt"))
    (folder / "config.yaml").write_text(original)  # as is
    model = load_model_folder(folder)
    regressor = EFRegressor(4, bias=50.0).eval()
    cfg = evaluation.ScoreConfig(data_root=str(phantom_root), mode="counterfactual", max_videos=1, sample_steps=2,
                                 sample_churn=0.0, cond_scale=1.0)  # one network pass per step
    rows = evaluation.generate_scores(model, regressor, cfg, tmp_path / "scores.csv", str(folder), "tiny",
                                      videos_dir=tmp_path / "videos")
    assert len(rows) == 1 and 15 <= float(rows["GT EF"].iloc[0]) <= 85 and rows["Gen EF"].notna().all()
    name = rows.FileName.iloc[0]
    assert read_video(tmp_path / "videos" / "Videos" / f"{name}_counterfactual_0.avi").shape == (3, 16, 112, 112)
    summary = evaluation.summarize(evaluation.merge_scores([tmp_path / "scores.csv"], 1))
    assert "avg_mae_gen" in summary


def test_gpu_check_runs_at_tiny_sizes_on_the_cpu(tmp_path):
    """benchmarks/gpu_check.py, the one command for a lent GPU, runs end to end here (tiny sizes, one cascade), as
    on that machine: MLflow cannot be imported there (its first GPU run failed on exactly that)."""
    blocker = tmp_path / "no_mlflow" / "mlflow"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('no MLflow on the GPU machine')\n")
    env = {**os.environ, "PYTHONPATH": str(blocker.parent)}
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--tiny", "--steps", "1", "--evals", "1",
                           "--cascades", "2SCM", "--out", str(out)], cwd=REPO, capture_output=True, text=True,
                          timeout=900, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert [r["batch"] for r in report["training"]["2SCM"]] == [1, 1]
    assert all(r["steps_per_s"] > 0 for r in report["training"]["2SCM"])
    sampling = report["sampling"]["2SCM"]
    assert sampling["evaluations_seed"] == (2 * 32 - 1) + (2 * 64 - 1) and sampling["evaluations_heun8"] == 30
    assert sampling["seed_seconds_per_video"] > sampling["heun8_seconds_per_video"] > 0
    assert report["regressor"]["train_clips_per_s"] > 0
    assert "| 2SCM | 2 |" in (out / "gpu_check.md").read_text()


@pytest.mark.parametrize("path", sorted(p.relative_to(REPO).as_posix() for p in REPO.glob("params/pipeline/*.yaml")))
def test_pipeline_files_check_before_anything_runs(path):
    """Every stage's parameters of every pipeline file are valid (the check run_pipeline does before any run)."""
    from echodiff.pipeline import _check_stages

    spec = load_params(path)
    stages = _check_stages(spec, path, {})
    assert list(stages) == [s["name"] for s in spec["stages"]]
    if "paper" in path:
        assert spec["experiment"] != "echodiff" and all(
            not p.get("make_phantom", False) for p in stages.values())


def test_pipeline_dry_run_prints_every_stage_and_refuses_typos():
    done = subprocess.run([sys.executable, "-m", "echodiff.pipeline", "-f", "params/pipeline/paper_2SCM.yaml",
                           "--dry-run", "-p", "seed=3"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    stages = yaml.safe_load(done.stdout)
    assert list(stages) == ["data", "ef_regression", "diffusion_stage1", "diffusion", "evaluate", "rebalance", "report"]
    assert stages["ef_regression"]["seed"] == 3 and stages["diffusion"]["stage"] == 2
    bad = subprocess.run([sys.executable, "-m", "echodiff.pipeline", "-f", "params/pipeline/demo.yaml", "--dry-run",
                          "-p", "epochz=3"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "no stage of params/pipeline/demo.yaml has such a parameter" in bad.stderr
