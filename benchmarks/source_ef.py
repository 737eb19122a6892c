"""Does a counterfactual video follow its target EF, or the EF of the heart its anatomy frame came from?

Reads stage 03's counterfactual score CSVs (``<out_dir>/scores/counterfactual_chunk*.csv``) and the dataset's
``FileList.csv``, and fits, over **all** candidates, ``judged EF = a x target EF + b x source EF + c`` for each
judge (the EF regressor's ``Gen EF``, the LV-area judge's ``Area EF``). A generator that reads only its EF
condition has ``b = 0``; ``b > 0`` is EF that leaks in through the anatomy frame (docs/generator-experiments.md,
E12-E13). Targets are drawn independently of the source EF, so ``a`` and ``b`` are separable.

Usage::

    python benchmarks/source_ef.py outputs/evaluate/demo [more evaluation folders] --data-root data/phantom
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

JUDGES = {"Gen EF": "regressor", "Area EF": "LV area"}


def source_ef_fit(scores: pd.DataFrame, filelist: pd.DataFrame) -> pd.DataFrame:
    """One row per judge: slopes on target and source EF (least squares, all candidates) and both correlations."""
    source = filelist.set_index("FileName").loc[scores.FileName, "EF"].to_numpy(float)
    target = scores["GT EF"].to_numpy(float)
    rows = []
    for column, judge in JUDGES.items():
        if column not in scores or scores[column].isna().all():
            continue
        judged = scores[column].to_numpy(float)
        (a, b, _), *_ = np.linalg.lstsq(np.c_[target, source, np.ones_like(target)], judged, rcond=None)
        rows.append({"judge": judge, "candidates": len(scores), "slope_target": a, "slope_source": b,
                     "r_target": np.corrcoef(target, judged)[0, 1], "r_source": np.corrcoef(source, judged)[0, 1]})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="stage 03 out_dir folders")
    parser.add_argument("--data-root", type=Path, default=Path("data/phantom"), help="the scored dataset")
    args = parser.parse_args()
    filelist = pd.read_csv(args.data_root / "FileList.csv", dtype={"FileName": str})
    for folder in args.folders:
        paths = sorted((folder / "scores").glob("counterfactual_chunk*.csv"))
        if not paths:
            raise SystemExit(f"{folder}/scores has no counterfactual_chunk*.csv: run stage 03 with that mode first")
        scores = pd.concat([pd.read_csv(p, dtype={"FileName": str}) for p in paths], ignore_index=True)
        print(folder)
        print(source_ef_fit(scores, filelist).round(2).to_string(index=False))


if __name__ == "__main__":
    main()
