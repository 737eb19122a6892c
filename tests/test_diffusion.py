"""Diffusion core: offline import, EF conditioning, building the cascade, sampling, model folders."""

import os
import subprocess
import sys
from collections.abc import Callable

import pytest
import torch
import yaml
from helpers import tiny_config

from echodiff.config import repo_root
from echodiff.diffusion import (
    CascadeModel,
    build_imagen,
    ef_embedding,
    import_imagen,
    load_model_folder,
    sample,
    save_model_folder,
)
from echodiff.diffusion.imagen import cascade_config, stage_seed, training_target
from echodiff.rng import derived_seed


def test_import_needs_no_network_nor_cache(tmp_path):
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), HF_HUB_CACHE=str(tmp_path / "hf" / "hub"),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    code = "import echodiff.diffusion as d, imagen_pytorch; print(imagen_pytorch.Unet3D.__name__)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Unet3D" in proc.stdout
    assert not (tmp_path / "hf" / "hub").exists() or not any((tmp_path / "hf" / "hub").iterdir())


def test_ef_embedding_is_never_the_unconditional_token():
    e = ef_embedding([0.0, 55.0, 100.0])
    assert e.shape == (3, 1, 2) and torch.all(torch.any(e != 0, dim=-1))
    assert torch.allclose(e[:, 0, 0], torch.tensor([0.0, 0.55, 1.0]))
    seed = ef_embedding([55.0], "ef")
    assert seed.shape == (1, 1, 1) and float(seed) == pytest.approx(0.55)
    with pytest.raises(ValueError, match="no condition"):
        ef_embedding([0.0], "ef")
    fourier = ef_embedding([0.0, 50.0, 100.0], "ef_fourier")
    assert fourier.shape == (3, 1, 18) and torch.all(torch.any(fourier != 0, dim=-1))
    assert torch.allclose(fourier[:, 0, 2], torch.sin(2 * torch.pi * torch.tensor([0.0, 0.5, 1.0])), atol=1e-6)
    assert (ef_embedding([40.0], "ef_fourier") - ef_embedding([41.0], "ef_fourier")).norm() > 0.2  # 1 point apart
    clamped = ef_embedding([10.0, 20.0, 50.0, 75.0, 90.0], "ef_fourier_clamped")
    assert torch.equal(clamped[2:4], ef_embedding([50.0, 75.0], "ef_fourier"))  # inside 20-75 %: ef_fourier
    assert torch.equal(clamped[0, 0, 2:], clamped[1, 0, 2:]) and torch.equal(clamped[4, 0, 2:], clamped[3, 0, 2:])
    assert clamped[0, 0, 0] == pytest.approx(0.10) and clamped[4, 0, 0] == pytest.approx(0.90)  # EF/100 still moves
    ramps = ef_embedding([0.0, 25.0, 90.0], "ef_ramps")
    assert ramps.shape == (3, 1, 8) and torch.all(torch.any(ramps != 0, dim=-1))
    assert torch.allclose(ramps[1, 0], torch.tensor([0.25, 1.0, 0.05, 0, 0, 0, 0, 0]))  # only the 20 % knot passed
    assert torch.allclose(ramps[2, 0, 2:], torch.tensor([0.7, 0.6, 0.5, 0.4, 0.3, 0.2]))  # linear beyond 70 %
    for bad in ([-1.0], [101.0], [float("nan")]):
        with pytest.raises(ValueError, match="0-100"):
            ef_embedding(bad)


def test_build_checks_the_config():
    imagen = build_imagen(tiny_config(2))
    assert len(imagen.unets) == 2 and list(imagen.image_sizes) == [8, 16]
    bad = tiny_config(2)
    bad["imagen"]["image_sizes"] = [16]
    with pytest.raises(ValueError, match="one size per U-Net"):
        build_imagen(bad)
    with pytest.raises(ValueError, match="unknown ef_embedding"):
        build_imagen(dict(tiny_config(), ef_embedding="clip"))
    with pytest.raises(ValueError, match=r"text_embed_dim=1 does not match the condition \(ef_embedding .ef_flag.: "
                                         r"dimension 2\)"):
        build_imagen({**tiny_config(), "imagen": {**tiny_config()["imagen"], "text_embed_dim": 1}})
    with pytest.raises(ValueError, match="needs `unets`"):
        build_imagen({"imagen": {}})


def test_each_stage_draws_its_initial_weights_from_its_own_seed():
    """E23's trap: with one global stream, widening stage 1 re-drew stage 2's initial weights, so a one-stage
    change was compared against another training run of the other stage. Seeded per stage, it is not."""
    wide = tiny_config(2)
    wide["unets"]["unet1"] = {**wide["unets"]["unet1"], "dim": 16}
    state = torch.get_rng_state()
    base, other = build_imagen(tiny_config(2), seed=3), build_imagen(wide, seed=3)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's stream is untouched
    assert sum(p.numel() for p in base.unets[0].parameters()) != sum(p.numel() for p in other.unets[0].parameters())
    for a, b in zip(base.unets[1].state_dict().values(), other.unets[1].state_dict().values(), strict=True):
        assert torch.equal(a, b)  # stage 2: the same initial weights, whatever stage 1 is
    again, reseeded = build_imagen(tiny_config(2), seed=3), build_imagen(tiny_config(2), seed=4)
    for stage in (0, 1):
        first = next(iter(base.unets[stage].parameters()))
        assert torch.equal(first, next(iter(again.unets[stage].parameters())))
        assert not torch.equal(first, next(iter(reseeded.unets[stage].parameters())))
    torch.manual_seed(0)
    unseeded = build_imagen(wide)  # without a seed, the global stream: widening stage 1 moves stage 2
    torch.manual_seed(0)
    assert not torch.equal(next(iter(unseeded.unets[1].parameters())),
                           next(iter(build_imagen(tiny_config(2)).unets[1].parameters())))


def test_derived_seeds_keep_the_values_that_earlier_runs_were_drawn_with():
    """One helper derives every per-stage and per-video seed; its values are pinned, because stage 02's initial
    weights and stage 03's windows and counterfactual targets (every figure in docs/generator-experiments.md) were
    drawn from them."""
    assert stage_seed(0, 1) == derived_seed(0, 1, bits=63) == 2918264622725855778
    assert derived_seed(0, 3) == 2613022947  # stage 03, seed 0, video 3: its window and anatomy frame
    assert derived_seed(0, 3, 1) == 3679268941  # ... and its counterfactual target
    assert len({derived_seed(0, i) for i in range(1000)}) == 1000
    with pytest.raises(ValueError, match="bits must be 32 or 63"):
        derived_seed(0, bits=64)


@pytest.mark.parametrize("stages", [1, 2])
def test_sample_shapes_range_and_seed(stages):
    torch.manual_seed(0)
    model = CascadeModel(tiny_config(stages)).eval()
    anatomy = torch.rand(2, 3, 16, 16)
    state = torch.get_rng_state()
    a = sample(model, anatomy, [20.0, 70.0], seed=3)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is untouched
    assert a.shape == (2, 3, 4, 16, 16) and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, sample(model, anatomy, [20.0, 70.0], seed=3))
    assert not torch.equal(a, sample(model, anatomy, [20.0, 70.0], seed=4))
    assert torch.equal(a, sample(model, anatomy, [20.0, 70.0], seed=3, batch_size=2))
    assert sample(model, anatomy[0], 50.0, frames=2, steps=2, seed=1).shape == (1, 3, 2, 16, 16)


def test_dpmpp_2m_solver_one_pass_per_step_seeded_and_solving_the_same_ode():
    torch.manual_seed(0)
    model = CascadeModel(tiny_config(2)).eval()
    anatomy = torch.rand(2, 3, 16, 16)
    passes = [0]
    for unet in model.imagen.unets:  # imagen-pytorch calls unet.forward once per pass (twice with guidance)
        unet.forward = (lambda f: lambda *a, **k: passes.__setitem__(0, passes[0] + 1) or f(*a, **k))(unet.forward)

    def run(**kwargs) -> tuple[torch.Tensor, int]:
        passes[0] = 0
        return sample(model, anatomy, [20.0, 70.0], seed=1, **kwargs), passes[0]

    a, n = run(steps=5, solver="dpmpp_2m", cond_scale=5.0)
    assert a.shape == (2, 3, 4, 16, 16) and a.min() >= 0 and a.max() <= 1
    assert n == 2 * 5 * 2  # 2 stages x 5 steps x (conditional + unconditional pass)
    assert run(steps=5, solver="dpmpp_2m", cond_scale=1.0)[1] == 2 * 5  # no guidance: one pass per step
    assert run(steps=5, churn=0.0, cond_scale=1.0)[1] == 2 * (2 * 5 - 1)  # Heun: two per step but the last
    assert torch.equal(a, run(steps=5, solver="dpmpp_2m", cond_scale=5.0)[0])  # same seed, same video
    assert not torch.equal(a, sample(model, anatomy, [20.0, 70.0], seed=2, steps=5, solver="dpmpp_2m"))
    assert "one_unet_sample" not in vars(model.imagen)  # imagen-pytorch's sampler is back
    # both solve the same probability-flow ODE from the same initial noise (one stage: Heun draws unused noise
    # every step, so a later stage would start from other noise): with many steps they agree
    one = CascadeModel(tiny_config(1)).eval()
    ode = {(solver, steps): sample(one, anatomy, [20.0, 70.0], seed=1, steps=steps, churn=0.0, cond_scale=1.0,
                                   solver=solver) for solver in ("heun", "dpmpp_2m") for steps in (3, 64)}
    error = {k: float((v - ode["heun", 64]).abs().mean()) for k, v in ode.items()}
    assert error["dpmpp_2m", 64] < 0.01 < error["dpmpp_2m", 3], error
    with pytest.raises(ValueError, match="dpmpp_2m solver is deterministic: churn must be None or 0"):
        sample(model, anatomy, 50.0, solver="dpmpp_2m", churn=40.0)
    with pytest.raises(ValueError, match=r"solver must be one of \('heun', 'dpmpp_2m'\), got 'euler'"):
        sample(model, anatomy, 50.0, solver="euler")


@pytest.mark.parametrize("solver", ["heun", "dpmpp_2m"])
def test_sigma_max_sets_the_noise_level_each_stage_starts_from(solver):
    """``sigma_max`` (one per stage) is where each stage's schedule starts, for both solvers, guided or not; the
    model's own value is back afterwards; a seed gives the same video; a level at or below sigma_min is refused."""
    torch.manual_seed(0)
    model = CascadeModel(tiny_config(2)).eval()
    anatomy = torch.rand(2, 3, 16, 16)
    seen = []  # (stage's U-Net, sigma) of every denoiser call
    forward = model.imagen.preconditioned_network_forward

    def spy(unet_forward, noised, sigma, **kwargs):
        seen.append((unet_forward.__self__, float(sigma if not torch.is_tensor(sigma) else sigma.flatten()[0])))
        return forward(unet_forward, noised, sigma, **kwargs)

    model.imagen.preconditioned_network_forward = spy
    for scale in (1.0, [5.0, 1.0]):
        seen.clear()
        a = sample(model, anatomy, [20.0, 70.0], seed=1, steps=3, churn=0.0, cond_scale=scale, solver=solver,
                   sigma_max=[5.0, 1.0])
        assert a.shape == (2, 3, 4, 16, 16) and 0 <= float(a.min()) and float(a.max()) <= 1
        starts = [next(s for u, s in seen if u is unet) for unet in model.imagen.unets]
        assert starts == pytest.approx([5.0, 1.0]), starts
        again = sample(model, anatomy, [20.0, 70.0], seed=1, steps=3, churn=0.0, cond_scale=scale, solver=solver,
                       sigma_max=[5.0, 1.0])
        assert torch.equal(a, again)
        assert not torch.equal(a, sample(model, anatomy, [20.0, 70.0], seed=1, steps=3, churn=0.0, cond_scale=scale,
                                         solver=solver))
    assert [hp.sigma_max for hp in model.imagen.hparams] == [80, 80]  # imagen-pytorch's default, restored
    seen.clear()
    sample(model, anatomy, 50.0, seed=1, steps=3, churn=0.0, solver=solver)
    assert seen[0][1] == pytest.approx(80.0)
    with pytest.raises(ValueError, match="sigma_max must exceed each stage's sigma_min"):
        sample(model, anatomy, 50.0, steps=3, solver=solver, sigma_max=0.001)
    with pytest.raises(ValueError, match="one per stage"):
        sample(model, anatomy, 50.0, steps=3, solver=solver, sigma_max=[5.0, 1.0, 1.0])


def test_sample_rejects_bad_input():
    model = CascadeModel(tiny_config()).eval()
    with pytest.raises(ValueError, match=r"anatomy must be \(B, 3, 16, 16\)"):
        sample(model, torch.rand(1, 1, 16, 16), 50.0)
    with pytest.raises(ValueError, match=r"anatomy must be \(B, 3, 16, 16\)"):
        sample(model, torch.rand(1, 3, 32, 32), 50.0)
    with pytest.raises(ValueError, match="0-100"):
        sample(model, torch.rand(1, 3, 16, 16), 120.0)
    with pytest.raises(ValueError, match="one per anatomy frame"):
        sample(model, torch.rand(2, 3, 16, 16), [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="one per stage"):
        sample(model, torch.rand(1, 3, 16, 16), 50.0, steps=[2, 2])
    with pytest.raises(ValueError, match=r"steps must be >= 2"):  # imagen-pytorch's schedule: NaN videos
        sample(model, torch.rand(1, 3, 16, 16), 50.0, steps=1)
    assert not sample(model, torch.rand(1, 3, 16, 16), 50.0, steps=2).isnan().any()


def test_a_few_training_steps_lower_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    model = CascadeModel(tiny_config())
    video, anatomy = torch.rand(4, 3, 4, 16, 16), torch.rand(4, 3, 16, 16)
    embeds = ef_embedding([30.0, 45.0, 60.0, 75.0])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)

    def loss() -> torch.Tensor:
        torch.manual_seed(1)  # same noise levels each time: compare like with like
        return model.imagen(video, text_embeds=embeds, cond_images=anatomy, unet_number=1)

    before = float(loss().detach())
    for _ in range(40):
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()
    assert float(loss().detach()) < 0.7 * before  # measured: 4.36 -> 2.07


def test_released_layout_loads_with_its_ema_weights(tmp_path):
    """EchoDiffusion's released folders: config.yaml (no ef_embedding, text_embed_dim 1) + merged.pt written
    by imagen-pytorch's ImagenTrainer.save (model, ema, steps, optimizers...)."""
    imagen_pytorch = import_imagen()
    config = tiny_config(2, ef_kind=None)
    config["imagen"]["text_embed_dim"] = 1
    imagen = build_imagen({**config, "ef_embedding": "ef"})
    del config["frames"]  # the release layout: the clip length lives in the training config's dataset section
    config.update(dataset={"fps": 8, "duration": 0.5, "grayscale": False}, trainer={"lr": 5e-4},
                  checkpoint={"cond_scale": 5.0})
    trainer = imagen_pytorch.ImagenTrainer(imagen=imagen, use_ema=True, lr=1e-4)
    with torch.no_grad():
        for ema in trainer.ema_unets:
            for p in ema.ema_model.parameters():
                p.add_(1.0)  # EMA weights differ from the online ones
    folder = tmp_path / "1SCM_v2"
    folder.mkdir()
    trainer.save(str(folder / "merged.pt"))
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    model = load_model_folder(folder)
    assert model.ef_kind == "ef"
    first = next(iter(imagen.unets[1].state_dict()))
    assert torch.allclose(model.imagen.unets[1].state_dict()[first], imagen.unets[1].state_dict()[first] + 1.0)
    online = load_model_folder(folder, use_ema=False)
    assert torch.allclose(online.imagen.unets[1].state_dict()[first], imagen.unets[1].state_dict()[first])
    assert sample(model, torch.rand(1, 3, 16, 16), 40.0, seed=0).shape == (1, 3, 4, 16, 16)


def test_our_folders_round_trip_and_mismatches_are_clear(tmp_path):
    torch.manual_seed(0)
    model = CascadeModel(tiny_config())
    model.steps.fill_(7)
    save_model_folder(tmp_path / "ours", model)
    loaded = load_model_folder(tmp_path / "ours")
    x = torch.rand(1, 3, 16, 16)
    assert torch.equal(sample(loaded, x, 50.0, seed=0), sample(model.eval(), x, 50.0, seed=0))
    assert loaded.steps.tolist() == [7]
    wider = tiny_config(dim=16)
    (tmp_path / "ours" / "config.yaml").write_text(yaml.safe_dump(wider))
    with pytest.raises(ValueError, match="does not fit"):
        load_model_folder(tmp_path / "ours")
    with pytest.raises(FileNotFoundError, match="config.yaml and merged.pt"):
        load_model_folder(tmp_path / "nothing")


@pytest.mark.parametrize(("name", "sizes", "temporal", "steps", "churn", "frames"), [
    ("1SCM", [112], [1], 64, 160, 16),
    ("2SCM", [56, 112], [4, 1], [32, 64], [80, 160], 64),
    ("4SCM", [56, 56, 56, 112], [4, 2, 1, 1], [32, 32, 32, 64], [40, 80, 160, 160], 64),
])
def test_paper_configs_build_with_the_seeds_values(name, sizes, temporal, steps, churn, frames):
    from echodiff.config import load_params

    config = load_params(f"params/cascades/{name}.yaml")
    model = CascadeModel(config)
    assert [int(s) for s in model.imagen.image_sizes] == sizes and config["frames"] == frames
    assert list(model.imagen.temporal_downsample_factor) == temporal
    stages = len(sizes)
    steps, churn = ([v] * stages if isinstance(v, int) else v for v in (steps, churn))
    assert [hp.num_sample_steps for hp in model.imagen.hparams] == steps
    assert [hp.S_churn for hp in model.imagen.hparams] == churn
    assert all(hp.sigma_data == 0.25 for hp in model.imagen.hparams)
    assert all(unet.cond_images_channels == 3 for unet in model.imagen.unets)  # the anatomy frame
    assert [bool(unet.lowres_cond) for unet in model.imagen.unets] == [False] + [True] * (stages - 1)


def test_grey_cascade_generates_one_channel_shown_as_three():
    torch.manual_seed(0)
    model = CascadeModel(dict(tiny_config(2), channels=1)).eval()
    assert model.imagen.channels == 1 and all(u.channels == 1 for u in model.imagen.unets)
    video = sample(model, torch.rand(2, 3, 16, 16), [30.0, 60.0], seed=0)
    assert video.shape == (2, 3, 4, 16, 16) and torch.equal(video[:, 0], video[:, 2])
    with pytest.raises(ValueError, match="channels must be 1"):
        build_imagen(dict(tiny_config(), channels=2))


def test_ef_conditioning_is_learned_on_a_toy_task():
    """Videos whose brightness is EF/100: a few hundred steps must teach the cascade to follow the target EF.
    This fails with imagen-pytorch's default ``attn_pool_text`` (its Perceiver resampler hides the one EF token),
    which is why ``params/cascades/demo.yaml`` turns it off."""
    torch.manual_seed(0)
    config = tiny_config()
    config["imagen"]["image_sizes"], config["frames"] = [8], 2
    config["unets"]["unet1"]["attn_pool_text"] = False
    model = CascadeModel(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        ef = torch.rand(16) * 80 + 10
        video = (ef / 100).view(-1, 1, 1, 1, 1).expand(-1, 3, 2, 8, 8)
        loss = model.imagen(video, text_embeds=ef_embedding(ef), cond_images=torch.rand(16, 3, 8, 8), unet_number=1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    # a direct imagen(..., unet_number=1) call hides the U-Nets from state_dict(); sampling and saving restore them
    model.eval()
    anatomy = torch.rand(4, 3, 8, 8)
    low, high = (sample(model, anatomy, ef, cond_scale=1.0, steps=8, churn=0.0, seed=0).mean() for ef in (20.0, 80.0))
    assert any(key.startswith("unets.0.") for key in model.imagen.state_dict())
    assert float(high - low) > 0.3, (float(low), float(high))  # measured, 4 seeds: 0.24-0.28 and 0.73-0.76


def _toy_response(kind: str, train_ef: Callable[[], torch.Tensor], brightness: Callable[[torch.Tensor], torch.Tensor],
                  probe: tuple[float, ...], seed: int = 0, steps: int = 150) -> dict[float, float]:
    """Train a one-stage toy cascade (EF embedding ``kind``) on flat videos of ``brightness(EF)``, a batch of 16
    EFs drawn by ``train_ef`` per step; return the mean brightness it samples at each EF of ``probe``."""
    return _toy_brightness(_toy_model(kind, train_ef, brightness, seed, steps), probe)


def _toy_brightness(model: CascadeModel, probe: tuple[float, ...], anatomy: torch.Tensor | None = None,
                    ) -> dict[float, float]:
    anatomy = torch.rand(4, 3, 8, 8) if anatomy is None else anatomy
    return {ef: float(sample(model, anatomy, ef, cond_scale=1.0, steps=8, churn=0.0, seed=0).mean()) for ef in probe}


def _toy_model(kind: str, train_ef: Callable[[], torch.Tensor], brightness: Callable[[torch.Tensor], torch.Tensor],
               seed: int = 0, steps: int = 150) -> CascadeModel:
    torch.manual_seed(seed)
    config = tiny_config(ef_kind=kind)
    config["imagen"]["image_sizes"], config["frames"] = [8], 2
    config["unets"]["unet1"]["attn_pool_text"] = False
    model = CascadeModel(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        ef = train_ef()
        video = brightness(ef).view(-1, 1, 1, 1, 1).expand(-1, 3, 2, 8, 8)
        loss = model.imagen(video, text_embeds=ef_embedding(ef, kind), cond_images=torch.rand(16, 3, 8, 8),
                            unet_number=1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def _toy_bump_response(kind: str, seed: int = 0, steps: int = 150) -> dict[float, float]:
    """Videos bright only for EF in (35, 55) %, EF drawn from 10-90 %; brightness sampled at EF 20, 45 and 70 %."""
    return _toy_response(kind, lambda: torch.rand(16) * 80 + 10, lambda ef: 0.2 + 0.6 * ((ef > 35) & (ef < 55)).float(),
                         (20.0, 45.0, 70.0), seed, steps)


def test_fourier_ef_embedding_learns_a_response_that_is_not_monotone_in_ef():
    """Why the demo cascade embeds EF as Fourier features (E24): a toy whose brightness is high only for mid-range
    EF. With [EF/100, 1] every path from EF into the U-Net starts from one number, and 150 steps learn only the mean
    brightness; with ``ef_fourier`` the mid-range EF comes out brighter than both ends."""
    def bump(response: dict[float, float]) -> float:
        return response[45.0] - (response[20.0] + response[70.0]) / 2

    flag, fourier = bump(_toy_bump_response("ef_flag")), bump(_toy_bump_response("ef_fourier"))
    assert abs(flag) < 0.05, flag  # measured, seeds 0 and 1: 0.000 and 0.000 (0.37 and 0.49 at every EF)
    assert fourier > 0.15, fourier  # measured, seed 0: 0.29 (EF 45 % at 0.75, 20 and 70 % at 0.46 and 0.44)
    # the demo's ef_fourier_clamped (the bump lies inside its 20-75 % window). Measured bump, seed 1: 0.375 with one
    # torch thread (as make test runs), 0.37 with two; seed 0: 0.14 and 0.26 (ef_fourier seed 0: 0.25 and 0.29).
    clamped = bump(_toy_bump_response("ef_fourier_clamped", seed=1))
    assert clamped > 0.15, clamped


def _toy_ramp_response(kind: str, seed: int = 0, steps: int = 150) -> dict[float, float]:
    """Videos whose brightness rises linearly with EF, with EF only in 25-75 % (as a dataset's hearts are: the
    phantom has 6 of 298 TRAIN videos outside 20-80 %); brightness sampled at EF 15, 25, 75 and 85 %, two of them
    outside what it was trained on."""
    return _toy_response(kind, lambda: torch.rand(16) * 50 + 25, lambda ef: 0.2 + 0.6 * (ef - 25) / 50,
                         (15.0, 25.0, 75.0, 85.0), seed, steps)


def test_fourier_ef_embedding_folds_back_beyond_the_trained_ef_range_and_ramps_do_not():
    """E29's root cause: the demo cascade asked for EF 80-90 % (rebalancing's top bin) made videos the regressor read
    at 30-75 %, falling as the target rose (r -0.86), and at 10-20 % rising again, because Fourier features are
    periodic and the phantom has almost no hearts there. The toy: trained on EF 25-75 % only. ``ef_fourier`` answers
    85 % darker than 75 % and 15 % brighter than 25 %; ``ef_ramps`` (piecewise-linear) stays monotone, and the demo's
    ``ef_fourier_clamped`` stays level beyond its window (E31)."""
    fourier, ramps = _toy_ramp_response("ef_fourier"), _toy_ramp_response("ef_ramps")
    # measured, seed 0 (seed 1): fourier 0.61 / 0.26 / 0.74 / 0.55 (0.57 / 0.52 / 0.76 / 0.57) at 15 / 25 / 75 / 85 %;
    # seed 0 on session 23's CPU 0.54 / 0.26 / 0.57 / 0.53: which end folds most varies, so the two folds are summed
    folds = (fourier[75.0] - fourier[85.0], fourier[15.0] - fourier[25.0])
    assert sum(folds) > 0.2 and min(folds) > -0.02, fourier
    # ramps 0.25 / 0.27 / 0.66 / 0.70 (0.28 / 0.30 / 0.75 / 0.77)
    assert ramps[85.0] >= ramps[75.0] and ramps[15.0] <= ramps[25.0], ramps
    assert ramps[75.0] - ramps[25.0] > 0.3, ramps  # and it follows EF inside the range
    # the demo's ef_fourier_clamped: above its window's top (75 %) only EF/100 moves, so 85 % answers as 75 % does
    # instead of folding (seed 0: 0.745 and 0.745; seed 1: 0.693 and 0.694). Its low end is not probed here: the
    # window starts at 20 %, below this toy's 25 %, so 15 % is answered from features the toy never trained on.
    clamped = _toy_ramp_response("ef_fourier_clamped")
    assert clamped[85.0] > clamped[75.0] - 0.03 and clamped[75.0] - clamped[25.0] > 0.3, clamped


def test_ef_extrapolation_carries_the_response_on_beyond_the_trained_range():
    """Guards ``ef_extrapolation`` (docs/generator-experiments.md, E53): a cascade trained where hearts are (the toy:
    EF 25-75 % only, brightness rising with EF; the phantom: 3 of 298 TRAIN hearts above 75 %) answers a higher
    target as it answers the top of that range, so the generated top falls short. Stage 1's prediction continued
    linearly from its predictions at 65 % and 50 % (``{above: 65, span: 15}``) answers 85 % brighter, beyond what
    it answers at 75 %, and leaves every target at or below 65 % as it was."""
    ramp = _toy_model("ef_fourier_clamped", lambda: torch.rand(16) * 50 + 25, lambda ef: 0.2 + 0.6 * (ef - 25) / 50)
    probe, anatomy = (25.0, 60.0, 75.0, 85.0), torch.rand(4, 3, 8, 8)
    plain = _toy_brightness(ramp, probe, anatomy)
    ramp.config["ef_extrapolation"] = {"above": 65.0, "span": 15.0}
    extrapolated = _toy_brightness(ramp, probe, anatomy)
    assert extrapolated[25.0] == plain[25.0] and extrapolated[60.0] == plain[60.0]
    # measured at 75 / 85 %, plain -> extrapolated: seed 0 0.566 / 0.568 -> 0.640 / 0.676; seed 1 0.758 / 0.757 ->
    # 0.760 / 0.785; seed 2 0.745 / 0.745 -> 0.746 / 0.771 (the ramp: 0.80 / 0.92)
    assert plain[85.0] < plain[75.0] + 0.03, plain
    assert extrapolated[85.0] > max(plain[85.0] + 0.015, extrapolated[75.0]), (plain, extrapolated)


def _guided_toy() -> tuple[CascadeModel, Callable[[float], torch.Tensor]]:
    """A toy whose brightness rises with EF 25-75 %, and its videos at targets 30, 44.9 and 60 % (same anatomy frames
    and noise) for a stage-1 guidance scale."""
    ramp = _toy_model("ef_fourier_clamped", lambda: torch.rand(16) * 50 + 25, lambda ef: 0.2 + 0.6 * (ef - 25) / 50,
                      steps=40)
    anatomy = torch.rand(3, 3, 8, 8)
    return ramp, lambda cond_scale: sample(ramp, anatomy, [30.0, 44.9, 60.0], cond_scale=cond_scale, steps=4,
                                           churn=0.0, seed=0)


def test_low_ef_guidance_samples_low_targets_at_their_own_scale():
    """Guards ``low_ef_guidance`` (docs/generator-experiments.md, E73-E74): stage 1 of a target below ``below`` % is
    sampled at the rule's guidance scale, every other target at the caller's, in one batch and with the same noise:
    each video is the one a whole batch at its scale makes. With ``ef_extrapolation`` too, a target above its anchor
    keeps the caller's scale."""
    ramp, videos = _guided_toy()
    unguided, guided = videos(1.0), videos(5.0)
    assert (unguided - guided).abs().amax() > 1e-3  # guidance changes every video of this toy
    ramp.config["low_ef_guidance"] = {"below": 45.0, "cond_scale": 1.0}
    mixed = videos(5.0)
    torch.testing.assert_close(mixed[:2], unguided[:2])
    torch.testing.assert_close(mixed[2:], guided[2:])
    ramp.config["low_ef_guidance"] = {"below": 45.0, "cond_scale": 5.0}
    torch.testing.assert_close(videos(1.0), torch.cat([guided[:2], unguided[2:]]))
    ramp.config["ef_extrapolation"] = {"above": 50.0, "span": 15.0}
    both = videos(1.0)
    del ramp.config["low_ef_guidance"]
    extrapolated = videos(1.0)
    assert (extrapolated[2:] - unguided[2:]).abs().amax() > 1e-3  # the extrapolation acts on the 60-% video
    torch.testing.assert_close(both, torch.cat([guided[:2], extrapolated[2:]]))


def test_guidance_update_is_echodiffusions_unless_the_cascade_asks_for_imagens_orthogonal_one():
    """``guidance_update`` (docs/generator-experiments.md, E75): imagen-pytorch 2.1's ``sample`` keeps only the part
    of the guidance update orthogonal to the conditional prediction unless told otherwise; EchoDiffusion sampled with
    the full update (imagen-pytorch <= 2.0), and so does a cascade without the key. Per-video guidance
    (``low_ef_guidance``) makes each video as a whole batch at its scale would under either update."""
    ramp, videos = _guided_toy()
    full, unguided = videos(5.0), videos(1.0)
    ramp.config["guidance_update"] = "orthogonal"
    orthogonal = videos(5.0)
    assert (orthogonal - full).abs().amax() > 1e-4
    torch.testing.assert_close(videos(1.0), unguided)  # no guidance: nothing to project
    ramp.config["low_ef_guidance"] = {"below": 45.0, "cond_scale": 1.0}
    torch.testing.assert_close(videos(5.0), torch.cat([unguided[:2], orthogonal[2:]]))
    with pytest.raises(ValueError, match="guidance_update must be one of"):
        cascade_config(dict(tiny_config(), guidance_update="parallel"))


def test_sampling_rules_of_a_cascade_are_checked(phantom_root):
    """``ef_extrapolation`` and ``counterfactual_systole`` are checked where the config is read, and the asked-for
    interval replaces the anatomy video's own only for counterfactual videos."""
    from echodiff.diffusion.imagen import cascade_clips

    for bad in ({"above": 65}, {"above": 10, "span": 15}, {"above": 65, "span": 15, "below": 20}, [65, 15],
                {"above": 100, "span": 15}):
        with pytest.raises(ValueError, match="ef_extrapolation must be"):
            cascade_config(dict(tiny_config(), ef_extrapolation=bad))
    for bad in ({"below": 45}, {"below": 45, "cond_scale": 0}, {"below": 120, "cond_scale": 1}, [45, 1],
                {"below": 45, "cond_scale": 1, "above": 60}, {"below": True, "cond_scale": 1}):
        with pytest.raises(ValueError, match="low_ef_guidance must be"):
            cascade_config(dict(tiny_config(), low_ef_guidance=bad))
    with pytest.raises(ValueError, match="needs condition_on_systole"):
        cascade_config(dict(tiny_config(), counterfactual_systole=0.4))
    with pytest.raises(ValueError, match=r"in \(0, 2\] s"):
        cascade_config(dict(tiny_config(), condition_on_systole=True, counterfactual_systole=12))
    config = cascade_config(dict(tiny_config(ef_kind="ef_fourier"), condition_on_systole=True,
                                 counterfactual_systole=0.4, ef_extrapolation={"above": 65.0, "span": 15.0}))
    model = CascadeModel(config).eval()
    # targets below the span (rebalancing's 10-20 % bin) and above the anchor sample in one batch
    assert sample(model, torch.rand(3, 3, 16, 16), [5.0, 40.0, 90.0], steps=2, systole=0.3).shape == (3, 3, 4, 16, 16)
    val = cascade_clips(config, phantom_root, "val")
    own = model.systole_of(val, [0, 1], repeats=2)
    assert torch.equal(own, torch.tensor([val.systole_seconds(0)] * 2 + [val.systole_seconds(1)] * 2))
    assert torch.equal(model.systole_of(val, [0, 1], repeats=2, counterfactual=True), torch.full((4,), 0.4))
    del model.config["counterfactual_systole"]
    assert torch.equal(model.systole_of(val, [0, 1], repeats=2, counterfactual=True), own)


def test_sector_mask_blacks_out_what_lies_outside_the_anatomy_frames_sector():
    """With ``sector_mask: true`` a generated video is black outside its anatomy frame's scan sector and unchanged
    inside it (the demo's videos drew grey speckle there, where a real echo is black); a non-bool is refused."""
    from echodiff.diffusion.imagen import output_video

    with pytest.raises(ValueError, match="sector_mask must be true or false"):
        cascade_config(dict(tiny_config(), sector_mask="yes"))
    anatomy = torch.zeros(2, 3, 16, 16)
    anatomy[:, :, 4:12, 3:13] = 0.4  # a lit sector with a dark pool in it
    anatomy[:, :, 6:9, 6:9] = 0.0
    generated = torch.rand(2, 1, 4, 16, 16)
    config = dict(cascade_config(tiny_config()), channels=1, residual_gain=2.0)
    plain = output_video(generated, anatomy, config)
    masked = output_video(generated, anatomy, dict(config, sector_mask=True))
    inside = torch.zeros(16, 16, dtype=torch.bool)
    inside[4:12, 3:13] = True
    assert plain[..., ~inside].amax() > 0.1 and masked[..., ~inside].amax() == 0
    assert torch.equal(masked[..., inside], plain[..., inside])
    model = CascadeModel(cascade_config(dict(tiny_config(), sector_mask=True))).eval()
    video = sample(model, anatomy, 50.0, steps=2)
    assert video[..., ~inside].amax() == 0 and video[..., inside].amax() > 0


def test_demo_cascade_samples_without_dynamic_thresholding():
    """imagen-pytorch's default dynamic thresholding greys dark echo frames (measured: mean brightness 0.236 vs
    0.105, real 0.097); the demo config turns it off and the paper configs keep the seed's default."""
    from echodiff.diffusion.training import load_cascade_config

    demo = CascadeModel(load_cascade_config("params/cascades/demo.yaml"))
    assert demo.imagen.dynamic_thresholding == (False, False)
    paper = load_cascade_config("params/cascades/2SCM.yaml")
    assert "dynamic_thresholding" not in paper["imagen"]
    # off: a prediction beyond [-1, 1] is clamped, not divided (which pulls the -1 background towards grey)
    model = CascadeModel(dict(tiny_config(), imagen={**tiny_config()["imagen"], "dynamic_thresholding": False}))
    assert model.imagen.dynamic_thresholding == (False,)


def test_residual_target_round_trips_and_is_checked():
    from echodiff.diffusion.imagen import cascade_config, output_video, training_target

    config = dict(tiny_config(), channels=1, residual_gain=2.0)
    anatomy = torch.rand(2, 3, 8, 8)
    clip = (anatomy[:, :, None] + 0.2 * torch.randn(2, 3, 4, 8, 8)).clamp(0, 1)
    target = training_target(clip, anatomy, config)
    assert target.shape == (2, 1, 4, 8, 8) and 0 <= float(target.min()) and float(target.max()) <= 1
    still = training_target(anatomy[:, :, None].expand(-1, -1, 4, -1, -1), anatomy, config)
    assert torch.allclose(still, torch.full_like(still, 0.5))  # no motion = mid-grey, whatever the anatomy
    back = output_video(target, anatomy, config)
    kept = (clip.mean(1, keepdim=True) - anatomy.mean(1, keepdim=True)[:, :, None]).abs() < 0.5  # not clipped
    assert torch.allclose(back[kept], clip.mean(1, keepdim=True)[kept], atol=1e-6)
    plain = tiny_config()
    assert torch.equal(training_target(clip, anatomy, plain), clip)
    for bad in (0, -1.0, "2", True):
        with pytest.raises(ValueError, match="residual_gain"):
            cascade_config(dict(tiny_config(), residual_gain=bad))


def test_anatomy_frame_is_a_checked_cascade_setting_that_every_stage_reads(phantom_root):
    from echodiff.diffusion.imagen import cascade_clips, cascade_config

    ed = cascade_config(dict(tiny_config(), anatomy_frame="ed"))
    assert cascade_clips(ed, phantom_root, "val").anatomy == "ed"
    assert cascade_clips(cascade_config(tiny_config()), phantom_root, "val").anatomy == "clip"  # the seed's
    with pytest.raises(ValueError, match="anatomy_frame must be one of"):
        cascade_config(dict(tiny_config(), anatomy_frame="es"))


def _toy_beat(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Anatomy frames of random texture and 4-frame clips of them whose centre darkens by EF/100 x 0.5 and back."""
    anatomy = torch.rand(n, 1, 8, 8, generator=generator).expand(-1, 3, -1, -1)
    ef = torch.rand(n, generator=generator) * 80 + 10
    beat = (ef / 100)[:, None] * torch.tensor([0.0, 0.5, 1.0, 0.5])
    clip = anatomy[:, :, None].expand(-1, -1, 4, -1, -1).clone()
    clip[..., 2:6, 2:6] = (clip[..., 2:6, 2:6] - 0.5 * beat[:, None, :, None, None]).clamp(0, 1)
    return anatomy, ef, clip


def _toy_error_around_the_beat(residual: bool) -> float:
    """Train a tiny cascade 150 steps on :func:`_toy_beat` and return the mean error of its samples outside the
    beating centre, where the clip is its anatomy frame."""
    from echodiff.diffusion.imagen import training_target

    torch.manual_seed(0)
    config = tiny_config()
    config["imagen"].update(image_sizes=[8], dynamic_thresholding=False)
    config.update(frames=4, channels=1)
    config["unets"]["unet1"]["attn_pool_text"] = False
    if residual:
        config.update(residual_gain=2.0)
        config["imagen"]["sigma_data"] = 0.15
    model = CascadeModel(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(150):
        anatomy, ef, clip = _toy_beat(16, generator)
        loss = model.imagen(training_target(clip, anatomy, config), text_embeds=ef_embedding(ef),
                            cond_images=anatomy, unet_number=1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    anatomy, ef, clip = _toy_beat(8, torch.Generator().manual_seed(1))
    video = sample(model, anatomy, ef, cond_scale=1.0, steps=8, churn=0.0, seed=0)
    return float((video - clip.mean(1, keepdim=True))[..., [0, 1, 6, 7], :].abs().mean())


def test_residual_target_reproduces_the_anatomy_sooner():
    """The root cause of the demo's unrecognisable videos: the anatomy frame is a frame of the clip, and a U-Net that
    generates the clip itself must first learn to copy it (not done after 450-800 CPU steps on the phantom). With
    ``residual_gain`` it generates only the change from the anatomy frame. On a toy beat, after 150 steps, the error
    around the beating centre (measured: 0.053 with the residual, 0.094 without; seed 1: 0.056 vs 0.089)."""
    with_residual, without = _toy_error_around_the_beat(True), _toy_error_around_the_beat(False)
    assert with_residual < 0.07 and with_residual < 0.7 * without, (with_residual, without)


def _toy_phased_beat(n: int, generator: torch.Generator, random_phase: bool,
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Anatomy frames of random texture and 8-frame clips of them whose centre darkens by EF/100 x 0.5 twice (two
    beats of 4 frames), starting at the anatomy's phase or, with ``random_phase``, a random one of the 4."""
    anatomy = torch.rand(n, 1, 8, 8, generator=generator).expand(-1, 3, -1, -1)
    ef = torch.rand(n, generator=generator) * 80 + 10
    beat = (ef / 100)[:, None] * torch.tensor([0.0, 0.5, 1.0, 0.5] * 2)
    if random_phase:
        shifts = torch.randint(4, (n,), generator=generator)
        beat = torch.stack([b.roll(int(s)) for b, s in zip(beat, shifts, strict=True)])
    clip = anatomy[:, :, None].expand(-1, -1, 8, -1, -1).clone()
    clip[..., 2:6, 2:6] = (clip[..., 2:6, 2:6] - 0.5 * beat[:, None, :, None, None]).clamp(0, 1)
    return anatomy, ef, clip


def _train_toy_residual_stage(batch: Callable[[torch.Generator], tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
                              ) -> CascadeModel:
    """A tiny residual, ``ef_fourier`` stage (8 px, 8 frames) trained 150 steps (Adam 3e-3, seed 0) on
    ``batch(generator)`` -> (anatomy frames, EFs, clips), in eval mode."""
    torch.manual_seed(0)
    config = tiny_config(ef_kind="ef_fourier")
    config["imagen"].update(image_sizes=[8], dynamic_thresholding=False, sigma_data=0.15)
    config.update(frames=8, channels=1, residual_gain=2.0)
    config["unets"]["unet1"]["attn_pool_text"] = False
    model = CascadeModel(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(150):
        anatomy, ef, clip = batch(generator)
        loss = model.imagen(training_target(clip, anatomy, config), text_embeds=ef_embedding(ef, "ef_fourier"),
                            cond_images=anatomy, unet_number=1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def _toy_contraction_slope(random_phase: bool) -> float:
    """Train :func:`_train_toy_residual_stage` on :func:`_toy_phased_beat` and return the slope of its samples'
    contraction (range of the centre's darkening) on the true one, over 16 new anatomies and EFs."""
    model = _train_toy_residual_stage(lambda generator: _toy_phased_beat(16, generator, random_phase))
    anatomy, ef, _ = _toy_phased_beat(16, torch.Generator().manual_seed(99), False)
    video = sample(model, anatomy, ef, cond_scale=1.0, steps=8, churn=0.0, seed=0)
    darkening = anatomy[:, 0, 2:6, 2:6].mean((1, 2))[:, None] - video[:, 0, :, 2:6, 2:6].mean((2, 3))
    made, asked = darkening.amax(1) - darkening.amin(1), 0.5 * ef / 100
    return float(((made - made.mean()) * (asked - asked.mean())).sum() / (asked - asked.mean()).pow(2).sum())


def test_clips_that_start_at_the_anatomy_phase_teach_a_stronger_contraction():
    """Guards the demo's ``clip_start: ed`` (docs/generator-experiments.md, E26-E27): when a clip starts at a random
    phase of the beat, the anatomy frame no longer says where in the beat each frame lies, and a briefly trained
    U-Net averages over phases: its contraction follows EF with a flatter slope. On a toy beat, 150 steps (measured:
    slope 0.78 from the anatomy's phase vs 0.59 from a random one; seed 1: 0.70 vs 0.52)."""
    at_phase, random_phase = _toy_contraction_slope(False), _toy_contraction_slope(True)
    assert at_phase > 0.6 and at_phase > random_phase + 0.1, (at_phase, random_phase)


def _toy_timed_beat(n: int, generator: torch.Generator,
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Anatomy frames of random texture and 8-frame clips (8 fps) of them whose centre darkens by up to EF/100 x 0.5
    once, deepest at a random frame 2-5 (the toy's end-systole; a heart rate the anatomy does not show), and that
    frame's time from frame 0 in seconds."""
    anatomy = torch.rand(n, 1, 8, 8, generator=generator).expand(-1, 3, -1, -1)
    ef = torch.rand(n, generator=generator) * 80 + 10
    deepest = torch.randint(2, 6, (n,), generator=generator)
    shape = (1 - (torch.arange(8)[None] - deepest[:, None]).abs() / 2).clamp(min=0)
    beat = (ef / 100)[:, None] * shape
    clip = anatomy[:, :, None].expand(-1, -1, 8, -1, -1).clone()
    clip[..., 2:6, 2:6] = (clip[..., 2:6, 2:6] - 0.5 * beat[:, None, :, None, None]).clamp(0, 1)
    return anatomy, ef, clip, deepest / 8.0


def _toy_timed_contraction_slope(given: bool) -> float:
    """Train a tiny residual cascade 150 steps on :func:`_toy_timed_beat`, conditioned on EF and, when ``given``, on
    the time of the deepest frame (``condition_on_systole``); return the slope of its samples' contraction (range of
    the centre's darkening) on the true one, over 16 new anatomies, EFs and times."""
    from echodiff.diffusion.imagen import condition_embedding, training_target

    torch.manual_seed(0)
    config = tiny_config(ef_kind="ef_fourier")
    config["imagen"].update(image_sizes=[8], dynamic_thresholding=False, sigma_data=0.15)
    config.update(frames=8, channels=1, residual_gain=2.0, condition_on_systole=given)
    config["unets"]["unet1"]["attn_pool_text"] = False
    model = CascadeModel(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(150):
        anatomy, ef, clip, systole = _toy_timed_beat(16, generator)
        loss = model.imagen(training_target(clip, anatomy, config), cond_images=anatomy, unet_number=1,
                            text_embeds=condition_embedding(config, ef, systole if given else None))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    anatomy, ef, _, systole = _toy_timed_beat(16, torch.Generator().manual_seed(99))
    video = sample(model, anatomy, ef, cond_scale=1.0, steps=8, churn=0.0, seed=0, systole=systole if given else None)
    darkening = anatomy[:, 0, 2:6, 2:6].mean((1, 2))[:, None] - video[:, 0, :, 2:6, 2:6].mean((2, 3))
    made, asked = darkening.amax(1) - darkening.amin(1), 0.5 * ef / 100
    return float(((made - made.mean()) * (asked - asked.mean())).sum() / (asked - asked.mean()).pow(2).sum())


def test_a_given_systole_time_teaches_a_stronger_contraction():
    """Guards ``condition_on_systole`` (docs/generator-experiments.md, E49): clips start at end-diastole, but when
    end-systole comes depends on the heart rate, which the anatomy frame does not show; a briefly trained U-Net then
    averages over those times and its contraction follows EF with a flatter slope. Given the ED -> ES time, it does
    not have to. On a toy beat, 150 steps."""
    given, hidden = _toy_timed_contraction_slope(True), _toy_timed_contraction_slope(False)
    assert given > 0.6 and given > hidden + 0.1, (given, hidden)


def _toy_drift(n: int, generator: torch.Generator, frames: int = 8,
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Anatomy frames of random texture (8 px) and clips of ``frames`` frames in which that texture drifts one pixel
    per frame -- detail that moves coherently across the clip -- drawn as a random window of an 8-frame clip whose
    first frame is the anatomy (so a short window is as well posed as the whole clip); EF drawn but unused."""
    base = torch.rand(n, 1, 8, 16, generator=generator)
    start = int(torch.randint(0, 8 - frames + 1, (1,), generator=generator))
    clip = torch.stack([base[..., t:t + 8] for t in range(start, start + frames)], 2).expand(-1, 3, -1, -1, -1)
    return clip[:, :, 0], torch.rand(n, generator=generator) * 80 + 10, clip


def _toy_far_frame_error(window_frames: int) -> float:
    """Train :func:`_train_toy_residual_stage` on :func:`_toy_drift` windows of ``window_frames`` frames (128 frames
    per step, as E78 compares), sample whole 8-frame clips of 16 new anatomies; return the mean error of frames 4-7,
    which lie further from the anatomy than a short window ever reaches."""
    model = _train_toy_residual_stage(lambda generator: _toy_drift(128 // window_frames, generator, window_frames))
    anatomy, ef, clip = _toy_drift(16, torch.Generator().manual_seed(99))
    video = sample(model, anatomy, ef, cond_scale=1.0, steps=8, churn=0.0, seed=0)
    return float((video[:, 0, 4:] - clip[:, 0, 4:]).abs().mean())


def test_a_stage_that_learns_from_whole_clips_moves_detail_further_than_one_that_learns_from_windows():
    """Guards the demo's whole-clip stage 2 (`window_frames: [null, null]`; docs/generator-experiments.md, E77-E78):
    a stage trained on short windows never relates frames further apart than the window, and sampling the whole
    clip asks it to. The demo's stage 2 on 4-frame windows made fine detail that boiled instead of moving with the
    heart. On a toy of drifting texture, 150 steps at equal frames per step: frames 4-7 (measured: error 0.263 from
    whole clips vs 0.363 from 2-frame windows; seed 1: 0.263 vs 0.328; 4-frame windows 0.299 / 0.287)."""
    whole, windows = _toy_far_frame_error(8), _toy_far_frame_error(2)
    assert whole < 0.29 and whole < windows - 0.04, (whole, windows)
    demo = yaml.safe_load((repo_root() / "params" / "diffusion_demo.yaml").read_text())
    assert demo["window_frames"] == [None, None], "the demo's stages learn from whole clips (E78)"


def test_condition_on_systole_is_required_when_trained_and_refused_otherwise():
    from echodiff.diffusion.imagen import condition_dim, condition_embedding, systole_features

    config = cascade_config(dict(tiny_config(ef_kind="ef_fourier"), condition_on_systole=True))
    tokens = condition_embedding(config, [30.0, 60.0], [0.25, 0.4])
    assert tokens.shape == (2, 1, condition_dim(config)) == (2, 1, 18 + 9)
    assert torch.equal(tokens[:, 0, :18], ef_embedding([30.0, 60.0], "ef_fourier")[:, 0])
    assert torch.equal(condition_embedding(config, [30.0, 60.0], 0.25)[1, 0, 18:], systole_features([0.25])[0])
    assert (systole_features([0.30]) - systole_features([0.32])).norm() > 0.1  # 20 ms apart: told apart
    with pytest.raises(ValueError, match="pass systole"):
        condition_embedding(config, [30.0])
    with pytest.raises(ValueError, match="seconds"):
        condition_embedding(config, [30.0], [12.0])  # a frame index, not seconds
    with pytest.raises(ValueError, match="one per EF"):
        condition_embedding(config, [30.0, 60.0, 70.0], [0.3, 0.4])
    plain = cascade_config(tiny_config(ef_kind="ef_fourier"))
    with pytest.raises(ValueError, match="not conditioned"):
        condition_embedding(plain, [30.0], [0.3])
    with pytest.raises(ValueError, match="true or false"):
        cascade_config(dict(tiny_config(), condition_on_systole="yes"))
    model = CascadeModel(config).eval()
    with pytest.raises(ValueError, match="pass systole"):
        sample(model, torch.rand(1, 3, 16, 16), 50.0, steps=2)
    assert sample(model, torch.rand(1, 3, 16, 16), 50.0, steps=2, systole=0.3).shape == (1, 3, 4, 16, 16)


def test_frame_resize_take_keeps_the_systolic_frame_that_area_averages_away():
    """``frame_resize: take`` (docs/generator-experiments.md, E39, E90): imagen-pytorch resizes a video's three axes
    with one ``resize_mode``, so with ``area`` a stage at half the frame rate learns frame pairs' means and a one-frame
    end-systole loses half its depth; taking frames keeps frame 0 (the traced ED frame) and every other frame whole,
    space still by ``resize_mode``. The cascade trains and samples with it; another value is refused."""
    config = tiny_config(stages=2)
    config["frames"] = 8
    config["imagen"].update(temporal_downsample_factor=[2, 1], resize_mode="area")
    beat = torch.ones(8)
    beat[2] = 0.2  # a bright cavity wall that narrows for one frame (end-systole), on an even frame
    video = beat.view(1, 1, 8, 1, 1).expand(1, 3, 8, 16, 16).contiguous()
    averaged = build_imagen(cascade_config(config), seed=0).resize_to(video, 8, target_frames=4)
    taken = build_imagen(cascade_config(dict(config, frame_resize="take")), seed=0).resize_to(video, 8, target_frames=4)
    assert averaged.shape == taken.shape == (1, 3, 4, 8, 8)
    torch.testing.assert_close(averaged[0, 0, :, 0, 0], torch.tensor([1.0, 0.6, 1.0, 1.0]))
    torch.testing.assert_close(taken[0, 0, :, 0, 0], torch.tensor([1.0, 0.2, 1.0, 1.0]))
    model = CascadeModel(cascade_config(dict(config, frame_resize="take")), seed=0)
    loss = model.imagen(video, text_embeds=ef_embedding([50.0]), cond_images=video[:, :, 0], unet_number=1)
    assert torch.isfinite(loss)
    assert sample(model.eval(), video[:, :, 0], 50.0, steps=2).shape == (1, 3, 8, 16, 16)
    with pytest.raises(ValueError, match="frame_resize must be one of"):
        cascade_config(dict(config, frame_resize="nearest"))
