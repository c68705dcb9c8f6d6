#!/usr/bin/env bash
# Several processes with torchrun and mmengine's launcher:
#   bash tools/dist_train.sh CONFIG NPROC [train.py args]
# NPROC GPUs on a GPU machine; on a CPU-only machine NPROC CPU processes with the gloo backend
# (tools/train.py sets that up). PYTHON picks the interpreter (default: python, e.g. the venv's).
set -euo pipefail
CONFIG=$1
NPROC=$2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}
PYTHON=${PYTHON:-python}

PYTHONPATH="$(dirname "$0")/..":${PYTHONPATH:-} \
"$PYTHON" -m torch.distributed.run \
    --nnodes="$NNODES" \
    --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" \
    --nproc_per_node="$NPROC" \
    --master_port="$PORT" \
    "$(dirname "$0")/train.py" \
    "$CONFIG" \
    --launcher pytorch "${@:3}"
