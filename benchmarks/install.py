"""Install time of the pinned package set: pip (the baseline) versus echodiff/install.py (uv), same run.

    python3 benchmarks/install.py [--keep]

Creates two fresh virtual environments in a temporary folder (about 7 GiB each; ``--keep`` leaves them), installs
``requirements.lock`` into one the way ``make install`` used to (``pip install -r``, after upgrading pip) and into
the other the way it does now (``echodiff/install.py``: uv with pip's configured sources, no cache, byte-compiled),
prints both wall times and the ratio, and checks that the two hold the same package versions.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timed(*commands: list[str]) -> float:
    """Seconds to run ``commands`` one after the other (each must succeed)."""
    start = time.perf_counter()
    for command in commands:
        subprocess.run(command, check=True)
    return time.perf_counter() - start


def versions(python: Path) -> dict[str, str]:
    """{package: version} of the environment of ``python``, echodiff and the installer uv left out."""
    listed = json.loads(subprocess.run([str(python), "-m", "pip", "list", "--format", "json"], check=True,
                                       capture_output=True, text=True).stdout)
    return {p["name"].lower(): p["version"] for p in listed if p["name"].lower() not in ("echodiff", "uv", "pip")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the two environments (printed)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="echodiff-install-"))
    try:
        pip_python, uv_python = work / "pip" / "bin" / "python", work / "uv" / "bin" / "python"
        for name in ("pip", "uv"):
            subprocess.run([sys.executable, "-m", "venv", str(work / name)], check=True)
        pip_s = timed([str(pip_python), "-m", "pip", "install", "--quiet", "--upgrade", "pip>=24"],
                      [str(pip_python), "-m", "pip", "install", "--quiet", "-r", str(ROOT / "requirements.lock")],
                      [str(pip_python), "-m", "pip", "install", "--quiet", "--no-deps", "-e", str(ROOT)])
        uv_s = timed([str(uv_python), str(ROOT / "echodiff" / "install.py"), str(ROOT / "requirements.lock")])
        same = versions(pip_python) == versions(uv_python)
        print(f"pip install -r requirements.lock (+ echodiff editable): {pip_s:.1f} s")
        print(f"echodiff/install.py (uv):                               {uv_s:.1f} s")
        print(f"ratio pip / uv: {pip_s / uv_s:.2f}x; same package versions: {same}")
        return 0 if same else 1
    finally:
        if args.keep:
            print(f"environments kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
