"""The LV segmentation judge (echodiff.seg_judge): trained on real traced frames of the phantom (real AVIs and
VolumeTracings.csv), it outlines the ventricle and reads EF from the area curve without the EF regressor."""

import numpy as np
import pytest
import torch

from echodiff.data import DiffusionClips
from echodiff.metrics.regression import pearson_r
from echodiff.seg_judge import SegJudge, SegJudgeConfig, contractions, fit_seg_judge, traced_frames


@pytest.fixture(scope="module")
def judge(phantom_root) -> SegJudge:
    clips = {s: DiffusionClips(phantom_root, s, frames=16, fps=8.0, anatomy="ed") for s in ("train", "val")}
    return fit_seg_judge(clips["train"], clips["val"], SegJudgeConfig(size=32, steps=150))


def test_traced_frames_are_the_tracings_masks_at_the_judges_size(phantom_root):
    frames, masks = traced_frames(phantom_root, "val", 32)
    data = DiffusionClips(phantom_root, "val", frames=16, fps=8.0)
    assert frames.shape == masks.shape == (2 * len(data), 1, 32, 32)
    assert 0 <= float(frames.min()) and float(frames.max()) <= 1 and 0 <= float(masks.min()) <= float(masks.max()) <= 1
    # the ED (larger) outline comes first for every video, and the cavity is darker than the frame around it
    area = masks.mean((1, 2, 3))
    assert bool((area[0::2] > area[1::2]).all())
    inside = (frames * masks).sum((1, 2, 3)) / masks.sum((1, 2, 3))
    assert bool((inside < frames.mean((1, 2, 3))).all())


def test_the_judge_outlines_the_ventricle_and_reads_ef_from_real_clips(judge, phantom_root):
    """Trained on 150 steps of the 16-video phantom's TRAIN traced frames: Dice on VAL's traced frames and the EF
    line's fit on TRAIN clips (measured on the 400-video phantom at 300 steps: Dice 0.97, VAL r 0.98)."""
    assert judge.accuracy["val_dice"] > 0.8, judge.accuracy
    assert judge.line.r > 0.8 and judge.line.slope > 0, judge.line
    data = DiffusionClips(phantom_root, "all", frames=16, fps=8.0)
    videos, efs = [], []
    for i in range(len(data)):
        torch.manual_seed(i)
        _, ef, clip = data[i]
        videos.append(clip)
        efs.append(float(ef))
    estimate = judge.ef(torch.stack(videos))  # resized to the judge's 32 px inside
    assert pearson_r(np.array(efs), estimate) > 0.8
    still = torch.stack(videos[:2])[:, :, :1].expand(-1, -1, 16, -1, -1)
    assert np.allclose(contractions(judge.segmenter, torch.nn.functional.interpolate(
        still.flatten(1, 2), size=32, mode="area").unflatten(1, (3, 16))), 0.0, atol=1e-6)


def test_blank_padding_frames_are_not_read(judge, phantom_root):
    """A short video's zero padding segments as one big cavity; the judge skips frames with no signal."""
    data = DiffusionClips(phantom_root, "val", frames=16, fps=8.0)
    torch.manual_seed(0)
    _, _, clip = data[0]
    padded = clip.clone()
    padded[:, -4:] = 0
    assert judge.ef(padded[None])[0] == pytest.approx(judge.ef(clip[None, :, :12])[0], abs=1e-4)
    assert np.isnan(judge.ef(torch.zeros(1, 3, 4, 32, 32))[0])


def test_a_saved_judge_loads_whole_and_refuses_other_settings(judge, tmp_path):
    path = judge.save(tmp_path / "lv_segmenter.pt")
    again = SegJudge.load(path, judge.config)
    video = torch.rand(2, 3, 6, 32, 32)
    assert np.allclose(again.ef(video), judge.ef(video)) and again.accuracy == judge.accuracy
    other = SegJudgeConfig(size=32, steps=151)
    with pytest.raises(ValueError, match=r"lv_segmenter\.pt.*delete the file"):
        SegJudge.load(path, other)
