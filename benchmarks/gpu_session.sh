#!/usr/bin/env bash
# What a machine with an NVIDIA H100/H200 (sm_90) shows, in one command of at most 8 minutes:
#
#   OUT=out bash benchmarks/gpu_session.sh                # build, CUDA tests, kernel benchmarks
#   DRY_RUN=1 OUT=out bash benchmarks/gpu_session.sh      # (or --dry-run) no GPU: the rest checked
#   OUT=out bash benchmarks/gpu_session.sh suite demo     # longer stages, by name only
#
# Default stages, each under its own timeout (seconds, overridable): build (BUILD_S=260: the
# sm_90 build, `omnifast info`, the SASS look), test (TEST_S=140: `pytest -m cuda`), bench
# (BENCH_S=50: `omnifast bench kernels`, the smallest case of each operator; BENCH_OP=all adds the
# render and a training iteration, which need smplx; BENCH_CASES=N or all). A stage may also use
# what earlier stages left unused. A failed or timed-out stage does not stop the next ones; a
# failed build skips them. Files in $OUT (default ./out): gpu.txt, build.log, tests.log,
# bench.txt, bench.json, summary.txt; the summary table is printed last.
#
# The dry run (a machine without a GPU) builds for the CPU, collects the CUDA tests (also with
# trimesh, rtree and smplx hidden, as on a machine without them), runs the bench harness on the
# CPU with tiny sizes, and says which GPU steps it skipped.
#
# Python packages missing on the machine travel as wheels in .whl/ (`pip download --no-deps -d
# .whl nerfacc==0.5.3`); peers absent are reported as not measured.
# shellcheck disable=SC2317  # the stage functions run through `timeout bash -c`
set -uo pipefail
[ "${1:-}" = --dry-run ] && { DRY_RUN=1; shift; }
export DRY_RUN=${DRY_RUN:-0}
mkdir -p "${OUT:-out}" || exit 1
export out PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16}
out=$(cd "${OUT:-out}" && pwd)  # absolute: the stages run in the repository root
cd "$(dirname "$0")/.." || exit 1
if [ "$DRY_RUN" = 1 ]; then
  export OMNIFAST_CUDA=0
  budgets=(build "${BUILD_S:-1800}" test "${TEST_S:-300}" bench "${BENCH_S:-300}")
else
  export OMNIFAST_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
  budgets=(build "${BUILD_S:-260}" test "${TEST_S:-140}" bench "${BENCH_S:-50}")
fi
budgets+=(suite "${SUITE_S:-600}" demo "${DEMO_S:-600}")

if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

# A build with CUDA kernels and a GPU to run them (dry run: any build).
has_build() {
  python3 -c "import omnifast, sys, torch
sys.exit(not ('$DRY_RUN' == '1' or omnifast._C_loader.compiled_backends()['cuda'] and torch.cuda.is_available()))" \
    2> /dev/null
}

stage_build() {
  if [ "$DRY_RUN" = 1 ]; then
    echo "dry run: CPU build; nvidia-smi skipped" | tee "$out/gpu.txt"
  else
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 | tee "$out/gpu.txt"
  fi
  python3 -m pip install -v --no-build-isolation --no-deps -e . > "$out/build.log" 2>&1 \
    || { tail -40 "$out/build.log"; return 1; }
  python3 -m omnifast info | tee -a "$out/gpu.txt" || return 1
  # A bad argument must come back as an error message: a build whose C++ runtime is broken
  # (setup.py's shared_cxx_runtime) crashes here rather than in every test.
  python3 -c "import torch, omnifast
try:
    torch.ops.omnifast.composite(torch.zeros(2, 4, 3), torch.zeros(2, 5), torch.zeros(2, 4),
                                 torch.tensor([0.1]), None, 0, 0, False)
except RuntimeError:
    print('error messages: ok')
else:
    raise SystemExit('error messages: a bad shape passed')" 2>&1 | tee -a "$out/gpu.txt"
  [ "${PIPESTATUS[0]}" = 0 ] || return 1
  if [ "$DRY_RUN" = 1 ]; then
    echo "dry run: SASS look skipped" | tee -a "$out/gpu.txt"
    return 0
  fi
  # Vector atomics (RED...F32x4 on sm_90) and local-memory traffic (LDL/STL) in the kernels.
  cuobjdump -sass "$(python3 -c 'import omnifast._C as c; print(c.__file__)')" > /tmp/omnifast-sass.txt 2>&1
  echo "sass: $(grep -c 'F32x4' /tmp/omnifast-sass.txt) vector-atomic lines, $(grep -cE 'LDL|STL' /tmp/omnifast-sass.txt) local-memory lines" | tee -a "$out/gpu.txt"
  awk '/Function :/ {f = $3} /LDL|STL/ {n[f]++} END {for (f in n) print n[f], f}' /tmp/omnifast-sass.txt \
    | sort -rn | head -10 | sed 's/^/  local memory: /' | tee -a "$out/gpu.txt"
}

stage_test() {
  if [ "$DRY_RUN" = 1 ]; then
    python3 -m pytest -m cuda --collect-only -q > "$out/tests.log" 2>&1 || { tail -30 "$out/tests.log"; return 1; }
    tail -1 "$out/tests.log"
    echo "== collection with trimesh, rtree and smplx hidden" >> "$out/tests.log"
    python3 -c "import sys; sys.modules.update(trimesh=None, rtree=None, smplx=None); import pytest
sys.exit(pytest.main(['-m', 'cuda', '--collect-only', '-q', '-rs']))" >> "$out/tests.log" 2>&1 \
      || { tail -30 "$out/tests.log"; return 1; }
    echo "without trimesh, rtree, smplx: $(tail -1 "$out/tests.log")"
    echo "dry run: running the CUDA tests skipped"
    return 0
  fi
  python3 -m pytest -m cuda -q --durations=15 > "$out/tests.log" 2>&1
  local rc=$?
  tail -15 "$out/tests.log"
  return "$rc"
}

stage_bench() {
  if [ "$DRY_RUN" = 1 ]; then
    echo "dry run: CUDA benchmarks skipped; the harness on the CPU with tiny sizes instead"
    set -- --device cpu --quick --runs 1
  else
    set -- --device cuda
  fi
  [ "${BENCH_CASES:-1}" = all ] || set -- "$@" --cases "${BENCH_CASES:-1}"
  python3 -m omnifast bench "${BENCH_OP:-kernels}" "$@" --json "$out/bench.json" > "$out/bench.txt" 2>&1
  local rc=$?
  cat "$out/bench.txt"
  return "$rc"
}

stage_suite() {
  python3 -m pytest benchmarks -q --benchmark-json="$out/bench-suite.json" > "$out/bench-suite.log" 2>&1
  local rc=$?
  tail -5 "$out/bench-suite.log"
  return "$rc"
}

# The whole system on the GPU (the demo's CUDA settings) with step counts cut to fit one command:
# SDF_STEPS stage I steps (default 1500 of the demo's 6000), GAN_STEPS stage II iterations (default
# 200 of 2000); no benchmark table (the bench stage has it). Needs smplx.
stage_demo() {
  python3 -m omnifast demo --out "$out/demo" --steps "${SDF_STEPS:-1500}" --gan-steps "${GAN_STEPS:-200}" \
    --bench none --no-progress > "$out/demo.log" 2>&1
  local rc=$?
  tail -12 "$out/demo.log"
  return "$rc"
}
export -f stage_build stage_test stage_bench stage_suite stage_demo

# Rows, speedups (reference / omnifast) and the copy bandwidth of a bench JSON.
bench_line() {
  python3 - "$1" << 'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
s = [x["speedup"] for x in r["results"] if "speedup" in x]
line = [f"{len(r['results'])} rows"]
if s:
    line.append(f"speedup {min(s):.2f}x to {max(s):.2f}x")
if "copy_bandwidth_GBps" in r:
    line.append(f"copy {r['copy_bandwidth_GBps']:.0f} GB/s")
print(", ".join(line))
EOF
}

# The result line of each stage for the summary, read from its files.
result_line() {
  case $1 in
    build) grep -hE '^ *backends:|^sass:' "$out/gpu.txt" 2> /dev/null | sed 's/^ *//' | paste -sd'|' | sed 's/|/; /g' \
             | grep . || grep -vE "subprocess-exited|metadata-generation|status 'error'|error originates" \
             "$out/build.log" 2> /dev/null | grep -m1 -iE 'error|OMNIFAST_' | sed 's/^ *//' ;;
    test) if [ "$DRY_RUN" = 1 ]; then grep 'collected' "$out/tests.log" 2> /dev/null | paste -sd'|' | sed 's/|/; /g'
          else grep -vE '^\s*$' "$out/tests.log" 2> /dev/null | tail -1 | tr -d '=' | sed 's/^ *//'; fi ;;
    bench) bench_line "$out/bench.json" 2> /dev/null \
             || echo "no bench.json; $(grep -c 'x ' "$out/bench.txt" 2> /dev/null) rows in bench.txt" ;;
    suite) tail -1 "$out/bench-suite.log" 2> /dev/null ;;
    demo) tail -1 "$out/demo.log" 2> /dev/null ;;
  esac
}

declare -A budget=()
for ((i = 0; i < ${#budgets[@]}; i += 2)); do budget[${budgets[i]}]=${budgets[i + 1]}; done
stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=(build test bench)
for stage in "${stages[@]}"; do
  [ -n "${budget[$stage]:-}" ] || { echo "unknown stage: $stage (build, test, bench, suite, demo)" >&2; exit 2; }
done
# Without a build, a named stage builds first.
[ "${stages[0]}" = build ] || has_build || stages=(build "${stages[@]}")

summary=$(printf '%-7s %-9s %7s  %s' stage status seconds result)
status=0 end=0 t0=$SECONDS no_build=""
for stage in "${stages[@]}"; do
  end=$((end + budget[$stage]))  # this stage ends by the sum of the budgets so far
  if [ -n "$no_build" ]; then
    echo "== $stage: skipped, $no_build"
    summary+=$(printf '\n%-7s %-9s %7s  %s' "$stage" skipped - "$no_build")
    continue
  fi
  limit=$((end - (SECONDS - t0)))
  [ $limit -ge 1 ] || limit=1
  echo "== $stage (at most $limit s)"
  start=$SECONDS
  timeout -s INT -k 5 "$limit" bash -c "stage_$stage"
  rc=$?
  case $rc in
    0) state=ok ;;
    124 | 137) state=timeout status=1 ;;
    *) state="failed:$rc" status=1 ;;
  esac
  [ $rc = 124 ] || [ $rc = 137 ] && echo "$stage: stopped after $limit s"
  summary+=$(printf '\n%-7s %-9s %7s  %s' "$stage" "$state" $((SECONDS - start)) "$(result_line "$stage" | cut -c1-150)")
  if [ "$stage" = build ] && { [ $rc != 0 ] || ! has_build; }; then
    no_build="no working build (build.log)"
    [ "$DRY_RUN" = 1 ] || no_build="no CUDA build or no GPU visible (build.log, gpu.txt)"
  fi
done
summary+=$(printf '\n%-7s %-9s %7s' total "$([ $status = 0 ] && echo ok || echo failed)" $((SECONDS - t0)))
[ "$DRY_RUN" = 1 ] && summary+=$'\n(dry run: no GPU step ran)'
echo
echo "$summary" | tee "$out/summary.txt"
exit $status
