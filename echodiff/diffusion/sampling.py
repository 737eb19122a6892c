"""Sampling: one anatomy frame + a target EF -> a video, through every stage of the cascade."""

from __future__ import annotations

import contextlib
import functools
import inspect
import itertools
import math
import os
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from echodiff.data.transforms import resize
from echodiff.data.video import to_uint8, write_video
from echodiff.diffusion.imagen import CascadeModel, condition_embedding, output_video

SOLVERS = ("heun", "dpmpp_2m")  # see sample(): imagen-pytorch's EDM sampler, or DPM-Solver++(2M)

def _per_stage(model: CascadeModel, name: str, value: float | list[float]) -> list[float]:
    values = [value] * model.num_stages if isinstance(value, (int, float)) else list(value)
    if len(values) != model.num_stages:
        raise ValueError(f"{name} must be one value or one per stage ({model.num_stages}), got {value!r}")
    return values


@contextlib.contextmanager
def _sampler_settings(model: CascadeModel, steps: int | list[int] | None, churn: float | list[float] | None,
                      sigma_max: float | list[float] | None = None) -> Iterator[None]:
    """Temporarily override the EDM sampler's step count, S_churn and highest noise level (one value for all
    stages, or per stage)."""
    saved = list(model.imagen.hparams)
    hparams = list(saved)
    if steps is not None:
        per_stage = _per_stage(model, "steps", steps)
        if any(int(s) < 2 for s in per_stage):  # the EDM schedule divides by steps - 1: one step is NaN
            raise ValueError(f"sampler steps must be >= 2 per stage (one step gives NaN videos), got {steps!r}")
        hparams = [hp._replace(num_sample_steps=int(s)) for hp, s in zip(hparams, per_stage, strict=True)]
    if churn is not None:
        per_stage = _per_stage(model, "churn", churn)
        if any(c < 0 for c in per_stage):
            raise ValueError(f"churn must be >= 0, got {churn!r}")
        hparams = [hp._replace(S_churn=float(c)) for hp, c in zip(hparams, per_stage, strict=True)]
    if sigma_max is not None:
        per_stage = _per_stage(model, "sigma_max", sigma_max)
        low = [hp.sigma_min for hp in hparams]
        if any(not float(s) > m for s, m in zip(per_stage, low, strict=True)):
            raise ValueError(f"sigma_max must exceed each stage's sigma_min {low}, got {sigma_max!r}")
        hparams = [hp._replace(sigma_max=float(s)) for hp, s in zip(hparams, per_stage, strict=True)]
    model.imagen.hparams = hparams
    try:
        yield
    finally:
        model.imagen.hparams = saved


@torch.no_grad()
def _dpmpp_2m_one_unet_sample(imagen: torch.nn.Module, unet: torch.nn.Module, shape: tuple[int, ...], *,
                              unet_number: int, clamp: bool = True, dynamic_threshold: bool = True,
                              cond_scale: float = 1.0, use_tqdm: bool = False, sigma_min: float | None = None,
                              sigma_max: float | None = None, **kwargs) -> torch.Tensor:
    """One stage of the cascade sampled with DPM-Solver++(2M) (Lu et al. 2022, multistep second order, data
    prediction) on the stage's EDM noise levels: one network evaluation (two with guidance) per step instead of
    Heun's two. Stands in for ``ElucidatedImagen.one_unet_sample`` (same arguments; the denoiser, its
    preconditioning, guidance, thresholding and low-resolution conditioning are imagen-pytorch's own).

    With noise levels sigma_0 > ... > sigma_{N-1} > 0 and ``t = -log(sigma)``, step i takes the denoised estimate
    ``D_i = D(x_i, sigma_i)`` and moves ``x_{i+1} = (sigma_{i+1} / sigma_i) x_i + (1 - sigma_{i+1} / sigma_i) D'``
    where ``D' = D_i`` for the first step and ``(1 + 1/(2r)) D_i - 1/(2r) D_{i-1}`` after it, ``r = h_{i-1} / h_i``,
    ``h_i = t_{i+1} - t_i``. The last step (to sigma 0) returns ``D``.
    """
    for name in ("inpaint_videos", "inpaint_images", "inpaint_masks", "init_images", "skip_steps"):
        if kwargs.pop(name, None) is not None:
            raise ValueError(f"the dpmpp_2m solver does not support {name}: use solver='heun'")
    kwargs.pop("inpaint_resample_times", None)
    if unet.self_cond:
        raise ValueError("the dpmpp_2m solver does not support self-conditioned U-Nets: use solver='heun'")
    hp = imagen.hparams[unet_number - 1]
    sigmas = imagen.sample_schedule(hp.num_sample_steps, hp.rho, sigma_min if sigma_min is not None else
                                    hp.sigma_min, sigma_max if sigma_max is not None else hp.sigma_max).tolist()
    x = sigmas[0] * torch.randn(shape, device=imagen.device)
    denoise_kwargs = dict(sigma_data=hp.sigma_data, clamp=clamp, dynamic_threshold=dynamic_threshold,
                          cond_scale=cond_scale, self_cond=None, **kwargs)
    previous = None  # (D, h) of the step before
    for sigma, sigma_next in itertools.pairwise(sigmas):
        denoised = imagen.preconditioned_network_forward(unet.forward_with_cond_scale, x, sigma, **denoise_kwargs)
        if sigma_next == 0:
            x = denoised
            break
        h = math.log(sigma / sigma_next)
        estimate = denoised
        if previous is not None:
            r = previous[1] / h
            estimate = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * previous[0]
        x = (sigma_next / sigma) * x + (1 - sigma_next / sigma) * estimate
        previous = (denoised, h)
    return imagen.unnormalize_img(x.clamp(-1.0, 1.0))


@contextlib.contextmanager
def _solver(model: CascadeModel, solver: str) -> Iterator[None]:
    """Sample every stage with ``solver`` meanwhile (imagen-pytorch's ``one_unet_sample`` for ``heun``)."""
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    if solver == "heun":
        yield
        return
    model.imagen.one_unet_sample = types.MethodType(_dpmpp_2m_one_unet_sample, model.imagen)
    try:
        yield
    finally:
        del model.imagen.one_unet_sample  # back to the class's method


def per_video_guidance(unet: torch.nn.Module, scale: torch.Tensor) -> Callable[..., torch.Tensor]:
    """``unet.forward_with_cond_scale`` with one classifier-free guidance scale per video, ``scale`` ``(B,)``: each
    video gets imagen-pytorch's ``logits + (scale - 1) update`` with ``update = logits - null_logits`` (less its
    component parallel to ``logits`` when the sampler asks, as imagen's ``sample`` does by default), and ``logits``
    where its scale is 1. The same two network passes as one shared scale (one when every scale is 1); the
    ``cond_scale`` the sampler passes is ignored (``scale`` holds it where it applies)."""
    network = type(unet).forward
    project = inspect.getmodule(type(unet)).project  # imagen-pytorch's own projection, beside its U-Net class
    unguided = bool((scale == 1).all())

    def guided(x: torch.Tensor, *args: Any, cond_scale: float | None = None, remove_parallel_component: bool = False,
               keep_parallel_frac: float = 0.0, **kwargs: Any) -> torch.Tensor:
        logits = network(unet, x, *args, **kwargs)
        if unguided:
            return logits
        update = logits - network(unet, x, *args, cond_drop_prob=1.0, **kwargs)
        if remove_parallel_component:
            parallel, orthogonal = project(update, logits)
            update = orthogonal + parallel * keep_parallel_frac
        return logits + update * (scale.to(logits).view(-1, *([1] * (logits.ndim - 1))) - 1)

    return guided


def stage1_scales(config: dict[str, Any], ef: torch.Tensor, cond_scale: float) -> torch.Tensor | None:
    """For a cascade with ``low_ef_guidance: {below, cond_scale}``: stage 1's guidance scale per video ``(B,)``, the
    rule's ``cond_scale`` for a target ``ef`` below ``below`` % and the caller's ``cond_scale`` for the others; None
    without the rule."""
    rule = config.get("low_ef_guidance")
    if rule is None:
        return None
    return torch.where(ef < float(rule["below"]), float(rule["cond_scale"]), float(cond_scale))


def extrapolated_forward(guided: Callable[..., torch.Tensor], anchor: torch.Tensor, lower: torch.Tensor,
                         weight: torch.Tensor) -> Callable[..., torch.Tensor]:
    """A guided prediction extrapolated linearly in EF (the cascade's ``ef_extrapolation``): with ``G(c)`` the
    prediction ``guided`` (imagen-pytorch's ``forward_with_cond_scale`` or :func:`per_video_guidance`) makes for
    condition token ``c``, each video gets ``G(anchor) + w (G(anchor) - G(lower))``. ``anchor`` / ``lower``: condition
    tokens ``(B, 1, D)`` at the target EF capped at ``above`` and at ``above - span`` (:func:`extrapolation_tokens`);
    they replace the token the sampler passes (the anchor is that token wherever the target is at or below
    ``above``). ``weight`` ``(B,)``: (target - above) / span, 0 for a target at or below ``above`` (then the
    prediction is ``G`` at the target itself, as without the option). ``G(lower)`` is computed only when some weight
    is > 0 (twice the passes then)."""

    def forward(x: torch.Tensor, *args: Any, text_embeds: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        prediction = guided(x, *args, text_embeds=anchor.to(x), **kwargs)
        if not bool((weight > 0).any()):
            return prediction
        w = weight.to(prediction).view(-1, *([1] * (prediction.ndim - 1)))
        return prediction + w * (prediction - guided(x, *args, text_embeds=lower.to(x), **kwargs))

    return forward


def extrapolation_tokens(config: dict[str, Any], ef: torch.Tensor, systole: torch.Tensor | float | list[float] | None,
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """For a cascade with ``ef_extrapolation: {above, span}``: the condition tokens of target ``ef`` ``(B,)`` capped at
    ``above`` and of ``above - span`` (used only where the weight is > 0, i.e. where the cap applies), and the weights
    (ef - above) / span (0 at or below ``above``), as :func:`extrapolated_forward` takes them; None without the
    option."""
    rule = config.get("ef_extrapolation")
    if rule is None:
        return None
    above, span = float(rule["above"]), float(rule["span"])
    return (condition_embedding(config, ef.clamp(max=above), systole),
            condition_embedding(config, torch.full_like(ef, above - span), systole), (ef - above).clamp(min=0) / span)


@contextlib.contextmanager
def _stage1_forward(model: CascadeModel, forward: Callable[..., torch.Tensor] | None) -> Iterator[None]:
    """Meanwhile, stage 1 (where the motion is made) predicts with ``forward`` (None: as it is)."""
    if forward is None:
        yield
        return
    unet = model.imagen.unets[0]
    unet.forward_with_cond_scale = forward
    try:
        yield
    finally:
        del unet.forward_with_cond_scale  # back to the class's method


def _stage1_prediction(model: CascadeModel, scale: torch.Tensor | None, extrapolation: list[torch.Tensor] | None,
                       device: torch.device) -> Callable[..., torch.Tensor] | None:
    """Stage 1's prediction under the cascade's sampling rules for one batch: guidance per video (``scale`` ``(B,)``,
    :func:`stage1_scales`) and the EF extrapolation (:func:`extrapolation_tokens`); None when neither applies."""
    if scale is None and extrapolation is None:
        return None
    unet = model.imagen.unets[0]
    guided = (functools.partial(type(unet).forward_with_cond_scale, unet) if scale is None
              else per_video_guidance(unet, scale.to(device)))
    if extrapolation is None:
        return guided
    return extrapolated_forward(guided, *(tokens.to(device) for tokens in extrapolation))


@torch.no_grad()
def sample(
    model: CascadeModel,
    anatomy: torch.Tensor,
    ef: torch.Tensor | float | list[float],
    frames: int | None = None,
    steps: int | list[int] | None = None,
    churn: float | list[float] | None = None,
    cond_scale: float | list[float] = 5.0,
    seed: int | None = None,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    last_stage: int | None = None,
    solver: str = "heun",
    sigma_max: float | list[float] | None = None,
    systole: torch.Tensor | float | list[float] | None = None,
) -> torch.Tensor:
    """Generate videos ``(B, 3, T, H, W)`` in [0, 1] conditioned on anatomy frames and target EFs.

    Args:
        anatomy: ``(B, 3, H, W)`` (or ``(3, H, W)``) in [0, 1], at the last stage's size.
        ef: target EF in % -- a scalar for every video or ``(B,)``.
        systole: the ED -> ES interval in seconds, a scalar or ``(B,)``; required by a cascade trained with
            ``condition_on_systole`` (the anatomy video's: :meth:`CascadeModel.systole_of`), refused by any other.
        frames: output frames ``T`` (default: the config's ``frames``).
        steps: sampler steps, one value or one per stage (default: the config's ``num_sample_steps``).
        churn: EDM's S_churn, one value or one per stage (default: the config's); 0 makes the sampler the
            deterministic second-order (Heun) ODE solver of Karras et al. 2022, Algorithm 1. ``heun`` only.
        solver: ``heun``: imagen-pytorch's EDM sampler (Karras et al. 2022, Algorithm 2; 2 N - 1 network
            evaluations for N steps); ``dpmpp_2m``: DPM-Solver++(2M), deterministic, N evaluations for N steps.
        cond_scale: classifier-free guidance scale, one value or one per stage (EchoDiffusion: 5 for samples, 1
            for dataset generation); 1 costs one network pass per step instead of two. A cascade with
            ``low_ef_guidance: {below, cond_scale}`` samples stage 1 of a target below ``below`` % at the rule's
            scale instead (:func:`stage1_scales`). The update is the cascade's ``guidance_update`` (absent: full, as
            EchoDiffusion; ``orthogonal``: imagen-pytorch 2.1's default).
        seed: makes the result reproducible; the global RNG is left as it was.
        batch_size: videos per forward pass (default: all at once).
        last_stage: stop after this stage (1-based; default: all), e.g. to look at stage 1's low-resolution
            videos; they come out at that stage's size.
        sigma_max: the noise level each stage's schedule starts from, one value or one per stage (default: the
            config's, imagen-pytorch's 80). EDM's 80 is 160x its sigma_data of 0.5; with a small ``sigma_data``
            (the demo's residual: 0.12) most of a few-step schedule is then spent far above any noise level the
            network was trained on. The demo cascade at 4 + 4 Heun steps: [80, 80] EF slope 0.16, [5, 1] 0.66
            (benchmarks/README.md, section 1).
    """
    # Check the conditions against the model: anatomy size, one EF per frame, frames, stages.
    anatomy = torch.as_tensor(anatomy, dtype=torch.float32)
    if anatomy.ndim == 3:
        anatomy = anatomy[None]
    size = model.image_size
    if anatomy.ndim != 4 or anatomy.shape[1] != 3 or anatomy.shape[-2:] != (size, size):
        raise ValueError(f"anatomy must be (B, 3, {size}, {size}) in [0, 1] for this model, got "
                         f"{tuple(anatomy.shape)}")
    ef = torch.as_tensor(ef, dtype=torch.float32).reshape(-1)
    if ef.numel() == 1:
        ef = ef.expand(anatomy.shape[0])
    if ef.numel() != anatomy.shape[0]:
        raise ValueError(f"ef must be one value or one per anatomy frame ({anatomy.shape[0]}), got {ef.numel()}")
    embeds = condition_embedding(model.config, ef, systole)
    extrapolation = extrapolation_tokens(model.config, ef, systole)
    frames = frames or model.config.get("frames")
    if not frames:
        raise ValueError("frames is required (the model config has no `frames`)")
    last_stage = model.num_stages if last_stage is None else int(last_stage)
    if not 1 <= last_stage <= model.num_stages:
        raise ValueError(f"last_stage must be within 1-{model.num_stages}, got {last_stage}")
    out_size = int(model.imagen.image_sizes[last_stage - 1])
    scales = tuple(float(c) for c in _per_stage(model, "cond_scale", cond_scale))
    stage1 = stage1_scales(model.config, ef, scales[0])
    device = torch.device(device or model.device)
    batch_size = batch_size or anatomy.shape[0]
    outputs = []
    devices = [device] if device.type == "cuda" else []
    if solver == "dpmpp_2m" and churn is not None and any(c != 0 for c in _per_stage(model, "churn", churn)):
        raise ValueError(f"the dpmpp_2m solver is deterministic: churn must be None or 0, got {churn!r}")
    # Sample in batches under the chosen solver and step counts, with a forked RNG (the caller's is left as it was).
    with torch.random.fork_rng(devices=devices), _sampler_settings(model, steps, churn, sigma_max), \
            _solver(model, solver):
        if seed is not None:
            torch.manual_seed(seed)
        for start in range(0, anatomy.shape[0], batch_size):
            chunk = slice(start, start + batch_size)
            forward = _stage1_prediction(model, None if stage1 is None else stage1[chunk],
                                         None if extrapolation is None else [t[chunk] for t in extrapolation], device)
            with _stage1_forward(model, forward):
                video = model.imagen.sample(
                    text_embeds=embeds[chunk].to(device), cond_images=anatomy[chunk].to(device),
                    video_frames=frames, batch_size=anatomy[chunk].shape[0], cond_scale=scales, use_tqdm=False,
                    device=device, stop_at_unet_number=last_stage,
                    cfg_remove_parallel_component=model.config.get("guidance_update", "full") == "orthogonal")
            video = output_video(video.float().cpu(), resize(anatomy[chunk], out_size), model.config)
            outputs.append(video.expand(-1, 3, -1, -1, -1))  # grey cascades: 1 -> 3
    return torch.cat(outputs)


def write_avis(videos: torch.Tensor, folder: str | os.PathLike, names: list[str], fps: float) -> list[Path]:
    """Write ``(B, 3, T, H, W)`` in [0, 1] as EchoNet-Dynamic-format AVIs ``folder/<name>.avi``."""
    if len(names) != videos.shape[0]:
        raise ValueError(f"{len(names)} names for {videos.shape[0]} videos")
    paths = []
    for video, name in zip(videos, names, strict=True):
        paths.append(write_video(Path(folder) / f"{name}.avi", to_uint8(video), fps))
    return paths
