#!/usr/bin/env bash
# Test with several processes (GPUs, or CPU processes with gloo where there is no GPU):
#   bash tools/dist_test.sh CONFIG CKPT NPROC [test.py args]   (see dist_launch.sh)
set -euo pipefail
exec bash "$(dirname "$0")/dist_launch.sh" test.py "$3" "$1" "$2" "${@:4}"
