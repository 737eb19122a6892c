"""Make docs/explore.png: notebook 06 in JupyterLab (Debian's Chromium via Playwright) on the latest finished
demo cascade of the checkout's MLflow store, EF slider at 75 %, Generate pressed; prints the time from the click to
the playing videos.  .venv/bin/python docs/explore_screenshot.py [CASCADE]  (after `make demo`; CASCADE: a model
folder or run id instead of the latest finished one)"""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import papermill
from playwright.sync_api import expect, sync_playwright

REPO = Path(__file__).resolve().parents[1]
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
        "--disable-background-networking", "--disable-component-update", "--disable-dev-shm-usage"]

chosen = {"cascade": sys.argv[1], "data_root": "data/phantom"} if len(sys.argv) > 1 else {}
with tempfile.TemporaryDirectory() as tmp:
    tmp = Path(tmp)
    (tmp / "lab").mkdir()
    papermill.execute_notebook(str(REPO / "notebooks" / "06_explore.ipynb"), str(tmp / "lab" / "explore.ipynb"),
                               prepare_only=True, parameters=chosen)
    settings = tmp / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    settings.parent.mkdir(parents=True)
    settings.write_text('{"fetchNews": "false", "checkForUpdates": false}')
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(tmp / "rt"), JUPYTER_CONFIG_DIR=str(tmp / "cfg"),
               JUPYTERLAB_SETTINGS_DIR=str(tmp / "settings"), JUPYTERLAB_WORKSPACES_DIR=str(tmp / "ws"),
               ECHODIFF_OUTPUTS=str(tmp / "outputs"))
    server = subprocess.Popen([sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ServerApp.ip=127.0.0.1",
                               f"--ServerApp.port={port}", "--IdentityProvider.token=t",
                               f"--ServerApp.root_dir={tmp / 'lab'}", "--allow-root"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token=t", timeout=5)
                break
            except OSError:
                time.sleep(0.5)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=ARGS)
            page = browser.new_page(viewport={"width": 1100, "height": 1300})
            page.goto(f"http://127.0.0.1:{port}/lab/tree/explore.ipynb?token=t")
            idle = page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").first
            expect(idle).to_be_attached(timeout=120_000)
            page.locator(".jp-Notebook .jp-Cell").first.click()
            page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
            page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
            page.locator("button.echodiff-generate-button").wait_for(timeout=300_000)
            time.sleep(2)  # the last cells start
            expect(idle).to_be_attached(timeout=300_000)
            handle = page.locator(".echodiff-ef .noUi-handle")
            handle.focus()
            for _ in range(15):
                handle.press("ArrowRight")  # 60 -> 75 %
            time.sleep(1)
            start = time.perf_counter()
            page.locator("button.echodiff-generate-button").click()
            expect(page.locator(".echodiff-regressed-ef")).to_have_count(2, timeout=300_000)
            page.wait_for_function("[...document.querySelectorAll('.echodiff-results video')].every("
                                   "v => v.readyState >= 2)", timeout=60_000)
            print(f"Generate -> 2 playing videos: {time.perf_counter() - start:.1f} s")
            print(page.locator(".echodiff-status").inner_text())
            page.locator(".echodiff-app").scroll_into_view_if_needed()
            page.locator(".echodiff-app").screenshot(path=str(REPO / "docs" / "explore.png"))
            browser.close()
    finally:
        server.terminate()
        server.wait(30)
