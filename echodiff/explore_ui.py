"""The widgets of ``notebooks/06_explore.ipynb`` (ipywidgets) over :mod:`echodiff.explore`.

``ExplorerApp(explorer).widget`` is the whole page: an anatomy frame (a dataset video or an upload), an EF slider,
sampler settings, **Generate** (candidates at one EF, each playing with its regressed EF, the real clip beside
them, and the beat curve), **Sweep** (the same anatomy at several EFs, with regressed vs target EF), and **Save**
(AVI + GIF + CSV, optionally to an MLflow run). Errors show in the page, never as a traceback.
Every widget a test drives carries a CSS class ``echodiff-<name>``.
"""

from __future__ import annotations

import html
import io
import os
import traceback
from collections.abc import Callable

import ipywidgets as w
import matplotlib.pyplot as plt
import numpy as np
import torch

from echodiff.data.transforms import resize
from echodiff.data.video import to_uint8, web_video
from echodiff.diffusion import SOLVERS
from echodiff.explore import Anatomy, Explorer, Generation, UploadError, save_generations, upload_anatomy
from echodiff.plots import beat_figure, sweep_figure

SHOW_SIZE = 128  # px of the videos shown in the page


def _png(figure: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def _video_widget(video: torch.Tensor, fps: float) -> w.Video:
    """A looping ``<video>`` of ``(3, T, H, W)`` in [0, 1], upscaled to :data:`SHOW_SIZE` px."""
    big = torch.nn.functional.interpolate(video[None].float(), size=(video.shape[1], SHOW_SIZE, SHOW_SIZE),
                                          mode="nearest")[0]
    return w.Video(value=web_video(to_uint8(big), fps), format="webm", autoplay=True, loop=True,
                   controls=False, width=SHOW_SIZE, height=SHOW_SIZE)


def _tile(video: w.Widget, caption: str, css: str) -> w.VBox:
    label = w.HTML(f"<div style='text-align:center'>{caption}</div>")
    label.add_class(css)
    return w.VBox([video, label], layout=w.Layout(align_items="center", margin="0 6px"))


class ExplorerApp:
    """The explorer page for one :class:`~echodiff.explore.Explorer`; ``out_dir`` is where Save writes."""

    def __init__(self, explorer: Explorer, out_dir: str | os.PathLike = "outputs/explore",
                 experiment: str = "echodiff", steps: int = 8, churn: float = 0.0, cond_scale: float = 5.0,
                 later_cond_scale: float = 1.0, candidates: int = 2, ef: float = 60.0, solver: str = "heun"):
        self.explorer, self.out_dir, self.experiment = explorer, out_dir, experiment
        self.anatomy: Anatomy | None = None
        self.shown: list[Generation] = []
        choices = explorer.choices()
        self.dataset = w.Dropdown(options=choices, description="Anatomy", layout=w.Layout(width="420px"))
        self.upload = w.FileUpload(accept=",".join(".avi .png .jpg .jpeg".split()), multiple=False,
                                   description="Upload AVI/PNG")
        self.ef = w.FloatSlider(value=ef, min=10, max=90, step=1, description="EF (%)", continuous_update=False)
        self.solver = w.Dropdown(options=list(SOLVERS), value=solver, description="solver")
        self.steps = w.BoundedIntText(value=steps, min=2, max=256, description="steps")
        self.churn = w.BoundedFloatText(value=churn, min=0, max=200, description="churn")
        self.cond_scale = w.BoundedFloatText(value=cond_scale, min=1, max=20, description="guidance")
        self.later_cond_scale = w.BoundedFloatText(value=later_cond_scale, min=1, max=20,
                                                   description="guidance, stages 2+",
                                                   style={"description_width": "initial"},
                                                   disabled=explorer.num_stages == 1)
        self.seed = w.IntText(value=0, description="seed")
        self.candidates = w.BoundedIntText(value=candidates, min=1, max=16, description="candidates")
        self.sweep_efs = w.Text(value="20, 40, 60, 80", description="sweep EFs", layout=w.Layout(width="240px"))
        self.generate_button = w.Button(description="Generate", button_style="primary", icon="play",
                                        layout=w.Layout(min_width="120px"))
        self.sweep_button = w.Button(description="Sweep", icon="sliders", layout=w.Layout(min_width="100px"))
        self.save_button = w.Button(description="Save", icon="save", layout=w.Layout(min_width="90px"))
        self.log_mlflow = w.Checkbox(value=False, description="log to MLflow", indent=False)
        self.progress = w.IntProgress(value=0, min=0, max=1, description="", layout=w.Layout(width="300px"))
        self.status = w.HTML()
        self.anatomy_view = w.Image(format="png", width=SHOW_SIZE, height=SHOW_SIZE)
        self.results = w.VBox()
        for name in ("dataset", "upload", "ef", "solver", "steps", "churn", "cond_scale", "seed", "candidates",
                     "sweep_efs", "generate_button", "sweep_button", "save_button", "progress", "status", "results"):
            getattr(self, name).add_class(f"echodiff-{name.replace('_', '-')}")
        self.dataset.observe(lambda change: self._guard(self._pick_dataset), names="value")
        self.upload.observe(lambda change: self._guard(self._pick_upload), names="value")
        self.generate_button.on_click(lambda _: self._guard(self.on_generate))
        self.sweep_button.on_click(lambda _: self._guard(self.on_sweep))
        self.save_button.on_click(lambda _: self._guard(self.on_save))
        if choices:
            self._guard(self._pick_dataset)
        settings = w.VBox([self.solver, w.HBox([self.steps, self.churn]),
                           w.HBox([self.cond_scale, self.later_cond_scale]), w.HBox([self.seed, self.candidates])])
        self.widget = w.VBox([
            w.HBox([w.VBox([self.dataset, self.upload, self.ef, settings]), self.anatomy_view]),
            w.HBox([self.generate_button, self.sweep_efs, self.sweep_button, self.save_button, self.log_mlflow]),
            w.HBox([self.progress, self.status]), self.results])
        self.widget.add_class("echodiff-app")

    # -- messages ----------------------------------------------------------------------------------------------
    def _say(self, text: str, error: bool = False) -> None:
        colour = "#b00020" if error else "#333"
        self.status.value = f"<span style='color:{colour}'>{html.escape(text)}</span>"

    def _guard(self, action: Callable[[], None]) -> None:
        """Run ``action``; show what went wrong in the page (the traceback goes to the kernel log)."""
        try:
            action()
        except (UploadError, ValueError, KeyError, LookupError, OSError) as exc:
            self._say(str(exc), error=True)
        except Exception as exc:  # a bug: still no traceback in the page, but say where to look
            traceback.print_exc()
            self._say(f"{type(exc).__name__}: {exc} (traceback in the kernel log)", error=True)
        finally:
            for button in (self.generate_button, self.sweep_button, self.save_button):
                button.disabled = False

    # -- anatomy -----------------------------------------------------------------------------------------------
    def _show_anatomy(self, anatomy: Anatomy) -> None:
        self.anatomy = anatomy
        frame = torch.nn.functional.interpolate(anatomy.frame[None], size=SHOW_SIZE, mode="nearest")[0]
        figure = plt.figure(figsize=(1.6, 1.6))
        plt.imshow(frame.permute(1, 2, 0).numpy())
        plt.axis("off")
        self.anatomy_view.value = _png(figure)
        true_ef = f", true EF {anatomy.ef:.1f} %" if anatomy.ef is not None else ""
        self._say(f"anatomy: {anatomy.name}{true_ef}")

    def _pick_dataset(self) -> None:
        if self.dataset.value:
            self._show_anatomy(self.explorer.dataset_anatomy(self.dataset.value, seed=int(self.seed.value)))

    def _pick_upload(self) -> None:
        if self.upload.value:
            item = self.upload.value[0]
            self._show_anatomy(upload_anatomy(item["name"], bytes(item["content"])))

    # -- generation --------------------------------------------------------------------------------------------
    def sampler(self) -> dict:
        """The sampler settings as :meth:`Explorer.generate` takes them."""
        scales = [float(self.cond_scale.value)] + [float(self.later_cond_scale.value)] * (self.explorer.num_stages - 1)
        heun = self.solver.value == "heun"  # DPM-Solver++(2M) is deterministic: it takes no churn
        return {"solver": self.solver.value, "steps": int(self.steps.value),
                "churn": float(self.churn.value) if heun else None, "cond_scale": scales, "seed": int(self.seed.value)}

    def _progress(self, done: int, total: int) -> None:
        self.progress.max, self.progress.value = total, done

    def _start(self, what: str, total: int) -> Anatomy:
        if self.anatomy is None:
            raise ValueError("choose an anatomy frame first (a dataset video or an uploaded AVI/PNG)")
        for button in (self.generate_button, self.sweep_button, self.save_button):
            button.disabled = True
        self.progress.max, self.progress.value = total, 0
        self._say(f"{what}: {total} video(s) ...")
        return self.anatomy

    def _real_tile(self, anatomy: Anatomy) -> list[w.Widget]:
        if anatomy.clip is None:
            return []
        clip = resize(anatomy.clip[None], self.explorer.cascade.image_size)[0]  # as the cascade's videos
        return [_tile(_video_widget(clip, self.explorer.fps), f"real clip<br>EF {anatomy.ef:.1f} %", "echodiff-real")]

    def on_generate(self) -> None:
        """Generate ``candidates`` videos at the slider's EF and show them."""
        candidates = int(self.candidates.value)
        anatomy = self._start("generating", candidates)
        g = self.explorer.generate(anatomy, float(self.ef.value), candidates=candidates, progress=self._progress,
                                   **self.sampler())
        tiles = [_tile(_video_widget(v, self.explorer.fps),
                       f"target {g.target_ef:.0f} %<br><b>regressed EF {ef:.1f} %</b>", "echodiff-regressed-ef")
                 for v, ef in zip(g.videos, g.regressed_ef, strict=True)]
        labels = [f"candidate {k} ({ef:.0f} %)" for k, ef in enumerate(g.regressed_ef)]
        figure = beat_figure(g.curves, g.real_curve, g.curve_name, self.explorer.fps, labels)
        curve = w.Image(value=_png(figure), format="png", width=460)
        self.results.children = [w.HBox(self._real_tile(anatomy) + tiles), curve]
        self.shown = [g]
        self._say(f"{candidates} video(s) in {g.seconds:.1f} s ({g.seconds / candidates:.1f} s each)")

    def on_sweep(self) -> None:
        """The same anatomy and seeds at every EF of ``sweep_efs``, one row per EF, and regressed vs target EF."""
        try:
            efs = [float(x) for x in self.sweep_efs.value.replace(";", ",").split(",") if x.strip()]
        except ValueError as exc:
            raise ValueError(f"sweep EFs must be numbers separated by commas, e.g. 20, 40, 60, 80 ({exc})") from exc
        candidates = int(self.candidates.value)
        anatomy = self._start("sweeping", len(efs) * candidates)
        sweep = self.explorer.sweep(anatomy, efs, candidates=candidates, progress=self._progress, **self.sampler())
        columns = []
        for g in sweep:
            columns.append(w.VBox([_tile(_video_widget(v, self.explorer.fps),
                                         f"target {g.target_ef:.0f} %<br><b>regressed EF {ef:.1f} %</b>",
                                         "echodiff-regressed-ef")
                                   for v, ef in zip(g.videos, g.regressed_ef, strict=True)]))
        targets = np.concatenate([np.full(len(g.regressed_ef), g.target_ef) for g in sweep])
        figure = sweep_figure(targets, np.concatenate([g.regressed_ef for g in sweep]), anatomy.ef)
        plot = w.Image(value=_png(figure), format="png", width=300)
        self.results.children = [w.HBox(self._real_tile(anatomy) + columns), plot]
        self.shown = sweep
        seconds = sum(g.seconds for g in sweep)
        self._say(f"sweep of {len(efs)} EFs x {candidates}: {seconds:.1f} s")

    def on_save(self) -> None:
        """Save what is shown (AVI + GIF + CSV under ``out_dir``), and log it to MLflow when ticked."""
        if not self.shown:
            raise ValueError("nothing to save yet: press Generate or Sweep first")
        paths = save_generations(self.shown, self.explorer, self.out_dir, log=self.log_mlflow.value,
                                 experiment=self.experiment)
        where = " and logged to MLflow" if self.log_mlflow.value else ""
        self._say(f"saved {len(paths)} files under {paths[-1].parent}{where}")
