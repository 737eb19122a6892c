"""The one parameter loader: YAML files of notebook parameters, plain ``key=value`` overrides, repo paths."""

from __future__ import annotations

import os
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
    """``path`` if absolute, else relative to :func:`repo_root` (so notebooks run from any folder agree)."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else repo_root() / path


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
        for item in overrides or []:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise ValueError(f"override {item!r} must look like key=value")
            params[key.strip()] = yaml.safe_load(value)
    return params
