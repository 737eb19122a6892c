"""The one place that talks to MLflow: where the store is, runs per stage, and logging of figures and tables.

Store: ``$MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<repo>/mlruns/mlflow.db`` with artifacts under
``<repo>/mlruns/artifacts`` -- resolved from the repository root, never the current directory.
Browse with ``mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db`` from the repository root.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from echodiff.config import repo_root
from echodiff.io import atomic_write_csv


class _MissingMLflow:
    """Stands for MLflow where it is not installed (the lent GPU machine that runs benchmarks/gpu_check.py, which
    logs nothing): importing works, any use raises."""

    def __init__(self, error: ImportError) -> None:
        self.error = error

    def __getattr__(self, name: str) -> Any:
        self()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise ModuleNotFoundError(f"MLflow is needed here ({self.error}): install the project's environment "
                                  "(make install, or pip install -r requirements.lock)")


try:
    import mlflow
    from mlflow.entities import Metric
except ImportError as missing:
    mlflow = Metric = _MissingMLflow(missing)

DEFAULT_EXPERIMENT = "echodiff"


def local_store() -> Path:
    """The repository's ``mlruns/`` folder."""
    return repo_root() / "mlruns"


def local_uri() -> str:
    """URI of the repository's SQLite store, ``sqlite:///<repo>/mlruns/mlflow.db``."""
    return f"sqlite:///{local_store() / 'mlflow.db'}"


def tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI``, else the repository's SQLite store."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or local_uri()
    if uri == local_uri():
        local_store().mkdir(parents=True, exist_ok=True)
    return uri


def _sqlite_file(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` store URI; None for any other store (a server)."""
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


@contextlib.contextmanager
def _first_use_lock(uri: str) -> Iterator[None]:
    """Hold ``<database>.lock`` while this process first opens a SQLite store: MLflow creates and migrates a new
    database's tables on first use, and two processes doing that at once (a Slurm array's tasks starting together)
    fail with "table ... already exists". Other stores need no lock."""
    database = _sqlite_file(uri)
    if database is None:
        yield
        return
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(database.with_name(database.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


#: MLflow 3's UI opens an experiment in its GenAI view (traces, token usage) unless this tag says it holds model
#: training runs: ours open in the runs table with their metrics.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


def setup(experiment: str = DEFAULT_EXPERIMENT) -> str:
    """Point MLflow at the store, create ``experiment`` if needed (artifacts in ``artifacts/`` beside a SQLite
    database, e.g. ``mlruns/artifacts``; a server's default otherwise) and make it current; return its id."""
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    with _first_use_lock(uri):
        found = mlflow.get_experiment_by_name(experiment)  # a new SQLite store gets its tables here
    if found is not None:
        experiment_id = found.experiment_id
        if found.tags.get(EXPERIMENT_KIND[0]) != EXPERIMENT_KIND[1]:  # made before, or by another tool
            mlflow.MlflowClient().set_experiment_tag(experiment_id, *EXPERIMENT_KIND)
    else:
        # mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI, so compare URIs rather than test the variable.
        database = _sqlite_file(uri)  # artifacts beside it, never relative to the working directory
        location = None if database is None else (database.parent / "artifacts").as_uri()  # None: a server's own
        try:
            experiment_id = mlflow.create_experiment(experiment, artifact_location=location,
                                                     tags=dict([EXPERIMENT_KIND]))
        except mlflow.exceptions.MlflowException:  # created meanwhile by another process
            experiment_id = mlflow.get_experiment_by_name(experiment).experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def start_stage(
    stage: str, params: dict[str, Any], run_id: str | None = None, experiment: str = DEFAULT_EXPERIMENT
) -> mlflow.ActiveRun:
    """Start the MLflow run of one stage: resume ``run_id`` (created by the pipeline runner) or start a new run
    named ``stage``; log ``params``. End it with :func:`end_stage` (notebooks: first and last cell)."""
    setup(experiment)
    if mlflow.active_run() is not None:  # a notebook re-run interactively
        mlflow.end_run()
    job = os.environ.get("SLURM_JOB_ID")
    created = run_id is None
    if created and job and int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0:  # requeued by Slurm: carry on
        run_id = requeued_run(stage, job, experiment)  # in the run its first start opened (one record)
    run = mlflow.start_run(run_id=run_id, run_name=None if run_id else stage)
    mlflow.set_tag("echodiff.stage", stage)
    if created:  # a run the pipeline created carries the pipeline's process
        mlflow.set_tags({**owner_tags(), **({"echodiff.slurm_job": job} if job else {})})
    log_params(params)
    return run


def requeued_run(stage: str, job: str, experiment: str = DEFAULT_EXPERIMENT) -> str | None:
    """Id of the unfinished ``stage`` run that Slurm job ``job`` opened before it was requeued, if any."""
    runs = mlflow.search_runs(experiment_names=[experiment], order_by=["attributes.start_time DESC"], max_results=1,
                              filter_string=f"tags.`echodiff.stage` = '{stage}' and tags.`echodiff.slurm_job` = "
                                            f"'{job}' and attributes.status != 'FINISHED'")
    return str(runs.run_id.iloc[0]) if len(runs) else None


def latest_stage_run(stage: str, experiment: str = DEFAULT_EXPERIMENT) -> str | None:
    """Id of the most recently started FINISHED run of ``stage`` (tag ``echodiff.stage``) in ``experiment``,
    or None when there is none."""
    setup(experiment)
    runs = mlflow.search_runs(experiment_names=[experiment], order_by=["attributes.start_time DESC"], max_results=1,
                              filter_string=f"tags.`echodiff.stage` = '{stage}' and attributes.status = 'FINISHED'")
    return str(runs.run_id.iloc[0]) if len(runs) else None


def run_param(run_id: str, key: str) -> str | None:
    """Parameter ``key`` of MLflow run ``run_id`` as logged (a string), or None when the run did not log it."""
    setup()
    return mlflow.get_run(run_id).data.params.get(key)


def owner_tags() -> dict[str, str]:
    """Tags naming the process that owns a run (``echodiff.host``, ``echodiff.pid``): see :func:`close_orphans`."""
    return {"echodiff.host": socket.gethostname(), "echodiff.pid": str(os.getpid())}


def close_orphans(client: Any, experiment_id: str) -> list[str]:
    """Mark FAILED every RUNNING run of the experiment whose owner process (:func:`owner_tags`) on this host no
    longer exists -- a job that was killed (time limit, preemption, ``scancel -9``) before it could close its runs.
    Returns their ids; each gets an ``echodiff.note`` saying why."""
    host, closed = socket.gethostname(), []
    for run in client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'"):
        tags = run.data.tags
        pid = tags.get("echodiff.pid", "")
        if tags.get("echodiff.host") != host or not pid.isdigit() or _alive(int(pid)):
            continue
        client.set_tag(run.info.run_id, "echodiff.note", f"process {pid} on {host} ended without closing this run")
        client.set_terminated(run.info.run_id, "FAILED")
        print(f"tracking: run {run.info.run_id} ({run.info.run_name}) was left RUNNING by process {pid}, which no "
              "longer exists: marked FAILED", flush=True)
        closed.append(run.info.run_id)
    return closed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def end_stage(status: str = "FINISHED") -> None:
    """End the active stage run with ``status`` (FINISHED or FAILED)."""
    mlflow.end_run(status)


@contextlib.contextmanager
def stage_run(
    stage: str, params: dict[str, Any], run_id: str | None = None, experiment: str = DEFAULT_EXPERIMENT
) -> Iterator[mlflow.ActiveRun]:
    """:func:`start_stage` ... :func:`end_stage` as a context manager (FAILED if the body raises)."""
    run = start_stage(stage, params, run_id, experiment)
    try:
        yield run
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM turned into it (echodiff.preempt.terminate_on_sigterm)
        end_stage("KILLED")
        raise
    except BaseException:
        end_stage("FAILED")
        raise
    end_stage()


@contextlib.contextmanager
def child_run(name: str, params: dict[str, Any], tags: dict[str, str] | None = None) -> Iterator[mlflow.ActiveRun]:
    """A run nested under the active run (e.g. one regressor variant of the rebalancing stage), named ``name``,
    tagged ``echodiff.child``; FAILED if the body raises, and the parent is the active run again afterwards."""
    if mlflow.active_run() is None:
        raise RuntimeError("child_run needs an active MLflow run (start the stage run first)")
    run = mlflow.start_run(run_name=name, nested=True)
    mlflow.set_tags({"echodiff.child": name, **(tags or {})})
    log_params(params)
    try:
        yield run
    except BaseException:
        mlflow.end_run("FAILED")
        raise
    mlflow.end_run()


def log_params(params: dict[str, Any]) -> None:
    """Log parameters, stringifying values MLflow cannot take and skipping ones already logged identically."""
    existing = mlflow.get_run(mlflow.active_run().info.run_id).data.params
    fresh = {k: _param(v) for k, v in params.items() if k not in existing}
    if fresh:
        mlflow.log_params(fresh)


def _param(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 6000 else text[:5997] + "..."


def log_metric_rows(rows: list[dict[str, float]]) -> None:
    """Log ``rows`` (each a mapping with a ``step`` and metric values; NaN skipped) to the active run, if any, in
    one request: a training loop that logs every step buffers its rows and calls this now and then, since one
    request per step costs a database transaction each (≈ 20 % of a CPU demo's stage-1 step)."""
    run = mlflow.active_run()
    if run is None or not rows:
        return
    now = int(time.time() * 1000)
    metrics = [Metric(key, float(value), now, int(row["step"])) for row in rows for key, value in row.items()
               if key != "step" and value == value]
    for start in range(0, len(metrics), 1000):  # MLflow's limit per batch
        mlflow.tracking.MlflowClient().log_batch(run.info.run_id, metrics=metrics[start:start + 1000])


def log_table(frame: pd.DataFrame, name: str) -> None:
    """Log a DataFrame as the CSV artifact ``name`` (e.g. ``"FileList.csv"``)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = atomic_write_csv(frame, Path(tmp) / name)
        mlflow.log_artifact(str(path))


def log_figure(figure: Any, name: str) -> None:
    """Log a matplotlib figure as the PNG artifact ``name``."""
    mlflow.log_figure(figure, name)


def log_file(path: str | os.PathLike, artifact_path: str | None = None, run_id: str | None = None) -> None:
    """Log a file to the active run, or to ``run_id`` (which may already be finished)."""
    if run_id is None:
        mlflow.log_artifact(str(path), artifact_path)
    else:
        mlflow.tracking.MlflowClient(tracking_uri()).log_artifact(run_id, str(path), artifact_path)


def log_torch_model(model: Any, example: Any, name: str = "model", registered_name: str | None = None) -> None:
    """Log a PyTorch module with ``mlflow.pytorch`` under ``name`` in the active run; ``example`` is one input
    array, e.g. ``(1, 3, T, H, W)``, recorded with the model's signature (``None``: no signature). The "pickle"
    format is used because "pt2" (``torch.export``) fixes the batch size to the example's; loading needs
    ``echodiff`` importable. ``registered_name`` also registers it (a new version) in the model registry."""
    import mlflow.pytorch

    mlflow.pytorch.log_model(model, name=name, input_example=example, serialization_format="pickle",
                             registered_model_name=registered_name)


def register_artifact(artifact_path: str, name: str) -> str:
    """Register the active run's ``artifact_path`` (e.g. a model folder) as a new version of registered model
    ``name``; return the version. For models that are files rather than picklable modules (the cascade)."""
    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("register_artifact needs an active MLflow run")
    client = mlflow.tracking.MlflowClient(tracking_uri())
    if not client.search_registered_models(f"name='{name}'"):
        client.create_registered_model(name)
    version = client.create_model_version(name, f"{run.info.artifact_uri}/{artifact_path}", run_id=run.info.run_id)
    return str(version.version)


def fetch_artifact(run_id: str, artifact_path: str) -> Path:
    """A local copy of ``artifact_path`` (a file or folder) of MLflow run ``run_id`` in the current store."""
    setup()
    try:
        return Path(mlflow.artifacts.download_artifacts(run_id=str(run_id), artifact_path=artifact_path))
    except mlflow.exceptions.MlflowException as exc:
        raise ValueError(f"{run_id}: no MLflow run with artifact {artifact_path!r} in {tracking_uri()} "
                         f"({str(exc).splitlines()[0]}); pass a local path or the id of a finished stage run"
                         ) from exc
