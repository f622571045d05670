#!/usr/bin/env bash
# Stage what bench/gpu.py needs on an offline GPU host that has Python 3.12 (x86-64) with numpy,
# pandas, pyarrow, matplotlib, CuPy, nvidia-ml-py, psutil, httpx and the CUDA runtime, but no
# xgboost, ray or pydantic, no package index, and takes at most 64 MiB a transfer (the working
# tree, about 12 MiB, included):
#
#   bench/gpu-wheels.sh            # downloads, unpacks, compresses, splits into .gpu/p1, .gpu/p2, ...
#
# The wheels are the project's pins (constraints.txt); xgboost is the full CUDA build at the pin of
# xgboost-cpu. They are unpacked into one site folder (a wheel is its files as they lie in
# site-packages), less what training never loads (Ray's Java jars, RLlib, Ray LLM, the dashboard's
# web client: 206 MiB of wheels become 114 MiB), compressed with xz (about 3 minutes on 2 cores)
# and split into parts of PART_MIB (default 40) MiB, each in an ignored folder of its own, one
# transfer each. .gpu/commands.txt lists the command of each transfer, in order: each copies its
# part to /tmp/site-parts on the host; the last one runs bench/gpu-host.sh, which joins the parts,
# checks their SHA-256, unpacks them into /tmp/site and runs the check and the timings, writing
# everything under $OUT as it goes.
set -euo pipefail
cd "$(dirname "$0")/.."

PART_MIB=${PART_MIB:-40}
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

rm -rf .gpu && mkdir -p .gpu/wheels .gpu/site
requirements=("xgboost==$(pin xgboost-cpu)")
for name in "${PACKAGES[@]}"; do requirements+=("$name==$(pin "$name")"); done
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d .gpu/wheels "${requirements[@]}"

for wheel in .gpu/wheels/*.whl; do
  "$PYTHON" -m zipfile -e "$wheel" .gpu/site
done
rm -rf .gpu/site/ray/jars .gpu/site/ray/rllib .gpu/site/ray/llm .gpu/site/ray/dashboard/client/build
tar -C .gpu/site -cf - . | xz -9 -T2 > .gpu/site.tar.xz
sha=$(sha256sum .gpu/site.tar.xz | cut -d' ' -f1)
split -b "${PART_MIB}m" -d -a 1 .gpu/site.tar.xz .gpu/site.tar.xz.
parts=(.gpu/site.tar.xz.*)
i=0
for part in "${parts[@]}"; do
  i=$((i + 1))
  mkdir -p ".gpu/p$i" && mv "$part" ".gpu/p$i/"
done
rm -rf .gpu/site .gpu/site.tar.xz

{
  echo "# One transfer per line, in order, each carrying the folder it names (the working tree travels too)."
  for k in $(seq 1 $((i - 1))); do
    echo ".gpu/p$k: mkdir -p /tmp/site-parts && cp .gpu/p$k/* /tmp/site-parts/ && ls -l /tmp/site-parts"
  done
  echo ".gpu/p$i: mkdir -p /tmp/site-parts && cp .gpu/p$i/* /tmp/site-parts/ && SITE_SHA256=$sha bash bench/gpu-host.sh"
} > .gpu/commands.txt

echo "gpu-wheels: ${#requirements[@]} wheels, $(du -cm .gpu/p*/* | tail -1 | cut -f1) MiB compressed, in $i parts (.gpu/p1 .. .gpu/p$i)"
echo "gpu-wheels: the commands, one transfer each: .gpu/commands.txt"
