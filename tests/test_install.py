"""echodiff/install.py hands uv the package sources pip is configured with (uv reads no pip.conf)."""

import json
import os
import subprocess
import sys

import pytest

from echodiff import install
from echodiff.config import repo_root


def _pip_env(monkeypatch, tmp_path, text: str) -> None:
    """pip reads ``text`` as its highest-precedence config file, and no PIP_* variable but the ones a test sets."""
    for name in list(os.environ):
        if name.startswith("PIP_"):
            monkeypatch.delenv(name)
    (tmp_path / "pip.conf").write_text(text)
    monkeypatch.setenv("PIP_CONFIG_FILE", str(tmp_path / "pip.conf"))


def test_pip_config_merges_files_and_environment_with_pips_precedence(monkeypatch, tmp_path):
    _pip_env(monkeypatch, tmp_path, "[global]\nextra-index-url = file:///a/simple file:///b/simple\n"
             "find-links = /from/global\n[install]\nfind-links = /from/install\n")
    monkeypatch.setenv("PIP_INDEX_URL", "https://mirror.example/simple")
    settings = install.pip_config()
    assert settings["extra-index-url"].split() == ["file:///a/simple", "file:///b/simple"]
    assert settings["find-links"] == "/from/install"  # [install] over [global]
    assert settings["index-url"] == "https://mirror.example/simple"  # the environment over the files
    args, _ = install.uv_arguments(settings)
    assert args[args.index("--index-url") + 1] == "https://mirror.example/simple"
    assert [args[i + 1] for i, a in enumerate(args) if a == "--extra-index-url"] == ["file:///a/simple",
                                                                                     "file:///b/simple"]
    assert args[args.index("--find-links") + 1] == "/from/install"
    assert args[args.index("--index-strategy") + 1] == "unsafe-best-match"


def test_uv_arguments_translate_every_source_and_refuse_what_they_cannot():
    args, env = install.uv_arguments({"constraint": "/etc/c.txt", "trusted-host": "a.example b.example",
                                      "no-index": "true", "cert": "/etc/ca.crt", "timeout": "60"})
    assert args == ["--constraint", "/etc/c.txt", "--allow-insecure-host", "a.example", "--allow-insecure-host",
                    "b.example", "--no-index"]
    assert env == {"SSL_CERT_FILE": "/etc/ca.crt"}
    assert install.uv_arguments({}) == ([], {})  # plain PyPI: uv's own default
    with pytest.raises(SystemExit, match="proxy.*HTTPS_PROXY"):
        install.uv_arguments({"proxy": "http://proxy.example:3128"})


def test_the_venv_holds_the_lock_file():
    """What `make install` left: every pinned package at its pinned version, and echodiff itself editable."""
    pins = dict(line.split("==") for line in (repo_root() / "requirements.lock").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    listed = subprocess.run([sys.executable, "-m", "pip", "list", "--format", "json"], check=True,
                            capture_output=True, text=True).stdout
    installed = {p["name"].lower().replace("_", "-"): p for p in json.loads(listed)}
    found = {name: installed.get(name.lower().replace("_", "-"), {}).get("version") for name in pins}
    wrong = {name: (version, found[name]) for name, version in pins.items() if found[name] != version}
    assert not wrong, f"installed versions differ from requirements.lock (pinned, installed): {wrong}"
    assert installed["echodiff"].get("editable_project_location") == str(repo_root())
