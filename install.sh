#!/usr/bin/env bash
# Installs everything afl needs into ./.venv (idempotent), and Debian's
# Fashion-MNIST files for the offline demo. Usage: ./install.sh [--with-torch]
set -euo pipefail
cd "$(dirname "$0")"

FMNIST=/usr/share/datasets/fashion-mnist
if [ ! -d "$FMNIST" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[install] apt-get install dataset-fashion-mnist"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "[install] Fashion-MNIST missing: run 'sudo apt-get install dataset-fashion-mnist'" \
         "or put the IDX files in a folder and pass --config.data.dir=FOLDER" >&2
  fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.afl-requirements
want="$(cat requirements.txt) torch=${1:-}"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/pip install -q -r requirements.txt 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -c "import jax, flax, optax, chex, ml_collections, dp_accounting, orbax.checkpoint, safetensors, mlxtend"
  if [ "${1:-}" = "--with-torch" ]; then
    # CPU torch, only for the optional parity tests against transformers.
    .venv/bin/pip install -q torch==2.13.0 2>&1 | grep -v "^WARNING: Location" || true
  fi
  echo "$want" > "$stamp"
fi
echo "[install] ready: .venv ($(.venv/bin/python -c 'import jax; print("jax", jax.__version__)'))"
