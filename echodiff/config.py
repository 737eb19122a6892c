"""The one parameter loader: YAML files of notebook parameters, plain ``key=value`` overrides, repo paths."""

from __future__ import annotations

import argparse
import ast
import copy
import dataclasses
import difflib
import json
import os
import types
import typing
from pathlib import Path
from typing import Any

import yaml


def repo_root() -> Path:
    """The echodiff checkout: ``$ECHODIFF_HOME`` if set, else the folder above the package (editable install),
    else the current directory."""
    if "ECHODIFF_HOME" in os.environ:
        return Path(os.environ["ECHODIFF_HOME"]).resolve()
    candidate = Path(__file__).resolve().parents[1]
    if (candidate / "pyproject.toml").is_file():
        return candidate
    return Path.cwd().resolve()


def resolve_path(path: str | os.PathLike) -> Path:
    """``path`` if absolute, else relative to :func:`repo_root` (so notebooks run from any folder agree).

    A relative ``outputs/...`` path goes under ``$ECHODIFF_OUTPUTS`` instead when that is set: the test session
    points it at a fresh folder, so notebooks run with their default output folders never resume another run's
    checkpoints."""
    path = Path(path).expanduser()
    if path.is_absolute():
        return path
    if path.parts[:1] == ("outputs",) and os.environ.get("ECHODIFF_OUTPUTS"):
        return Path(os.environ["ECHODIFF_OUTPUTS"]).expanduser().joinpath(*path.parts[1:])
    return repo_root() / path


def load_params(path: str | os.PathLike | None = None, overrides: list[str] | dict | None = None) -> dict[str, Any]:
    """Parameters from a YAML mapping file, updated by overrides (``["key=value", ...]`` parsed as YAML, or a dict)."""
    params: dict[str, Any] = {}
    if path is not None:
        file = resolve_path(path)
        if not file.is_file():
            raise FileNotFoundError(f"{file}: parameter file not found (paths are relative to {repo_root()})")
        loaded = yaml.safe_load(file.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{file}: a parameter file must be a YAML mapping of name: value")
        params.update(loaded)
    if isinstance(overrides, dict):
        params.update(overrides)
    else:
        params.update(parse_assignments(overrides or [], "override", "key=value"))
    return params


def parse_assignments(items: list[str], what: str, form: str) -> dict[str, Any]:
    """``["key=value", ...]`` -> ``{key: value}`` with YAML values; an item without ``=`` or a key is an error naming
    it as ``what`` and the ``form`` it must take."""
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{what} {item!r} must look like {form}")
        pairs[key.strip()] = yaml.safe_load(value)
    return pairs


def with_edits(config: dict[str, Any], edits: dict[str, Any] | list[str]) -> dict[str, Any]:
    """A copy of the nested ``config`` with dotted-path ``edits`` applied: ``{"imagen.sigma_data": 0.1}``, or
    ``["imagen.sigma_data=0.1"]`` with YAML values. A path through a key the config lacks is an error (a typo would
    otherwise add a key that no code reads); the last key may be new."""
    if isinstance(edits, list):
        edits = parse_assignments(edits, "edit", "key=value or section.key=value")
    config = copy.deepcopy(config)
    for key, value in edits.items():
        *path, last = key.split(".")
        node = config
        for part in path:
            if not isinstance(node, dict) or part not in node:
                raise KeyError(f"{key}: no {part!r} in the config")
            node = node[part]
        node[last] = value
    return config


#: where each stage's parameters are declared: the tagged ``parameters`` cell of its notebook
STAGE_NOTEBOOKS = {
    "data": "notebooks/00_data.ipynb",
    "ef_regression": "notebooks/01_ef_regression.ipynb",
    "diffusion": "notebooks/02_diffusion.ipynb",
    "evaluate": "notebooks/03_evaluate.ipynb",
    "rebalance": "notebooks/04_rebalance.ipynb",
    "report": "notebooks/05_report.ipynb",
    "explore": "notebooks/06_explore.ipynb",  # not a pipeline stage: the interactive explorer
}
#: keys a stage's command line reads beyond its notebook's parameters
CLI_KEYS = {
    "data": ("run_name",),
    "ef_regression": ("run_name",),
    "diffusion": ("run_name",),
    "evaluate": ("chunk",),  # one Slurm array task's chunk; the notebook runs every chunk
}
#: (low, high) bounds, inclusive, of values that are meaningless outside them; a list is checked item by item
RANGES: dict[str, tuple[float | None, float | None]] = {
    **dict.fromkeys(("epochs", "steps", "batch_size", "max_batch_size", "batch_videos", "batch_targets",
                     "num_noise", "chunks", "phantom_videos", "frames", "image_size", "width", "eval_batch_size",
                     "checkpoint_every", "val_every", "val_batches", "grad_accum", "max_videos", "max_targets",
                     "per_bin", "sample_steps", "lr_step_period", "stage", "period", "eval_per_bin",
                     "window_frames"), (1, None)),
    **dict.fromkeys(("lr", "fps", "bin_width", "variant_bin_width", "eval_bin_width", "report_bin_width",
                     "gif_fps"), (1e-12, None)),
    **dict.fromkeys(("ignore_time", "ema_beta", "momentum"), (0.0, 1.0)),
    **dict.fromkeys(("weight_decay", "churn", "sample_churn", "cond_scale", "seed", "variant_extra_seeds",
                     "phantom_seed", "pad", "num_workers", "ema_update_after_step", "ema_update_every", "chunk",
                     "n_gifs", "n_samples", "bootstrap", "keep_checkpoints"), (0, None)),
    **dict.fromkeys(("sample_efs", "ef_range", "phantom_ef_range"), (0.0, 100.0)),
}


def notebook_parameters(notebook: str | os.PathLike) -> dict[str, Any]:
    """Names and default values of a notebook's tagged ``parameters`` cell (``None`` where not a literal)."""

    path = resolve_path(notebook)
    cells = json.loads(path.read_text())["cells"]
    tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(tagged) != 1:
        raise ValueError(f"{path}: needs exactly one cell tagged `parameters`, found {len(tagged)}")
    names: dict[str, Any] = {}
    for node in ast.parse("".join(tagged[0]["source"])).body:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    try:
                        names[target.id] = ast.literal_eval(node.value)
                    except ValueError:
                        names[target.id] = None
    return names


def notebook_params(namespace: dict[str, Any], stage: str) -> dict[str, Any]:
    """A notebook's parameters as a dict: the values in ``namespace`` (the notebook's ``globals()``, after its
    parameters cell and papermill's injected one), checked by :func:`check_params`: a name papermill injected
    that the parameters cell does not declare (a typo) is an error. Call it before defining other values -- the
    one way every notebook reads its parameters."""
    declared = notebook_parameters(STAGE_NOTEBOOKS[stage])
    own = _assigned_names(STAGE_NOTEBOOKS[stage])  # the notebook's own variables (an interactive re-run has them)
    injected = {k: v for k, v in namespace.items() if not k.startswith("_") and k not in own and k not in ("In", "Out")
                and isinstance(v, (str, int, float, bool, list, dict, type(None)))}
    check_params(injected, set(declared), f"notebook {STAGE_NOTEBOOKS[stage]} parameters")
    params = {k: namespace[k] for k in declared if k in namespace and k != "mlflow_run_id"}  # not the run's own id
    return check_params(params, None, f"notebook {STAGE_NOTEBOOKS[stage]} parameters")


def _assigned_names(notebook: str | os.PathLike) -> set[str]:
    """Every name a notebook's code cells assign, import or loop over (IPython magics skipped)."""
    names: set[str] = set()
    for cell in json.loads(resolve_path(notebook).read_text())["cells"]:
        if cell["cell_type"] != "code":
            continue
        source = "".join(line for line in cell["source"] if not line.lstrip().startswith(("%", "!")))
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def stage_keys(stage: str) -> set[str]:
    """Every parameter a stage reads: its notebook's parameters and its command line's own keys."""
    if stage not in STAGE_NOTEBOOKS:
        raise ValueError(f"unknown stage {stage!r}; stages: {list(STAGE_NOTEBOOKS)}")
    return set(notebook_parameters(STAGE_NOTEBOOKS[stage])) | set(CLI_KEYS.get(stage, ()))


def check_params(params: dict[str, Any], allowed: set[str] | None, source: str) -> dict[str, Any]:
    """Refuse unknown keys (naming the nearest valid ones) and values outside :data:`RANGES`; return ``params``."""

    if allowed is not None:
        unknown = sorted(set(params) - allowed)
        if unknown:
            hints = "; ".join(f"{k!r}: did you mean {difflib.get_close_matches(k, sorted(allowed), 3, 0.6)}?"
                              if difflib.get_close_matches(k, sorted(allowed), 1, 0.6) else f"{k!r}: no similar key"
                              for k in unknown)
            raise ValueError(f"{source}: unknown parameter(s) {unknown} ({hints}). Valid: {sorted(allowed)}")
    for key, value in params.items():
        if key not in RANGES or value is None:
            continue
        low, high = RANGES[key]
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if item is None:  # a per-stage list may leave a stage at its default
                continue
            if isinstance(item, bool) or not isinstance(item, (int, float)):
                raise ValueError(f"{source}: {key}={value!r} must be a number (or a list of numbers)")
            if (low is not None and item < low) or (high is not None and item > high):
                bounds = f">= {low}" if high is None else f"within [{low}, {high}]"
                raise ValueError(f"{source}: {key}={value!r} is out of range: must be {bounds}")
    return params


def stage_params(stage: str, path: str | os.PathLike | None = None,
                 overrides: list[str] | dict | None = None) -> dict[str, Any]:
    """A stage's parameters from a file and ``key=value`` overrides, checked by :func:`check_params` against
    :func:`stage_keys` -- the one way every command line and the pipeline read stage parameters."""
    params = load_params(path, overrides)
    source = str(resolve_path(path)) if path is not None else "parameters"
    if overrides:
        source += " + overrides"
    return check_params(params, stage_keys(stage), f"{source} (stage {stage!r})")


def settings(cls: type, params: dict[str, Any], source: str = "parameters") -> Any:
    """Build the dataclass ``cls`` from the keys of ``params`` it declares, checking each value against the
    field's type (``int``, ``float``, ``str``, ``bool``, ``None`` and lists of them); other keys are the
    caller's (they are checked by :func:`check_params`)."""

    hints = typing.get_type_hints(cls)
    values = {}
    for field in dataclasses.fields(cls):
        if field.name in params:
            value = params[field.name]
            if not _fits(value, hints[field.name]):
                raise ValueError(f"{source}: {field.name}={value!r} has the wrong type; expected {hints[field.name]}")
            values[field.name] = value
    check_params(values, None, source)
    return cls(**values)


def _fits(value: Any, hint: Any) -> bool:

    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin in (list, tuple):
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return isinstance(value, (list, tuple)) and all(any(_fits(v, a) for a in args) or not args for v in value)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def stage_cli(stage: str, prog: str, description: str, argv: list[str] | None = None,
              commands: tuple[str, ...] = ()) -> tuple[Any, dict[str, Any]]:
    """Parse a stage command line ``[COMMAND] -f FILE [KEY=VALUE ...] [--dry-run]`` (options and ``KEY=VALUE``
    in any order) and return ``(args, params)``, the latter checked by :func:`stage_params`."""

    parser = argparse.ArgumentParser(prog=prog, description=description)
    if commands:
        parser.add_argument("command", choices=commands)
    parser.add_argument("-f", "--file", required=True, help="params YAML")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the effective settings as YAML and exit, touching no data or weights")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_intermixed_args(argv)
    return args, stage_params(stage, args.file, args.overrides)


def print_settings(settings_by_name: dict[str, Any]) -> None:
    """Print effective settings (dataclasses or mappings) as one YAML document (``--dry-run``)."""

    plain = {name: dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
             for name, value in settings_by_name.items()}
    print(yaml.safe_dump(_yaml_safe(plain), sort_keys=False, default_flow_style=None, width=120), end="")


def _yaml_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _yaml_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_yaml_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def changed_settings(saved: dict[str, Any] | None, current: dict[str, Any], ignore: tuple[str, ...] = ()) -> list[str]:
    """``"name: saved -> current"`` for every setting that differs (``saved`` None: a checkpoint from before
    settings were recorded, nothing to compare)."""
    if saved is None:
        return []
    return [f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in sorted(set(saved) | set(current))
            if k not in ignore and saved.get(k) != current.get(k)]
