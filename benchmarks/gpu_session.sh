#!/usr/bin/env bash
# Everything a machine with a CUDA GPU can show, in stages that each fit a 10-minute command:
#
#   OUT=out bash benchmarks/gpu_session.sh build test     # CUDA build, SASS look, every test
#   OUT=out bash benchmarks/gpu_session.sh bench          # `omnifast bench` with its peers
#   OUT=out bash benchmarks/gpu_session.sh suite demo     # pytest-benchmark suite, the demo on the GPU
#
# (no stage named: all of them, in that order). Every stage builds first if this machine has no
# CUDA build yet, so the stages also work one per fresh machine. Peers missing on the machine
# travel as wheels in .whl/ (`pip download --no-deps -d .whl nerfacc==0.5.3`: 54 kB; it builds
# its CUDA scans on first use, inside the bench stage) and are reported as not measured when absent. Logs and JSON go to $OUT
# (default ./out); each stage's wall time is appended to $OUT/stages.txt.
set -uo pipefail
out=${OUT:-out}
mkdir -p "$out"
export OMNIFAST_CUDA=1 PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-16}
cd "$(dirname "$0")/.."

if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

has_cuda_build() {
  python3 -c "import omnifast, sys; sys.exit(not omnifast._C_loader.compiled_backends()['cuda'])" \
    2> /dev/null
}

stage_build() {
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$out/gpu.txt"
  python3 -m pip install --no-build-isolation --no-deps -e . > "$out/build.log" 2>&1 \
    || { tail -40 "$out/build.log"; return 1; }
  python3 -m omnifast info | tee "$out/info.txt"
  # Vector atomics (RED...F32x4 on sm_90) and local-memory traffic (LDL/STL) in the kernels.
  so=$(ls omnifast/_C*.so)
  cuobjdump -sass "$so" > "$out/sass.txt" 2>&1
  echo "sass: $(grep -c 'F32x4' "$out/sass.txt") vector-atomic lines, $(grep -cE 'LDL|STL' "$out/sass.txt") local-memory lines" | tee -a "$out/info.txt"
}

stage_test() {
  python3 -m pytest tests -q -rs 2>&1 | tee "$out/tests.log" | tail -15
}

stage_bench() {
  python3 -m omnifast bench --device cuda --json "$out/bench.json" 2>&1 | tee "$out/bench.txt"
}

stage_suite() {
  python3 -m pytest benchmarks -q --benchmark-json="$out/bench-suite.json" > "$out/bench-suite.log" 2>&1
  tail -5 "$out/bench-suite.log"
}

# The whole system on the GPU (the demo's CUDA settings) with step counts cut to fit one command:
# SDF_STEPS stage I steps (default 1500 of the demo's 6000), GAN_STEPS stage II iterations (default
# 200 of 2000); no benchmark table (the bench stage has it).
stage_demo() {
  python3 -m omnifast demo --out "$out/demo" --steps "${SDF_STEPS:-1500}" --gan-steps "${GAN_STEPS:-200}" \
    --bench none --no-progress > "$out/demo.log" 2>&1
  tail -12 "$out/demo.log"
}

stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=(build test bench suite demo)
for stage in "${stages[@]}"; do
  declare -F "stage_$stage" > /dev/null || { echo "unknown stage: $stage" >&2; exit 2; }
done
status=0
for stage in "${stages[@]}"; do
  if [ "$stage" != build ] && ! has_cuda_build; then
    echo "== build (needed by $stage)"
    stage_build || exit 1
  fi
  echo "== $stage"
  start=$SECONDS
  "stage_$stage" || status=1
  echo "$stage: $((SECONDS - start)) s" | tee -a "$out/stages.txt"
done
exit $status
