#!/usr/bin/env bash
# rlkit on a Slurm allocation: a Ray head on the first node, a Ray worker on every other node, and
# `rlkit train` joining them. Everything after the script's name goes to `rlkit train`.
#
#   sbatch launch/slurm.sh --recipe gsm8k-qwen2.5-7b --output_dir $SCRATCH/runs/gsm8k
#   RLKIT_DRY_RUN=1 SLURM_JOB_NODELIST=... bash launch/slurm.sh ...   # print the commands, run nothing
#
# scancel (and --signal=B:TERM@300 before the time limit) sends SIGTERM; the script forwards it to
# rlkit, which finishes its step, checkpoints and writes stopped.json; `sbatch launch/slurm.sh
# --resume RUN` then continues the run. Checked by tests/test_launch_configs.py (syntax, directives,
# dry run).
#SBATCH --job-name=rlkit
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=48:00:00
#SBATCH --signal=B:TERM@300
#SBATCH --output=rlkit-%j.log
set -euo pipefail

run() {  # run a command, or print it under RLKIT_DRY_RUN
    if [[ -n "${RLKIT_DRY_RUN:-}" ]]; then printf '%s\n' "$*"; else "$@"; fi
}

nodes=($(scontrol show hostnames "${SLURM_JOB_NODELIST:?run this under sbatch, or set it for a dry run}" 2>/dev/null \
         || echo "${SLURM_JOB_NODELIST//,/ }"))
head=${nodes[0]}
port=${RAY_PORT:-6379}
gpus=${SLURM_GPUS_ON_NODE:-8}
cpus=${SLURM_CPUS_PER_TASK:-64}

run srun --nodes=1 --ntasks=1 -w "$head" ray start --head --node-ip-address="$head" --port="$port" \
    --num-cpus="$cpus" --num-gpus="$gpus" --block &
run sleep 20
for node in "${nodes[@]:1}"; do
    run srun --nodes=1 --ntasks=1 -w "$node" ray start --address="$head:$port" --num-cpus="$cpus" \
        --num-gpus="$gpus" --block &
done
run sleep 20

# forward scancel's SIGTERM to rlkit, which checkpoints before it exits
run rlkit train --cluster.address "$head:$port" "$@" &
trainer=$!
trap 'kill -TERM "$trainer" 2>/dev/null' TERM
wait "$trainer"
