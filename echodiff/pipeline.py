"""Run the stage notebooks in order with papermill: one parent MLflow run, a nested child run per stage.

    python -m echodiff.pipeline -f params/pipeline/demo.yaml [--only S ...] [--from S] [--force] [-p key=value]
    python -m echodiff.pipeline -f FILE --open-parent [-p ...]      # prints the study's parent run id
    python -m echodiff.pipeline -f FILE --only S --parent RUN_ID    # one stage of it (a Slurm job)

A pipeline file names the experiment and, per stage, the notebook, its parameter file and, optionally, which
earlier stages' runs it reads (passed to the notebook as MLflow run ids, so stages never share ad-hoc paths)::

    experiment: echodiff
    stages:
      - {name: data, notebook: notebooks/00_data.ipynb, params: params/data_demo.yaml}
      - {name: evaluate, notebook: notebooks/03_evaluate.ipynb, params: params/evaluate_demo.yaml,
         inputs: {model: diffusion, regressor: ef_regression}, overrides: {max_videos: 20}}

``overrides`` (optional) change parameters of the stage's file, as ``-p key=value`` does for every stage run;
a pipeline file of bigger sizes is the same stage files with overrides (``params/pipeline/demo_long.yaml``).

Each stage notebook receives ``mlflow_run_id`` (its child run) and ``experiment``; the executed notebook is
written to ``runs/<parent run id>/<stage>/`` and logged to the child run, also when the stage fails.

A stage whose notebook, parameters and inputs are unchanged since a FINISHED run is skipped and that run is
reused (its id feeds later stages); ``--force`` re-runs everything, ``--from S`` re-runs S and what follows.
``--only S`` runs just S, with the same rule (an unchanged finished S is reused unless ``--force``).

One study, one record: ``--open-parent`` finds (or creates, in state SCHEDULED) the parent run of this pipeline
file with these ``-p`` values, tagged with their hash, and prints its id; ``--parent ID`` makes a run of the
pipeline continue that parent instead of opening a new one. ``slurm/submit_pipeline.sh`` uses both, so the jobs of
a chain, and a chain submitted again, share one parent run and reuse finished stages.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import papermill

from echodiff import preempt, tracking
from echodiff.config import (
    check_params,
    load_params,
    notebook_parameters,
    print_settings,
    repo_root,
    resolve_path,
)
from echodiff.tracking import mlflow

#: the pipeline file's name of the stage a child run ran: what a later run looks up to reuse it. ``echodiff.stage``
#: is the notebook's kind of stage (``diffusion`` for both of the paper study's diffusion stages), set by the notebook.
STAGE_TAG = "echodiff.pipeline_stage"


def _fingerprint(notebook: Path, params: dict[str, Any]) -> str:
    """What makes a stage's result: the notebook's code cells and its parameters (input run ids included)."""
    cells = [c.source for c in nbformat.read(notebook, as_version=4).cells if c.cell_type == "code"]
    text = json.dumps({"cells": cells, "params": params}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _finished_run(client: Any, experiment_id: str, stage: str, fingerprint: str) -> str | None:
    """The newest FINISHED child run of ``stage`` with this fingerprint, if any."""
    runs = client.search_runs(
        [experiment_id], f"tags.`{STAGE_TAG}` = '{stage}' and tags.`echodiff.fingerprint` = '{fingerprint}' "
        "and attributes.status = 'FINISHED'", order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None


def _check_stages(spec: dict[str, Any], pipeline_file: str | Path, cli: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each stage's parameters -- its file, its ``overrides`` in the pipeline file, then the command line's
    ``-p`` values of the keys its notebook declares -- checked by :func:`echodiff.config.check_params`. A ``-p``
    key that no stage declares, or one that an ``inputs:`` entry would set, is an error."""
    out, declared = {}, set()
    for stage in spec["stages"]:
        allowed = set(notebook_parameters(stage["notebook"])) - {"mlflow_run_id", "experiment"}
        declared |= allowed
        params = load_params(stage.get("params"), stage.get("overrides") or {})
        check_params(params, allowed, f"{pipeline_file}: stage {stage['name']!r} ({stage.get('params')} + overrides)")
        clash = sorted(set(cli) & set(stage.get("inputs") or {}))
        if clash:
            raise ValueError(f"-p {clash} would be replaced by stage {stage['name']!r}'s inputs (the run ids of "
                             f"earlier stages, {stage['inputs']}); drop the -p, or run that stage on its own")
        params.update({k: v for k, v in cli.items() if k in allowed})
        out[stage["name"]] = check_params(params, allowed, f"{pipeline_file}: stage {stage['name']!r} with -p")
    unused = sorted(set(cli) - declared)
    if unused:
        raise ValueError(f"-p {unused}: no stage of {pipeline_file} has such a parameter")
    return out


def _study_key(pipeline_file: str | Path, overrides: list[str] | None) -> str:
    """Hash of a pipeline file's text and the ``-p`` values: what one study is."""
    text = resolve_path(pipeline_file).read_text() + "\n".join(sorted(overrides or []))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def open_parent(pipeline_file: str | Path, overrides: list[str] | None = None) -> str:
    """The id of the parent run of this pipeline file with these overrides: the newest one tagged with their
    :func:`_study_key`, else a new run in state SCHEDULED (continued by ``run_pipeline(parent=...)``)."""
    spec = load_params(pipeline_file)
    _check_stages(spec, pipeline_file, load_params(None, overrides))
    experiment_id = tracking.setup(spec.get("experiment", tracking.DEFAULT_EXPERIMENT))
    client = mlflow.tracking.MlflowClient(tracking.tracking_uri())
    key = _study_key(pipeline_file, overrides)
    runs = client.search_runs([experiment_id], f"tags.`echodiff.study` = '{key}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if runs:
        return runs[0].info.run_id
    run = client.create_run(experiment_id, run_name="pipeline", tags={"echodiff.study": key})
    client.update_run(run.info.run_id, status="SCHEDULED")
    return run.info.run_id


@contextlib.contextmanager
def _parent_run(run_id: str | None = None) -> Iterator[mlflow.ActiveRun]:
    """The pipeline's parent run (a new one, or ``run_id`` continued), tagged with its process; KILLED on Ctrl-C
    or SIGTERM, FAILED on an error."""
    run = mlflow.start_run(run_id=run_id, run_name=None if run_id else "pipeline")
    mlflow.set_tags(tracking.owner_tags())
    try:
        yield run
    except KeyboardInterrupt:
        mlflow.end_run("KILLED")
        raise
    except BaseException:
        mlflow.end_run("FAILED")
        raise
    mlflow.end_run()


def run_pipeline(pipeline_file: str | Path, only: list[str] | None = None,
                 overrides: list[str] | None = None, out: str | Path = "runs", force: bool = False,
                 start_from: str | None = None, parent: str | None = None) -> dict[str, Any]:
    """Execute the pipeline's stages; return ``{"run_id": parent id, "stages": {name: child run id},
    "skipped": [names]}``.

    ``only``: just these stages (their inputs come from earlier finished runs; an unchanged finished one is
    reused). ``force``: never skip. ``start_from``: re-run this stage and every later one. ``parent``: continue
    this parent run (:func:`open_parent`). Executed notebooks go to ``out/<parent run id>/``.
    Raises ``papermill.PapermillExecutionError`` (with the failing cell's error) when a stage fails.
    """
    # Check the whole file and every stage's parameters before any run starts.
    spec = load_params(pipeline_file)
    experiment = spec.get("experiment", tracking.DEFAULT_EXPERIMENT)
    names = [s["name"] for s in spec["stages"]]
    unknown = (set(only or []) | ({start_from} if start_from else set())) - set(names)
    if unknown:
        raise ValueError(f"unknown stage(s) {sorted(unknown)} in {pipeline_file} (stages: {names})")
    rerun_from = names.index(start_from) if start_from else len(names)
    stage_params = _check_stages(spec, pipeline_file, load_params(None, overrides))  # before any run starts
    # The store: close what dead processes left RUNNING; open (or continue) the parent run.
    experiment_id = tracking.setup(experiment)
    client = mlflow.tracking.MlflowClient(tracking.tracking_uri())
    tracking.close_orphans(client, experiment_id)
    result: dict[str, Any] = {"stages": {}, "skipped": [], "seconds": {}}
    if parent is not None:
        found = client.get_run(parent)  # raises for an unknown id
        if found.info.experiment_id != experiment_id:
            raise ValueError(f"parent run {parent} belongs to another experiment than {experiment!r}")
    with _parent_run(parent) as parent:
        result["run_id"] = parent.info.run_id
        mlflow.log_params({"pipeline_file": str(pipeline_file), "stages": ",".join(names)})
        out_dir = resolve_path(out) / parent.info.run_id
        out_dir.mkdir(parents=True, exist_ok=True)
        # Each stage: wire its inputs, reuse an unchanged finished run, else execute its notebook in a child run.
        for index, stage in enumerate(spec["stages"]):
            name = stage["name"]
            params = dict(stage_params[name])
            inputs = stage.get("inputs") or {}
            missing = {key: upstream for key, upstream in inputs.items() if upstream not in result["stages"]}
            if missing and only and name not in only:
                continue  # a later stage, not run now, whose inputs have no run yet (a Slurm chain's first jobs)
            if missing:
                key, upstream = next(iter(missing.items()))
                raise ValueError(f"stage {name!r} reads {key} from stage {upstream!r}, which has no finished "
                                 "run yet: run the pipeline without --only first")
            params.update({key: result["stages"][upstream] for key, upstream in inputs.items()})
            notebook = resolve_path(stage["notebook"])
            fingerprint = _fingerprint(notebook, {**params, "experiment": experiment})
            previous = _finished_run(client, experiment_id, name, fingerprint)
            if (only and name not in only) or (previous and not (force or index >= rerun_from)):
                if previous:
                    result["stages"][name] = previous
                    result["skipped"].append(name)
                    print(f"pipeline: stage {name} unchanged since run {previous}: skipped (--force re-runs)",
                          flush=True)
                continue
            child = client.create_run(experiment_id, run_name=name, tags={
                "mlflow.parentRunId": parent.info.run_id, "echodiff.stage": name, STAGE_TAG: name,
                **tracking.owner_tags()})
            run_id = child.info.run_id
            result["stages"][name] = run_id
            params.update(mlflow_run_id=run_id, experiment=experiment)
            executed = out_dir / name / notebook.name  # one folder per stage: two stages may run one notebook
            executed.parent.mkdir(exist_ok=True)
            print(f"pipeline: stage {name} ({notebook.name}) -> run {run_id}", flush=True)
            start = time.perf_counter()
            try:
                papermill.execute_notebook(str(notebook), str(executed), parameters=params,
                                           cwd=str(repo_root()), progress_bar=False, log_output=True)
            except BaseException as exc:
                if executed.is_file():  # absent when papermill failed before running a cell
                    client.log_artifact(run_id, str(executed))
                client.set_terminated(run_id, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
                raise
            seconds = time.perf_counter() - start
            client.log_artifact(run_id, str(executed))
            client.log_metric(run_id, "stage_seconds", seconds)
            client.set_tag(run_id, "echodiff.fingerprint", fingerprint)  # only a finished stage can be reused
            mlflow.log_metric(f"{name}_seconds", seconds)
            result["seconds"][name] = seconds
            print(f"pipeline: stage {name} done in {seconds:.1f} s", flush=True)
        mlflow.log_metric("pipeline_seconds", sum(result["seconds"].values()))
    return result


def timing_table(result: dict[str, Any]) -> str:
    """Wall time (minutes) of every stage this invocation ran, and the total, as the pipeline reports it."""
    lines = [f"  {name:16s} {seconds / 60:7.1f} min" for name, seconds in result["seconds"].items()]
    if result["skipped"]:
        lines.append(f"  ({len(result['skipped'])} unchanged stage(s) reused from earlier runs)")
    lines.append(f"  {'total':16s} {sum(result['seconds'].values()) / 60:7.1f} min")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m echodiff.pipeline", description=__doc__.split("\n\n")[0])
    parser.add_argument("-f", "--file", required=True, help="pipeline YAML (e.g. params/pipeline/demo.yaml)")
    parser.add_argument("--only", nargs="+", help="run only these stages (inputs from earlier finished runs; "
                        "an unchanged finished stage is reused unless --force)")
    parser.add_argument("--parent", metavar="RUN_ID", help="continue this parent run (see --open-parent)")
    parser.add_argument("--open-parent", action="store_true",
                        help="print the parent run id of this pipeline file with these -p values (created, "
                             "SCHEDULED, if none) and exit: slurm/submit_pipeline.sh passes it to every job")
    parser.add_argument("--from", dest="start_from", help="re-run this stage and every later one")
    parser.add_argument("--force", action="store_true", help="re-run stages even when unchanged")
    parser.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                        help="override a notebook parameter of the stages run (repeatable)")
    parser.add_argument("--out", default="runs", help="folder for executed notebooks (default runs/)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print every stage's effective parameters as YAML and exit (no run, no data)")
    args = parser.parse_args(argv)
    preempt.terminate_on_sigterm()
    logging.basicConfig(format="%(message)s")
    logging.getLogger("papermill").setLevel(logging.INFO)  # stream each cell's output as the stage runs
    try:
        if args.dry_run:
            print_settings(_check_stages(load_params(args.file), args.file, load_params(None, args.param)))
            return 0
        if args.open_parent:
            print(open_parent(args.file, args.param))
            return 0
        result = run_pipeline(args.file, only=args.only, overrides=args.param, out=args.out, force=args.force,
                              start_from=args.start_from, parent=args.parent)
    except papermill.PapermillExecutionError as exc:
        print(f"pipeline: stage failed in cell {exc.exec_count}: {exc.ename}: {exc.evalue}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        print(f"pipeline: interrupted ({exc or 'Ctrl-C'}); its runs are marked KILLED", file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError, KeyError, mlflow.exceptions.MlflowException) as exc:
        print(f"pipeline: {exc}", file=sys.stderr)
        return 2
    print("pipeline: wall time per stage\n" + timing_table(result))
    print(f"pipeline: finished, parent run {result['run_id']}; browse with "
          "`mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db`")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
