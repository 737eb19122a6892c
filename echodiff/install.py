"""Install the pinned package set into a virtual environment with uv, from wherever pip is configured to look.

``make install`` (and so ``make demo`` / ``make test``) runs ``.venv/bin/python echodiff/install.py``: it pip-installs
uv into the venv, then has uv install ``requirements.lock`` and ``echodiff`` itself (editable). uv unpacks and
byte-compiles in parallel: on the project's 2-core box the lock file took 39 s instead of pip's 112 s
(benchmarks/README.md). uv reads no ``pip.conf``, so the package sources pip would use (its environment variables
and config files: index URLs, find-links, constraints, certificate, trusted hosts) are handed to uv as arguments; a
pip setting with no uv translation here (``proxy``) is an error, not something quietly dropped.

This file runs before any dependency is installed: standard library only, and no ``echodiff`` import.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

UV = "uv==0.13.8"
# pip option -> uv option; the multi-valued ones are whitespace-separated lists in pip's config.
_FLAGS = {"index-url": "--index-url", "extra-index-url": "--extra-index-url", "find-links": "--find-links",
          "constraint": "--constraint", "trusted-host": "--allow-insecure-host"}
_SWITCHES = {"no-index": "--no-index"}
_REFUSED = {"proxy": "set HTTPS_PROXY / HTTP_PROXY in the environment instead (uv and pip both read them)"}


def pip_config(python: str = sys.executable) -> dict[str, str]:
    """pip's effective settings for ``pip install`` as ``{option: value}``, from ``pip config list`` (which merges the
    config files and the ``PIP_*`` environment variables)."""
    out = subprocess.run([python, "-m", "pip", "config", "list"], check=True, capture_output=True, text=True).stdout
    by_section: dict[str, dict[str, str]] = {}
    for line in out.splitlines():
        name, sep, value = line.partition("=")
        if not sep or "." not in name:
            continue
        section, _, option = name.rpartition(".")
        by_section.setdefault(section, {})[option] = str(ast.literal_eval(value))
    settings: dict[str, str] = {}
    for section in ("global", "install", ":env:"):  # pip's precedence: env variables over [install] over [global]
        settings.update(by_section.get(section, {}))
    return settings


def uv_arguments(settings: Mapping[str, str]) -> tuple[list[str], dict[str, str]]:
    """The uv ``pip install`` arguments and extra environment variables equivalent to pip's ``settings``."""
    refused = sorted(set(settings) & set(_REFUSED))
    if refused:
        raise SystemExit("echodiff/install.py: pip is configured with " + ", ".join(refused) + ", which uv cannot "
                         "take from pip's config: " + "; ".join(_REFUSED[k] for k in refused) + ".")
    args: list[str] = []
    for option, flag in _FLAGS.items():
        for value in settings.get(option, "").split():
            args += [flag, value]
    for option, flag in _SWITCHES.items():
        if settings.get(option, "").lower() in ("1", "true", "yes", "on"):
            args.append(flag)
    if "extra-index-url" in settings or "find-links" in settings:
        args += ["--index-strategy", "unsafe-best-match"]  # pip's rule: the best match across every source
    env = {"SSL_CERT_FILE": settings["cert"]} if "cert" in settings else {}
    return args, env


def install(requirements: Sequence[str | os.PathLike], project: str | os.PathLike) -> None:
    """Install ``requirements`` files, then ``project`` editable without dependencies, into this Python's venv."""
    python = sys.executable
    if sys.prefix == sys.base_prefix:
        raise SystemExit(f"echodiff/install.py: {python} is not a virtual environment's Python; run it as "
                         ".venv/bin/python echodiff/install.py (make install does).")
    subprocess.run([python, "-m", "pip", "install", "--quiet", UV], check=True)
    args, env = uv_arguments(pip_config(python))
    uv = [str(Path(python).parent / "uv"), "pip", "install", "--quiet", "--no-cache", "--compile-bytecode",
          "--python", python, *args]
    run_env = {**os.environ, **env}
    for requirement in requirements:
        subprocess.run([*uv, "-r", str(requirement)], check=True, env=run_env)
    subprocess.run([*uv, "--no-deps", "-e", str(project)], check=True, env=run_env)


def main(argv: list[str] | None = None) -> int:
    """``python echodiff/install.py [REQUIREMENTS ...]`` (default requirements.lock) from the repository root."""
    root = Path(__file__).resolve().parent.parent
    requirements = (argv if argv is not None else sys.argv[1:]) or [str(root / "requirements.lock")]
    install(requirements, root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
