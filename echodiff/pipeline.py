"""Run the stage notebooks in order with papermill: one parent MLflow run, a nested child run per stage.

    python -m echodiff.pipeline -f params/pipeline/demo.yaml [--only data] [-p key=value ...]

A pipeline file names the experiment and, per stage, the notebook and its parameter file::

    experiment: echodiff
    stages:
      - {name: data, notebook: notebooks/00_data.ipynb, params: params/data_demo.yaml}

Each stage notebook receives ``mlflow_run_id`` (its child run) and ``experiment``; the executed notebook is
written to ``runs/<parent run id>/`` and logged to the child run, also when the stage fails.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

import mlflow
import papermill

from echodiff import tracking
from echodiff.config import load_params, repo_root, resolve_path


def run_pipeline(pipeline_file: str | Path, only: list[str] | None = None,
                 overrides: list[str] | None = None, out: str | Path = "runs") -> dict[str, Any]:
    """Execute the pipeline's stages; return ``{"run_id": parent id, "stages": {name: child run id}}``.

    Executed notebooks go to ``out/<parent run id>/``. Raises ``papermill.PapermillExecutionError`` (with the
    failing cell's error) when a stage fails.
    """
    spec = load_params(pipeline_file)
    experiment = spec.get("experiment", tracking.DEFAULT_EXPERIMENT)
    stages = [s for s in spec["stages"] if not only or s["name"] in only]
    unknown = set(only or []) - {s["name"] for s in spec["stages"]}
    if unknown:
        raise ValueError(f"unknown stage(s) {sorted(unknown)} in {pipeline_file}")
    experiment_id = tracking.setup(experiment)
    client = mlflow.tracking.MlflowClient(tracking.tracking_uri())
    result: dict[str, Any] = {"stages": {}}
    with mlflow.start_run(run_name="pipeline") as parent:
        result["run_id"] = parent.info.run_id
        mlflow.log_params({"pipeline_file": str(pipeline_file), "stages": ",".join(s["name"] for s in stages)})
        out_dir = resolve_path(out) / parent.info.run_id
        out_dir.mkdir(parents=True, exist_ok=True)
        for stage in stages:
            params = load_params(stage.get("params"), overrides)
            child = client.create_run(experiment_id, run_name=stage["name"],
                                      tags={"mlflow.parentRunId": parent.info.run_id, "echodiff.stage": stage["name"]})
            run_id = child.info.run_id
            result["stages"][stage["name"]] = run_id
            params.update(mlflow_run_id=run_id, experiment=experiment)
            notebook = resolve_path(stage["notebook"])
            executed = out_dir / notebook.name
            print(f"pipeline: stage {stage['name']} ({notebook.name}) -> run {run_id}", flush=True)
            start = time.perf_counter()
            try:
                papermill.execute_notebook(str(notebook), str(executed), parameters=params,
                                           cwd=str(repo_root()), progress_bar=False, log_output=True)
            except BaseException:
                client.log_artifact(run_id, str(executed))
                client.set_terminated(run_id, "FAILED")
                raise
            seconds = time.perf_counter() - start
            client.log_artifact(run_id, str(executed))
            client.log_metric(run_id, "stage_seconds", seconds)
            mlflow.log_metric(f"{stage['name']}_seconds", seconds)
            print(f"pipeline: stage {stage['name']} done in {seconds:.1f} s", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m echodiff.pipeline", description=__doc__.split("\n\n")[0])
    parser.add_argument("-f", "--file", required=True, help="pipeline YAML (e.g. params/pipeline/demo.yaml)")
    parser.add_argument("--only", nargs="+", help="run only these stages")
    parser.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                        help="override a notebook parameter of the stages run (repeatable)")
    parser.add_argument("--out", default="runs", help="folder for executed notebooks (default runs/)")
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(message)s")
    logging.getLogger("papermill").setLevel(logging.INFO)  # stream each cell's output as the stage runs
    try:
        result = run_pipeline(args.file, only=args.only, overrides=args.param, out=args.out)
    except papermill.PapermillExecutionError as exc:
        print(f"pipeline: stage failed in cell {exc.exec_count}: {exc.ename}: {exc.evalue}", file=sys.stderr)
        return 1
    except (FileNotFoundError, ValueError, KeyError) as exc:
        print(f"pipeline: {exc}", file=sys.stderr)
        return 2
    print(f"pipeline: finished, parent run {result['run_id']}; browse with "
          "`mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db`")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
