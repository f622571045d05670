#!/usr/bin/env bash
# Stage what bench/gpu.py needs on an offline GPU host that has Python 3.12 (x86-64) with numpy,
# pandas, pyarrow, matplotlib, grpcio, protobuf, pyyaml, requests, psutil, click, filelock, fsspec,
# aiohttp and the CUDA runtime, but no xgboost, ray or pydantic, no package index, and takes at most
# 64 MiB a transfer (the working tree, about 12 MiB, included):
#
#   bench/gpu-wheels.sh            # downloads into .gpu/wheels, splits into .gpu/p1, .gpu/p2, ...
#
# The wheels are the project's pins (constraints.txt); xgboost is the full CUDA build at the pin of
# xgboost-cpu. They travel as one tar split into parts of PART_MIB (default 48) MiB, each part in
# an ignored folder of its own, one transfer each. .gpu/commands.txt lists the command of each
# transfer, in order: each copies its part to /tmp/wheels on the host; the last one then joins
# them, checks the SHA-256, installs with pip --target, prints nvidia-smi and runs the check, its
# output kept under $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."

PART_MIB=${PART_MIB:-48}
PYTHON=${PYTHON:-python3}
# Beyond the host's packages: what compute/ imports (XGBoost, Ray with Ray Train, pydantic
# settings, Bottleneck for the rolling median) and what those need that the host lacks.
PACKAGES=(ray pydantic pydantic_core pydantic-settings python-dotenv typing-inspection annotated-types
          jsonschema jsonschema-specifications referencing rpds-py bottleneck tensorboardX)

pin() {  # the version constraints.txt pins for $1
  local found
  found=$(grep -i -E "^$1==" constraints.txt | head -1 | cut -d= -f3)
  [ -n "$found" ] || { echo "gpu-wheels: $1 is not pinned in constraints.txt" >&2; exit 2; }
  echo "$found"
}

rm -rf .gpu && mkdir -p .gpu/wheels
requirements=("xgboost==$(pin xgboost-cpu)")
for name in "${PACKAGES[@]}"; do requirements+=("$name==$(pin "$name")"); done
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d .gpu/wheels "${requirements[@]}"

(cd .gpu/wheels && tar -cf ../wheels.tar ./*.whl)
split -b "${PART_MIB}m" -d -a 1 .gpu/wheels.tar .gpu/wheels.tar.
parts=(.gpu/wheels.tar.*)
i=0
for part in "${parts[@]}"; do
  i=$((i + 1))
  mkdir -p ".gpu/p$i" && mv "$part" ".gpu/p$i/"
done
sha=$(sha256sum .gpu/wheels.tar | cut -d' ' -f1)
rm .gpu/wheels.tar

{
  echo "# One transfer per line, in order, each carrying the folder it names (the working tree travels too)."
  for k in $(seq 1 $((i - 1))); do
    echo ".gpu/p$k: mkdir -p /tmp/wheels && cp .gpu/p$k/* /tmp/wheels/ && ls -l /tmp/wheels"
  done
  echo ".gpu/p$i: set -o pipefail; mkdir -p /tmp/wheels && cp .gpu/p$i/* /tmp/wheels/ && (cd /tmp/wheels && cat wheels.tar.* > wheels.tar && echo '$sha  wheels.tar' | sha256sum -c - && tar -xf wheels.tar && python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site ./*.whl) && export PYTHONPATH=/tmp/site RAY_USAGE_STATS_ENABLED=0 PYTHONUNBUFFERED=1 && nvidia-smi | tee \$OUT/nvidia-smi.txt && python3 -m bench.gpu --json \$OUT/gpu.json 2>&1 | tee \$OUT/gpu.log"
} > .gpu/commands.txt

echo "gpu-wheels: ${#requirements[@]} wheels, $(du -sm .gpu/wheels | cut -f1) MiB, in $i parts of at most $PART_MIB MiB (.gpu/p1 .. .gpu/p$i)"
echo "gpu-wheels: the commands, one transfer each: .gpu/commands.txt"
