"""Stage-wise diffusion training on real phantom AVIs: exact resume, cascades across stages, export, errors."""

import dataclasses

import pytest
import torch
import yaml
from helpers import tiny_config

from echodiff.data import DatasetError
from echodiff.diffusion import import_imagen, load_model_folder, sample
from echodiff.diffusion.training import (
    DiffusionTrainConfig,
    check_window,
    export_model,
    load_cascade_config,
    scheduled_lr,
    stage_configs,
    train_stage,
    window,
)
from echodiff.models.ef_regressor import EFRegressor


@pytest.fixture
def cascade_file(tmp_path):
    config = tiny_config(2)
    config["fps"] = 8.0
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _cfg(cascade_file, root, **overrides):
    values = dict(model_config=str(cascade_file), data_root=str(root), batch_size=2, steps=4, checkpoint_every=1,
                  val_every=2, val_batches=1, ema_beta=0.9, ema_update_after_step=0, ema_update_every=1, seed=5)
    return DiffusionTrainConfig(**{**values, **overrides})


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def test_interrupted_stage_resumes_exactly(phantom_root, cascade_file, tmp_path, monkeypatch):
    _, history = train_stage(_cfg(cascade_file, phantom_root), tmp_path / "straight")
    assert list(history.step) == [1, 2, 3, 4] and history.val_loss.notna().sum() == 2
    _, first = train_stage(_cfg(cascade_file, phantom_root), tmp_path / "split", stop_after_steps=2)
    assert list(first.step) == [1, 2] and int(_state(tmp_path / "split" / "trainer.pt")["steps"][0]) == 2
    trainer_class, updates = import_imagen().ImagenTrainer, []
    update = trainer_class.update
    monkeypatch.setattr(trainer_class, "update", lambda self, *a, **k: (updates.append(1), update(self, *a, **k))[1])
    _, history = train_stage(_cfg(cascade_file, phantom_root), tmp_path / "split")
    assert len(updates) == 2  # only the steps left: a resume that retrained from scratch would make 4
    assert list(history.step) == [1, 2, 3, 4]
    a, b = _state(tmp_path / "straight" / "trainer.pt"), _state(tmp_path / "split" / "trainer.pt")
    assert torch.equal(a["steps"], b["steps"])
    for part in ("model", "ema"):
        for key, value in a[part].items():
            assert torch.allclose(value.float(), b[part][key].float(), atol=1e-6), (part, key)
    assert a["optim0"]["state"][0]["step"] == b["optim0"]["state"][0]["step"]
    assert history.train_loss.tolist() == pytest.approx(
        [r["train_loss"] for r in _state(tmp_path / "straight" / "trainer.pt")["history"]], rel=1e-5)


def test_stages_share_a_checkpoint_and_export_as_a_model_folder(phantom_root, cascade_file, tmp_path):
    train_stage(_cfg(cascade_file, phantom_root, steps=2), tmp_path / "ckpt")
    trainer, _ = train_stage(_cfg(cascade_file, phantom_root, stage=2, steps=2), tmp_path / "ckpt")
    assert trainer.steps.tolist() == [2, 2]
    folder = export_model(trainer, load_cascade_config(cascade_file), tmp_path / "model")
    assert {p.name for p in folder.iterdir()} == {"config.yaml", "merged.pt"}
    model = load_model_folder(folder)
    assert model.steps.tolist() == [2, 2]
    video = sample(model, torch.rand(1, 3, 16, 16), 45.0, seed=0)
    assert video.shape == (1, 3, 4, 16, 16)


def test_bad_stage_and_config_mismatch(phantom_root, cascade_file, tmp_path):
    with pytest.raises(ValueError, match="stage 3 does not exist"):
        train_stage(_cfg(cascade_file, phantom_root, stage=3), tmp_path / "x")
    train_stage(_cfg(cascade_file, phantom_root, steps=1), tmp_path / "y")
    moved = tmp_path / "moved.yaml"  # the same cascade under another path (params/diffusion/ became cascades/)
    moved.write_text(cascade_file.read_text())
    trainer, history = train_stage(_cfg(moved, phantom_root, steps=2), tmp_path / "y")
    assert trainer.steps.tolist()[0] == 2 and list(history.step) == [1, 2]  # resumed at step 1, not retrained
    other = tiny_config(2, dim=16)
    other["fps"] = 8.0
    cascade_file.write_text(yaml.safe_dump(other))
    with pytest.raises(ValueError, match="trained with another cascade config"):
        train_stage(_cfg(cascade_file, phantom_root, steps=2), tmp_path / "y")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"unets": {}, "imagen": {}}))
    with pytest.raises(ValueError, match="needs `frames`"):
        train_stage(_cfg(bad, phantom_root), tmp_path / "z")


def test_cosine_lr_schedule_anneals_to_zero_and_fixes_its_length(phantom_root, cascade_file, tmp_path):
    cosine = _cfg(cascade_file, phantom_root, lr=1e-3, lr_schedule="cosine")
    assert [scheduled_lr(cosine, s) for s in (0, 2, 4)] == pytest.approx([1e-3, 5e-4, 0.0], abs=1e-12)
    _, history = train_stage(cosine, tmp_path / "cos", stop_after_steps=2)
    _, history = train_stage(cosine, tmp_path / "cos")  # resumed: the curve is the step's, not the call's
    # the rate each optimizer update used, as logged: half a cosine from lr down to ~0 at the last update
    assert history.lr.tolist() == pytest.approx([scheduled_lr(cosine, s) for s in range(4)], abs=1e-12)
    assert history.lr.iloc[0] == 1e-3 and history.lr.iloc[-1] < 0.15e-3
    with pytest.raises(ValueError, match=r"steps: 4 -> 6"):  # a longer cosine is another schedule, not a resume
        train_stage(_cfg(cascade_file, phantom_root, lr=1e-3, lr_schedule="cosine", steps=6), tmp_path / "cos")
    _, constant = train_stage(_cfg(cascade_file, phantom_root, lr=1e-3), tmp_path / "const")
    assert constant.lr.tolist() == [1e-3] * 4
    with pytest.raises(ValueError, match=r"lr_schedule must be one of \('constant', 'cosine'\), got 'linear'"):
        DiffusionTrainConfig(lr_schedule="linear")


def test_checkpoint_from_before_lr_schedule_resumes_as_constant(phantom_root, cascade_file, tmp_path):
    train_stage(_cfg(cascade_file, phantom_root, steps=1), tmp_path / "old")
    path = tmp_path / "old" / "trainer.pt"
    state = _state(path)
    del state["settings"][1]["lr_schedule"]  # as written before the setting existed
    torch.save(state, path)
    trainer, history = train_stage(_cfg(cascade_file, phantom_root, steps=2), tmp_path / "old")
    assert trainer.steps.tolist()[0] == 2 and list(history.step) == [1, 2]
    with pytest.raises(ValueError, match=r"lr_schedule: 'constant' -> 'cosine'"):
        train_stage(_cfg(cascade_file, phantom_root, steps=3, lr_schedule="cosine"), tmp_path / "old")


def test_stage_configs_pair_per_stage_values_with_stages():
    def plan(**params):
        return [(c.stage, c.steps, c.batch_size, c.window_frames) for c in stage_configs(params)]

    assert [c.lr_schedule for c in stage_configs({"stage": [1, 2], "lr_schedule": ["constant", "cosine"]})] == [
        "constant", "cosine"]
    assert [c.lr for c in stage_configs({"stage": [1, 2], "lr": [1e-3, 2e-3]})] == [1e-3, 2e-3]
    assert [c.lr for c in stage_configs({"stage": [1, 2], "lr": 1e-3})] == [1e-3, 1e-3]

    assert plan(stage=2, steps=100, batch_size=8) == [(2, 100, 8, None)]
    assert plan(stage=[1, 2], steps=[450, 100], batch_size=[8, 4], window_frames=[None, 4]) == [
        (1, 450, 8, None), (2, 100, 4, 4)]
    assert plan(stage=[1, 2], steps=10, batch_size=[8, 4]) == [(1, 10, 8, None), (2, 10, 4, None)]
    # the demo file lists two batch sizes; overriding only stage=1 must say what to pass
    with pytest.raises(ValueError, match=r"batch_size=\[8, 4\] has 2 values for stage=\[1\].*batch_size=8"):
        plan(stage=1, steps=1000, batch_size=[8, 4])


def test_window_frames_trains_a_stage_on_short_windows_and_says_what_that_costs(phantom_root, cascade_file, tmp_path,
                                                                               capsys):
    clip = torch.arange(8.0).view(1, 1, 8, 1, 1).expand(3, 1, 8, 2, 2)
    torch.manual_seed(0)
    short = window(clip, 4)
    assert short.shape == (3, 1, 4, 2, 2)
    assert all(torch.equal(w[0, :, 0, 0], torch.arange(4.0) + w[0, 0, 0, 0]) for w in short)  # consecutive frames
    assert len({float(w[0, 0, 0, 0]) for w in window(clip[:1].expand(64, -1, -1, -1, -1), 4)}) > 1  # random starts
    assert window(clip, None) is clip
    with pytest.raises(ValueError, match=r"window_frames=5 must be within 1-4 \(the clip\)"):
        train_stage(_cfg(cascade_file, phantom_root, window_frames=5), tmp_path / "w")
    with pytest.raises(ValueError, match=r"multiple of the largest temporal_downsample_factor \(2\)"):
        check_window(DiffusionTrainConfig(window_frames=3),
                     {"frames": 16, "imagen": {"temporal_downsample_factor": [2, 1]}})
    capsys.readouterr()
    trainer, history = train_stage(_cfg(cascade_file, phantom_root, stage=2, steps=2, window_frames=2),
                                   tmp_path / "w2")
    assert trainer.steps.tolist()[1] == 2 and history.train_loss.notna().all()
    assert ("stage 2 learns from 2-frame windows but samples 4-frame clips: its temporal layers never relate frames "
            "more than 1 apart") in capsys.readouterr().out
    assert check_window(DiffusionTrainConfig(window_frames=4), {"frames": 4, "imagen": {}}) is None  # whole clip


def test_a_systole_conditioned_cascade_trains_and_every_stage_samples_it_with_the_videos_interval(
        phantom_root, tmp_path, monkeypatch):
    """``condition_on_systole`` end to end on real AVIs: both stages train on the TRAIN videos' ED -> ES intervals
    (VAL loss included), and stage 03's scoring, stage 04's synthetic videos and stage 02's sample GIFs pass each
    anatomy video's own interval to the sampler (a missing one would be an error, not a guess), or, for videos
    made at another EF, the cascade's ``counterfactual_systole``."""
    import pandas as pd

    from echodiff import evaluation, rebalance
    from echodiff.diffusion import imagen
    from echodiff.diffusion import training as training_module

    config = dict(tiny_config(2), fps=8.0, condition_on_systole=True)
    path = tmp_path / "timed.yaml"
    path.write_text(yaml.safe_dump(config))
    train_stage(_cfg(path, phantom_root, steps=2), tmp_path / "ckpt")
    trainer, history = train_stage(_cfg(path, phantom_root, stage=2, steps=2), tmp_path / "ckpt")
    assert history.val_loss.notna().any()
    model = load_model_folder(export_model(trainer, load_cascade_config(path), tmp_path / "model"))
    assert model.imagen.unets[0].text_to_cond.in_features == imagen.condition_dim(model.config) == 2 + 9
    seen = []

    def spy(module):
        real = module.sample
        monkeypatch.setattr(module, "sample", lambda *a, **k: (seen.append(k["systole"]), real(*a, **k))[1])

    for module in (evaluation, rebalance, training_module):
        spy(module)
    regressor = EFRegressor(width=4, bias=50.0).eval()
    cfg = evaluation.ScoreConfig(data_root=str(phantom_root), mode="factual", num_noise=2, max_videos=2,
                                 batch_videos=2, sample_steps=2, seg_steps=0, lpips=False)
    scores = evaluation.generate_scores(model, regressor, cfg, tmp_path / "s.csv", progress=False)
    val = imagen.cascade_clips(model.config, phantom_root, "val")
    assert list(scores.FileName.unique()) == list(val.filelist.FileName[:2])
    assert seen[-1].tolist() == pytest.approx([val.systole_seconds(i) for i in (0, 0, 1, 1)])
    plan = pd.DataFrame({"ID": [0], "Bin": [20.0], "TargetEF": [22.0]})
    rebalance.generate_dataset(model, regressor, plan, tmp_path / "synthetic",
                               rebalance.GenerateConfig(data_root=str(phantom_root), num_noise=2, sample_steps=2,
                                                        size=32, seed=7), progress=False)
    train = imagen.cascade_clips(model.config, phantom_root, "train")
    source = pd.read_csv(tmp_path / "synthetic" / "FileList.csv").CondImageFileName[0]
    index = int((train.filelist.FileName == source).to_numpy().argmax())
    assert seen[-1].tolist() == pytest.approx([train.systole_seconds(index)] * 2)
    training_module.sample_gifs(tmp_path / "model", {"data_root": str(phantom_root), "n_samples": 1,
                                                     "sample_steps": 2}, tmp_path / "gifs")
    assert seen[-1].tolist() == pytest.approx([val.systole_seconds(0)])
    # counterfactual_systole: every video made at an EF other than its anatomy's asks for that interval (stage 03's
    # counterfactual mode, stage 04, stage 02's GIFs); a factual one keeps its own
    config_file = tmp_path / "model" / "config.yaml"
    config_file.write_text(yaml.safe_dump(dict(yaml.safe_load(config_file.read_text()), counterfactual_systole=0.4)))
    model = load_model_folder(tmp_path / "model")
    evaluation.generate_scores(model, regressor, dataclasses.replace(cfg, mode="counterfactual"), tmp_path / "c.csv",
                               progress=False)
    assert seen[-1].tolist() == pytest.approx([0.4] * 4)
    evaluation.generate_scores(model, regressor, cfg, tmp_path / "f.csv", progress=False)
    assert seen[-1].tolist() == pytest.approx([val.systole_seconds(i) for i in (0, 0, 1, 1)])
    rebalance.generate_dataset(model, regressor, plan, tmp_path / "synthetic2",
                               rebalance.GenerateConfig(data_root=str(phantom_root), num_noise=2, sample_steps=2,
                                                        size=32, seed=7), progress=False)
    assert seen[-1].tolist() == pytest.approx([0.4] * 2)
    training_module.sample_gifs(tmp_path / "model", {"data_root": str(phantom_root), "n_samples": 1,
                                                     "sample_steps": 2}, tmp_path / "gifs2")
    assert seen[-1].tolist() == pytest.approx([0.4])


def test_a_video_without_an_ed_to_es_interval_stops_systole_training_before_its_first_step(phantom_copy, tmp_path):
    import pandas as pd

    from echodiff.data import DatasetError

    path = tmp_path / "timed.yaml"
    path.write_text(yaml.safe_dump(dict(tiny_config(1), fps=8.0, condition_on_systole=True)))
    tracings = pd.read_csv(phantom_copy / "VolumeTracings.csv")
    filelist = pd.read_csv(phantom_copy / "FileList.csv")
    name = filelist[filelist.Split == "TRAIN"].FileName.iloc[0]
    tracings[tracings.FileName.str.removesuffix(".avi") != name].to_csv(phantom_copy / "VolumeTracings.csv",
                                                                        index=False)
    with pytest.raises(DatasetError, match=rf"1 of \d+ videos of split TRAIN have no ED -> ES interval.*{name}"):
        train_stage(_cfg(path, phantom_copy, steps=2), tmp_path / "ckpt")
    assert not (tmp_path / "ckpt" / "trainer.pt").exists()


def test_fewer_train_clips_than_one_batch_is_an_error_not_an_endless_loop(phantom_root, cascade_file, tmp_path):
    # drop_last with fewer clips than a batch yields no batch: the step loop used to spin forever (seen in a sweep
    # on an 8-video phantom); now it stops before training, naming the dataset and the fix
    with pytest.raises(DatasetError, match=r"FileList.csv: stage 1 needs at least batch_size x processes = 64 TRAIN "
                                           r"clips, but only \d+ are usable"):
        train_stage(_cfg(cascade_file, phantom_root, batch_size=64), tmp_path / "ckpt")
