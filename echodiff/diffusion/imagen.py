"""Cascaded video diffusion on lucidrains' imagen-pytorch: offline import, building the cascade from a config,
the EF conditioning, and model folders in EchoDiffusion's released layout (``config.yaml`` + ``merged.pt``).

Config (a mapping, as EchoDiffusion's ``diffusion/configs/*.yaml``)::

    unets:  {unet1: {dim: 64, dim_mults: [1, 2, 4], ...}, unet2: {...}}   # one Unet3D per stage, in order
    imagen: {image_sizes: [112], temporal_downsample_factor: [1], num_sample_steps: 64, sigma_data: 0.25, ...}
    ef_embedding: ef_flag        # echodiff's [EF/100, 1]; "ef" = the seed's [EF/100] (released weights)
    residual_gain: 2.0           # optional: generate (video - anatomy frame) x gain instead of the video itself
    lowres_noise_max: 0.2        # optional: train super-resolution stages with low-res noise levels in [0, 0.2]
    anatomy_frame: ed            # optional: condition on the traced end-diastolic frame, not a random clip frame
    clip_start: ed               # optional: every clip begins at the traced end-diastolic frame, not a random one
    condition_on_systole: true   # optional: the condition token also carries the anatomy video's ED -> ES interval
    frame_resize: take           # optional: change a video's frame count by taking frames, not by resize_mode

Video tensors are ``(B, C, T, H, W)`` in [0, 1]; EF is in %.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import yaml

from echodiff import tracking
from echodiff.data import ANATOMY_FRAMES, CLIP_STARTS, DiffusionClips
from echodiff.data.transforms import sector_mask
from echodiff.io import atomic_path, atomic_write_text
from echodiff.rng import derived_seed

#: EF embeddings: name -> text_embed_dim. "ef_flag" adds a constant 1 so that no EF, 0 included, gives the
#: all-zero token that imagen-pytorch reads as "no condition"; "ef" is the seed's EF/100 (released weights).
EF_EMBEDDINGS = {"ef_flag": 2, "ef": 1, "ef_fourier": 18, "ef_fourier_clamped": 18, "ef_ramps": 8}
#: frequencies (cycles per 100 EF points) of the ``ef_fourier`` embedding
_FOURIER_FREQS = torch.arange(1, 9, dtype=torch.float32)
#: EF range (%) that ``ef_fourier_clamped``'s sin/cos features follow: where the phantom's TRAIN hearts are (4 of
#: its 298 below 20 %, 3 above 75 %); beyond it only the linear EF/100 feature moves
_FOURIER_WINDOW = (20.0, 75.0)
#: knots (EF %) of the ``ef_ramps`` embedding: inside the range where EchoNet-Dynamic and the phantom have hearts
_RAMP_KNOTS = torch.arange(20.0, 71.0, 10.0)
#: ``condition_on_systole``'s features of the ED -> ES interval s (seconds): [s / 0.5, sin and cos of pi k (s' - 0.15)
#: / 0.5 for k = 1..4], s' = s clamped to 0.15-0.65 s (the phantom's hearts at 50-120 bpm: 0.18-0.53 s)
SYSTOLE_DIM = 9
_SYSTOLE_WINDOW = (0.15, 0.65)
_SYSTOLE_FREQS = torch.arange(1, 5, dtype=torch.float32)
#: t5-v1_1-base's d_model, the only thing imagen-pytorch's default arguments ask of the T5 config.
_T5_BASE_D_MODEL = 768


def import_imagen() -> ModuleType:
    """Import ``imagen_pytorch`` with no network.

    ``Unet3D``'s default ``text_embed_dim`` calls ``T5Config.from_pretrained('google/t5-v1_1-base')`` while the
    package is imported, which reaches for the model hub. Before the first import we load the package's
    self-contained ``t5`` module on its own and put a locally built config (d_model 768, t5-v1_1-base's value)
    in its config table, so that call is answered from memory. echodiff never encodes text: EF is fed as an
    embedding (:func:`ef_embedding`) and ``text_embed_dim`` is always passed.
    """
    if "imagen_pytorch" in sys.modules:
        return sys.modules["imagen_pytorch"]
    if "imagen_pytorch.t5" not in sys.modules:
        package = importlib.util.find_spec("imagen_pytorch")
        if package is None or not package.submodule_search_locations:
            raise ImportError("imagen-pytorch is not installed; run `make install` (requirements.lock pins 2.1.0)")
        path = Path(next(iter(package.submodule_search_locations))) / "t5.py"
        spec = importlib.util.spec_from_file_location("imagen_pytorch.t5", path)
        t5 = importlib.util.module_from_spec(spec)
        sys.modules["imagen_pytorch.t5"] = t5
        spec.loader.exec_module(t5)
        from transformers import T5Config

        t5.T5_CONFIGS.setdefault(t5.DEFAULT_T5_NAME, {"config": T5Config(d_model=_T5_BASE_D_MODEL)})
    import imagen_pytorch

    return imagen_pytorch


def ef_embedding(ef: torch.Tensor | float | list[float], kind: str = "ef_flag") -> torch.Tensor:
    """EF (%) ``(B,)`` -> one-token text embedding ``(B, 1, D)``.

    ``ef`` (D = 1): the seed's EF/100. ``ef_flag`` (D = 2): [EF/100, 1], never the all-zero "no condition" token.
    ``ef_fourier`` (D = 18): [EF/100, 1, sin(2 pi k EF/100), cos(2 pi k EF/100) for k = 1..8], which separates
    nearby EFs far more than one scalar does (a small network picks it up sooner), but is periodic: beyond the EFs
    it was trained on, the response folds back (docs/generator-experiments.md, E29). ``ef_ramps`` (D = 8): [EF/100,
    1, max(EF - c, 0)/100 for c = 20, 30, ..., 70]: a linear read-out of it is any piecewise-linear response with a
    knot every 10 points, and it continues along its last segment beyond the knots instead of folding back.
    ``ef_fourier_clamped`` (D = 18): ``ef_fourier`` with the sin/cos features of EF clamped to 20-75 %, so inside that
    range it is ``ef_fourier`` and beyond it only EF/100 moves: no feature combination the network has not met.

    Raises ``ValueError`` for EF outside 0-100, and for EF 0 with the seed's ``ef`` embedding (it would be the
    all-zero token, i.e. silently unconditional).
    """
    ef = torch.as_tensor(ef, dtype=torch.float32).reshape(-1)
    if torch.isnan(ef).any() or (ef < 0).any() or (ef > 100).any():
        raise ValueError(f"EF must be within 0-100 % (got {ef.tolist()})")
    if kind == "ef_flag":
        return torch.stack([ef / 100.0, torch.ones_like(ef)], dim=-1)[:, None, :]
    if kind in ("ef_fourier", "ef_fourier_clamped"):
        phase_ef = ef.clamp(*_FOURIER_WINDOW) if kind == "ef_fourier_clamped" else ef
        angle = 2 * torch.pi * (phase_ef / 100.0)[:, None] * _FOURIER_FREQS
        return torch.cat([(ef / 100.0)[:, None], torch.ones_like(ef)[:, None], angle.sin(), angle.cos()], -1)[:, None]
    if kind == "ef_ramps":
        ramps = (ef[:, None] - _RAMP_KNOTS).clamp(min=0) / 100.0
        return torch.cat([(ef / 100.0)[:, None], torch.ones_like(ef)[:, None], ramps], -1)[:, None]
    if kind == "ef":
        if (ef == 0).any():
            raise ValueError("EF 0 gives an all-zero embedding, which this model (the seed's 'ef' embedding) "
                             "reads as 'no condition'; use an EF above 0")
        return (ef / 100.0)[:, None, None]
    raise ValueError(f"unknown ef_embedding {kind!r}; choose from {sorted(EF_EMBEDDINGS)}")


def systole_features(systole: torch.Tensor | float | list[float]) -> torch.Tensor:
    """ED -> ES interval (s) ``(B,)`` -> ``(B, SYSTOLE_DIM)`` features (:data:`SYSTOLE_DIM`); an error outside
    0-2 s (a frame index or milliseconds passed by mistake)."""
    s = torch.as_tensor(systole, dtype=torch.float32).reshape(-1)
    if torch.isnan(s).any() or (s <= 0).any() or (s > 2).any():
        raise ValueError(f"the ED -> ES interval must be within (0, 2] seconds, got {s.tolist()}")
    angle = torch.pi * ((s.clamp(*_SYSTOLE_WINDOW) - _SYSTOLE_WINDOW[0]) / 0.5)[:, None] * _SYSTOLE_FREQS
    return torch.cat([(s / 0.5)[:, None], angle.sin(), angle.cos()], -1)


def condition_embedding(config: dict[str, Any], ef: torch.Tensor | float | list[float],
                        systole: torch.Tensor | float | list[float] | None = None) -> torch.Tensor:
    """The cascade ``config``'s one-token condition ``(B, 1, D)``: :func:`ef_embedding` of ``ef`` (%), followed, for
    a cascade with ``condition_on_systole``, by :func:`systole_features` of ``systole`` (the anatomy video's ED ->
    ES interval, s: :meth:`~echodiff.data.DiffusionClips.systole_seconds`). ``systole`` is required by such a
    cascade and refused by any other, so it is never silently dropped or made up."""
    tokens = ef_embedding(ef, config.get("ef_embedding", "ef_flag"))
    if not config.get("condition_on_systole"):
        if systole is not None:
            raise ValueError("this cascade is not conditioned on the ED -> ES interval (no condition_on_systole): "
                             "pass systole=None")
        return tokens
    if systole is None:
        raise ValueError("this cascade is conditioned on the ED -> ES interval (condition_on_systole): pass systole "
                         "(seconds, one value or one per video; a dataset video's is DiffusionClips.systole_seconds)")
    features = systole_features(systole)
    if len(features) == 1:
        features = features.expand(len(tokens), -1)
    if len(features) != len(tokens):
        raise ValueError(f"systole must be one value or one per EF ({len(tokens)}), got {len(features)}")
    return torch.cat([tokens, features[:, None]], -1)


def condition_dim(config: dict[str, Any]) -> int:
    """Width of :func:`condition_embedding`'s token: the EF embedding's, plus :data:`SYSTOLE_DIM` with
    ``condition_on_systole``."""
    kind = config.get("ef_embedding", "ef_flag")
    if kind not in EF_EMBEDDINGS:
        raise ValueError(f"unknown ef_embedding {kind!r}; choose from {sorted(EF_EMBEDDINGS)}")
    return EF_EMBEDDINGS[kind] + (SYSTOLE_DIM if config.get("condition_on_systole") else 0)


#: the top-level keys of a cascade config (``params/cascades/*.yaml``, a model folder's ``config.yaml``)
CASCADE_KEYS = ("ef_embedding", "channels", "frames", "fps", "unets", "imagen", "residual_gain",
                "lowres_noise_max", "anatomy_frame", "clip_start", "condition_on_systole", "counterfactual_systole",
                "ef_extrapolation", "low_ef_guidance", "guidance_update", "sector_mask", "frame_resize")
#: how a video's frame count changes between stages (``frame_resize``): ``resize_mode`` (absent), imagen-pytorch's one
#: interpolation of all three axes (``area`` averages a stage's frame pairs); ``take``, frames ``floor(i T / T')`` are
#: taken (the first, the clip's traced ED frame, kept) and only space is resized by ``resize_mode``
FRAME_RESIZES = ("resize_mode", "take")
#: classifier-free guidance's update (``guidance_update``): ``full``, Ho & Salimans 2022 as EchoDiffusion sampled
#: (imagen-pytorch <= 2.0); ``orthogonal``, only its component orthogonal to the conditional prediction
#: (imagen-pytorch 2.1's default, ``cfg_remove_parallel_component``)
GUIDANCE_UPDATES = ("full", "orthogonal")
#: sections of EchoDiffusion's training configs, which its released ``config.yaml`` files are copies of
_RELEASE_SECTIONS = ("trainer", "dataset", "dataloader", "wandb", "checkpoint")


def _number_map(value: Any, keys: set[str]) -> bool:
    """Whether ``value`` is a mapping of exactly ``keys`` to numbers (not booleans): a sampling rule's shape."""
    return isinstance(value, dict) and set(value) == keys and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value.values())


def cascade_config(config: dict[str, Any], source: str | os.PathLike = "cascade config") -> dict[str, Any]:
    """Check a cascade config and return it with ``frames``, ``fps`` and ``ef_embedding`` set.

    Two layouts are read: echodiff's (:data:`CASCADE_KEYS` only) and EchoDiffusion's training config, which its
    released weights carry as ``config.yaml`` (``dataset: {fps, duration, grayscale}``, ``imagen.text_embed_dim:
    1``, plus ``trainer``/``dataloader``/``wandb``/``checkpoint`` sections that only its trainer read). The latter
    is translated: ``frames = fps x duration``, ``channels`` from ``grayscale``, the seed's ``ef`` embedding.
    Any other key is an error naming it and ``source``.
    """
    config = copy.deepcopy(dict(config))
    is_release = "dataset" in config  # EchoDiffusion's layout; echodiff's own files may not carry its sections
    release = {k: config.pop(k) for k in _RELEASE_SECTIONS if k in config} if is_release else {}
    unknown = sorted(set(config) - set(CASCADE_KEYS))
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {unknown} in a cascade config; allowed: {list(CASCADE_KEYS)} "
                         f"(and EchoDiffusion's {list(_RELEASE_SECTIONS)} sections in a released config.yaml)")
    dataset = release.get("dataset") or {}
    if "frames" not in config and "fps" in dataset and "duration" in dataset:
        config["fps"] = float(dataset["fps"])
        config["frames"] = round(float(dataset["fps"]) * float(dataset["duration"]))
    if "channels" not in config and "grayscale" in dataset:
        config["channels"] = 1 if dataset["grayscale"] else 3
    for key in ("unets", "imagen", "frames", "fps"):
        if key not in config:
            raise ValueError(f"{source}: a cascade config needs `{key}`"
                             + (" (or EchoDiffusion's `dataset: {fps, duration}`)" if key in ("frames", "fps") else ""))
    if "ef_embedding" not in config:
        config["ef_embedding"] = "ef" if config["imagen"].get("text_embed_dim", 1) == 1 else "ef_flag"
    if int(config["frames"]) < 1 or float(config["fps"]) <= 0:
        raise ValueError(f"{source}: frames and fps must be positive, got {config['frames']} and {config['fps']}")
    for key, high, absent in (("residual_gain", float("inf"), "generate the video itself"),
                              ("lowres_noise_max", 1.0, "imagen's [0, 1]")):
        value = config.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not 0 < value <= high):
            bounds = "a positive number" if high == float("inf") else f"within (0, {high:g}]"
            raise ValueError(f"{source}: {key} must be {bounds} (or absent: {absent}), got {value!r}")
    if config.get("anatomy_frame", "clip") not in ANATOMY_FRAMES:
        raise ValueError(f"{source}: anatomy_frame must be one of {list(ANATOMY_FRAMES)} (absent: clip, a random "
                         f"frame of the clip, as EchoDiffusion), got {config['anatomy_frame']!r}")
    if config.get("clip_start", "random") not in CLIP_STARTS:
        raise ValueError(f"{source}: clip_start must be one of {list(CLIP_STARTS)} (absent: random, a random window "
                         f"of the video, as EchoDiffusion), got {config['clip_start']!r}")
    if not isinstance(config.get("condition_on_systole", False), bool):
        raise ValueError(f"{source}: condition_on_systole must be true or false (absent: false), got "
                         f"{config['condition_on_systole']!r}")
    asked = config.get("counterfactual_systole")
    if asked is not None:
        if not config.get("condition_on_systole"):
            raise ValueError(f"{source}: counterfactual_systole needs condition_on_systole: true (it is the ED -> ES "
                             "interval asked of counterfactual videos)")
        if isinstance(asked, bool) or not isinstance(asked, (int, float)) or not 0 < asked <= 2:
            raise ValueError(f"{source}: counterfactual_systole must be an ED -> ES interval in (0, 2] s (or absent: "
                             f"each anatomy video's own), got {asked!r}")
    if config.get("frame_resize", "resize_mode") not in FRAME_RESIZES:
        raise ValueError(f"{source}: frame_resize must be one of {list(FRAME_RESIZES)} (absent: resize_mode, "
                         f"imagen-pytorch's interpolation of all three axes), got {config['frame_resize']!r}")
    if not isinstance(config.get("sector_mask", False), bool):
        raise ValueError(f"{source}: sector_mask must be true or false (absent: false), got {config['sector_mask']!r}")
    extrapolation = config.get("ef_extrapolation")
    if extrapolation is not None:
        if not _number_map(extrapolation, {"above", "span"}) or not (
                0 < extrapolation["span"] < extrapolation["above"] < 100):
            raise ValueError(f"{source}: ef_extrapolation must be {{above: EF %, span: EF %}} with 0 < span < above "
                             f"< 100 (or absent: none), got {extrapolation!r}")
    if config.get("guidance_update", "full") not in GUIDANCE_UPDATES:
        raise ValueError(f"{source}: guidance_update must be one of {list(GUIDANCE_UPDATES)} (absent: full, "
                         f"EchoDiffusion's), got {config['guidance_update']!r}")
    low = config.get("low_ef_guidance")
    if low is not None and (not _number_map(low, {"below", "cond_scale"}) or not (
            0 < low["below"] <= 100 and low["cond_scale"] > 0)):
        raise ValueError(f"{source}: low_ef_guidance must be {{below: EF %, cond_scale: stage-1 guidance scale}} with "
                         f"0 < below <= 100 and cond_scale > 0 (or absent: the caller's scale for every target), got "
                         f"{low!r}")
    return config


def cascade_clips(config: dict[str, Any], root: str | os.PathLike, split: str,
                  cache: str | os.PathLike | None = None, short_videos: str = "pad") -> DiffusionClips:
    """The ``split`` of the EchoNet-format folder ``root`` as the cascade ``config`` trains on and is sampled and
    scored with: its clip length and frame rate, its anatomy frame (``anatomy_frame``) and where its clips start
    (``clip_start``); videos too short for a clip zero-padded or left out (``short_videos``,
    :class:`~echodiff.data.DiffusionClips`)."""
    return DiffusionClips(root, split, frames=int(config["frames"]), fps=config.get("fps"),
                          anatomy=config.get("anatomy_frame", "clip"), start=config.get("clip_start", "random"),
                          short_videos=short_videos, cache=cache)


def _stage_list(config: dict[str, Any]) -> list[dict[str, Any]]:
    unets = config.get("unets")
    if not isinstance(unets, dict) or not unets:
        raise ValueError("config needs `unets`: a mapping of stage name -> Unet3D arguments, in cascade order")
    return [dict(v) for v in unets.values()]


def stage_seed(seed: int, stage: int) -> int:
    """The seed of stage ``stage``'s (1-based) initial weights in a cascade built with ``seed``."""
    return derived_seed(seed, stage, bits=63)


def build_imagen(config: dict[str, Any], seed: int | None = None) -> torch.nn.Module:
    """``ElucidatedImagen`` with one ``Unet3D`` per stage, from an EchoDiffusion-style config (see module doc).

    ``seed``: each stage's initial weights are drawn from their own seed (:func:`stage_seed`), so that changing one
    stage's architecture leaves every other stage's initial weights as they were (one global stream would re-draw
    them: docs/generator-experiments.md, E23); the caller's RNG is left as it was. None: from the global RNG."""
    imagen_pytorch = import_imagen()
    embed_dim = condition_dim(config)
    hparams = dict(config.get("imagen", {}))
    hparams.pop("elucidated", None)
    if hparams.get("text_embed_dim", embed_dim) != embed_dim:
        raise ValueError(f"imagen.text_embed_dim={hparams['text_embed_dim']} does not match the condition "
                         f"(ef_embedding {config.get('ef_embedding', 'ef_flag')!r}"
                         f"{' + condition_on_systole' if config.get('condition_on_systole') else ''}: "
                         f"dimension {embed_dim})")
    hparams["text_embed_dim"] = embed_dim
    hparams.setdefault("condition_on_text", True)
    stages = _stage_list(config)
    sizes = hparams.get("image_sizes")
    if not isinstance(sizes, (list, tuple)) or len(sizes) != len(stages):
        raise ValueError(f"imagen.image_sizes must list one size per U-Net ({len(stages)}), got {sizes!r}")
    channels = video_channels(config)
    hparams["channels"] = channels
    unets = []
    for i, unet in enumerate(stages):
        unet.setdefault("text_embed_dim", embed_dim)
        unet["channels"] = channels
        if seed is None:
            unets.append(imagen_pytorch.Unet3D(**unet, lowres_cond=i > 0))
            continue
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(stage_seed(seed, i + 1))
            unets.append(imagen_pytorch.Unet3D(**unet, lowres_cond=i > 0))
    imagen = imagen_pytorch.ElucidatedImagen(unets=unets, **hparams)
    if config.get("frame_resize", "resize_mode") == "take":
        imagen.resize_to = functools.partial(resize_taking_frames, mode=hparams.get("resize_mode", "nearest"))
    if config.get("lowres_noise_max") is not None:
        imagen.lowres_noise_schedule.sample_random_times = functools.partial(
            _lowres_training_times, float(config["lowres_noise_max"]))
    return imagen


def resize_taking_frames(video: torch.Tensor, target_image_size: int, target_frames: int | None = None,
                         clamp_range: tuple[float, float] | None = None, mode: str = "nearest") -> torch.Tensor:
    """``video`` ``(B, C, T, H, W)`` with ``target_frames`` frames ``floor(i T / target_frames)`` (all when None) at
    ``target_image_size`` px, space resized by ``mode``: imagen-pytorch's ``resize_video_to`` for ``frame_resize:
    take``. Halving 16 frames keeps frames 0, 2, 4, ... where ``area`` would average pairs (which loses a quarter of
    a 4-fps beat's contraction: docs/generator-experiments.md, E39); doubling repeats each frame, as ``area`` does."""
    frames = video.shape[2]
    target = frames if target_frames is None else int(target_frames)
    if target != frames:
        video = video[:, :, (torch.arange(target, device=video.device) * frames) // target]
    return import_imagen().imagen_video.resize_video_to(video, target_image_size, clamp_range=clamp_range, mode=mode)


def _lowres_training_times(top: float, batch_size: int, *, device: torch.device) -> torch.Tensor:
    """Noise levels for the low-resolution conditioning of a training batch, uniform in [0, ``top``].

    imagen-pytorch draws them from [0, 1] (Imagen's noise-conditioning augmentation): most super-resolution training
    steps then see a low-res video buried in noise (at 0.5 the added noise has std 0.89), so a briefly trained stage
    learns to ignore stage 1 and invents its own motion. Sampling uses ``imagen.lowres_sample_noise_level``, which
    should lie in [0, ``top``]."""
    return torch.empty(batch_size, device=device).uniform_(0, top)


def video_channels(config: dict[str, Any]) -> int:
    """Channels the cascade generates: 3 (EchoDiffusion) or 1 (grey, as echocardiograms are; ``channels: 1``)."""
    channels = int(config.get("channels", 3))
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grey) or 3, got {channels}")
    return channels


def to_video_channels(clip: torch.Tensor, channels: int) -> torch.Tensor:
    """RGB clips ``(B, 3, T, H, W)`` as the cascade's training target: unchanged, or their grey mean."""
    return clip if channels == 3 else clip.mean(1, keepdim=True)


def training_target(clip: torch.Tensor, anatomy: torch.Tensor, config: dict[str, Any]) -> torch.Tensor:
    """What the cascade learns to generate, ``(B, C, T, H, W)`` in [0, 1], from RGB clips ``(B, 3, T, H, W)`` and
    their anatomy frames ``(B, 3, H, W)`` (same size, both in [0, 1]).

    Without ``residual_gain`` the clip itself (grey if ``channels: 1``). With it, the clip's difference from its
    anatomy frame, ``(clip - anatomy) x gain``, mapped to [0, 1] by ``(d + 1) / 2`` (0.5 = no change; clipped,
    which at gain 2 touches only changes beyond half the intensity range): the U-Net then spends no steps learning
    to copy the anatomy frame and all of its loss is on the heart's motion. :func:`output_video` inverts it.
    """
    channels = video_channels(config)
    clip = to_video_channels(clip, channels)
    gain = config.get("residual_gain")
    if not gain:
        return clip
    still = to_video_channels(anatomy, channels)[:, :, None]
    return ((clip - still) * float(gain) + 1).div(2).clamp(0, 1)


def output_video(generated: torch.Tensor, anatomy: torch.Tensor, config: dict[str, Any]) -> torch.Tensor:
    """A video ``(B, C, T, H, W)`` in [0, 1] from what the cascade generated (:func:`training_target`'s space),
    given the anatomy frames ``(B, 3, H, W)`` at the generated size. With ``sector_mask: true`` in ``config``,
    every frame is black outside the anatomy frame's scan sector (:func:`echodiff.data.transforms.sector_mask`)."""
    gain = config.get("residual_gain")
    if not gain:
        video = generated.clamp(0, 1)
    else:
        still = to_video_channels(anatomy.to(generated), video_channels(config))[:, :, None]
        video = (still + (generated * 2 - 1) / float(gain)).clamp(0, 1)
    if config.get("sector_mask"):
        video = video * sector_mask(anatomy.to(video))[:, :, None]
    return video


class CascadeModel(torch.nn.Module):
    """A cascade and its config: ``.imagen`` (``ElucidatedImagen``), ``.config``, ``.steps`` trained per stage."""

    def __init__(self, config: dict[str, Any], imagen: torch.nn.Module | None = None, seed: int | None = None):
        super().__init__()
        self.config = copy.deepcopy(config)
        self.imagen = imagen if imagen is not None else build_imagen(self.config, seed)
        self.register_buffer("steps", torch.zeros(len(self.imagen.unets), dtype=torch.long))

    @property
    def num_stages(self) -> int:
        return len(self.imagen.unets)

    @property
    def image_size(self) -> int:
        """Output size (px) of the last stage."""
        return int(self.imagen.image_sizes[-1])

    @property
    def ef_kind(self) -> str:
        return self.config.get("ef_embedding", "ef_flag")

    @property
    def counterfactual_systole(self) -> float | None:
        """The ED -> ES interval (s) this cascade asks of a video made at an EF other than its anatomy video's
        (the config's ``counterfactual_systole``), or None: each video's own."""
        asked = self.config.get("counterfactual_systole")
        return None if asked is None else float(asked)

    def systole_of(self, data: DiffusionClips, indices: list[int], repeats: int = 1,
                   counterfactual: bool = False) -> torch.Tensor | None:
        """The ED -> ES intervals (s) to sample videos ``indices`` of ``data`` with, each repeated ``repeats`` times
        (shape ``(len(indices) x repeats,)``), when this cascade is conditioned on them (``condition_on_systole``),
        else None: what :func:`~echodiff.diffusion.sample`'s ``systole`` takes for videos made from those anatomy
        frames. Each video's own interval, or, for ``counterfactual`` videos (made at an EF other than their anatomy
        video's), the config's ``counterfactual_systole`` where it sets one."""
        if not self.config.get("condition_on_systole"):
            return None
        if counterfactual and self.counterfactual_systole is not None:
            return torch.full((len(indices) * repeats,), self.counterfactual_systole)
        seconds = torch.tensor([data.systole_seconds(int(i)) for i in indices], dtype=torch.float32)
        return seconds.repeat_interleave(repeats)

    def restore_unets(self) -> CascadeModel:
        """Put the U-Nets back under ``imagen`` on one device. A direct ``imagen(video, unet_number=n)`` call
        (outside ``ImagenTrainer``) turns ``imagen.unets`` into a plain list, which hides them from
        ``parameters()`` and ``state_dict()``; sampling and saving call this first."""
        if not isinstance(self.imagen.unets, torch.nn.ModuleList):
            self.imagen.reset_unets_all_one_device(self.imagen.device)
        return self

    @property
    def device(self) -> torch.device:
        """Where the U-Nets are (after :meth:`restore_unets`)."""
        return next(self.restore_unets().parameters()).device


def save_model_folder(folder: str | os.PathLike, model: CascadeModel, ema: dict[str, Any] | None = None) -> Path:
    """Write ``folder/config.yaml`` and ``folder/merged.pt`` (``model``: the ElucidatedImagen state dict,
    ``ema``: EMA U-Nets if given, ``steps``), both atomically -- the layout of EchoDiffusion's released weights."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {"model": model.restore_unets().imagen.state_dict(), "steps": model.steps.cpu(),
             "version": _imagen_version()}
    if ema is not None:
        state["ema"] = ema
    with atomic_path(folder / "merged.pt") as tmp:
        torch.save(state, tmp)
    atomic_write_text(yaml.safe_dump(model.config, sort_keys=False), folder / "config.yaml")
    return folder


def _imagen_version() -> str:
    return import_imagen().__version__


def _is_run_id(folder: Path) -> bool:
    """A 32-character MLflow run id given where a model folder is expected (and no such folder exists)."""
    return not folder.exists() and str(folder).isalnum() and len(str(folder)) == 32


def _require(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: a model folder holds config.yaml and merged.pt "
                                "(EchoDiffusion's released layout, e.g. 1SCM_v2/)")


def load_model_config(folder: str | os.PathLike) -> dict[str, Any]:
    """The cascade config of a model folder or stage-02 run id, read from its ``config.yaml`` alone (no weights
    are read or downloaded), checked and translated by :func:`cascade_config`."""
    folder = Path(folder)
    path = tracking.fetch_artifact(str(folder), "model/config.yaml") if _is_run_id(folder) else folder / "config.yaml"
    _require(path)
    return cascade_config(yaml.safe_load(path.read_text()) or {}, path)


def load_model_folder(folder: str | os.PathLike, use_ema: bool = True) -> CascadeModel:
    """Load a model folder (``config.yaml`` + ``merged.pt``): ours, EchoDiffusion's released weights, or the
    ``model/`` artifact of an MLflow run (pass the run id).

    EchoDiffusion's released ``config.yaml`` (a copy of its training config) is translated by
    :func:`cascade_config`; without ``ef_embedding`` it is the seed's 1-d EF/100 embedding. With ``use_ema`` and an
    ``ema`` entry (ImagenTrainer's EMA U-Nets), the EMA weights are used, as for sampling.
    """
    folder = Path(folder)
    if _is_run_id(folder):
        folder = tracking.fetch_artifact(str(folder), "model")
    _require(folder / "merged.pt")
    model = CascadeModel(load_model_config(folder))
    state = torch.load(folder / "merged.pt", map_location="cpu", weights_only=False)
    weights = state.get("model", state)
    try:
        model.imagen.load_state_dict(weights)
    except RuntimeError as exc:
        raise ValueError(f"{folder / 'merged.pt'} does not fit {folder / 'config.yaml'}: "
                         f"{str(exc).splitlines()[0]}") from exc
    if use_ema and "ema" in state:
        for i, unet in enumerate(model.imagen.unets):
            prefix = f"{i}.ema_model."
            ema = {k[len(prefix):]: v for k, v in state["ema"].items() if k.startswith(prefix)}
            if ema:
                unet.load_state_dict(ema)
    if "steps" in state:
        model.steps.copy_(torch.as_tensor(state["steps"]).reshape(-1)[: model.num_stages])
    return model.eval()
