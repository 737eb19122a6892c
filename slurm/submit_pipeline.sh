#!/bin/bash
# Submit every stage of a pipeline as a chain of Slurm jobs (each starts when the previous one succeeded):
#   slurm/submit_pipeline.sh params/pipeline/demo.yaml
# Environment: PARTITION (default: the cluster's), GPUS per job (default 1; 0 for CPU-only clusters),
#   SBATCH_EXTRA (more sbatch options, e.g. "--account=abc --time=12:00:00").
# Prints the job ids, last one last; `squeue -u $USER` follows them, slurm/logs/*.out hold their logs.
set -euo pipefail
cd "$(dirname "$0")/.."
pipeline="${1:?usage: slurm/submit_pipeline.sh PIPELINE_YAML}"
opts=()
[ -n "${PARTITION:-}" ] && opts+=(--partition="$PARTITION")
[ "${GPUS:-1}" -gt 0 ] && opts+=(--gres="gpu:${GPUS:-1}")
# shellcheck disable=SC2206
[ -n "${SBATCH_EXTRA:-}" ] && opts+=($SBATCH_EXTRA)
mkdir -p slurm/logs
stages=$("${PYTHON:-.venv/bin/python}" -c "import sys, yaml; print(' '.join(s['name'] for s in yaml.safe_load(open(sys.argv[1]))['stages']))" "$pipeline")
previous=""
for stage in $stages; do
    dep=()
    [ -n "$previous" ] && dep=(--dependency="afterok:$previous")
    previous=$(sbatch --parsable "${opts[@]}" "${dep[@]}" --job-name="echodiff-$stage" \
        slurm/stage.sbatch "$pipeline" "$stage")
    echo "$stage $previous"
done
