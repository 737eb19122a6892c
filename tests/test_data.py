"""EchoNetDynamic and DiffusionClips on real AVI files: shapes, clips, padding, resampling, normalisation,
targets, the decoded-video cache and every bad input."""

import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import PHANTOM_N, PHANTOM_SEED

from echodiff.data import (
    DatasetError,
    DiffusionClips,
    EchoNetDynamic,
    VideoCache,
    VideoError,
    channel_stats,
    read_video,
    write_video,
)
from echodiff.data.echonet import sample_clip
from echodiff.phantom import heart_parameters


def _ramp_dataset(root, n_frames=10, fps=50, value_step=20):
    """A one-video dataset whose frame t is uniformly grey at ``t * value_step`` (exact through MJPG +-2)."""
    video = np.stack([np.full((112, 112), t * value_step, np.uint8) for t in range(n_frames)])
    write_video(root / "Videos" / "RAMP.avi", np.broadcast_to(video[None], (3, *video.shape)).copy(), fps)
    row = dict(FileName="RAMP", EF=60.0, ESV=40.0, EDV=100.0, FrameHeight=112, FrameWidth=112, FPS=fps,
               NumberOfFrames=n_frames, Split="TRAIN")
    pd.DataFrame([row]).to_csv(root / "FileList.csv", index=False)
    return root


def test_default_item_shapes_and_targets(phantom_root):
    data = EchoNetDynamic(phantom_root, "train")
    filelist = pd.read_csv(phantom_root / "FileList.csv")
    assert len(data) == (filelist.Split == "TRAIN").sum()
    video, ef = data[0]
    assert video.shape == (3, 16, 112, 112) and video.dtype == torch.float32
    assert float(ef) == pytest.approx(float(filelist.set_index("FileName").EF[data.filelist.FileName[0]]), abs=1e-4)
    assert len(EchoNetDynamic(phantom_root, "ALL")) == len(filelist)
    assert len(EchoNetDynamic(phantom_root, "Val")) == (filelist.Split == "VAL").sum()


def test_trace_targets(phantom_root):
    data = EchoNetDynamic(phantom_root, "all", target_type=["FileName", "LargeIndex", "SmallIndex", "LargeFrame",
                                                             "LargeTrace", "SmallTrace", "EDV", "ESV"])
    _, (name, ed, es, ed_frame, ed_mask, es_mask, edv, esv) = data[0]
    frames = list(data.tracings[name])
    assert (es, ed) == (frames[0], frames[-1])
    assert ed_frame.shape == (3, 112, 112)
    assert torch.equal(ed_frame, torch.from_numpy(data.video(0)[:, ed].astype(np.float32)))
    assert ed_mask.shape == (112, 112) and ed_mask.sum() > es_mask.sum() > 50
    assert float(edv) > float(esv)


def test_clips_lengths_and_all_clips(phantom_root):
    one = EchoNetDynamic(phantom_root, "train", length=8, period=3, clips=3)
    video, _ = one[0]
    assert video.shape == (3, 3, 8, 112, 112)
    full = EchoNetDynamic(phantom_root, "train", length=None, period=2, clips="all", max_length=None)
    frames = full.video(0).shape[1]
    video, _ = full[0]
    assert video.shape[2] == frames // 2 and video.shape[0] == frames - (frames // 2 - 1) * 2
    capped = EchoNetDynamic(phantom_root, "train", length=None, max_length=20)
    assert capped[0][0].shape[1] == 20


def test_clip_is_the_frames_at_the_period(tmp_path):
    root = _ramp_dataset(tmp_path, n_frames=10)
    torch.manual_seed(0)
    data = EchoNetDynamic(root, "train", length=4, period=2, clips="all")
    video, _ = data[0]
    assert video.shape[0] == 10 - 3 * 2  # starts 0..3
    levels = video[:, 0, :, 56, 56]  # (clips, T)
    expected = np.array([[20 * (s + 2 * k) for k in range(4)] for s in range(4)], np.float32)
    assert np.abs(levels.numpy() - expected).max() <= 2


def test_short_videos_are_zero_padded_after_normalisation(tmp_path):
    root = _ramp_dataset(tmp_path, n_frames=10)
    data = EchoNetDynamic(root, "train", length=8, period=2, mean=100.0, std=50.0)
    video, _ = data[0]
    assert video.shape == (3, 8, 112, 112)
    assert torch.all(video[:, 5:] == 0)  # frames 10, 12, 14 do not exist
    assert float(video[0, 1, 0, 0]) == pytest.approx((40 - 100) / 50, abs=0.05)


def test_fps_resampling_interpolates_linearly(tmp_path):
    root = _ramp_dataset(tmp_path, n_frames=10, fps=50)
    data = EchoNetDynamic(root, "train", length=6, fps=20, clips="all", max_length=None)  # step 2.5 frames
    video, _ = data[0]
    assert data.step(0) == pytest.approx(2.5)
    levels = video[0, 0, :, 56, 56].numpy()
    assert np.abs(levels[:4] - 20 * 2.5 * np.arange(4)).max() <= 2
    assert np.all(levels[4:] == 0)  # 10 and 12.5 frames are past the end
    synthetic = np.arange(5, dtype=np.float32).reshape(1, 5, 1, 1)
    clip, valid = sample_clip(synthetic, 1, 3, 1.5)
    assert valid == 3 and np.allclose(clip.ravel(), [1.0, 2.5, 4.0])


def test_normalisation_with_train_statistics_is_cached(phantom_root, monkeypatch):
    stats = channel_stats(phantom_root)
    assert len(stats["mean"]) == 3 and all(0 < m < 255 for m in stats["mean"]) and all(s > 0 for s in stats["std"])
    import echodiff.data.echonet as echonet

    monkeypatch.setattr(echonet, "EchoNetDynamic", None)  # a second call must not read videos again
    assert channel_stats(phantom_root) == stats
    monkeypatch.undo()
    data = EchoNetDynamic(phantom_root, "train", length=None, max_length=None, period=1, mean="train", std="train")
    video, _ = data[0]
    raw = torch.from_numpy(data.video(0).astype(np.float32))
    expected = (raw - torch.tensor(stats["mean"]).view(3, 1, 1, 1)) / torch.tensor(stats["std"]).view(3, 1, 1, 1)
    assert torch.allclose(video, expected[:, : video.shape[1]], atol=1e-4)


def test_pad_crop_keeps_size_and_shifts_content(phantom_root):
    torch.manual_seed(1)
    data = EchoNetDynamic(phantom_root, "train", length=4, pad=12)
    shifted = [data[0][0] for _ in range(4)]
    assert all(v.shape == (3, 4, 112, 112) for v in shifted)


def test_diffusion_view(phantom_root):
    data = DiffusionClips(phantom_root, "train", frames=64, fps=32)
    anatomy, ef, clip = data[0]
    assert anatomy.shape == (3, 112, 112) and clip.shape == (3, 64, 112, 112)
    assert 0.0 <= float(clip.min()) and float(clip.max()) <= 1.0
    assert 0 < float(ef) < 100
    assert any(torch.equal(anatomy, clip[:, t]) for t in range(64))
    loader = torch.utils.data.DataLoader(data, batch_size=2)
    anatomy, ef, clip = next(iter(loader))
    assert anatomy.shape == (2, 3, 112, 112) and ef.shape == (2,) and clip.shape == (2, 3, 64, 112, 112)


def test_diffusion_view_can_condition_on_the_traced_end_diastolic_frame(phantom_copy):
    """anatomy="ed": every item's anatomy is its video's end-diastolic frame (the larger LV trace), whatever the
    random window; a video without tracings is an error naming VolumeTracings.csv."""
    data = DiffusionClips(phantom_copy, "train", frames=8, fps=8.0, anatomy="ed")
    traced = EchoNetDynamic(phantom_copy, "train", length=8, target_type=["LargeFrame", "LargeTrace", "SmallTrace"],
                            mean=0.0, std=255.0)
    for i in range(3):
        frames = []
        for seed in (0, 1):
            torch.manual_seed(seed)
            anatomy, _, clip = data[i]
            frames.append(anatomy)
        ed_frame, ed_mask, es_mask = traced[i][1]
        assert torch.equal(frames[0], frames[1]) and torch.equal(frames[0], ed_frame)
        assert ed_mask.sum() > es_mask.sum()  # it is the diastolic frame: the LV is at its largest
        inside = ed_mask.bool()
        assert float(anatomy[0][inside].mean()) <= float(clip[0][:, inside].mean(1).min()) + 0.02  # darkest LV
    with pytest.raises(DatasetError, match="anatomy must be one of"):
        DiffusionClips(phantom_copy, "train", anatomy="first")
    tracings = pd.read_csv(phantom_copy / "VolumeTracings.csv")
    name = data.filelist.FileName.iloc[0]
    tracings[tracings.FileName.str.removesuffix(".avi") != name].to_csv(phantom_copy / "VolumeTracings.csv",
                                                                        index=False)
    with pytest.raises(DatasetError, match=f"VolumeTracings.csv.*{name}.*anatomy_frame: clip"):
        DiffusionClips(phantom_copy, "train", anatomy="ed")


def test_systole_seconds_is_the_traced_ed_to_es_interval(phantom_copy):
    """The ED -> ES interval a ``condition_on_systole`` cascade is conditioned on: on the phantom, end-systole comes
    0.3-0.44 of a heart period after end-diastole (the renderer's ejection ends at 0.36 of the period, its plateau
    lasts to 0.44); a video whose traced ES frame is not after its ED frame is an error naming it."""
    data = DiffusionClips(phantom_copy, "train", frames=8, fps=8.0, anatomy="ed")
    hearts = heart_parameters(PHANTOM_N, PHANTOM_SEED).set_index("file_name")
    for i in range(len(data)):
        period = 60.0 / float(hearts.heart_rate[data.filelist.FileName.iloc[i]])
        assert 0.28 <= data.systole_seconds(i) / period <= 0.46, (i, data.systole_seconds(i), period)
    tracings = pd.read_csv(phantom_copy / "VolumeTracings.csv")
    name = data.filelist.FileName.iloc[0]
    rows = tracings.FileName.str.removesuffix(".avi") == name
    ed = data.traced_index(0, large=True)
    tracings.loc[rows & (tracings.Frame != ed), "Frame"] = ed - 1  # the traced ES frame now before ED
    tracings.to_csv(phantom_copy / "VolumeTracings.csv", index=False)
    with pytest.raises(DatasetError, match=f"{name}.*not after its ED frame.*VolumeTracings.csv"):
        DiffusionClips(phantom_copy, "train", frames=8, fps=8.0, anatomy="ed").systole_seconds(0)


def test_short_videos_are_zero_padded_or_left_out_of_the_diffusion_view(phantom_root):
    """A video shorter than one clip ends in black frames ("pad", EchoNet's rule) or is left out ("drop"), judged
    from FileList.csv's frame count and FPS: every clip of "drop" is real frames to its end."""
    frames, fps = 48, 16.0  # 3 s: longer than some phantom videos (2-4 heart cycles)
    padded = DiffusionClips(phantom_root, "all", frames=frames, fps=fps)
    kept = DiffusionClips(phantom_root, "all", frames=frames, fps=fps, short_videos="drop")
    duration = padded.filelist.NumberOfFrames / padded.filelist.FPS
    short = padded.filelist.FileName[(duration - 1 / padded.filelist.FPS) < (frames - 1) / fps].tolist()
    assert 0 < len(short) < len(padded)  # the test needs both kinds
    assert kept.dropped_short == short and set(kept.filelist.FileName) == set(padded.filelist.FileName) - set(short)
    torch.manual_seed(0)
    last = [float(padded[i][2][:, -1].max()) for i in range(len(padded)) if padded.filelist.FileName[i] in short]
    assert max(last) == 0.0  # the clip ran past the video's end: black
    torch.manual_seed(0)
    assert min(float(kept[i][2].amax((0, 2, 3)).min()) for i in range(len(kept))) > 0.1  # no black frame
    at_ed = DiffusionClips(phantom_root, "all", frames=frames, fps=fps, anatomy="ed", start="ed", short_videos="drop")
    assert set(at_ed.dropped_short) > set(short)  # a clip from the traced ED frame needs more of the video
    for i in range(3):  # every clip begins with its anatomy, the traced end-diastolic frame
        anatomy, _, clip = at_ed[i]
        assert torch.equal(clip[:, 0], anatomy) and float(clip[:, -1].max()) > 0.1
    with pytest.raises(DatasetError, match="start must be one of"):
        DiffusionClips(phantom_root, "all", frames=frames, fps=fps, start="es")
    with pytest.raises(DatasetError, match="short_videos must be one of"):
        DiffusionClips(phantom_root, "all", frames=frames, fps=fps, short_videos="loop")
    with pytest.raises(DatasetError, match="too short for one clip"):
        DiffusionClips(phantom_root, "all", frames=400, fps=fps, short_videos="drop")


def test_seeded_clips_are_reproducible(phantom_root):
    data = EchoNetDynamic(phantom_root, "train", length=8)
    torch.manual_seed(7)
    a = data[0][0]
    torch.manual_seed(7)
    assert torch.equal(a, data[0][0])


def test_video_cache_decodes_once(phantom_root, tmp_path):
    path = next((phantom_root / "Videos").iterdir())
    cache = VideoCache(tmp_path / "cache")
    first = cache.load(path)
    again = cache.load(path)
    assert isinstance(again, np.memmap) and np.array_equal(first, again) and np.array_equal(first, read_video(path))
    data = EchoNetDynamic(phantom_root, "train", cache=tmp_path / "cache2")
    torch.manual_seed(3)  # the same random clip of the same video, through the cache and straight from the AVI
    cached, label = data[0]
    torch.manual_seed(3)
    direct, direct_label = EchoNetDynamic(phantom_root, "train")[0]
    assert torch.equal(cached, direct) and float(cached.std()) > 0 and label == direct_label
    assert len(list((tmp_path / "cache2").glob("*.npy"))) == 1


def test_a_cache_that_would_fill_its_disk_is_refused_before_any_decoding(phantom_root, tmp_path, monkeypatch):
    """FileList.csv's frame counts give the decoded size of the videos not cached yet; a disk without room for them
    is an error naming both sizes and the fixes, raised when the loader is built, not hours into an epoch."""
    import shutil as shutil_module

    from echodiff.data import CacheSpaceError

    data = EchoNetDynamic(phantom_root, "val", cache=tmp_path / "cache")
    frames = pd.read_csv(phantom_root / "FileList.csv").query("Split == 'VAL'").NumberOfFrames.sum()
    usage = shutil_module.disk_usage(tmp_path)
    monkeypatch.setattr("echodiff.data.video.shutil.disk_usage",
                        lambda path: usage._replace(free=int(frames * 112 * 112 * 3 + 2**30 - 1)))
    with pytest.raises(CacheSpaceError, match=r"needs 0\.\d GiB more for these \d+ videos.*cache_dir to null"):
        EchoNetDynamic(phantom_root, "val", cache=tmp_path / "cache")
    for i in range(len(data)):  # once every video is cached, nothing more is needed
        data[i]
    EchoNetDynamic(phantom_root, "val", cache=tmp_path / "cache")


# -- bad input -----------------------------------------------------------------------------------------------


def test_missing_root_and_filelist(tmp_path):
    with pytest.raises(DatasetError, match="dataset folder not found.*echodiff.phantom"):
        EchoNetDynamic(tmp_path / "nowhere")
    with pytest.raises(DatasetError, match="FileList.csv not found"):
        EchoNetDynamic(tmp_path)


def test_missing_column(phantom_copy):
    filelist = pd.read_csv(phantom_copy / "FileList.csv").drop(columns=["EF"])
    filelist.to_csv(phantom_copy / "FileList.csv", index=False)
    with pytest.raises(DatasetError, match=r"missing column\(s\) \['EF'\]"):
        EchoNetDynamic(phantom_copy)


def test_unparseable_csv(phantom_copy):
    (phantom_copy / "FileList.csv").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(DatasetError, match="FileList.csv"):
        EchoNetDynamic(phantom_copy)


def _edit(root, index, **values):
    filelist = pd.read_csv(root / "FileList.csv")
    for column, value in values.items():
        filelist[column] = filelist[column].astype(object)
        filelist.loc[index, column] = value
    filelist.to_csv(root / "FileList.csv", index=False)
    return filelist


@pytest.mark.parametrize(("value", "message"), [(120.0, "outside 0-100"), (float("nan"), "missing or not a number"),
                                                ("abc", "missing or not a number")])
def test_bad_ef_names_file_row_and_fix(phantom_copy, value, message):
    filelist = _edit(phantom_copy, 2, EF=value)
    with pytest.raises(DatasetError, match=message) as info:
        EchoNetDynamic(phantom_copy, "all")
    assert "line 4" in str(info.value) and filelist.FileName[2] in str(info.value)
    assert "skip_invalid=True" in str(info.value)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = EchoNetDynamic(phantom_copy, "all", skip_invalid=True)
    assert len(data) == len(filelist) - 1 and list(data.skipped.FileName) == [filelist.FileName[2]]


def test_missing_video(phantom_copy):
    filelist = pd.read_csv(phantom_copy / "FileList.csv")
    (phantom_copy / "Videos" / f"{filelist.FileName[0]}.avi").unlink()
    with pytest.raises(DatasetError, match=f"{filelist.FileName[0]}.avi not found"):
        EchoNetDynamic(phantom_copy, "all")


def test_corrupt_and_truncated_videos(phantom_copy):
    filelist = pd.read_csv(phantom_copy / "FileList.csv")
    corrupt = phantom_copy / "Videos" / f"{filelist.FileName[0]}.avi"
    corrupt.write_bytes(b"RIFF" + bytes(range(256)) * 4)
    truncated = phantom_copy / "Videos" / f"{filelist.FileName[1]}.avi"
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    for path in (corrupt, truncated):
        with pytest.raises(VideoError, match=path.name):
            read_video(path)
    data = EchoNetDynamic(phantom_copy, "all")  # cheap checks pass; the read names the file
    index = int(data.filelist.index[data.filelist.FileName == filelist.FileName[1]][0])
    with pytest.raises(VideoError, match=rf"{truncated.name}.*(truncated|cannot open|no frame)"):
        data[index]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = EchoNetDynamic(phantom_copy, "all", skip_invalid=True)
    assert sorted(data.skipped.FileName) == sorted(filelist.FileName[:2])
    assert len(data) == len(filelist) - 2


def test_frame_size_differs_from_csv(phantom_copy):
    filelist = _edit(phantom_copy, 0, FrameHeight=128)
    data = EchoNetDynamic(phantom_copy, "all")
    index = int(data.filelist.index[data.filelist.FileName == filelist.FileName[0]][0])
    with pytest.raises(DatasetError, match="frames are 112x112 but FileList.csv line 2 says FrameHeight=128"):
        data[index]


def test_unambiguous_variants_are_accepted_and_reported(phantom_copy):
    filelist = pd.read_csv(phantom_copy / "FileList.csv")
    filelist["FileName"] = filelist.FileName + ".avi"
    filelist["Split"] = filelist.Split.str.lower()
    filelist.to_csv(phantom_copy / "FileList.csv", index=False)
    with pytest.warns(UserWarning) as record:
        data = EchoNetDynamic(phantom_copy, "train")
    messages = " ".join(str(w.message) for w in record)
    assert "carry '.avi'" in messages and "upper case" in messages
    assert len(data) == (filelist.Split == "train").sum()
    assert not data.filelist.FileName.str.endswith(".avi").any()
    data[0]


def test_missing_tracings_only_matter_for_trace_targets_and_the_ed_frame(phantom_copy):
    tracings = pd.read_csv(phantom_copy / "VolumeTracings.csv")
    first = tracings.FileName.iloc[0]
    tracings[tracings.FileName != first].to_csv(phantom_copy / "VolumeTracings.csv", index=False)
    assert len(EchoNetDynamic(phantom_copy, "all")) == 16
    with pytest.raises(DatasetError, match="fewer than 2 traced frames"):
        EchoNetDynamic(phantom_copy, "all", target_type="LargeTrace")
    with pytest.raises(DatasetError, match=r"^start='ed' need\(s\) the traced end-diastolic frame.*clip_start: random"):
        DiffusionClips(phantom_copy, "all", start="ed")
    with pytest.raises(DatasetError, match=r"^anatomy='ed' and start='ed' need"):
        DiffusionClips(phantom_copy, "all", anatomy="ed", start="ed")


def test_bad_arguments(phantom_root):
    with pytest.raises(DatasetError, match="split must be one of"):
        EchoNetDynamic(phantom_root, "training")
    with pytest.raises(DatasetError, match="unknown target_type"):
        EchoNetDynamic(phantom_root, target_type="Volume")
    with pytest.raises(DatasetError, match="mean must be"):
        EchoNetDynamic(phantom_root, mean=[1.0, 2.0])


def test_sector_mask_finds_the_scan_sector_of_real_phantom_frames(phantom_root):
    """The mask from an AVI frame keeps every pixel of the renderer's own sector (at 112 px and through 32 px) and
    little else: codec bleed at the sector's edge may widen it a little, a dark blood pool inside never narrows it."""
    from echodiff import phantom
    from echodiff.data.transforms import resize, sector_mask
    from echodiff.data.video import read_video

    filelist = pd.read_csv(phantom_root / "FileList.csv")
    hearts, _ = phantom.hearts(PHANTOM_N, PHANTOM_SEED)
    by_name = {h.file_name: h for h in hearts}
    for name in filelist.FileName[:4]:
        frames = torch.from_numpy(read_video(phantom_root / "Videos" / f"{name}.avi")).float().div(255)[:, :3]
        coverage = torch.from_numpy(phantom._fan(by_name[name])[0]).float()[None, None]
        for size in (112, 32):
            truth = resize(coverage, size)[0, 0] > 0.5
            mask = sector_mask(resize(frames.transpose(0, 1), size))[:, 0].bool()  # (T, H, W), one per frame
            assert (truth & ~mask).float().sum((1, 2)).max() <= 0.01 * truth.sum()  # the sector is kept
            assert (mask & ~truth).float().sum((1, 2)).max() <= 0.15 * truth.sum()  # and not much else
    # a black pool inside a convex sector is kept; rows without a lit pixel are all 0; bad shapes are refused
    frame = torch.zeros(1, 3, 8, 8)
    frame[..., 2:6, 1:7] = 0.5
    frame[..., 3:5, 3:5] = 0.0
    mask = sector_mask(frame)[0, 0]
    assert mask[2:6, 1:7].all() and mask.sum() == 24
    with pytest.raises(ValueError, match=r"sector_mask expects frames \(B, C, H, W\)"):
        sector_mask(torch.zeros(3, 8, 8))
