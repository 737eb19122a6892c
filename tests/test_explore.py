"""notebooks/06_explore's logic (echodiff.explore) and widgets (echodiff.explore_ui), without a browser: real
AVIs and PNGs, a real (tiny) cascade and regressor on disk, a real MLflow store."""

import datetime
import tempfile

import cv2
import mlflow
import numpy as np
import pytest
import torch
from test_diffusion import tiny_config

from echodiff import explore, tracking
from echodiff.data.transforms import resize
from echodiff.data.video import read_video, web_video, write_video
from echodiff.diffusion import CascadeModel, sample
from echodiff.explore_ui import ExplorerApp
from echodiff.metrics.lv_area import area_curve
from echodiff.models.ef_regressor import EFRegressor, regress_ef


@pytest.fixture(scope="module")
def explorer(saved_models, phantom_root):
    cascade, regressor = saved_models
    return explore.load_explorer(str(cascade), str(regressor), data_root=str(phantom_root))


def _frame_video(seed: int = 0, frames: int = 3, size: int = 112) -> np.ndarray:
    rng = np.random.default_rng(seed)
    grey = rng.integers(0, 256, (1, frames, size, size), dtype=np.uint8)
    return np.repeat(grey, 3, axis=0)


def test_upload_anatomy_reads_an_avi_and_a_png(tmp_path):
    video = _frame_video()
    write_video(tmp_path / "clip.avi", video, 8.0)
    from_avi = explore.upload_anatomy("clip.avi", (tmp_path / "clip.avi").read_bytes())
    first = torch.from_numpy(read_video(tmp_path / "clip.avi")[:, 0]).float().mean(0) / 255  # MJPG is lossy
    assert from_avi.name == "clip" and from_avi.frame.shape == (3, 112, 112) and from_avi.ef is None
    assert torch.allclose(from_avi.frame[0], first, atol=1e-6)
    _, png = cv2.imencode(".png", np.ascontiguousarray(video[:, 0].transpose(1, 2, 0)))
    from_png = explore.upload_anatomy("frame.PNG", png.tobytes())
    assert torch.allclose(from_png.frame[1], torch.from_numpy(video[0, 0]).float() / 255, atol=1e-6)
    small = cv2.imencode(".png", np.ascontiguousarray(video[:, 0, :56, :56].transpose(1, 2, 0)))[1].tobytes()
    assert explore.upload_anatomy("small.png", small).frame.shape == (3, 112, 112)  # any square size


@pytest.mark.parametrize(("name", "content", "message"), [
    ("notes.txt", b"hello", r"notes.txt: .txt is not a supported upload; upload an EchoNet-Dynamic AVI"),
    ("empty.png", b"", r"empty.png: the file is empty"),
    ("broken.png", b"\x89PNG\r\n\x1a\nnot really", r"broken.png: not a readable PNG image"),
    ("broken.avi", b"RIFF\x00\x00\x00\x00AVI junk", r"broken.avi: not a readable AVI"),
    ("wide.png", cv2.imencode(".png", np.full((40, 160), 99, np.uint8))[1].tobytes(),
     r"wide.png: a 160x40 px frame; the cascade takes square frames"),
    ("blank.png", cv2.imencode(".png", np.full((64, 64), 7, np.uint8))[1].tobytes(), r"blank.png: the frame is blank"),
])
def test_bad_uploads_say_what_is_wrong(name, content, message):
    with pytest.raises(explore.UploadError, match=message):
        explore.upload_anatomy(name, content)


def test_a_regressor_for_other_clips_is_refused(saved_models):
    cascade = CascadeModel(tiny_config(1))
    regressor = EFRegressor(width=4)
    regressor.clip_spec = {"frames": 16, "fps": 8.0}
    with pytest.raises(ValueError, match=r"trained on 16-frame clips at 8.0 fps, the cascade \(given\) makes 4 frames"):
        explore.Explorer(cascade, regressor)


def test_generate_candidates_reproducible_per_seed_with_their_regressed_ef(explorer):
    name = explorer.choices()[0][1]
    assert explorer.choices()[0][0].startswith(f"{name} · EF ")
    anatomy = explorer.dataset_anatomy(name, seed=3)
    assert anatomy.clip.shape == (3, 4, 112, 112) and anatomy.outline is not None  # phantom videos are traced
    assert torch.equal(explorer.dataset_anatomy(name, seed=3).frame, anatomy.frame)
    calls = []
    g = explorer.generate(anatomy, 70.0, candidates=2, steps=2, seed=5, progress=lambda d, n: calls.append((d, n)))
    assert calls == [(1, 2), (2, 2)] and g.videos.shape == (2, 3, 4, 16, 16) and g.seconds > 0
    # candidate k uses seed + k: the second candidate is the first of a run seeded one higher, and what sample gives
    alone = explorer.generate(anatomy, 70.0, candidates=1, steps=2, seed=6)
    assert torch.equal(g.videos[1], alone.videos[0])
    direct = sample(explorer.cascade, resize(anatomy.frame[None], 16), 70.0, steps=2, seed=5)
    assert torch.equal(g.videos[:1], direct)
    assert np.allclose(g.regressed_ef, regress_ef(explorer.regressor, g.videos, 8.0).numpy())
    assert g.curve_name.startswith("LV cavity") and g.curves.shape == (2, 4)
    assert np.allclose(g.curves[0], area_curve(g.videos[0], anatomy.outline))
    assert g.real_curve.shape == (4,)
    with pytest.raises(ValueError, match=r"target EF must be within \(0, 100\] %, got 120"):
        explorer.generate(anatomy, 120.0)


def test_a_systole_conditioned_cascade_gets_the_anatomy_videos_interval(explorer):
    """``condition_on_systole``: a dataset anatomy carries its video's ED -> ES interval into generation; an uploaded
    frame has none, and generating from it asks for one instead of making one up, unless the cascade sets the
    interval of its counterfactual videos (``counterfactual_systole``)."""
    from echodiff.diffusion.imagen import cascade_config

    cascade = CascadeModel(cascade_config(dict(tiny_config(1), condition_on_systole=True))).eval()
    timed = explore.Explorer(cascade, explorer.regressor, explorer.data)
    name = explorer.choices()[0][1]
    anatomy = timed.dataset_anatomy(name)
    index = int(np.flatnonzero(explorer.data.filelist.FileName.astype(str).to_numpy() == name)[0])
    assert anatomy.systole == pytest.approx(explorer.data.systole_seconds(index)) and 0.1 < anatomy.systole < 0.7
    assert explorer.dataset_anatomy(name).systole is None  # a cascade without the condition: not asked for
    g = timed.generate(anatomy, 60.0, candidates=1, steps=2, seed=4)
    direct = sample(cascade, resize(anatomy.frame[None], 16), 60.0, steps=2, seed=4, systole=anatomy.systole)
    assert torch.equal(g.videos, direct) and g.settings["systole"] == anatomy.systole  # kept with the videos
    uploaded = explore.Anatomy(name="frame.png", frame=anatomy.frame)
    with pytest.raises(ValueError, match="frame.png: this cascade is conditioned on the ED -> ES interval"):
        timed.generate(uploaded, 60.0, steps=2)
    assert timed.generate(uploaded, 60.0, candidates=1, steps=2, systole=0.3).videos.shape == (1, 3, 4, 16, 16)
    # a cascade that asks its counterfactual videos for one interval (counterfactual_systole) uses it for both
    cascade.config["counterfactual_systole"] = 0.4
    asked = sample(cascade, resize(anatomy.frame[None], 16), 60.0, steps=2, seed=4, systole=0.4)
    assert torch.equal(timed.generate(anatomy, 60.0, candidates=1, steps=2, seed=4).videos, asked)
    assert timed.generate(uploaded, 60.0, candidates=1, steps=2).settings["systole"] == 0.4


def test_sweep_keeps_anatomy_and_seeds_across_efs(explorer):
    anatomy = explorer.dataset_anatomy(explorer.choices()[1][1])
    calls = []
    sweep = explorer.sweep(anatomy, [20.0, 80.0], candidates=2, steps=2, seed=1,
                           progress=lambda d, n: calls.append((d, n)))
    assert [g.target_ef for g in sweep] == [20.0, 80.0] and calls == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert all(g.settings["seed"] == 1 and g.videos.shape[0] == 2 for g in sweep)
    table = explore.generations_table(sweep, explorer)
    assert list(table.target_ef) == [20.0, 20.0, 80.0, 80.0] and table.anatomy.eq(anatomy.name).all()


def test_save_writes_avis_gifs_csv_and_logs_an_mlflow_run(explorer, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    anatomy = explorer.dataset_anatomy(explorer.choices()[0][1])
    g = explorer.generate(anatomy, 40.0, candidates=2, steps=2, seed=0)
    paths = explore.save_generations([g], explorer, tmp_path / "out", log=True, experiment="explore-test")
    avis = sorted(p for p in paths if p.suffix == ".avi")
    assert [p.name for p in avis] == [f"{anatomy.name}_ef40_seed0_{k}.avi" for k in range(2)]
    assert read_video(avis[1]).shape == (3, 4, 16, 16)
    assert any(p.suffix == ".gif" for p in paths) and (tmp_path / "out" / "explore.csv").is_file()
    runs = mlflow.search_runs(experiment_names=["explore-test"])
    assert list(runs.status) == ["FINISHED"] and runs["tags.echodiff.stage"].iloc[0] == "explore"
    assert runs["params.cascade"].iloc[0] == explorer.cascade_id
    logged = {a.path for a in mlflow.MlflowClient().list_artifacts(runs.run_id.iloc[0], "videos")}
    assert logged == {f"videos/{p.name}" for p in avis}


def test_load_explorer_finds_the_latest_finished_stage_runs(saved_models, phantom_root, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    with pytest.raises(LookupError, match=r"no finished `diffusion` run in MLflow experiment 'x'.*make demo"):
        explore.load_explorer(experiment="x")
    cascade, regressor = saved_models
    (tmp_path / "best.pt").write_bytes(regressor.read_bytes())
    with tracking.stage_run("ef_regression", {}, experiment="x"):
        tracking.log_file(tmp_path / "best.pt", "checkpoints")  # where stage 01 keeps its best checkpoint
    for data_root in ("elsewhere", str(phantom_root)):  # the later run is the latest
        with tracking.stage_run("diffusion", {"data_root": data_root}, experiment="x") as run:
            mlflow.log_artifacts(str(cascade), "model")
    with pytest.raises(RuntimeError), tracking.stage_run("diffusion", {"data_root": "failed"}, experiment="x"):
        raise RuntimeError("a FAILED run is never taken, though it is the newest")
    found = explore.load_explorer(experiment="x")
    assert found.cascade_id == run.info.run_id and found.data is not None
    assert str(found.data.root) == str(phantom_root)
    with pytest.raises(ValueError, match="set data_root: the cascade .* is a model folder"):
        explore.load_explorer(str(cascade), str(regressor), experiment="x")


def test_web_video_plays_back_as_what_was_encoded():
    video = np.zeros((3, 6, 32, 32), np.uint8)
    video[:, :, 8:24, 8:24] = np.linspace(0, 250, 6, dtype=np.uint8)[None, :, None, None]
    data = web_video(video, 8.0)
    assert data[:4] == b"\x1aE\xdf\xa3"  # EBML: a Matroska/WebM file
    with tempfile.NamedTemporaryFile(suffix=".webm") as handle:
        handle.write(data)
        handle.flush()
        capture = cv2.VideoCapture(handle.name)
        frames = []
        while (frame := capture.read())[0]:
            frames.append(frame[1])
    assert len(frames) == 6
    assert np.abs(np.stack(frames)[:, 16, 16, 0].astype(int) - video[0, :, 16, 16]).max() <= 12  # lossy VP8


def test_the_page_generates_sweeps_saves_and_reports_errors_in_place(explorer, tmp_path):
    app = ExplorerApp(explorer, out_dir=str(tmp_path / "saved"), steps=2, candidates=2)
    assert app.anatomy is not None and app.anatomy_view.value[:4] == b"\x89PNG"
    app.save_button.click()  # nothing shown yet: a message, not an exception
    assert "nothing to save yet" in app.status.value
    app.ef.value = 75
    app.generate_button.click()
    videos = [c for row in app.results.children[:1] for tile in row.children for c in tile.children
              if hasattr(c, "format") and c.format == "webm"]
    assert len(videos) == 3 and all(v.value[:4] == b"\x1aE\xdf\xa3" for v in videos)  # real clip + 2 candidates
    captions = [tile.children[1].value for tile in app.results.children[0].children]
    assert "real clip" in captions[0] and all("target 75 %" in c and "regressed EF" in c for c in captions[1:])
    assert app.progress.value == app.progress.max == 2 and "2 video(s) in" in app.status.value
    app.solver.value = "dpmpp_2m"  # deterministic: the page sends no churn, and it samples
    assert app.sampler()["churn"] is None and app.sampler()["solver"] == "dpmpp_2m"
    app.candidates.value = 1
    app.generate_button.click()
    assert "1 video(s) in" in app.status.value and app.shown[0].settings["solver"] == "dpmpp_2m"
    app.candidates.value = 2
    app.sweep_efs.value = "20, eighty"
    app.sweep_button.click()
    assert "sweep EFs must be numbers" in app.status.value and not app.generate_button.disabled
    app.sweep_efs.value = "20; 80"
    app.sweep_button.click()
    assert app.progress.max == 4 and len(app.shown) == 2
    app.save_button.click()
    assert "saved 7 files" in app.status.value and (tmp_path / "saved" / "explore.csv").is_file()
    app.upload.value = ({"name": "scan.bmp", "type": "image/bmp", "size": 3, "content": memoryview(b"abc"),
                         "last_modified": datetime.datetime.now()},)
    assert "scan.bmp: .bmp is not a supported upload" in app.status.value
    _, png = cv2.imencode(".png", np.ascontiguousarray(_frame_video()[:, 0].transpose(1, 2, 0)))
    app.upload.value = ({"name": "mine.png", "type": "image/png", "size": len(png), "content": memoryview(png),
                         "last_modified": datetime.datetime.now()},)
    assert app.anatomy.name == "mine" and "anatomy: mine" in app.status.value
    app.generate_button.click()
    assert len(app.results.children[0].children) == 2  # no real clip for an upload: the candidates only
