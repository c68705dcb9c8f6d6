#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment with the pinned stack.
#
#   bash tools/setup_env.sh            # idempotent: seconds when everything is present
#
# Environment variables:
#   ECC_VENV          where the venv lives            (default: <repo>/.venv)
#   ECC_PYTHON        interpreter used to create it   (default: python3.11, else python3)
#   ECC_WHEEL_CACHE   where a locally built mmcv wheel is kept and reused
#                     (default: ~/.cache/ecc_mmdet/wheels)
#   ECC_MMCV_WHEELS   extra folder with a prebuilt mmcv wheel (default: <repo>/../shared/wheels)
#
# Why this is a script and not `pip install -r`: mmcv 2.1.0 has no wheel for torch 2.13 and must be
# compiled from its sdist *without* build isolation (it imports torch and pkg_resources at build
# time, so setuptools<82 and torch must already be installed). That takes 15-25 min on 2 cores, so
# we use a prebuilt wheel when one is available and otherwise build once and cache the wheel.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ECC_VENV:-$REPO/.venv}"
WHEEL_CACHE="${ECC_WHEEL_CACHE:-$HOME/.cache/ecc_mmdet/wheels}"
SHARED_WHEELS="${ECC_MMCV_WHEELS:-$REPO/../shared/wheels}"
MMCV_VERSION=2.1.0

log() { printf '[setup] %s\n' "$*"; }

if [ -z "${ECC_PYTHON:-}" ]; then
  if command -v python3.11 >/dev/null 2>&1; then ECC_PYTHON=python3.11; else ECC_PYTHON=python3; fi
fi

# The stamp records exactly what was installed; if it matches, there is nothing to do.
stamp_content() {
  cat "$REPO/requirements/runtime.txt" "$REPO/requirements/serving.txt" "$REPO/requirements/edge.txt" \
    "$REPO/requirements/robustness.txt" "$REPO/requirements/tests.txt" "$REPO/pyproject.toml" \
    "$REPO/edge/pyproject.toml" "$REPO/ecc_mmdet/version.py"
  echo "mmcv==$MMCV_VERSION"
}
STAMP="$VENV/.ecc_mmdet_stamp"
if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(stamp_content | sha256sum)" = "$(cat "$STAMP")" ]; then
  log "environment up to date: $VENV"
  exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtual environment $VENV with $ECC_PYTHON"
  "$ECC_PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)

log "installing build prerequisites (torch 2.13.0 CPU, setuptools<82)"
"${PIP[@]}" install -q "setuptools==80.9.0" wheel "torch==2.13.0" "numpy==2.4.6"

# ---- mmcv 2.1.0 with compiled ops -----------------------------------------------------------
if "$PY" -c "import mmcv, mmcv.ops; assert mmcv.__version__ == '$MMCV_VERSION'" >/dev/null 2>&1; then
  log "mmcv $MMCV_VERSION with ops already installed"
else
  mkdir -p "$WHEEL_CACHE"
  wheel=""
  if [ -d "$SHARED_WHEELS" ] && ls "$SHARED_WHEELS"/mmcv-"$MMCV_VERSION"-*.whl >/dev/null 2>&1; then
    if [ -f "$SHARED_WHEELS/SHA256SUMS" ] && ! (cd "$SHARED_WHEELS" && sha256sum -c --ignore-missing --quiet SHA256SUMS); then
      log "WARNING: checksum mismatch in $SHARED_WHEELS; ignoring the prebuilt wheel"
    else
      wheel="$(ls "$SHARED_WHEELS"/mmcv-"$MMCV_VERSION"-*.whl | head -n1)"
      log "using prebuilt mmcv wheel $wheel"
    fi
  fi
  if [ -z "$wheel" ] && ls "$WHEEL_CACHE"/mmcv-"$MMCV_VERSION"-*.whl >/dev/null 2>&1; then
    wheel="$(ls "$WHEEL_CACHE"/mmcv-"$MMCV_VERSION"-*.whl | head -n1)"
    log "using cached mmcv wheel $wheel"
  fi
  if [ -z "$wheel" ]; then
    log "building mmcv $MMCV_VERSION from source with ops: 15-25 min on 2 cores, once per machine"
    log "(the wheel is cached in $WHEEL_CACHE; build log: $WHEEL_CACHE/mmcv-build.log)"
    "${PIP[@]}" install -q "mmengine==0.10.7" addict packaging Pillow pyyaml yapf "opencv-python==5.0.0.93"
    MMCV_WITH_OPS=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" "${PIP[@]}" wheel --no-deps --no-build-isolation \
      "mmcv==$MMCV_VERSION" -w "$WHEEL_CACHE" 2>&1 | tee "$WHEEL_CACHE/mmcv-build.log" | \
      grep --line-buffered -E "^(Building|Created|Successfully|ERROR)|error:" || true
    wheel="$(ls "$WHEEL_CACHE"/mmcv-"$MMCV_VERSION"-*.whl 2>/dev/null | head -n1 || true)"
    [ -n "$wheel" ] || { log "ERROR: mmcv build failed; see $WHEEL_CACHE/mmcv-build.log and README 'Troubleshooting'"; exit 1; }
  fi
  "${PIP[@]}" install -q --no-build-isolation "$wheel"
fi

log "installing pinned runtime, serving, edge, robustness and test requirements"
"${PIP[@]}" install -q -r "$REPO/requirements/runtime.txt" -r "$REPO/requirements/serving.txt" \
  -r "$REPO/requirements/edge.txt" -r "$REPO/requirements/robustness.txt" \
  -r "$REPO/requirements/tests.txt"
# metadata the former setup.py left in the checkout shadows the installed one on sys.path
rm -rf "$REPO/ecc_mmdet.egg-info"
# the device-only distribution (edge/) would own ecc_edge a second time
"${PIP[@]}" uninstall -y -q ecc-mmdet-edge 2>/dev/null || true
"${PIP[@]}" install -q --no-build-isolation --no-deps -e "$REPO"

# torchvision cannot work with the CPU torch here; a stray install breaks mmdet/mmengine imports.
if "$PY" -c "import importlib.util,sys; sys.exit(0 if importlib.util.find_spec('torchvision') else 1)"; then
  log "removing torchvision (it cannot import with the CPU torch build)"
  "${PIP[@]}" uninstall -y -q torchvision
fi

"$PY" - <<'PY'
import torch, mmcv, mmcv.ops, mmengine, mmdet, constriction, pycocotools, ecc_mmdet
import fastapi, uvicorn, httpx, prometheus_client, ray, onnxruntime, ecc_edge.runtime
print(f'[setup] torch {torch.__version__} | mmcv {mmcv.__version__} | mmengine {mmengine.__version__} '
      f'| mmdet {mmdet.__version__} | ecc_mmdet {ecc_mmdet.__version__}')
PY
stamp_content | sha256sum > "$STAMP"
log "environment ready: $VENV"
