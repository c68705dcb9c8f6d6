#!/usr/bin/env bash
# The torchrun invocation shared by dist_train.sh and dist_test.sh:
#   bash tools/dist_launch.sh TOOL.py NPROC [tool args]
# NPROC GPUs on a GPU machine; on a CPU-only machine NPROC CPU processes with the gloo backend
# (the tools set that up). PYTHON picks the interpreter (default: python, e.g. the venv's);
# NNODES, NODE_RANK, MASTER_ADDR and PORT as for torchrun.
set -euo pipefail
TOOL=$1
NPROC=$2
PYTHON=${PYTHON:-python}
PYTHONPATH="$(dirname "$0")/..":${PYTHONPATH:-} \
"$PYTHON" -m torch.distributed.run \
    --nnodes="${NNODES:-1}" \
    --node_rank="${NODE_RANK:-0}" \
    --master_addr="${MASTER_ADDR:-127.0.0.1}" \
    --nproc_per_node="$NPROC" \
    --master_port="${PORT:-29500}" \
    "$(dirname "$0")/$TOOL" \
    "${@:3}" \
    --launcher pytorch
