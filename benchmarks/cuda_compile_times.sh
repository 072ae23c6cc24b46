#!/usr/bin/env bash
# CPU and wall seconds of each .cu file's compile for one architecture (default sm_90), as
# setup.py's CUDA build compiles them (torch's half-conversion defines, -O3), one at a time, and
# the table of this checkout's kernels from the ptxas report (.ci/cuda_resources.py). Optionally
# the times of another checkout's csrc/ too (a baseline).
#   bash benchmarks/cuda_compile_times.sh [ARCH] [OTHER_CSRC] > times.txt
set -euo pipefail
arch=${1:-sm_90}
cd "$(dirname "$0")/.."
out=$(mktemp -d)
compile() {  # $1: the .cu file, $2: its csrc/ root
  /usr/bin/time -f "%U %S %e" -o "$out/time" nvcc -std=c++17 -O3 -arch="$arch" -I"$2" \
    -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__ \
    -D__CUDA_NO_HALF2_OPERATORS__ -Xptxas=-v -c "$1" -o "$out/k.o" 2> "$out/ptxas"
  awk -v f="$1" '{ printf "%-52s %8.1f %8.1f\n", f, $1 + $2, $3 }' "$out/time"
  [ "$2" != csrc ] || cat "$out/ptxas" >> "$out/all-ptxas.log"  # the table: this checkout's kernels
}
printf '%-52s %8s %8s\n' "file ($arch)" "CPU s" "wall s"
for f in $(ls csrc/*/*.cu); do compile "$f" csrc; done
if [ $# -ge 2 ]; then
  for f in $(ls "$2"/*/*.cu); do compile "$f" "$2"; done
fi
python3 .ci/cuda_resources.py "$out/all-ptxas.log" --arch "$arch" || true
rm -rf "$out"
