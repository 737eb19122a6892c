#!/bin/bash
# Submit every stage of a pipeline as a chain of Slurm jobs (each starts when the previous one succeeded), all in
# one MLflow parent run:
#   slurm/submit_pipeline.sh params/pipeline/demo.yaml [-p key=value ...] [--out DIR]
# The -p overrides reach every job; --out DIR: where the jobs write their executed notebooks (default runs/, as
# `python -m echodiff.pipeline`), in DIR/<parent run id>/<stage>/. Submitting the same file with the same overrides
# again continues the same parent run, and its finished, unchanged stages are reused, not re-run (their jobs end
# at once).
# Environment: PARTITION (default: the cluster's), GPUS per job (default 1; 0 for CPU-only clusters),
#   SBATCH_EXTRA (more sbatch options, e.g. "--account=abc --time=12:00:00"),
#   PYTHON (the interpreter run here on the login node; default .venv/bin/python; conda: PYTHON=python after
#   `conda activate echodiff`), ECHODIFF_ACTIVATE (how the jobs activate it; see slurm/lib.sh).
# Prints the parent run id, then the job ids, last one last; `squeue -u $USER` follows them, slurm/logs/*.out
# hold their logs.
set -euo pipefail
cd "$(dirname "$0")/.."
pipeline="${1:?usage: slurm/submit_pipeline.sh PIPELINE_YAML [-p key=value ...]}"
shift
python="${PYTHON:-.venv/bin/python}"
if ! "$python" -c "import echodiff" 2>/dev/null; then
    echo "submit_pipeline: '$python' cannot import echodiff: run \`make install\` (or set PYTHON to your conda" \
         "environment's python)" >&2
    exit 2
fi
opts=()
[ -n "${PARTITION:-}" ] && opts+=(--partition="$PARTITION")
[ "${GPUS:-1}" -gt 0 ] && opts+=(--gres="gpu:${GPUS:-1}")
# shellcheck disable=SC2206
[ -n "${SBATCH_EXTRA:-}" ] && opts+=($SBATCH_EXTRA)
mkdir -p slurm/logs
parent=$("$python" -m echodiff.pipeline -f "$pipeline" --open-parent "$@")  # also checks every stage's params
echo "parent $parent"
stages=$("$python" -c "import sys, yaml; print(' '.join(s['name'] for s in yaml.safe_load(open(sys.argv[1]))['stages']))" "$pipeline")
previous=""
for stage in $stages; do
    dep=()
    [ -n "$previous" ] && dep=(--dependency="afterok:$previous")
    # --kill-on-invalid-dep: when a stage fails, the stages after it are cancelled, not left pending forever
    previous=$(sbatch --parsable --kill-on-invalid-dep=yes "${opts[@]}" "${dep[@]}" --job-name="echodiff-$stage" \
        slurm/stage.sbatch "$pipeline" "$stage" --parent "$parent" "$@")
    echo "$stage $previous"
done
