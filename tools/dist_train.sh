#!/usr/bin/env bash
# Train with several processes (GPUs, or CPU processes with gloo where there is no GPU):
#   bash tools/dist_train.sh CONFIG NPROC [train.py args]      (see dist_launch.sh)
set -euo pipefail
exec bash "$(dirname "$0")/dist_launch.sh" train.py "$2" "$1" "${@:3}"
