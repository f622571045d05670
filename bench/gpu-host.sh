#!/usr/bin/env bash
# On the offline GPU host, after the last part arrived (bench/gpu-wheels.sh): join the parts, check
# them, unpack them into /tmp/site, then check the CUDA path and time it, every result under $OUT
# as it comes (so that a timeout still brings back what was done). Each step has its own timeout;
# the first that fails ends the run, so that a second try still fits in the time left.
#
#   SITE_SHA256=... bash bench/gpu-host.sh     # SCALE (250) and STEPS ("bench folds distributed")
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-out}
SCALE=${SCALE:-250}
STEPS=${STEPS:-bench folds distributed}
wanted() { [[ " $STEPS " == *" $1 "* ]]; }
mkdir -p "$OUT"
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0
log() { echo "[gpu-host $(date +%T)] $*" | tee -a "$OUT/steps.log"; }
step() {  # step NAME SECONDS COMMAND...: its output in $OUT/NAME.log
  local name=$1 seconds=$2
  shift 2
  log "$name: $*"
  local began=$SECONDS
  timeout "$seconds" "$@" > >(tee "$OUT/$name.log") 2>&1
  local code=$?
  log "$name: exit $code after $((SECONDS - began)) s"
  [ "$code" -eq 0 ] || { log "stopping: $name failed"; exit "$code"; }
}

if [ ! -f /tmp/site/.complete ]; then
  step unpack 120 bash -c "cat /tmp/site-parts/site.tar.xz.* > /tmp/site.tar.xz \
    && echo '${SITE_SHA256:?} /tmp/site.tar.xz' | sha256sum -c - \
    && mkdir -p /tmp/site && xz -dc -T0 /tmp/site.tar.xz | tar -C /tmp/site -xf - && touch /tmp/site/.complete"
fi
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
step smoke 120 python3 -c "
import cupy, numpy as np, xgboost as xgb, ray
x = cupy.random.default_rng(0).random((100_000, 2)); y = x[:, 0] * 3 + x[:, 1]
booster = xgb.train({'device': 'cuda', 'tree_method': 'hist'}, xgb.QuantileDMatrix(x, y), 5)
print('xgboost', xgb.__version__, 'cuda', xgb.build_info().get('USE_CUDA'), 'cupy', cupy.__version__,
      'ray', ray.__version__, 'predicted on', type(booster.inplace_predict(x)).__module__)
"
data=/tmp/bench-x$SCALE
# The check and the timings on the sample x SCALE: both devices, the stage beside the plain script.
wanted bench && step bench 300 python3 -m bench.gpu --scale "$SCALE" --out "$data" --devices cuda,cpu --repeat 2 \
  --json "$OUT/bench.json"
# The daily deployment's 4 backtest folds on the GPU, on the same stage 2.
wanted folds && step folds 150 python3 -m bench.train --out "$data" --devices cuda --folds 4 --repeat 1 --json "$OUT/folds.json"
# Ray Train's distributed layout forced on the one GPU: what the single layout saves.
wanted distributed && step distributed 150 python3 -m bench.train --out "$data" --devices cuda --layouts distributed --repeat 1 \
  --no-plain --json "$OUT/distributed.json"
log "done"
