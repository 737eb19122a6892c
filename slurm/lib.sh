# Sourced by every echodiff sbatch script: project environment, the time-limit trap, requeue on request.
#
# Environment (all optional):
#   ECHODIFF_ACTIVATE  command that activates the Python environment (default: source .venv/bin/activate;
#                      on a cluster e.g. "conda activate echodiff")
#   MLFLOW_TRACKING_URI  a shared tracking server; default: the repository's mlruns/ store
set -uo pipefail
cd "${SLURM_SUBMIT_DIR:?submit from the repository root}"
activate="${ECHODIFF_ACTIVATE:-source .venv/bin/activate}"
if ! eval "$activate" || ! python -c "import echodiff" 2>/dev/null; then
    echo "slurm: \`$activate\` did not give a python that imports echodiff (python: $(command -v python || echo none));" \
         "run \`make install\` in $PWD, or set ECHODIFF_ACTIVATE (e.g. \"conda activate echodiff\")" >&2
    exit 2
fi
mkdir -p slurm/logs
export ECHODIFF_STOP_FILE="$PWD/slurm/logs/stop-${SLURM_JOB_ID}"
rm -f "$ECHODIFF_STOP_FILE"
echo "slurm: job ${SLURM_JOB_ID} on $(hostname), restart ${SLURM_RESTART_COUNT:-0}, $(date -Is)"
# Slurm sends USR1 to this script before the time limit (#SBATCH --signal=B:USR1@<seconds>): training loops
# see the stop file, write their checkpoint and exit; run_requeueable then requeues the job.
trap 'echo "slurm: stop requested ($(date -Is)): checkpointing"; touch "$ECHODIFF_STOP_FILE"' USR1

# run_requeueable CMD...: run CMD; if a stop was requested, requeue this job (it resumes from the checkpoint).
run_requeueable() {
    "$@" &
    local pid=$! status
    while true; do
        wait "$pid"
        status=$?
        if [ "$status" -gt 128 ] && kill -0 "$pid" 2>/dev/null; then continue; fi  # the trap interrupted wait
        break
    done
    if [ -e "$ECHODIFF_STOP_FILE" ]; then
        rm -f "$ECHODIFF_STOP_FILE"
        echo "slurm: requeueing job ${SLURM_JOB_ID}"
        scontrol requeue "${SLURM_JOB_ID}"
        exit 0
    fi
    return "$status"
}

# launch MODULE ARGS...: python -m MODULE on one process, or accelerate across every GPU of every node.
launch() {
    local gpus="${SLURM_GPUS_ON_NODE:-0}" nodes="${SLURM_NNODES:-1}"
    if [ "$gpus" -le 1 ] && [ "$nodes" -le 1 ]; then
        run_requeueable python -m "$@"
    else
        local head
        head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
        run_requeueable srun --ntasks-per-node=1 bash -c "accelerate launch --multi_gpu \
            --num_machines $nodes --num_processes $((gpus * nodes)) --machine_rank \$SLURM_NODEID \
            --main_process_ip $head --main_process_port ${ECHODIFF_PORT:-29500} -m $*"
    fi
}
