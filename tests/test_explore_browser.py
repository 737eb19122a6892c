"""notebooks/06_explore.ipynb in a real browser: JupyterLab started headless on a loopback port, Debian's Chromium
driven by Playwright opens the notebook, runs it, moves the EF slider, presses Generate, and finds playing videos
with their regressed EF; a bad upload gets its message in the page. A screenshot of the page is written to
``$ECHODIFF_OUTPUTS/explore/screenshot.png`` (the session's temporary outputs folder)."""

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import papermill
import pytest

from echodiff.config import repo_root, resolve_path

try:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # reported by _missing()
    expect = sync_playwright = PlaywrightTimeout = None

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# as root, and without the background-networking flags Chromium keeps trying to reach Google's hosts
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update", "--disable-dev-shm-usage"]


def _missing() -> str | None:
    if CHROMIUM is None:
        return "no Chromium: `make browser-deps` installs Debian's chromium (root, apt-get)"
    if sync_playwright is None:
        return "playwright is not installed: `make install` (requirements.lock) installs it"
    return None


pytestmark = [pytest.mark.real_component, pytest.mark.skipif(_missing() is not None, reason=str(_missing()))]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab(tmp_path, saved_models, phantom_root):
    """A JupyterLab server on a loopback port whose root holds notebook 06, prepared (not run) by papermill with the
    tiny test models and the session phantom; yields its base URL and token."""
    cascade, regressor = saved_models
    root = tmp_path / "lab"
    root.mkdir()
    papermill.execute_notebook(
        str(repo_root() / "notebooks" / "06_explore.ipynb"), str(root / "explore.ipynb"), prepare_only=True,
        parameters={"cascade": str(cascade), "regressor": str(regressor), "data_root": str(phantom_root),
                    "sample_steps": 2, "candidates": 2, "out_dir": str(tmp_path / "saved")})
    port, token = _free_port(), "echodiff-test"
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"), JUPYTER_CONFIG_DIR=str(tmp_path / "config"),
               JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "workspaces"), MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/m.db")
    news = tmp_path / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True)
    news.write_text('{"fetchNews": "false", "checkForUpdates": false}')  # no pop-up over the page
    env["JUPYTERLAB_SETTINGS_DIR"] = str(tmp_path / "settings")
    log = open(tmp_path / "lab.log", "w")  # closed when the server stops
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--allow-root"],
        env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    tail = (tmp_path / "lab.log").read_text()[-3000:]
                    raise RuntimeError(f"JupyterLab did not start:\n{tail}") from None
                time.sleep(0.5)
        yield base, token
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def test_explore_notebook_generates_in_a_real_browser(lab, tmp_path):
    base, token = lab
    shot = resolve_path("outputs/explore/screenshot.png")
    shot.parent.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        errors = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"{base}/lab/tree/explore.ipynb?token={token}")
        page.locator(".jp-NotebookPanel").first.wait_for(timeout=120_000)
        expect(page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").first).to_be_attached(
            timeout=120_000)  # the kernel is up
        # Run All, until it takes effect (the first cell queued or running, [*], or done, [1]). On a loaded 2-core box
        # JupyterLab can open the notebook without a kernel and ask for one in a dialog that blocks every click, or the
        # menu can act before the kernel is connected and run nothing (each seen beside two training processes):
        # answer the dialog with its default kernel, as a user would, and try again.
        started = page.locator(".jp-InputPrompt", has_text=re.compile(r"\[(\*|1)\]:")).first
        dialog = page.locator(".jp-Dialog")
        for attempt in range(4):
            try:
                if dialog.count():
                    dialog.locator("button.jp-mod-accept").first.click(timeout=10_000)
                page.locator(".jp-Notebook .jp-Cell").first.click(timeout=20_000)  # the notebook is current: menus act
                page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click(timeout=20_000)
                page.get_by_role("menuitem", name="Run All Cells", exact=True).click(timeout=20_000)
                started.wait_for(state="attached", timeout=45_000)
                break
            except PlaywrightTimeout:
                assert attempt < 3, "Run All Cells ran nothing in four tries: the notebook never got a kernel"
        generate = page.locator("button.echodiff-generate-button")
        try:
            generate.wait_for(timeout=300_000)  # kernel start, imports, models: the page is the 4th cell's output
        except Exception:
            page.screenshot(path=str(tmp_path / "failed.png"), full_page=True)
            outputs = page.locator(".jp-OutputArea-output").all_inner_texts()
            raise AssertionError(f"no Generate button ({tmp_path / 'failed.png'}); outputs: {outputs}") from None
        expect(page.locator(".echodiff-status")).to_contain_text("anatomy:", timeout=60_000)
        idle = page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").first
        expect(idle).to_be_attached(timeout=300_000)  # the notebook's last cells ran: widget changes sync at once
        handle = page.locator(".echodiff-ef .noUi-handle")
        handle.focus()
        for _ in range(5):
            handle.press("ArrowRight")  # 60 -> 65 %
        expect(page.locator(".echodiff-ef .widget-readout")).to_contain_text("65", timeout=10_000)
        generate.click()
        captions = page.locator(".echodiff-regressed-ef")
        expect(captions).to_have_count(2, timeout=300_000)
        expect(captions.first).to_contain_text("target 65 %")
        expect(captions.first).to_contain_text("regressed EF")
        assert page.locator(".echodiff-results video").count() == 3  # the real clip and 2 candidates
        page.wait_for_function("[...document.querySelectorAll('.echodiff-results video')].every("
                               "v => v.readyState >= 2 && v.duration > 0)", timeout=30_000)  # decodable, playing
        expect(page.locator(".echodiff-status")).to_contain_text("2 video(s) in")
        page.locator(".echodiff-app").screenshot(path=str(shot))
        with page.expect_file_chooser() as chooser:
            page.locator(".echodiff-upload").click()
        chooser.value.set_files(files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not an echo"}])
        expect(page.locator(".echodiff-status")).to_contain_text("notes.txt: .txt is not a supported upload",
                                                                 timeout=30_000)
        assert page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']",
                            has_text="Traceback").count() == 0
        browser.close()
    assert not errors, errors
    assert shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")
