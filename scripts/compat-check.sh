#!/usr/bin/env bash
# The test suite on the torch and torchvision that a lent GPU machine has (torch 2.11,
# torchvision 0.26; the lock pins 2.13 and 0.28), on this machine's CPU, so code that only that
# pair would refuse is found before device time is spent on it. Not part of `make test`: it
# installs a second environment from the registry (about 4 GB with torch's CUDA libraries).
#
#   scripts/compat-check.sh                 # the whole suite
#   scripts/compat-check.sh tests/test_imaging.py -k png     # any pytest arguments
#
# The environment (.compat/, ignored) holds every other package at the lock's version; it is
# rebuilt when uv.lock or the versions asked for change. TORCH and TORCHVISION choose another
# pair.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH=${TORCH:-2.11.0}
TORCHVISION=${TORCHVISION:-0.26.0}
ENV_DIR=${COMPAT_DIR:-$PWD/.compat}
UV=.uv-bootstrap/bin/uv
export UV_PYTHON_DOWNLOADS=never
PYTHON=${PYTHON:-python3}
[ -x "$UV" ] || make --no-print-directory "$UV"

stamp="torch==$TORCH torchvision==$TORCHVISION $(sha256sum uv.lock | cut -c1-16)"
if [ "$(cat "$ENV_DIR/.stamp" 2>/dev/null)" != "$stamp" ]; then
    rm -rf "$ENV_DIR"
    "$UV" venv -q --python "$PYTHON" "$ENV_DIR"
    # the lock's versions of everything but torch, torchvision and what they pin themselves
    # (triton, NVIDIA's and CUDA's packages, setuptools)
    "$UV" export --frozen --no-hashes --all-groups --no-emit-project \
        | grep -v '^ *#' \
        | grep -vE '^(torch|torchvision|triton|setuptools|nvidia-[a-z0-9-]+|cuda-[a-z-]+)==' \
        > "$ENV_DIR/requirements.txt"
    printf 'torch==%s\ntorchvision==%s\n' "$TORCH" "$TORCHVISION" >> "$ENV_DIR/requirements.txt"
    VIRTUAL_ENV=$ENV_DIR "$UV" pip install -q -r "$ENV_DIR/requirements.txt"
    VIRTUAL_ENV=$ENV_DIR "$UV" pip install -q --no-deps -e .
    echo "$stamp" > "$ENV_DIR/.stamp"
fi
"$ENV_DIR/bin/python" -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision", torchvision.__version__)'
exec "$ENV_DIR/bin/python" -m pytest -q -p no:cacheprovider "$@"
