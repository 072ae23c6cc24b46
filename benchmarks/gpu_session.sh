#!/usr/bin/env bash
# Everything a machine with a CUDA GPU can show, in one command: the CUDA build, every test
# (the CUDA ones run there), `omnifast bench` and the pytest-benchmark suite, a look at the
# kernels' machine code, and the semantic SDF's full-size network trained on the GPU (steps per
# second and held-out accuracy; needs smplx, scikit-image, Pillow and tqdm, carried as wheels
# where there is no network). Logs and JSON go to $OUT (default ./out).
set -uo pipefail
out=${OUT:-out}
mkdir -p "$out"
export OMNIFAST_CUDA=1 PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-16}
cd "$(dirname "$0")/.."

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$out/gpu.txt"
python3 -m pip install --no-build-isolation --no-deps -e . > "$out/build.log" 2>&1 \
  || { tail -40 "$out/build.log"; exit 1; }
python3 -m omnifast info | tee "$out/info.txt"

# Vector atomics (RED...F32x4 on sm_90) and local-memory traffic (LDL/STL) in the kernels.
so=$(ls omnifast/_C*.so)
cuobjdump -sass "$so" > "$out/sass.txt" 2>&1
echo "sass: $(grep -c 'F32x4' "$out/sass.txt") vector-atomic lines, $(grep -cE 'LDL|STL' "$out/sass.txt") local-memory lines" | tee -a "$out/info.txt"

python3 -m pytest tests -q -rs 2>&1 | tee "$out/tests.log" | tail -15
# Peers that are importable there (trimesh, Warp) join the closest-point table; missing ones are
# reported as not measured.
python3 -m omnifast bench --device cuda --json "$out/bench.json" 2>&1 | tee "$out/bench.txt"
python3 -m pytest benchmarks -q --benchmark-json="$out/bench-suite.json" > "$out/bench-suite.log" 2>&1
tail -5 "$out/bench-suite.log"

# Stage I on the GPU: the full-size network for SDF_MINUTES (default 5) minutes, no benchmark table.
python3 -m omnifast demo --out "$out/demo" --minutes "${SDF_MINUTES:-5}" --bench none --no-progress \
  > "$out/demo.log" 2>&1
tail -12 "$out/demo.log"
