"""Synthetic apical-4-chamber echocardiogram phantom, written in EchoNet-Dynamic's on-disk format.

Every video gets its own anatomy (apex position, LV size and shape, axis tilt, wall thickness, imaging depth),
heart rate (50-120 bpm), frame rate (about 50 fps) and length (2-4 heart cycles). The left-ventricular (LV)
cavity is a half-ellipse ("bullet") whose apex stays put while the mitral plane moves towards it in systole.

Ground truth is exact by construction: EDV and ESV are the method-of-discs volumes (20 discs, as in
EchoNet-Dynamic's tracings) of the LV shape on the traced ED and ES frames, so the tracings written to
``VolumeTracings.csv`` reproduce them, and the area-length formula ``V = 8 A^2 / (3 pi L)`` -- exact for a
half-ellipse -- recovers them from the rendered LV masks (:func:`lv_mask`).

Output layout (``DIR`` as passed to ``--out``)::

    DIR/FileList.csv         FileName,EF,ESV,EDV,FrameHeight,FrameWidth,FPS,NumberOfFrames,Split
    DIR/VolumeTracings.csv   FileName,X1,Y1,X2,Y2,Frame   (ES frame first, ED frame last; 21 rows each)
    DIR/Videos/<FileName>.avi  112x112 MJPG, grey copied into 3 channels

CLI: ``python -m echodiff.phantom --out DIR --n N --seed S``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from echodiff.config import resolve_path
from echodiff.data.echonet import FILELIST_COLUMNS, TRACING_COLUMNS
from echodiff.data.video import write_video
from echodiff.io import atomic_write_csv, atomic_write_text

IMAGE_SIZE = 112
N_DISCS = 20
#: EchoNet-Dynamic's split sizes; the phantom keeps their proportions.
SPLIT_SIZES = {"TRAIN": 7465, "VAL": 1288, "TEST": 1277}
MIN_EF, MAX_EF = 7.0, 97.0  # the EFs (%) a phantom heart is drawn at
SETTINGS_FILE = "phantom.json"  # what a phantom folder was drawn with: n, seed, ef_range

# Cardiac cycle as a fraction of the period: (start, end) of each phase. c(t) is the contraction,
# 0 at end-diastole (largest LV) and 1 at end-systole (smallest LV).
_EJECTION = (0.06, 0.36)  # c: 0 -> 1
_RELAXATION = (0.36, 0.44)  # isovolumic relaxation, c = 1 (end-systolic plateau)
_RAPID_FILLING = (0.44, 0.64)  # c: 1 -> _DIASTASIS_C
_ATRIAL_KICK = (0.84, 0.98)  # c: _DIASTASIS_C -> 0
_DIASTASIS_C = 0.25


@dataclass(frozen=True)
class Heart:
    """Anatomy, physiology and acquisition of one phantom video. Lengths in pixels unless stated."""

    file_name: str
    ef_target: float  # %, the drawn EF; the written EF is measured on the traced frames
    apex_x: float
    apex_y: float
    tilt: float  # rad, angle of the apex->base axis from the image's downward vertical (positive: base right)
    length_ed: float  # LV long axis (apex to mitral-plane centre) at end-diastole
    width_ed: float  # LV semi-width at the mitral plane at end-diastole
    long_shortening: float  # fraction of the long axis lost at end-systole
    short_shortening: float  # fraction of the semi-width lost at end-systole
    wall: float  # myocardial thickness at end-diastole
    cm_per_px: float  # pixel spacing; imaging depth = fan radius * cm_per_px
    heart_rate: float  # beats per minute
    first_ed: float  # s, time of the first end-diastole
    fps: int
    n_frames: int
    gain: float
    attenuation: float  # per pixel of depth
    fan_half_angle: float  # rad
    fan_radius: float
    speckle_seed: int

    @property
    def period(self) -> float:
        """Heart-cycle length in seconds."""
        return 60.0 / self.heart_rate


def sample_ef(rng: np.random.Generator, n: int, ef_range: Sequence[float] | None = None) -> np.ndarray:
    """EF in % drawn like EchoNet-Dynamic's: mean ~55.7, sd ~12.5, a long low-EF tail, within 7-97 %; or, with
    ``ef_range = (low, high)``, uniformly within it (every EF as common as any other: a diffusion TRAIN set whose
    low- and high-EF hearts are not a thin tail)."""
    if ef_range is not None:
        low, high = check_ef_range(ef_range)
        return rng.uniform(low, high, n)
    out = np.empty(n)
    for i in range(n):
        while True:
            ef = rng.normal(60.6, 7.2) if rng.random() < 0.84 else rng.normal(35.0, 11.0)
            if MIN_EF <= ef <= MAX_EF:
                out[i] = ef
                break
    return out


def check_ef_range(ef_range: Sequence[float]) -> tuple[float, float]:
    """``(low, high)`` EF in % as floats, or a ValueError: two numbers with 7 <= low < high <= 97 (the EFs a phantom
    heart is drawn at)."""
    values = list(ef_range) if isinstance(ef_range, (list, tuple)) else []
    if len(values) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values) or not (
            MIN_EF <= values[0] < values[1] <= MAX_EF):
        raise ValueError(f"phantom EF range must be [low, high] in % with {MIN_EF:g} <= low < high <= {MAX_EF:g}, "
                         f"got {ef_range!r}")
    return float(values[0]), float(values[1])


def assign_splits(n: int, rng: np.random.Generator) -> np.ndarray:
    """TRAIN/VAL/TEST labels in EchoNet-Dynamic's proportions (7465/1288/1277), shuffled."""
    total = sum(SPLIT_SIZES.values())
    n_val = round(n * SPLIT_SIZES["VAL"] / total)
    n_test = round(n * SPLIT_SIZES["TEST"] / total)
    labels = np.array(["VAL"] * n_val + ["TEST"] * n_test + ["TRAIN"] * (n - n_val - n_test))
    return labels[rng.permutation(n)]


def make_heart(seed: int, index: int, ef: float) -> Heart:
    """Draw the anatomy and acquisition of video ``index`` (deterministic in ``(seed, index)``)."""
    rng = np.random.default_rng([seed, index])
    name = f"0X{int(rng.integers(0, 2**63)):016X}"
    length_ed = rng.uniform(48.0, 64.0)
    width_ed = length_ed * rng.uniform(0.27, 0.36)
    # Volume ratio ESV/EDV = (1 - sL) (1 - sW)^2; the long axis carries a modest share of the shortening.
    ratio = 1.0 - ef / 100.0
    long_shortening = min(0.18, (1.0 - ratio) * rng.uniform(0.12, 0.25))
    short_shortening = 1.0 - math.sqrt(ratio / (1.0 - long_shortening))
    edv_ml = float(np.clip(rng.lognormal(math.log(92.0), 0.35), 25.0, 320.0))
    # Pixel spacing that makes this shape hold edv_ml: V = 2/3 pi L W^2 (half-ellipsoid) in px^3.
    volume_px = 2.0 / 3.0 * math.pi * length_ed * width_ed**2
    cm_per_px = (edv_ml / volume_px) ** (1.0 / 3.0)
    heart_rate = rng.uniform(50.0, 120.0)
    fps = 50 if rng.random() < 0.8 else int(rng.integers(32, 69))
    cycles = rng.uniform(2.2, 4.0)
    period = 60.0 / heart_rate
    first_ed = rng.uniform(0.0, period)
    n_frames = math.ceil((first_ed + cycles * period) * fps)
    return Heart(
        file_name=name,
        ef_target=float(ef),
        apex_x=rng.uniform(54.0, 64.0),
        apex_y=rng.uniform(14.0, 22.0),
        tilt=math.radians(rng.uniform(2.0, 18.0)),
        length_ed=length_ed,
        width_ed=width_ed,
        long_shortening=long_shortening,
        short_shortening=short_shortening,
        wall=rng.uniform(4.0, 7.0),
        cm_per_px=cm_per_px,
        heart_rate=heart_rate,
        first_ed=first_ed,
        fps=fps,
        n_frames=n_frames,
        gain=rng.uniform(0.75, 1.25),
        attenuation=rng.uniform(0.002, 0.008),
        fan_half_angle=math.radians(rng.uniform(36.0, 42.0)),
        fan_radius=rng.uniform(100.0, 108.0),
        speckle_seed=int(rng.integers(0, 2**31)),
    )


def _smooth(x: np.ndarray) -> np.ndarray:
    """0 -> 1 cosine ramp on [0, 1]."""
    return 0.5 - 0.5 * np.cos(np.pi * np.clip(x, 0.0, 1.0))


def contraction(t: np.ndarray | float, heart: Heart) -> np.ndarray:
    """Contraction c(t) in [0, 1] at times ``t`` (s): 0 at end-diastole, 1 at end-systole."""
    tau = np.mod((np.asarray(t, dtype=float) - heart.first_ed) / heart.period, 1.0)
    c = np.zeros_like(tau)

    def ramp(phase: tuple[float, float]) -> np.ndarray:
        return _smooth((tau - phase[0]) / (phase[1] - phase[0]))

    c = np.where((tau >= _EJECTION[0]) & (tau < _EJECTION[1]), ramp(_EJECTION), c)
    c = np.where((tau >= _RELAXATION[0]) & (tau < _RELAXATION[1]), 1.0, c)
    fill = 1.0 - (1.0 - _DIASTASIS_C) * ramp(_RAPID_FILLING)
    c = np.where((tau >= _RAPID_FILLING[0]) & (tau < _RAPID_FILLING[1]), fill, c)
    c = np.where((tau >= _RAPID_FILLING[1]) & (tau < _ATRIAL_KICK[0]), _DIASTASIS_C, c)
    kick = _DIASTASIS_C * (1.0 - ramp(_ATRIAL_KICK))
    c = np.where((tau >= _ATRIAL_KICK[0]) & (tau < _ATRIAL_KICK[1]), kick, c)
    return c


@dataclass(frozen=True)
class LVShape:
    """LV cavity on one frame: apex, unit axis pointing apex->base, long axis length L and base semi-width W."""

    apex: np.ndarray  # (2,) x, y in px
    axis: np.ndarray  # (2,) unit vector apex -> base
    normal: np.ndarray  # (2,) unit vector perpendicular to the axis, pointing to the image's right
    length: float
    width: float

    @property
    def base(self) -> np.ndarray:
        """Centre of the mitral plane (x, y) px."""
        return self.apex + self.length * self.axis

    def disc_volume(self) -> float:
        """Method-of-discs volume in px^3 (20 discs at the midpoints of equal steps along the axis)."""
        return float(np.pi / 4.0 * np.sum(self.chords() ** 2) * self.length / N_DISCS)

    def chords(self) -> np.ndarray:
        """Full chord lengths (px) of the 20 discs, base to apex."""
        u = (np.arange(N_DISCS) + 0.5) / N_DISCS  # fraction of L from the base towards the apex
        return 2.0 * self.width * np.sqrt(1.0 - u**2)

    def tracing(self) -> np.ndarray:
        """EchoNet-style tracing rows ``(21, 4)`` of X1, Y1, X2, Y2: the long axis, then 20 chords."""
        rows = [np.concatenate([self.apex, self.base])]
        u = (np.arange(N_DISCS) + 0.5) / N_DISCS
        for ui, chord in zip(u, self.chords(), strict=True):
            centre = self.base - ui * self.length * self.axis
            rows.append(np.concatenate([centre - chord / 2 * self.normal, centre + chord / 2 * self.normal]))
        return np.array(rows)


def lv_shape(heart: Heart, c: float) -> LVShape:
    """The LV cavity at contraction ``c`` (0 = end-diastole, 1 = end-systole)."""
    axis = np.array([math.sin(heart.tilt), math.cos(heart.tilt)])
    normal = np.array([math.cos(heart.tilt), -math.sin(heart.tilt)])
    return LVShape(
        apex=np.array([heart.apex_x, heart.apex_y]),
        axis=axis,
        normal=normal,
        length=heart.length_ed * (1.0 - heart.long_shortening * c),
        width=heart.width_ed * (1.0 - heart.short_shortening * c),
    )


_YY, _XX = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float64)


def _local(origin: np.ndarray, axis: np.ndarray, normal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (u along ``axis``, v along ``normal``) relative to ``origin``, each (H, W)."""
    dx, dy = _XX - origin[0], _YY - origin[1]
    return dx * axis[0] + dy * axis[1], dx * normal[0] + dy * normal[1]


def _half_ellipse_distance(u: np.ndarray, v: np.ndarray, length: float, width: float) -> np.ndarray:
    """Approximate signed distance (px, negative inside) to the half-ellipse u in [0, L], (u/L)^2+(v/W)^2 <= 1.

    ``u`` runs from the base (0) towards the apex (L); the base is the straight edge.
    """
    f = (u / length) ** 2 + (v / width) ** 2 - 1.0
    grad = 2.0 * np.sqrt((u / length**2) ** 2 + (v / width**2) ** 2) + 1e-9
    return np.maximum(f / grad, -u)


def _ellipse_distance(u: np.ndarray, v: np.ndarray, ru: float, rv: float) -> np.ndarray:
    """Approximate signed distance (px) to the ellipse (u/ru)^2 + (v/rv)^2 <= 1."""
    f = (u / ru) ** 2 + (v / rv) ** 2 - 1.0
    grad = 2.0 * np.sqrt((u / ru**2) ** 2 + (v / rv**2) ** 2) + 1e-9
    return f / grad


def _segment_distance(p0: np.ndarray, p1: np.ndarray) -> np.ndarray:
    """Distance (px) of every pixel centre to the segment p0-p1, (H, W)."""
    d = p1 - p0
    t = np.clip(((_XX - p0[0]) * d[0] + (_YY - p0[1]) * d[1]) / (d @ d + 1e-9), 0.0, 1.0)
    return np.hypot(_XX - p0[0] - t * d[0], _YY - p0[1] - t * d[1])


def _coverage(distance: np.ndarray) -> np.ndarray:
    """Anti-aliased pixel coverage from a signed distance (px)."""
    return np.clip(0.5 - distance, 0.0, 1.0)


def lv_coverage(heart: Heart, frame: int) -> np.ndarray:
    """LV-cavity mask of ``frame`` as rendered: the fraction of each pixel inside the cavity, float ``(H, W)``.

    This is the anti-aliased mask that :func:`render_frame` composites as blood; ``>= 0.5`` gives a binary mask.
    """
    shape = lv_shape(heart, float(contraction(frame / heart.fps, heart)))
    u, v = _local(shape.base, -shape.axis, shape.normal)  # u: from the base towards the apex
    return _coverage(_half_ellipse_distance(u, v, shape.length, shape.width))


def _fan(heart: Heart) -> tuple[np.ndarray, np.ndarray]:
    """Sector mask coverage and depth (px from the transducer), each (H, W)."""
    origin = np.array([IMAGE_SIZE / 2 - 0.5, 2.0])
    dx, dy = _XX - origin[0], _YY - origin[1]
    depth = np.hypot(dx, dy)
    angle = np.arctan2(dx, dy)
    inside = np.minimum(heart.fan_radius - depth, (heart.fan_half_angle - np.abs(angle)) * depth)
    return _coverage(-inside), depth


def _speckle(rng: np.random.Generator, sigma: float = 0.7) -> np.ndarray:
    """Rayleigh-like multiplicative speckle with mean ~1, grains of about ``sigma`` px, (H, W)."""
    re = cv2.GaussianBlur(rng.standard_normal((IMAGE_SIZE, IMAGE_SIZE)), (0, 0), sigma)
    im = cv2.GaussianBlur(rng.standard_normal((IMAGE_SIZE, IMAGE_SIZE)), (0, 0), sigma)
    amp = np.hypot(re, im)
    return amp / amp.mean()


def _mitral_open(heart: Heart, frame: int) -> bool:
    """Whether the mitral leaflets are open on ``frame`` (from rapid filling to the end of the atrial kick)."""
    tau = ((frame / heart.fps - heart.first_ed) / heart.period) % 1.0
    return _RAPID_FILLING[0] <= tau < _ATRIAL_KICK[1]


def _anatomy(heart: Heart, c: float, opening: bool) -> np.ndarray:
    """The noiseless frame ``(H, W)`` at contraction ``c``: four chambers, walls and the mitral leaflets (``opening``:
    open towards the apex, else closed across the base), before speckle, attenuation and the fan."""
    lv = lv_shape(heart, c)
    wall = heart.wall * (1.0 + 0.35 * c)  # the myocardium thickens in systole
    u, v = _local(lv.base, -lv.axis, lv.normal)
    lv_cavity = _half_ellipse_distance(u, v, lv.length, lv.width)
    lv_outer = _half_ellipse_distance(u, v, lv.length + wall, lv.width + wall)

    # Right ventricle: shorter and narrower, on the image's left, separated by the septum; base level with the LV's.
    rv_width = lv.width * 0.85
    rv_base = lv.base - (lv.width + wall + 1.5 + rv_width) * lv.normal + 4.0 * lv.axis
    u_rv, v_rv = _local(rv_base, -lv.axis, lv.normal)
    rv_len = heart.length_ed * 0.78 * (1.0 - 0.6 * heart.long_shortening * c)
    rv_cavity = _half_ellipse_distance(u_rv, v_rv, rv_len, rv_width * (1.0 - 0.5 * heart.short_shortening * c))
    rv_outer = _half_ellipse_distance(u_rv, v_rv, rv_len + 3.0, rv_width + 3.0)

    # Atria beyond the atrioventricular valves; they fill while the ventricles empty.
    atrial_scale = 1.0 + 0.18 * c
    la_centre = lv.base + (0.42 * heart.length_ed * atrial_scale + 2.5) * lv.axis
    u_la, v_la = _local(la_centre, lv.axis, lv.normal)
    la = _ellipse_distance(u_la, v_la, 0.42 * heart.length_ed * atrial_scale, 0.95 * heart.width_ed * atrial_scale)
    ra_centre = rv_base + (0.38 * heart.length_ed * atrial_scale + 2.5) * lv.axis
    u_ra, v_ra = _local(ra_centre, lv.axis, lv.normal)
    ra = _ellipse_distance(u_ra, v_ra, 0.38 * heart.length_ed * atrial_scale, 0.9 * rv_width * atrial_scale)

    tissue = 0.22 * np.ones((IMAGE_SIZE, IMAGE_SIZE))
    myocardium = np.maximum(_coverage(lv_outer), _coverage(rv_outer))
    myocardium = np.maximum(myocardium, _coverage(np.minimum(la, ra) - 2.5))  # atrial walls
    image = tissue + (0.62 - 0.22) * myocardium
    blood = np.clip(_coverage(lv_cavity) + _coverage(rv_cavity) + _coverage(la) + _coverage(ra), 0.0, 1.0)
    image = image * (1.0 - blood) + 0.035 * blood

    # Mitral leaflets: open towards the apex while the LV fills, closed across the base otherwise.
    leaflet = 0.45 * lv.width
    for side in (-1.0, 1.0):
        hinge = lv.base + side * lv.width * lv.normal
        tip_dir = -lv.axis if opening else -side * lv.normal
        leaflet_line = _segment_distance(hinge, hinge + leaflet * tip_dir)
        image = np.maximum(image, 0.8 * _coverage(leaflet_line - 0.9))

    return image


def _beam(heart: Heart) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The acquisition's fixed maps ``(H, W)``: the sector's coverage, the attenuation with depth and the
    time-gain ramp."""
    fan, depth = _fan(heart)
    return fan, np.exp(-heart.attenuation * depth), 1.0 + 0.004 * depth


def _acquire(image: np.ndarray, heart: Heart, beam: tuple[np.ndarray, np.ndarray, np.ndarray], static: np.ndarray,
             rng: np.random.Generator) -> np.ndarray:
    """``image`` (:func:`_anatomy`) as the scanner shows it: speckle (``static`` plus a fresh draw from ``rng``),
    gain, attenuation and the sector, as uint8 ``(H, W)``."""
    fan, falloff, ramp = beam
    speckle = 0.65 * static + 0.35 * _speckle(rng)
    image = image * speckle * heart.gain * falloff * ramp
    image = np.clip(image, 0.0, 1.0) * fan
    return (image * 255.0 + 0.5).astype(np.uint8)


def render_frame(heart: Heart, frame: int, static: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One grey frame ``(H, W)`` uint8: the fan, four chambers, walls, valves and speckle."""
    anatomy = _anatomy(heart, float(contraction(frame / heart.fps, heart)), _mitral_open(heart, frame))
    return _acquire(anatomy, heart, _beam(heart), static, rng)


def traced_frames(heart: Heart) -> tuple[int, int]:
    """(ED frame, ES frame): the first complete ED -> ES pair, ES being the most contracted frame after ED."""
    t = np.arange(heart.n_frames) / heart.fps
    c = contraction(t, heart)
    cycle = np.floor((t - heart.first_ed) / heart.period)
    for k in np.unique(cycle[cycle >= 0]):
        frames = np.flatnonzero(cycle == k)
        tau = np.mod((t[frames] - heart.first_ed) / heart.period, 1.0)
        diastolic = frames[tau < _EJECTION[0]]
        systolic = frames[(tau >= _EJECTION[0]) & (tau < _RAPID_FILLING[0])]
        if len(diastolic) and len(systolic):
            ed = int(diastolic[np.argmin(c[diastolic])])
            es = int(systolic[np.argmax(c[systolic])])
            return ed, es
    raise RuntimeError(f"{heart.file_name}: no complete heart cycle in {heart.n_frames} frames")


def render_video(heart: Heart) -> np.ndarray:
    """The whole video as uint8 ``(C=3, T, H, W)`` (grey copied into 3 channels)."""
    rng = np.random.default_rng(heart.speckle_seed)
    static = _speckle(rng)
    beam = _beam(heart)
    anatomy: dict[tuple[float, bool], np.ndarray] = {}  # frames at one phase share the anatomy (plateaus of c)
    frames = []
    for f in range(heart.n_frames):
        phase = (float(contraction(f / heart.fps, heart)), _mitral_open(heart, f))
        if phase not in anatomy:
            anatomy[phase] = _anatomy(heart, *phase)
        frames.append(_acquire(anatomy[phase], heart, beam, static, rng))
    frames = np.stack(frames)
    return np.broadcast_to(frames[None], (3, *frames.shape)).copy()


def volumes(heart: Heart) -> dict[str, float]:
    """EDV and ESV (mL) by the method of discs on the traced frames, EF (%) and the traced frame indices."""
    ed, es = traced_frames(heart)
    ml_per_px3 = heart.cm_per_px**3
    edv = lv_shape(heart, float(contraction(ed / heart.fps, heart))).disc_volume() * ml_per_px3
    esv = lv_shape(heart, float(contraction(es / heart.fps, heart))).disc_volume() * ml_per_px3
    return {"EDV": edv, "ESV": esv, "EF": 100.0 * (edv - esv) / edv, "ed_frame": ed, "es_frame": es}


def _write_one(args: tuple[Heart, str, str]) -> tuple[dict, list[list]]:
    """Render and write one video (skipped if already complete); return its FileList row and tracing rows."""
    heart, split, videos_dir = args
    path = Path(videos_dir) / f"{heart.file_name}.avi"
    if not path.exists():  # written atomically, so an existing file is complete
        write_video(path, render_video(heart), heart.fps)
    vol = volumes(heart)
    row = {
        "FileName": heart.file_name,
        "EF": round(vol["EF"], 6),
        "ESV": round(vol["ESV"], 6),
        "EDV": round(vol["EDV"], 6),
        "FrameHeight": IMAGE_SIZE,
        "FrameWidth": IMAGE_SIZE,
        "FPS": heart.fps,
        "NumberOfFrames": heart.n_frames,
        "Split": split,
    }
    tracings = []
    for frame in (vol["es_frame"], vol["ed_frame"]):  # EchoNet lists the systolic (small) trace first
        shape = lv_shape(heart, float(contraction(frame / heart.fps, heart)))
        for x1, y1, x2, y2 in shape.tracing():
            tracings.append([f"{heart.file_name}.avi", round(x1, 4), round(y1, 4), round(x2, 4), round(y2, 4), frame])
    return row, tracings


def hearts(n: int, seed: int, ef_range: Sequence[float] | None = None) -> tuple[list[Heart], np.ndarray]:
    """The ``n`` hearts of a phantom and their splits, deterministic in ``(seed, ef_range)`` (:func:`sample_ef`)."""
    if n < 3:
        raise ValueError(f"a phantom needs at least 3 videos (one per split), got n={n}")
    rng = np.random.default_rng(seed)
    efs = sample_ef(rng, n, ef_range)
    splits = assign_splits(n, rng)
    out = [make_heart(seed, i, ef) for i, ef in enumerate(efs)]
    if _repeated_names(out):
        raise RuntimeError(f"FileName collision for seed {seed}; use another seed")
    return out, splits


def _repeated_names(chosen: Sequence[Heart]) -> list[str]:
    """FileNames that more than one of ``chosen`` would be written under (sorted; empty when all differ)."""
    counts = Counter(h.file_name for h in chosen)
    return sorted(name for name, count in counts.items() if count > 1)


def write_phantom(out: str | os.PathLike, n: int = 400, seed: int = 0, workers: int | None = None,
                  ef_range: Sequence[float] | None = None) -> pd.DataFrame:
    """Write an EchoNet-Dynamic-format phantom of ``n`` videos under ``out`` and return its FileList.

    Deterministic in ``(n, seed, ef_range)`` (``ef_range``: EFs uniform within it, :func:`sample_ef`; None:
    EchoNet-Dynamic's distribution). Videos already present (from an interrupted run) are kept; the CSVs are
    written last, atomically, so a folder with a ``FileList.csv`` is complete. ``phantom.json`` records the
    settings, so that :func:`ensure_phantom` never passes off a phantom drawn otherwise.
    """
    all_hearts, splits = hearts(n, seed, ef_range)
    out = Path(out)
    settings = _checked_settings(out, n, seed, ef_range)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json.dumps(settings), out / SETTINGS_FILE)
    return write_hearts(out, all_hearts, splits, workers)


def _checked_settings(root: Path, n: int, seed: int, ef_range: Sequence[float] | None) -> dict[str, Any]:
    """The draw ``(n, seed, ef_range)`` as ``phantom.json`` records it, or a ValueError where ``root`` records
    another (a folder without the file, e.g. one written before it existed, is taken as it is)."""
    asked = {"n": int(n), "seed": int(seed), "ef_range": None if ef_range is None else list(check_ef_range(ef_range))}
    path = root / SETTINGS_FILE
    recorded = json.loads(path.read_text()) if path.is_file() else None
    if recorded is not None and recorded != asked:
        raise ValueError(f"{path} says this folder holds a phantom drawn with {recorded}, but {asked} was asked for: "
                         "point data_root at another folder, or delete this one")
    return asked


def write_hearts(out: str | os.PathLike, chosen: list[Heart], splits: Sequence[str],
                 workers: int | None = None, progress: bool = True) -> pd.DataFrame:
    """Write ``chosen`` hearts (e.g. :func:`make_heart` at EFs of your choice) in EchoNet-Dynamic's format under
    ``out``, heart ``i`` in split ``splits[i]``; return the FileList. Resumes and finishes as :func:`write_phantom`;
    ``progress``: say so and show a progress bar."""
    if len(chosen) != len(splits):
        raise ValueError(f"{len(chosen)} hearts but {len(splits)} splits")
    repeated = _repeated_names(chosen)
    if repeated:
        raise ValueError(f"hearts share a FileName ({', '.join(repeated[:5])}): one video would overwrite another; "
                         "make each with its own (seed, index) in make_heart")
    out = Path(out)
    videos = out / "Videos"
    videos.mkdir(parents=True, exist_ok=True)
    workers = workers or min(4, os.cpu_count() or 1)
    jobs = [(h, s, str(videos)) for h, s in zip(chosen, splits, strict=True)]
    if progress:
        print(f"phantom: writing {len(jobs)} videos to {out} with {workers} worker(s)", flush=True)
    if workers == 1:
        results = [_write_one(j) for j in tqdm(jobs, desc="phantom", unit="video", disable=not progress)]
    else:
        with ProcessPoolExecutor(workers) as pool:
            results = list(tqdm(pool.map(_write_one, jobs, chunksize=4), total=len(jobs), desc="phantom",
                                unit="video", disable=not progress))
    filelist = pd.DataFrame([r for r, _ in results], columns=FILELIST_COLUMNS)
    tracings = pd.DataFrame([t for _, ts in results for t in ts], columns=TRACING_COLUMNS)
    atomic_write_csv(tracings, out / "VolumeTracings.csv")
    atomic_write_csv(filelist, out / "FileList.csv")
    return filelist


def ensure_phantom(root: str | os.PathLike, n: int, seed: int = 0, ef_range: Sequence[float] | None = None) -> bool:
    """Write a phantom of ``n`` videos at ``root`` unless it already holds a ``FileList.csv``; True if written.
    A phantom there whose ``phantom.json`` records other settings (``n``, ``seed``, ``ef_range``) is a ValueError.

    Only where a phantom was asked for: the folder's name must contain ``phantom`` (``data/phantom``,
    ``data/phantom-mini``). Any other folder without ``FileList.csv`` -- a mistyped or nested path to the real
    dataset -- is a :class:`FileNotFoundError`, never a small fake dataset that a run would silently train on.
    """
    root = Path(root)
    if (root / "FileList.csv").is_file():
        _checked_settings(root, n, seed, ef_range)
        return False
    if "phantom" not in root.name.lower():
        raise FileNotFoundError(
            f"dataset folder not found: {root / 'FileList.csv'} does not exist. For EchoNet-Dynamic, point data_root "
            "at the folder that holds FileList.csv, VolumeTracings.csv and Videos/ (and set make_phantom=False); "
            "a phantom is written only into a folder whose name contains 'phantom' (e.g. data/phantom)")
    write_phantom(root, n=n, seed=seed, ef_range=ef_range)
    return True


def twins(root: str | os.PathLike, names: Sequence[str], efs: Sequence[float]) -> list[Heart]:
    """The hearts of the phantom at ``root`` named ``names``, drawn again at ``efs`` (%): the same anatomy,
    acquisition, timing and speckle draws, only the contraction differs (:func:`make_heart` with the same
    ``(seed, index)``). Rendered, heart ``i`` is the video a perfect generator makes from ``names[i]``'s anatomy
    frame at target ``efs[i]``; at the heart's own EF it is that video itself. Needs the ``phantom.json`` that
    :func:`write_phantom` leaves (ValueError without it, or for a name the phantom does not hold)."""
    root = Path(root)
    path = root / SETTINGS_FILE
    if not path.is_file():
        raise ValueError(f"{path} not found: only a phantom written by echodiff.phantom (make_phantom: true) can "
                         "render a heart at another EF; for EchoNet-Dynamic set truth: false")
    drawn = json.loads(path.read_text())
    all_hearts, _ = hearts(drawn["n"], drawn["seed"], drawn["ef_range"])
    index = {h.file_name: i for i, h in enumerate(all_hearts)}
    unknown = [str(n) for n in names if n not in index]
    if unknown:
        raise ValueError(f"{path}: the phantom drawn there holds no video {unknown[:3]}: is {root} that phantom?")
    return [make_heart(drawn["seed"], index[n], float(ef)) for n, ef in zip(names, efs, strict=True)]


def prepare(params: Mapping[str, Any]) -> bool:
    """The phantom a stage's parameters ask for: with ``make_phantom`` true, :func:`ensure_phantom` at
    ``data_root`` with ``phantom_videos`` videos (default 400) from ``phantom_seed`` (default 0), EFs uniform within
    ``phantom_ef_range`` where given (default: EchoNet-Dynamic's distribution); True if written.
    Every stage (notebook, command line, Slurm job) calls this before it reads ``data_root``."""
    if not params.get("make_phantom"):
        return False
    return ensure_phantom(resolve_path(params["data_root"]), int(params.get("phantom_videos", 400)),
                          int(params.get("phantom_seed", 0)), params.get("phantom_ef_range"))


def heart_parameters(n: int, seed: int) -> pd.DataFrame:
    """Every drawn parameter of a phantom's hearts, one row per video (for inspection and tests)."""
    all_hearts, splits = hearts(n, seed)
    frame = pd.DataFrame([asdict(h) for h in all_hearts])
    frame["Split"] = splits
    return frame


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m echodiff.phantom", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output folder (EchoNet-Dynamic layout)")
    parser.add_argument("--n", type=int, default=400, help="number of videos (default 400)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: up to 4 cores)")
    parser.add_argument("--ef-range", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                        help="EF (%%) drawn uniformly within LOW-HIGH (default: EchoNet-Dynamic's distribution)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        filelist = write_phantom(args.out, n=args.n, seed=args.seed, workers=args.workers, ef_range=args.ef_range)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - start
    counts = filelist["Split"].value_counts().to_dict()
    print(f"phantom: {len(filelist)} videos in {seconds:.1f} s ({len(filelist) / seconds:.2f} videos/s), "
          f"splits {counts}, EF mean {filelist.EF.mean():.1f} sd {filelist.EF.std():.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
