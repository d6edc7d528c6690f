#!/bin/bash
# Pretraining (or fine-tuning) on several machines under SLURM: one `accelerate launch` per machine, each starting
# that machine's GPU processes (training/configs/multi_node.yaml; CONFIG=training/configs/multi_node_deepspeed.yaml
# for DeepSpeed ZeRO-2). Submit from the repository's folder, with the output folder on a file system every node
# mounts (it is where the global main process writes the run and every process its part of the saved states):
#
#   sbatch --nodes 4 training/configs/slurm_multi_node.sh training/pretrain.py --recipe svitt --output-dir /shared/svitt
#
# A job that stops (time limit, preemption, `scontrol requeue`) continues from the last saved state when the same
# command runs again with the same output folder.
#SBATCH --job-name=svitt
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1            # one launcher per machine: it starts the machine's processes
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64             # data-loader workers decode videos: give them the machine's cores
#SBATCH --time=72:00:00
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out

set -euo pipefail

if [ $# -eq 0 ]; then
    echo "usage: sbatch $0 training/pretrain.py|training/finetune.py [its options, with --output-dir on a shared file system]" >&2
    exit 2
fi

export CONFIG=${CONFIG:-training/configs/multi_node.yaml}
export GPUS_PER_NODE=${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-8}}
# The processes of every machine meet the main process (machine 0: the first host of the job) on one port.
export MAIN_HOST=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export MAIN_PORT=${MAIN_PORT:-$((20000 + SLURM_JOB_ID % 20000))}

# SLURM_NODEID (0 .. nodes-1) is the machine rank: expanded by each task, on its own machine.
srun --kill-on-bad-exit=1 --ntasks-per-node=1 bash -c '
    exec accelerate launch --config_file "$CONFIG" \
        --num_machines "$SLURM_NNODES" --num_processes $((SLURM_NNODES * GPUS_PER_NODE)) \
        --machine_rank "$SLURM_NODEID" --main_process_ip "$MAIN_HOST" --main_process_port "$MAIN_PORT" "$@"
' bash "$@"
