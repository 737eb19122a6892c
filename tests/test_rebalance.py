"""Rebalancing study: the plan, the synthetic EchoNet-format dataset (real AVIs, resumable) and the variants."""

import subprocess
import sys

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from echodiff import phantom, rebalance
from echodiff.config import repo_root
from echodiff.data import EchoNetDynamic, read_video, variants
from echodiff.data.transforms import resize
from echodiff.ef_training import EFTrainConfig, load_regressor, predict, train_ef_regressor

#: a regressor small enough to train in a second on the test phantom
TINY_EF_TRAIN = {"frames": 4, "fps": 8.0, "image_size": 16, "pad": None, "width": 4, "epochs": 1, "batch_size": 4,
                 "bias": None, "mixed_precision": "no", "num_workers": 0, "eval_batch_size": 8}


def _stage01_regressor(data_root, folder, seed: int):
    """A TINY_EF_TRAIN regressor trained on ``data_root`` with ``seed`` as stage 01 would, read back from ``folder``."""
    train_ef_regressor(EFTrainConfig.from_params({**TINY_EF_TRAIN, "data_root": str(data_root), "seed": seed}), folder)
    return load_regressor(folder / "best.pt")


def test_plan_tops_every_bin_up_to_the_requested_count_exactly():
    rng = np.random.default_rng(1)
    efs = np.clip(rng.normal(58, 10, 700), 5, 95)
    plan = rebalance.balancing_plan(efs, bin_width=2.0, per_bin=12, ef_range=(10, 90), seed=4)
    assert list(plan.ID) == list(range(len(plan)))
    assert ((plan.TargetEF >= plan.Bin) & (plan.TargetEF < plan.Bin + 2.0)).all()
    edges = np.arange(10, 90, 2.0)
    before = np.histogram(efs, bins=np.append(edges, 90))[0]
    after = np.histogram(np.concatenate([efs, plan.TargetEF]), bins=np.append(edges, 90))[0]
    assert (after == np.maximum(before, 12)).all() and (before > 12).any() and (before < 12).any()
    outside = np.histogram(np.concatenate([efs, plan.TargetEF]), bins=[0, 10, 90, 100])[0]
    assert outside[0] == (efs < 10).sum() and outside[2] == (efs >= 90).sum()  # bins outside the range untouched
    again = rebalance.balancing_plan(efs, bin_width=2.0, per_bin=12, ef_range=(10, 90), seed=4)
    pd.testing.assert_frame_equal(plan, again)


def test_variants_draw_the_right_training_indices():
    labels = np.array([12.0, 12.5, 30.2, 30.9, 31.1, 55.0, 71.0, 71.5])
    real = np.array([True] * 5 + [False] * 3)
    subset = variants.training_indices(labels, real, train_subset=3, seed=0)
    assert len(set(subset)) == 3 and real[subset].all()
    balanced = variants.training_indices(labels, real, per_bin=4, bin_width=1.0, seed=0)
    counts = pd.Series(variants.bin_of(labels[balanced], 1.0)).value_counts()
    assert counts.eq(4).all() and len(counts) == len(np.unique(np.floor(labels)))
    assert variants.parse_variant("balance_20pb") == {"per_bin": 20, "use_synthetic": True}
    assert variants.parse_variant("resample_395") == {"train_subset": 395}
    assert variants.parse_variant("synthetic_only") == {"use_synthetic": True, "real_train": False}
    with pytest.raises(ValueError, match="unknown regressor variant 'balance_x'"):
        variants.parse_variant("balance_x")
    with pytest.raises(ValueError, match="only 5 real TRAIN videos"):
        variants.training_indices(labels, real, train_subset=6)


def test_synthetic_dataset_reads_back_and_resumes_without_duplicates(phantom_root, cascade_and_regressor, tmp_path,
                                                                    monkeypatch):
    model, regressor = cascade_and_regressor
    plan = pd.DataFrame({"ID": [0, 1, 2], "Bin": [10.0, 20.0, 80.0], "TargetEF": [10.4, 20.7, 80.2]})
    cfg = rebalance.GenerateConfig(data_root=str(phantom_root), num_noise=2, batch_targets=2, sample_steps=2, size=32,
                                   seed=7)
    full = rebalance.generate_dataset(model, regressor, plan, tmp_path / "full", cfg, progress=False)

    calls, real_sample = [], rebalance.sample

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed while generating the second batch
        return real_sample(*args, **kwargs)

    monkeypatch.setattr(rebalance, "sample", interrupted)
    with pytest.raises(KeyboardInterrupt):
        rebalance.generate_dataset(model, regressor, plan, tmp_path / "resumed", cfg, progress=False)
    assert list(pd.read_csv(tmp_path / "resumed" / "FileList.csv").ID) == [0, 1]
    calls.clear()
    resumed = rebalance.generate_dataset(model, regressor, plan, tmp_path / "resumed", cfg, progress=False)
    assert len(calls) == 1 and list(resumed.ID) == [0, 1, 2]  # only the unfinished batch, no duplicates
    pd.testing.assert_frame_equal(resumed, full)

    data = EchoNetDynamic(tmp_path / "resumed", "train", target_type=["EF", "FileName"], length=4, fps=8,
                          mean=0.0, std=255.0)
    assert len(data) == 3
    video, (ef, name) = data[2]
    assert video.shape == (3, 4, 32, 32) and name == "000002" and ef == pytest.approx(80.2)
    assert set(rebalance.REPORT_COLUMNS) <= set(resumed.columns)
    assert resumed.CondImageFileName.isin(pd.read_csv(phantom_root / "FileList.csv").FileName).all()
    assert resumed.EstimatedEF.between(1, 100).all()  # in %, not the seed's fraction


def test_the_feedback_loop_keeps_the_candidate_read_closest_to_its_target(phantom_root, cascade_and_regressor,
                                                                          tmp_path, monkeypatch):
    model, regressor = cascade_and_regressor
    plan = pd.DataFrame({"ID": [0, 1], "Bin": [20.0, 70.0], "TargetEF": [25.0, 75.0]})
    cfg = rebalance.GenerateConfig(data_root=str(phantom_root), num_noise=3, batch_targets=2, sample_steps=2, size=32,
                                   seed=3)
    seen = {}

    def judged(_regressor, videos, fps):  # candidates read as target + offset: the 3rd, then the 2nd, is closest
        seen["videos"] = resize(videos, 32)  # as written (size=32)
        return torch.tensor([25.0 + 9, 25.0 - 6, 25.0 + 2, 75.0 - 8, 75.0 + 1, 75.0 + 4])

    monkeypatch.setattr(rebalance, "regress_ef", judged)
    done = rebalance.generate_dataset(model, regressor, plan, tmp_path / "synthetic", cfg, progress=False)
    assert done.EstimatedEF.tolist() == [27.0, 76.0]
    for row, kept in zip(done.itertuples(), (2, 4), strict=True):  # candidate index in the batch of 2 x 3
        written = torch.from_numpy(read_video(tmp_path / "synthetic" / "Videos" / f"{row.FileName}.avi")).float() / 255
        siblings = range(kept // 3 * 3, kept // 3 * 3 + 3)
        errors = {i: float((written - seen["videos"][i]).abs().mean()) for i in siblings}  # AVI coding is lossy
        assert min(errors, key=errors.get) == kept, errors
        assert errors[kept] < 0.5 * min(e for i, e in errors.items() if i != kept), errors


def test_regressor_variants_train_on_their_pooled_sets(phantom_root, cascade_and_regressor, tmp_path):
    model, regressor = cascade_and_regressor
    plan = rebalance.balancing_plan(rebalance.train_efs(phantom_root), bin_width=20.0, per_bin=5,
                                    ef_range=(10, 90), seed=0).head(4)
    cfg = rebalance.GenerateConfig(data_root=str(phantom_root), num_noise=1, batch_targets=4, sample_steps=2, size=32)
    rebalance.generate_dataset(model, regressor, plan, tmp_path / "synthetic", cfg, progress=False)
    params = dict(data_root=str(phantom_root), synthetic_roots=[str(tmp_path / "synthetic")], frames=4, fps=8,
                  image_size=16, width=4, batch_size=4, epochs=1, mixed_precision="no", num_workers=0, bias=None,
                  pad=None)
    n_real = len(pd.read_csv(phantom_root / "FileList.csv").query("Split == 'TRAIN'"))
    sizes = {v: len(EFTrainConfig.for_variant(params, v).train_dataset())
             for v in ("reference", "all_samples", "synthetic_only", "resample_3", "balance_2pb")}
    labels = np.concatenate([pd.read_csv(phantom_root / "FileList.csv").query("Split == 'TRAIN'").EF, plan.TargetEF])
    assert sizes == {"reference": n_real, "all_samples": n_real + 4, "synthetic_only": 4, "resample_3": 3,
                     "balance_2pb": 2 * len(np.unique(np.floor(labels)))}
    model, history = train_ef_regressor(EFTrainConfig.for_variant(params, "synthetic_only"), tmp_path / "ckpt")
    assert len(history) == 1 and np.isfinite(history.val_loss).all()


def test_synthetic_dataset_refuses_to_mix_generators(phantom_root, cascade_and_regressor, tmp_path):
    model, regressor = cascade_and_regressor
    plan = pd.DataFrame({"ID": [0, 1], "Bin": [10.0, 20.0], "TargetEF": [10.4, 20.7]})
    cfg = rebalance.GenerateConfig(data_root=str(phantom_root), num_noise=1, batch_targets=1, sample_steps=2, size=32)
    rebalance.generate_dataset(model, regressor, plan.head(1), tmp_path / "s", cfg, model_id="run-a", progress=False)
    with pytest.raises(ValueError, match="made with Model=\\['run-a'\\], not 'run-b'"):
        rebalance.generate_dataset(model, regressor, plan, tmp_path / "s", cfg, model_id="run-b", progress=False)
    bad = pd.DataFrame({"ID": [0], "Bin": [10.0], "TargetEF": [120.0]})
    rebalance.write_plan(bad, tmp_path / "plan.csv")
    with pytest.raises(ValueError, match="TargetEF outside 0-100 % on IDs \\[0\\]"):
        rebalance.read_plan(tmp_path / "plan.csv")


def test_synthetic_dataset_resumes_with_a_model_id_that_looks_missing(phantom_root, cascade_and_regressor, tmp_path):
    model, regressor = cascade_and_regressor
    plan = pd.DataFrame({"ID": [0], "Bin": [10.0], "TargetEF": [10.4]})
    cfg = rebalance.GenerateConfig(data_root=str(phantom_root), num_noise=1, batch_targets=1, sample_steps=2, size=32)
    first = rebalance.generate_dataset(model, regressor, plan, tmp_path / "s", cfg, model_id="None", progress=False)
    again = rebalance.generate_dataset(model, regressor, plan, tmp_path / "s", cfg, model_id="None", progress=False)
    pd.testing.assert_frame_equal(first, again)


def test_rebalance_command_line_runs_the_study_in_one_mlflow_run_and_resumes(saved_models, phantom_root, tmp_path):
    """`python -m echodiff.rebalance -f FILE` (what slurm/rebalance.sbatch runs): plan, synthetic dataset and
    variants in one `rebalance` run with a nested run per variant; run again, it keeps the finished videos and
    variants (same CSV, no new generation) and makes a second record of the same numbers."""
    cascade, regressor = saved_models
    params = tmp_path / "rebalance.yaml"
    params.write_text(yaml.safe_dump({
        "model": str(cascade), "regressor": str(regressor), "data_root": str(phantom_root), "make_phantom": False,
        "bin_width": 20.0, "per_bin": 4, "max_targets": 3, "num_noise": 2, "sample_steps": 2, "sample_churn": 0.0,
        "batch_targets": 2, "variants": ["reference", "balance_2pb"], "ef_train": TINY_EF_TRAIN,
        "eval_per_bin": 2, "cache_dir": None, "experiment": "rebalance-cli", "out_dir": str(tmp_path / "out")}))

    def cli(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "echodiff.rebalance", "-f", str(params), *extra],
                              capture_output=True, text=True, timeout=600, cwd=repo_root())

    done = cli()
    assert done.returncode == 0, done.stderr[-3000:]
    run = mlflow.get_run(done.stdout.split("MLflow run ")[-1].strip())
    assert run.info.status == "FINISHED" and run.data.tags["echodiff.stage"] == "rebalance"
    assert run.data.metrics["synthetic_videos"] == 3 and "balance_2pb_test_mae" in run.data.metrics
    children = mlflow.search_runs(experiment_names=["rebalance-cli"],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{run.info.run_id}'")
    assert sorted(children["tags.echodiff.variant"]) == ["balance_2pb", "reference"]
    assert (children.status == "FINISHED").all() and children["metrics.test_mae"].notna().all()
    names = {f.path for f in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"plan.csv", "synthetic_FileList.csv", "variants.csv", "per_bin_mae.png"} <= names
    filelist = (tmp_path / "out" / "synthetic" / "FileList.csv").read_text()
    assert len(EchoNetDynamic(tmp_path / "out" / "synthetic", "train", length=4, period=1, max_length=None)) == 3

    again = cli()
    assert again.returncode == 0, again.stderr[-3000:]
    assert (tmp_path / "out" / "synthetic" / "FileList.csv").read_text() == filelist  # kept, not regenerated
    rerun = mlflow.get_run(again.stdout.split("MLflow run ")[-1].strip())
    assert rerun.info.run_id != run.info.run_id
    assert rerun.data.metrics["reference_test_mae"] == pytest.approx(run.data.metrics["reference_test_mae"])


def test_reference_variant_is_stage_01s_regressor_only_when_trained_as_the_reference_would_be(
        phantom_root, cascade_and_regressor, tmp_path):
    """`reference: regressor` scores the study's regressor as the reference variant instead of training an
    identical one again (the demo's saving), and refuses -- before generating anything -- a regressor trained with
    any other setting, or one whose checkpoint records none."""
    model, untrained = cascade_and_regressor
    ef_train, regressor = TINY_EF_TRAIN, _stage01_regressor(phantom_root, tmp_path / "stage01", seed=5)
    params = {"data_root": str(phantom_root), "bin_width": 20.0, "per_bin": 4, "max_targets": 1, "num_noise": 1,
              "sample_steps": 2, "sample_churn": 0.0, "batch_targets": 1, "variants": ["reference"],
              "ef_train": ef_train, "eval_per_bin": 2, "seed": 5, "reference": "regressor", "cache_dir": None}
    mlflow.set_experiment("rebalance-reuse")

    def study(regressor, **changes):
        with mlflow.start_run():
            return rebalance.run_study(model, regressor, {**params, "out_dir": str(tmp_path / "out"), **changes},
                                       regressor_id="stage01/best.pt", progress=False)

    for changes, message in [({"seed": 6}, "seed: 5 -> 6"), ({"ef_train": {**ef_train, "epochs": 2}}, "epochs: 1 -> 2"),
                             ({"ef_train": {**ef_train, "width": 8}}, "width: 4 -> 8")]:
        with pytest.raises(ValueError, match=f"stage01/best.pt was not trained as the reference.*{message}"):
            study(regressor, **changes)
    with pytest.raises(ValueError, match="records no training settings"):
        study(untrained)
    with pytest.raises(ValueError, match="needs the reference variant"):
        study(regressor, variants=["all_samples"])
    assert not (tmp_path / "out" / "synthetic").exists()  # every refusal came before generation

    done = study(regressor)
    assert not (tmp_path / "out" / "regressors").exists()  # nothing trained
    child = mlflow.search_runs(experiment_names=["rebalance-reuse"], filter_string="tags.`echodiff.variant` = "
                               "'reference'", order_by=["start_time DESC"]).iloc[0]
    assert child["tags.echodiff.reference_from"] == "stage01/best.pt"
    expected = predict(regressor, EFTrainConfig.from_params({**ef_train, "data_root": str(phantom_root)}), "test")
    assert done.results.test_mae.item() == pytest.approx((expected.EF_pred - expected.EF).abs().mean(), rel=1e-5)


def test_every_variant_trains_under_the_extra_seeds_and_the_summary_counts_seeds_that_beat_the_reference(
        phantom_root, cascade_and_regressor, tmp_path):
    """`variant_extra_seeds`: each variant is trained again under every extra seed (its own folder and nested run),
    scored on the same balanced set; stage 01's regressor stands in for the reference of `seed` only; the summary
    gives each metric's mean and range over the seeds and in how many seeds a variant beat the same-seed
    reference. A seed listed twice, or equal to `seed`, is an error."""
    model, _ = cascade_and_regressor
    ef_train, regressor = TINY_EF_TRAIN, _stage01_regressor(phantom_root, tmp_path / "stage01", seed=5)
    params = {"data_root": str(phantom_root), "bin_width": 20.0, "per_bin": 4, "max_targets": 2, "num_noise": 1,
              "sample_steps": 2, "sample_churn": 0.0, "batch_targets": 2, "variants": ["reference", "all_samples"],
              "ef_train": ef_train, "eval_per_bin": 3, "eval_bin_width": 20.0, "report_bin_width": 20.0, "seed": 5,
              "reference": "regressor", "variant_extra_seeds": [6, 7], "cache_dir": None,
              "out_dir": str(tmp_path / "out")}
    for extra in ([5], [6, 6]):
        with pytest.raises(ValueError, match="variant_extra_seeds must be distinct and differ from seed 5"):
            rebalance.StudyConfig(seed=5, variant_extra_seeds=extra)
    mlflow.set_experiment("rebalance-seeds")
    with mlflow.start_run() as run:
        study = rebalance.run_study(model, regressor, params, regressor_id="stage01/best.pt", progress=False)

    results = study.results
    assert sorted(zip(results.variant, results.seed)) == [("all_samples", s) for s in (5, 6, 7)] + [
        ("reference", s) for s in (5, 6, 7)]
    folders = sorted(p.name for p in (tmp_path / "out" / "regressors").iterdir())
    assert folders == ["all_samples", "all_samples_seed6", "all_samples_seed7", "reference_seed6", "reference_seed7"]
    for name, seed in (("reference_seed6", 6), ("all_samples_seed7", 7)):
        assert torch.load(tmp_path / "out" / "regressors" / name / "best.pt",
                          weights_only=False)["train_config"]["seed"] == seed
    # every seed's variants were scored on the same balanced hearts
    balanced = study.predictions[study.predictions.Balanced]
    sets = balanced.groupby(["variant", "seed"]).FileName.apply(frozenset)
    assert sets.nunique() == 1 and len(sets.iloc[0]) >= 2
    children = mlflow.search_runs(experiment_names=["rebalance-seeds"],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{run.info.run_id}'")
    assert sorted(children["tags.mlflow.runName"]) == ["all_samples", "all_samples_seed6", "all_samples_seed7",
                                                     "reference", "reference_seed6", "reference_seed7"]
    reused = children[children["tags.echodiff.reference_from"].notna()]
    assert list(reused["tags.mlflow.runName"]) == ["reference"]
    assert sorted(children["tags.echodiff.variant_seed"].astype(int)) == [5, 5, 6, 6, 7, 7]

    summary = study.summary.set_index(["variant", "metric"])
    for variant in ("reference", "all_samples"):
        rows = results[results.variant == variant]
        row = summary.loc[(variant, "test_mae")]
        assert row.seeds == 3 and row["mean"] == pytest.approx(rows.test_mae.mean())
        assert row["min"] == pytest.approx(rows.test_mae.min()) and row["max"] == pytest.approx(rows.test_mae.max())
    by_seed = results.set_index(["variant", "seed"])
    for metric in [m for m in results.columns if m.startswith("balanced_mae")] + ["test_mae", "val_mae"]:
        expected = sum(by_seed.loc[("all_samples", s), metric] < by_seed.loc[("reference", s), metric]
                       for s in (5, 6, 7))
        assert summary.loc[("all_samples", metric), "seeds_better"] == expected
        assert np.isnan(summary.loc[("reference", metric), "seeds_better"])
    logged = mlflow.get_run(run.info.run_id).data.metrics
    assert logged["reference_test_mae"] == pytest.approx(by_seed.loc[("reference", 5), "test_mae"])
    assert logged["all_samples_seed7_test_mae"] == pytest.approx(by_seed.loc[("all_samples", 7), "test_mae"])
    assert logged["all_samples_seed_mean_test_mae"] == pytest.approx(results[results.variant == "all_samples"]
                                                                     .test_mae.mean())
    names = {f.path for f in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"variants.csv", "variant_summary.csv"} <= names


def test_the_balanced_set_can_be_drawn_from_another_folders_val_and_test_hearts(phantom_root, cascade_and_regressor,
                                                                                tmp_path):
    """`balanced_root`: the balanced VAL+TEST set comes from another real folder (`make demo`: the uniform-EF
    phantom whose TRAIN split stage 02 learns from), while VAL and TEST stay data_root's; a missing folder is an
    error that says where it comes from, raised before any video is generated."""
    _, regressor = cascade_and_regressor
    other = tmp_path / "phantom_uniform"
    phantom.write_phantom(other, n=12, seed=9, ef_range=(10.0, 85.0), workers=1)
    cfg = EFTrainConfig.from_params({"data_root": str(phantom_root), "frames": 4, "fps": 8.0, "image_size": 16,
                                     "pad": None, "width": 4, "num_workers": 0, "eval_batch_size": 8})
    own, own_scores = rebalance.evaluate_regressor(regressor, cfg, 2, 20.0, (10.0, 90.0), 20.0)
    preds, scores = rebalance.evaluate_regressor(regressor, cfg, 2, 20.0, (10.0, 90.0), 20.0, balanced_root=other)

    held_out = pd.read_csv(other / "FileList.csv")
    held_out = held_out[held_out.Split.isin(["VAL", "TEST"])]
    balanced = preds[preds.Balanced]
    assert len(balanced) and (balanced.Root == str(other)).all()
    assert set(balanced.FileName) <= set(held_out.FileName)
    assert balanced.groupby(variants.bin_of(balanced.EF, 20.0)).size().max() <= 2  # at most eval_per_bin per bin
    natural = preds[preds.Root == str(phantom_root)]
    pd.testing.assert_frame_equal(natural.drop(columns="Balanced").reset_index(drop=True),
                                  own.drop(columns="Balanced").reset_index(drop=True))
    for name in ("val_mae", "test_mae"):
        assert scores[name] == pytest.approx(own_scores[name])
    assert scores["balanced_mae"] == pytest.approx((balanced.EF_pred - balanced.EF).abs().mean(), rel=1e-5)
    assert set(own.FileName[own.Balanced]).isdisjoint(balanced.FileName)

    missing = rebalance.StudyConfig(data_root=str(phantom_root), balanced_root=str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="nowhere has no FileList.csv.*data/phantom_uniform"):
        rebalance.check_balanced_root(missing)
    same = rebalance.StudyConfig(data_root=str(phantom_root), balanced_root=str(phantom_root))
    assert rebalance.check_balanced_root(same) is None
