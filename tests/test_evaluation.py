"""Evaluation: metrics against independent computations, score files, chunk resume, merge, selection."""

import math
import subprocess
import sys

import mlflow
import numpy as np
import pandas as pd
import pytest
import scipy.ndimage
import torch
import yaml
from PIL import Image

from echodiff import evaluation, plots, tracking
from echodiff.config import repo_root
from echodiff.evaluation import ScoreConfig, generate_scores, merge_scores, select_by_ef, summarize
from echodiff.metrics import frechet
from echodiff.metrics.video import LPIPS, chamber_excess, motion_correlation, ssim, temporal_profile
from echodiff.phantom import twins, write_hearts
from echodiff.weights import MissingWeightsError


def reference_ssim(x: np.ndarray, y: np.ndarray) -> float:
    """SSIM of two 2-D images the textbook way (scipy Gaussian filter, borders cropped like skimage)."""
    f = lambda a: scipy.ndimage.gaussian_filter(a, 1.5, truncate=3.5)  # noqa: E731  (11 taps)
    mx, my = f(x), f(y)
    vx, vy, cxy = f(x * x) - mx**2, f(y * y) - my**2, f(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(s[5:-5, 5:-5].mean())


def test_ssim_matches_an_independent_computation():
    gen = torch.Generator().manual_seed(0)
    real = torch.rand(2, 3, 3, 24, 20, generator=gen)
    fake = (real + 0.2 * torch.randn(real.shape, generator=gen)).clamp(0, 1)
    ours = ssim(fake, real)
    for b in range(2):
        expected = np.mean([reference_ssim(fake[b, c, t].double().numpy(), real[b, c, t].double().numpy())
                            for c in range(3) for t in range(3)])
        assert float(ours[b]) == pytest.approx(expected, abs=1e-6)
    assert torch.allclose(ssim(real, real), torch.ones(2))
    with pytest.raises(ValueError, match="one shape"):
        ssim(real, real[:, :, :2])
    # inside=: only the windows centred on the mask's pixels, each the textbook value there
    inside = torch.zeros(2, 24, 20)
    inside[0, 8:14, 6:12] = 1
    inside[1, :, 10:] = 1
    masked = ssim(fake, real, inside=inside)
    for b in range(2):
        keep = inside[b, 5:-5, 5:-5].bool().numpy()
        maps = []
        for c in range(3):
            for t in range(3):
                x, y = fake[b, c, t].double().numpy(), real[b, c, t].double().numpy()
                f = lambda a: scipy.ndimage.gaussian_filter(a, 1.5, truncate=3.5)  # noqa: E731
                mx, my = f(x), f(y)
                vx, vy, cxy = f(x * x) - mx**2, f(y * y) - my**2, f(x * y) - mx * my
                m = ((2 * mx * my + 1e-4) * (2 * cxy + 9e-4)) / ((mx**2 + my**2 + 1e-4) * (vx + vy + 9e-4))
                maps.append(m[5:-5, 5:-5][keep])
        assert float(masked[b]) == pytest.approx(np.mean(maps), abs=1e-6)
    assert torch.allclose(ssim(real, real, inside=inside), torch.ones(2))
    with pytest.raises(ValueError, match=r"inside must be \(B, H, W\)"):
        ssim(real, real, inside=inside[:, :10])


def test_frechet_distance_between_known_gaussians():
    rotation, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))
    a, b, shift = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 16.0]), np.array([1.0, -2.0, 0.5])
    sigma_a, sigma_b = rotation @ np.diag(a) @ rotation.T, rotation @ np.diag(b) @ rotation.T
    expected = (shift**2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()  # commuting covariances: closed form
    assert frechet.frechet_distance(np.zeros(3), sigma_a, shift, sigma_b) == pytest.approx(expected, rel=1e-9)
    assert frechet.frechet_distance(np.zeros(3), sigma_a, np.zeros(3), sigma_a) == pytest.approx(0, abs=1e-6)
    # from samples: N(0, I) vs N(m, 4I) in 2-D -> |m|^2 + 2 * (2 - 1)^2
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(200_000, 2)), rng.normal(size=(200_000, 2)) * 2 + np.array([3.0, 0.0])
    assert frechet.frechet_distance_of(x, y) == pytest.approx(9 + 2, rel=0.02)


class _Detector(torch.nn.Module):
    """A stand-in with the call signature of the StyleGAN TorchScript detectors (tests only)."""

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = True) -> torch.Tensor:
        x = x.float()
        dims = list(range(2, x.ndim))
        return torch.cat([x.mean(dims), x.std(dims), x.amax(dims)], 1)


def test_fid_fvd_read_local_weights_and_name_the_missing_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    real, fake = torch.rand(6, 3, 16, 16, 16), torch.rand(6, 3, 16, 16, 16) * 0.5
    with pytest.raises(MissingWeightsError, match=r"inception-2015-12-05\.pt.*copy it to .*hub/checkpoints"):
        frechet.fid(real, fake)
    with pytest.raises(MissingWeightsError, match=r"i3d_torchscript\.pt"):
        frechet.fvd(real, fake)
    for name in ("inception-2015-12-05.pt", "i3d_torchscript.pt"):
        (tmp_path / "torch" / "hub" / "checkpoints").mkdir(parents=True, exist_ok=True)
        torch.jit.script(_Detector()).save(str(tmp_path / "torch" / "hub" / "checkpoints" / name))
    frames = lambda v: (v.permute(0, 2, 1, 3, 4).flatten(0, 1) * 255 + 0.5).floor()  # noqa: E731
    expected_fid = frechet.frechet_distance_of(_Detector()(frames(real)), _Detector()(frames(fake)))
    assert frechet.fid(real, fake) == pytest.approx(expected_fid, rel=1e-6)
    expected_fvd = frechet.frechet_distance_of(_Detector()(real * 255), _Detector()(fake * 255))
    assert frechet.fvd(real, fake) == pytest.approx(expected_fvd, rel=1e-6)


def test_lpips_needs_vgg_weights_then_averages_frames(tmp_path, monkeypatch):
    from torchvision.models.vgg import cfgs, make_layers

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(MissingWeightsError, match=r"vgg16-397923af\.pth"):
        LPIPS()
    torch.manual_seed(0)
    features = make_layers(cfgs["D"])  # VGG-16's convolutional part, random weights (tests only)
    path = tmp_path / "torch" / "hub" / "checkpoints" / LPIPS.FILENAME
    path.parent.mkdir(parents=True)
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)
    metric = LPIPS()
    assert torch.equal(getattr(metric.metric.net.slice3, "12").weight, features[12].weight)
    real, fake = torch.rand(2, 3, 3, 32, 32), torch.rand(2, 3, 3, 32, 32)
    d = metric(fake, real)
    per_frame = torch.stack([metric.metric(fake[:, :, t] * 2 - 1, real[:, :, t] * 2 - 1).flatten()
                             for t in range(3)], 1)
    assert torch.allclose(d, per_frame.mean(1), atol=1e-6)
    assert torch.allclose(metric(real, real), torch.zeros(2), atol=1e-6)


def test_export_frames_layout(tmp_path):
    videos = torch.rand(2, 3, 20, 112, 112)
    frechet.export_frames(videos, ["a", "b"], tmp_path / "real")
    files = sorted((tmp_path / "real" / "a").iterdir(), key=lambda p: int(p.stem))
    assert [p.name for p in files] == [f"{i}.png" for i in range(16)]
    image = np.asarray(Image.open(files[0]))
    assert image.shape == (128, 128, 3) and image[:8].max() == 0 and image[-8:].max() == 0
    assert np.abs(image[8:120, 8:120].astype(int) - (videos[0, :, 0].permute(1, 2, 0).numpy() * 255)).max() <= 1


def fake_scores() -> pd.DataFrame:
    return pd.DataFrame({"FileName": ["a", "a", "a", "b", "b", "b"], "noise": [0, 1, 2] * 2,
                         "GT EF": [50.0] * 3 + [30.0] * 3, "Gen EF": [60.0, 48.0, 41.0, 31.0, 20.0, 45.0],
                         "Ref EF": [52.0] * 3 + [33.0] * 3, "SSIM": [0.5, 0.4, 0.9, 0.3, 0.8, 0.2],
                         "LPIPS": [0.2, 0.3, 0.1, 0.4, 0.1, 0.5]})


def test_temporal_profile_tells_a_beat_from_flicker():
    t = torch.arange(16) / 8.0  # 16 frames at 8 fps
    beat = 0.5 + 0.1 * torch.sin(2 * math.pi * 1.5 * t)  # 90 bpm: 3 whole cycles in the 2 s
    noise = 0.5 + 0.1 * torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    videos = torch.stack([beat.view(1, 16, 1, 1).expand(3, 16, 8, 8), noise.expand(3, -1, -1, -1),
                          torch.full((3, 16, 8, 8), 0.5)])
    out = temporal_profile(videos, fps=8.0)
    assert out["temporal_std"][0] == pytest.approx(0.1 / math.sqrt(2), rel=1e-3)
    assert out["cardiac_fraction"][0] == pytest.approx(1.0)
    assert 0.4 < out["cardiac_fraction"][1] < 0.85  # white noise: 5 of 8 frequency bins
    assert out["temporal_std"][2] == 0 and torch.isnan(out["cardiac_fraction"][2])
    with pytest.raises(ValueError, match="too coarse"):
        temporal_profile(videos[:, :, :4], fps=32.0)  # 8-Hz frequency steps


def test_selection_and_both_protocols():
    scores = fake_scores()
    best = select_by_ef(scores)
    assert list(best.noise) == [1, 0]  # |48-50| and |31-30| are the smallest errors
    s = summarize(scores)
    assert s["best_mae_gen"] == pytest.approx(1.5)
    assert s["best_rmse_gen"] == pytest.approx(math.sqrt((4 + 1) / 2))
    assert s["avg_mae_gen"] == pytest.approx(np.mean([10, 2, 9, 1, 10, 15]))
    gt, gen = scores["GT EF"].to_numpy(), scores["Gen EF"].to_numpy()
    assert s["avg_r2_gen"] == pytest.approx(1 - ((gt - gen) ** 2).sum() / ((gt - gt.mean()) ** 2).sum())
    assert s["avg_r_gen"] == pytest.approx(np.corrcoef(gt, gen)[0, 1])
    assert s["seed_best_ssim"] == pytest.approx((0.9 + 0.8) / 2)  # best SSIM per video, whatever its EF
    assert s["selected_ssim"] == pytest.approx((0.4 + 0.3) / 2)  # SSIM of the EF-selected candidates
    assert s["seed_best_lpips"] == pytest.approx(0.1) and s["selected_lpips"] == pytest.approx(0.35)


def test_merge_detects_gaps_and_duplicates(tmp_path):
    scores = fake_scores()
    scores.iloc[:3].to_csv(tmp_path / "c0.csv", index=False)
    scores.iloc[3:].to_csv(tmp_path / "c1.csv", index=False)
    merged = merge_scores([tmp_path / "c0.csv", tmp_path / "c1.csv"], 3, expected=["a", "b"])
    assert len(merged) == 6
    with pytest.raises(ValueError, match=r"videos missing: \['c'\]"):
        merge_scores([tmp_path / "c0.csv", tmp_path / "c1.csv"], 3, expected=["a", "b", "c"])
    scores.iloc[3:5].to_csv(tmp_path / "c1.csv", index=False)
    with pytest.raises(ValueError, match=r"without exactly 3 candidates: \{'b': 2\}"):
        merge_scores([tmp_path / "c0.csv", tmp_path / "c1.csv"], 3)
    scores.iloc[:3].to_csv(tmp_path / "c1.csv", index=False)
    with pytest.raises(ValueError, match=r"duplicated candidates"):
        merge_scores([tmp_path / "c0.csv", tmp_path / "c1.csv"], 3)
    scores.drop(columns="SSIM").to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match=r"bad.csv: score file is missing columns \['SSIM'\]"):
        merge_scores([tmp_path / "bad.csv"], 3)


def test_chunk_index_out_of_range():
    with pytest.raises(ValueError, match="chunk 3 is out of range for chunks=3"):
        ScoreConfig(chunk=3, chunks=3)
    with pytest.raises(ValueError, match=r"solver must be one of \('heun', 'dpmpp_2m'\), got 'ddim'"):
        ScoreConfig(solver="ddim")
    assert [list(evaluation.chunk_indices(7, i, 3)) for i in range(3)] == [[0, 1], [2, 3], [4, 5, 6]]


def test_score_file_resumes_after_interruption_without_duplicates(phantom_root, cascade_and_regressor, tmp_path,
                                                                   monkeypatch):
    model, regressor = cascade_and_regressor
    cfg = ScoreConfig(data_root=str(phantom_root), mode="counterfactual", num_noise=2, max_videos=2,
                      batch_videos=1, sample_steps=2, seed=5)
    full = generate_scores(model, regressor, cfg, tmp_path / "full.csv", model_id="m", regressor_id="r",
                           progress=False)
    assert len(full) == 4 and set(full.columns) >= set(evaluation.SCORE_COLUMNS + evaluation.RUN_COLUMNS)
    assert full.groupby("FileName")["GT EF"].nunique().eq(1).all()  # one target per video, shared by candidates
    assert full["GT EF"].between(15, 85).all() and full.SSIM.between(-1, 1).all() and full.LPIPS.isna().all()
    assert full["SSIM sector"].between(-1, 1).all()  # the windows inside the anatomy frame's scan sector

    real_sample, calls = evaluation.sample, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the job is killed while generating the second batch
        return real_sample(*args, **kwargs)

    monkeypatch.setattr(evaluation, "sample", interrupted)
    with pytest.raises(KeyboardInterrupt):
        generate_scores(model, regressor, cfg, tmp_path / "resumed.csv", model_id="m", regressor_id="r",
                        progress=False)
    assert len(pd.read_csv(tmp_path / "resumed.csv")) == 2  # the finished batch was kept
    calls.clear()
    resumed = generate_scores(model, regressor, cfg, tmp_path / "resumed.csv", model_id="m", regressor_id="r",
                              progress=False)
    assert len(calls) == 1  # only the unfinished batch was generated again
    merged = merge_scores([tmp_path / "resumed.csv"], 2)
    expected = full.sort_values(["FileName", "noise"]).reset_index(drop=True).drop(columns="seconds")  # wall time
    pd.testing.assert_frame_equal(merged[expected.columns].reset_index(drop=True), expected, check_dtype=False)
    assert len(resumed) == 4
    assert evaluation.regressor_distance(merged, [tmp_path / "resumed.csv"]) == pytest.approx(
        evaluation.regressor_distance(expected, [tmp_path / "full.csv"]), rel=1e-6)

    with pytest.raises(ValueError, match=r"made with cond_scale=\['5.0'\], not '1.0'"):
        generate_scores(model, regressor, ScoreConfig(**{**cfg.__dict__, "cond_scale": 1.0}),
                        tmp_path / "resumed.csv", model_id="m", regressor_id="r", progress=False)
    for other in ({"target_draw": "stratified"}, {"ef_range": (20.0, 80.0)}):  # finished rows keep their targets
        with pytest.raises(ValueError, match="other counterfactual targets"):
            generate_scores(model, regressor, ScoreConfig(**{**cfg.__dict__, **other}), tmp_path / "resumed.csv",
                            model_id="m", regressor_id="r", progress=False)


def test_stratified_counterfactual_targets_cover_the_range_and_uniform_ones_stay_the_seeds():
    """E29: 12 uniform targets once all fell in 19-68 % and hid a fold beyond 75 %. ``stratified`` puts one target
    in each twelfth of ef_range, in an order that depends on the seed; ``uniform`` keeps the values every earlier
    figure was drawn with."""
    from echodiff.evaluation import counterfactual_target
    from echodiff.rng import derived_seed

    uniform = ScoreConfig(mode="counterfactual", seed=0)
    drawn = [counterfactual_target(i, 12, uniform) for i in range(12)]
    assert drawn == [np.random.default_rng(derived_seed(0, i, 1)).uniform(15.0, 85.0) for i in range(12)]
    for seed in (0, 1):
        cfg = ScoreConfig(mode="counterfactual", seed=seed, target_draw="stratified")
        targets = np.array([counterfactual_target(i, 12, cfg) for i in range(12)])
        strata = np.floor((targets - 15.0) / (70.0 / 12)).astype(int)
        assert sorted(strata) == list(range(12)), targets  # one per stratum: 15-20.8 %, ..., 79.2-85 %
        assert counterfactual_target(3, 12, cfg) == targets[3]  # (seed, index, n) fix it: chunks agree
    orders = [[int(counterfactual_target(i, 12, ScoreConfig(mode="counterfactual", seed=seed,
                                                             target_draw="stratified")) // 10) for i in range(12)]
              for seed in (0, 1)]
    assert orders[0] != orders[1]
    with pytest.raises(ValueError, match="target_draw must be one of"):
        ScoreConfig(mode="counterfactual", target_draw="even")


def test_factual_scores_save_videos_readable_by_the_loader(phantom_root, cascade_and_regressor, tmp_path):
    from echodiff.data import EchoNetDynamic

    model, regressor = cascade_and_regressor
    cfg = ScoreConfig(data_root=str(phantom_root), mode="factual", num_noise=2, max_videos=2, batch_videos=2,
                      sample_steps=2, chunk=1, chunks=2)
    scores = generate_scores(model, regressor, cfg, tmp_path / "s.csv", videos_dir=tmp_path / "videos",
                             progress=False)
    filelist = pd.read_csv(phantom_root / "FileList.csv")
    val = filelist[filelist.Split == "VAL"].reset_index(drop=True)
    assert list(scores.FileName.unique()) == [val.FileName[1]]  # chunk 1 of 2 of the first two VAL videos
    assert np.allclose(scores["GT EF"], val.EF[1])
    evaluation.write_video_filelist(scores, tmp_path / "videos", fps=50.0, frames=4, size=112)
    data = EchoNetDynamic(tmp_path / "videos", "val", target_type=["EF", "FileName"], length=4, period=1)
    assert len(data) == 2 and data[0][0].shape == (3, 4, 112, 112)
    gif = Image.open(tmp_path / "videos" / "gifs" / f"{val.FileName[1]}_factual.gif")
    assert gif.size == (112 * (1 + cfg.num_noise), 112 + plots.CAPTION_PX)  # real | candidates, captioned
    assert np.asarray(gif.convert("L"))[112:].max() > 200


def test_video_row_gif_captions_each_tile_and_refuses_a_label_count_that_does_not_match(tmp_path):
    videos = [np.zeros((3, 2, 8, 8), np.float32)] * 2
    path = plots.video_row_gif(videos, tmp_path / "a.gif", fps=4, size=40, labels=["EF 55 -> 52", ""])
    band = np.asarray(Image.open(path).convert("L"))[40:]
    assert band.shape == (plots.CAPTION_PX, 80) and band[:, :40].max() > 200 and band[:, 40:].max() == 0
    assert Image.open(plots.video_row_gif(videos, tmp_path / "b.gif", fps=4, size=40)).size == (80, 40)
    with pytest.raises(ValueError, match="b.gif: 1 labels for 2 videos"):
        plots.video_row_gif(videos, tmp_path / "b.gif", fps=4, labels=["x"])


def test_motion_correlation_knows_the_same_motion_at_any_amplitude_and_scores_a_still_video_zero():
    g = torch.Generator().manual_seed(0)
    anatomy = torch.rand(2, 3, 32, 32, generator=g)
    motion = torch.randn(2, 1, 6, 32, 32, generator=g).expand(-1, 3, -1, -1, -1)
    truth = anatomy[:, :, None] + 0.1 * motion
    still = anatomy[:, :, None].expand_as(truth)
    other = anatomy[:, :, None] + 0.1 * torch.randn(truth.shape, generator=g)
    assert torch.allclose(motion_correlation(truth, truth, anatomy, 16), torch.ones(2), atol=1e-5)
    assert torch.allclose(motion_correlation(anatomy[:, :, None] + 0.03 * motion, truth, anatomy, 16), torch.ones(2),
                          atol=1e-5)  # the same change from the anatomy frame, smaller
    assert torch.allclose(motion_correlation(anatomy[:, :, None] - 0.1 * motion, truth, anatomy, 16), -torch.ones(2),
                          atol=1e-5)
    assert torch.equal(motion_correlation(still, truth, anatomy, 16), torch.zeros(2))
    assert motion_correlation(other, truth, anatomy, 16).abs().max() < 0.2
    with pytest.raises(ValueError, match="one shape"):
        motion_correlation(truth[:, :, :3], truth, anatomy, 16)


def test_chamber_excess_measures_grey_where_the_true_chambers_are_dark_inside_the_sector():
    anatomy = torch.zeros(2, 3, 32, 32)
    anatomy[:, :, 4:28, 4:28] = 0.5  # the sector
    anatomy[:, :, 10:20, 10:20] = 0.0  # a chamber inside it
    truth = anatomy[:, :, None].repeat(1, 1, 4, 1, 1)
    grey = truth.clone()
    grey[:, :, :, 10:20, 10:20] = 0.1  # chambers drawn grey
    grey[:, :, :, :2, :2] = 0.3  # and the background outside the sector: not a chamber
    assert torch.equal(chamber_excess(truth, truth, anatomy, 32), torch.zeros(2))
    assert torch.allclose(chamber_excess(grey, truth, anatomy, 32), torch.full((2,), 0.1))
    assert torch.isnan(chamber_excess(truth, truth.clamp_min(0.5), anatomy, 32)).all()  # no dark pixel: no chamber
    with pytest.raises(ValueError, match="one shape"):
        chamber_excess(truth[:, :, :3], truth, anatomy, 16)


def test_truth_scores_each_candidate_against_its_heart_rendered_again_at_the_target(phantom_root,
                                                                                   cascade_and_regressor, tmp_path):
    model, regressor = cascade_and_regressor
    common = dict(data_root=str(phantom_root), num_noise=2, max_videos=2, batch_videos=2, sample_steps=2, truth=True)
    factual = generate_scores(model, regressor, ScoreConfig(mode="factual", **common), tmp_path / "f.csv",
                              progress=False)
    # At the heart's own EF its true video is the real clip itself: the same SSIM, and the real clip's motion is it
    assert np.allclose(factual["SSIM truth"], factual.SSIM) and np.allclose(factual["Ref Motion r"], 1.0, atol=1e-5)
    cf = generate_scores(model, regressor, ScoreConfig(mode="counterfactual", **common), tmp_path / "c.csv",
                         progress=False)
    data = evaluation._clips(model.config, ScoreConfig(**common))
    truth = evaluation.truth_clips(data, [0, 1], list(cf["GT EF"][::2]), ScoreConfig(**common), model.config)
    real = torch.stack([data[i][2] for i in (0, 1)])
    assert truth.shape == real.shape and not torch.equal(truth, real)  # the same heart, beating at another EF
    assert (cf["Ref Motion r"] < 0.999).all() and cf["Motion r"].between(-1, 1).all()
    assert (cf["Still SSIM truth"] > 0).all() and (factual["Still SSIM truth"] < 1).all()
    s = summarize(cf)
    assert {"avg_motion_r", "avg_ssim_truth", "still_ssim_truth", "ref_motion_r", "avg_chamber_excess",
            "still_chamber_excess"} <= set(s)
    assert factual["Chamber excess"].notna().all() and cf["Chamber excess"].between(-1, 1).all()
    assert s["avg_chamber_excess"] == pytest.approx(cf["Chamber excess"].mean())
    assert s["avg_motion_r"] == pytest.approx(cf["Motion r"].mean())
    # The phantom's heart re-drawn at a target: the same anatomy and acquisition, its traced EF the target
    names = list(data.filelist.FileName[:2])
    hearts = twins(phantom_root, names, [20.0, 80.0])
    assert [h.file_name for h in hearts] == names and [round(h.ef_target) for h in hearts] == [20, 80]
    written = write_hearts(tmp_path / "twins", hearts, ["VAL", "VAL"], workers=1, progress=False)
    assert np.allclose(written.EF, [20.0, 80.0], atol=1e-3)


def test_truth_needs_a_phantom_and_is_not_mixed_into_a_score_file_made_without_it(phantom_copy, cascade_and_regressor,
                                                                                   tmp_path):
    model, regressor = cascade_and_regressor
    common = dict(data_root=str(phantom_copy), num_noise=1, max_videos=1, sample_steps=2)
    generate_scores(model, regressor, ScoreConfig(**common), tmp_path / "s.csv", progress=False)
    assert generate_scores(model, regressor, ScoreConfig(**common), tmp_path / "s.csv", progress=False)[
        "Motion r"].isna().all()
    with pytest.raises(ValueError, match="made with truth: false"):
        generate_scores(model, regressor, ScoreConfig(**common, truth=True), tmp_path / "s.csv", progress=False)
    (phantom_copy / "phantom.json").unlink()  # as the real EchoNet-Dynamic: nothing can render its hearts again
    with pytest.raises(ValueError, match="phantom.json not found.*truth: false"):
        generate_scores(model, regressor, ScoreConfig(**common, truth=True), tmp_path / "t.csv", progress=False)


def test_settings_that_look_missing_still_match_on_resume(phantom_root, cascade_and_regressor, tmp_path):
    model, regressor = cascade_and_regressor  # "None" and "NA" are read back as text, not as missing values
    cfg = ScoreConfig(data_root=str(phantom_root), num_noise=1, max_videos=1, sample_steps=2, seed=1)
    first = generate_scores(model, regressor, cfg, tmp_path / "s.csv", model_id="None", regressor_id="NA",
                            progress=False)
    again = generate_scores(model, regressor, cfg, tmp_path / "s.csv", model_id="None", regressor_id="NA",
                            progress=False)
    pd.testing.assert_frame_equal(first, again)
    assert list(again.model_id) == ["None"] and list(again.regressor_id) == ["NA"]


def test_lv_area_judge_reads_ef_from_real_clips_without_the_regressor(phantom_root):
    """The second judge: dark area inside the traced ED outline. On the session phantom's real clips (112 px,
    16 frames at 8 fps) its contraction follows the CSV's EF; a still clip has none."""
    from echodiff.data import DiffusionClips
    from echodiff.metrics.lv_area import AreaJudge, contraction, ed_outline

    data = DiffusionClips(phantom_root, "all", frames=16, fps=8.0)
    x, y = [], []
    for i in range(len(data)):
        torch.manual_seed(i)
        _, ef, clip = data[i]
        outline = ed_outline(data.tracings[data.filelist.FileName.iloc[i]])
        x.append(contraction(clip, outline))
        y.append(float(ef))
        if i == 0:
            still = clip[:, :1].expand_as(clip)
            assert contraction(still, outline) == 0.0
    judge = AreaJudge.fit(np.array(x), np.array(y))
    assert judge.r > 0.9 and judge.slope > 0, judge  # measured: r 0.975 on the 400-video phantom's VAL clips
    assert np.abs(judge.ef(np.array(x)) - np.array(y)).mean() < 6.0
    with pytest.raises(ValueError, match="no traced frame"):
        ed_outline({})


def test_summary_reports_both_judges_side_by_side():
    rows = pd.DataFrame({"FileName": ["a", "a", "b", "b"], "GT EF": [20.0, 20.0, 80.0, 80.0],
                         "Gen EF": [30.0, 40.0, 70.0, 60.0], "Ref EF": [21.0, 21.0, 79.0, 79.0],
                         "SSIM": 0.5, "LPIPS": np.nan, "noise": [0, 1, 0, 1],
                         "Area EF": [25.0, 35.0, 75.0, 65.0], "Ref Area EF": [22.0, 22.0, 78.0, 78.0]})
    summary = evaluation.summarize(rows)
    assert summary["avg_slope_gen"] == pytest.approx((65 - 35) / 60)
    assert summary["area_avg_slope_gen"] == pytest.approx((70 - 30) / 60)
    assert summary["area_avg_mae_gen"] == pytest.approx(10.0) and summary["area_avg_mae_ref"] == pytest.approx(2.0)
    assert "area_avg_r_gen" not in evaluation.summarize(rows.drop(columns=["Area EF", "Ref Area EF"]))


def test_chunked_command_line_and_notebook_evaluation_leave_the_same_mlflow_record(saved_models, phantom_root,
                                                                                    tmp_path):
    """`python -m echodiff.evaluation score|merge` as slurm/evaluate_{chunk,merge}.sbatch run them (two chunks,
    then the merge) logs the same metrics, tables, figure and GIFs as notebook 03's in-process route
    (score_all + report in one run); the merge refuses a VAL set with a video missing."""
    cascade, regressor = saved_models
    params = {"model": str(cascade), "regressor": str(regressor), "data_root": str(phantom_root),
              "make_phantom": False, "split": "val", "modes": ["factual", "counterfactual"], "num_noise": 2,
              "max_videos": 2, "batch_videos": 1, "chunks": 2, "sample_steps": 2, "sample_churn": 0.0,
              "cond_scale": 1.0, "lpips": False, "fid_fvd": False, "export_frames": False, "n_gifs": 1,
              "model_name": "tiny", "experiment": "evaluate-two-ways", "out_dir": str(tmp_path / "cli"),
              "seg_steps": 20}
    params_file = tmp_path / "evaluate.yaml"
    params_file.write_text(yaml.safe_dump(params))

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "echodiff.evaluation", *args, "-f", str(params_file)],
                              capture_output=True, text=True, timeout=600, cwd=repo_root())

    segmenter = tmp_path / "cli" / "scores" / "lv_segmenter.pt"
    trained = []  # the segmentation judge's file after each chunk: chunk 0 trains it, chunk 1 reads it
    for chunk in (0, 1):
        proc = cli("score", f"chunk={chunk}")
        assert proc.returncode == 0, proc.stderr[-3000:]
        trained.append(segmenter.stat().st_mtime_ns)
    assert trained[0] == trained[1]
    merged = cli("merge")
    assert merged.returncode == 0, merged.stderr[-3000:]
    cli_run = mlflow.get_run(merged.stdout.split("MLflow run ")[-1].strip())
    scores = pd.read_csv(tmp_path / "cli" / "scores_factual.csv")
    assert len(scores) == 2 * 2 and scores.FileName.nunique() == 2 and "EF MAE all" in merged.stdout

    here = {**params, "chunks": 1, "out_dir": str(tmp_path / "notebook")}  # the notebook runs every chunk itself
    model, reg = evaluation.load_inputs(here)
    with tracking.stage_run("evaluate", here, experiment="evaluate-two-ways") as run:
        result = evaluation.report(evaluation.score_all(model, reg, here, progress=False), model.config, here)
    notebook_run = mlflow.get_run(run.info.run_id)
    assert cli_run.info.status == notebook_run.info.status == "FINISHED"
    assert set(cli_run.data.metrics) == set(notebook_run.data.metrics) == set(result.metrics())
    assert {"factual_avg_r_gen", "counterfactual_FD_EFreg", "factual_gen_cardiac_fraction",
            "counterfactual_mae_first_candidate", "factual_area_avg_mae_gen", "counterfactual_seg_avg_slope_gen",
            "factual_seg_avg_mae_ref", "seg_judge_val_dice"} <= set(result.metrics())
    for key, value in notebook_run.data.metrics.items():
        assert cli_run.data.metrics[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key

    def artifacts(run_id: str) -> set[str]:
        client = mlflow.MlflowClient()
        return {f.path for top in client.list_artifacts(run_id) for f in
                (client.list_artifacts(run_id, top.path) if top.is_dir else [top])}

    assert artifacts(cli_run.info.run_id) == artifacts(notebook_run.info.run_id) >= {
        "paper_table.csv", "judges.csv", "ef_scatter.png", "scores_factual.csv", "scores_counterfactual.csv",
        f"gifs/{scores.FileName.iloc[0]}.gif", "judges/lv_segmenter.pt"}
    table = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=cli_run.info.run_id, artifact_path="paper_table.csv",
                                                           dst_path=str(tmp_path / "dl")))
    assert set(table.Task[table.Model == "tiny"]) == {"Generation", "Reconstruction"}
    assert (table["Sampling time (s)"][table.Model == "tiny"] > 0).all()

    first = tmp_path / "cli" / "scores" / "factual_chunk000of002.csv"
    rows = pd.read_csv(first)
    rows[rows.FileName != rows.FileName.iloc[0]].to_csv(first, index=False)  # a chunk that lost a video
    partial = cli("merge")
    assert partial.returncode != 0 and "1 videos missing" in partial.stderr, partial.stderr[-2000:]
