"""Reads the ptxas report (-Xptxas=-v) in the CUDA compile check's log and gates the kernels'
resources for one architecture: no kernel may spill, and none may have a stack frame except the
closest-point traversal, whose stack is its design. Prints registers, stack and spills per
kernel, with the blocks of 256 threads one SM can hold at that register count.

    python .ci/cuda_resources.py build/cuda-check.log [--arch sm_90]
"""
import argparse
import re
import subprocess
import sys

STACK_ALLOWED = ("closest_point_kernel",)  # the BVH traversal keeps its node stack in local memory
REGISTERS_PER_SM = 65536
THREADS_PER_BLOCK = 256

ENTRY = re.compile(r"Compiling entry function '(\S+)' for '(sm_\d+)'")
PROPERTIES = re.compile(r"Function properties for (\S+)")
FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
USED = re.compile(r"Used (\d+) registers")


def kernels(log, arch):
    """{mangled name: {registers, stack, spill_stores, spill_loads}} for `arch`'s kernels, and
    the same for any function ptxas reports properties of (a callee nvcc did not inline)."""
    found, entry, current = {}, None, None
    for line in log.splitlines():
        if m := ENTRY.search(line):
            entry = m.group(1) if m.group(2) == arch else None
            current = None
            if entry:
                found[entry] = {"registers": 0, "stack": 0, "spill_stores": 0, "spill_loads": 0}
        elif entry and (m := PROPERTIES.search(line)):
            current = m.group(1)
            found.setdefault(current, {"registers": 0, "stack": 0, "spill_stores": 0, "spill_loads": 0})
        elif entry and current and (m := FRAME.search(line)):
            found[current].update(stack=int(m.group(1)), spill_stores=int(m.group(2)),
                                  spill_loads=int(m.group(3)))
        elif entry and (m := USED.search(line)):
            found[entry]["registers"] = int(m.group(1))
    return found


def short(demangled):
    """void omnifast::(anonymous namespace)::forward_kernel<2, float, float>(...) ->
    forward_kernel<2, float, float>"""
    for prefix in ("(anonymous namespace)::", "omnifast::", "triplane_cuda::"):
        demangled = demangled.replace(prefix, "")
    return demangled.split("(")[0].removeprefix("void ")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log")
    parser.add_argument("--arch", default="sm_90")
    args = parser.parse_args()
    found = kernels(open(args.log).read(), args.arch)
    if not found:
        sys.exit(f"no ptxas report for {args.arch} in {args.log} (was it compiled with -Xptxas=-v?)")
    names = list(found)
    demangled = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True,
                               text=True).stdout.splitlines() or names
    rows, failures = [], []
    for mangled, full in zip(names, demangled):
        r = found[mangled]
        name = short(full)
        blocks = REGISTERS_PER_SM // max(1, r["registers"] * THREADS_PER_BLOCK)
        rows.append((name, r["registers"], r["stack"], r["spill_stores"] + r["spill_loads"], blocks))
        if r["spill_stores"] or r["spill_loads"]:
            failures.append(f"{name}: spills ({r['spill_stores']} B stores, {r['spill_loads']} B loads)")
        if r["stack"] and not any(k in name for k in STACK_ALLOWED):
            failures.append(f"{name}: {r['stack']} B stack frame")
    width = max(len(r[0]) for r in rows)
    print(f"{'kernel (' + args.arch + ')':<{width}}  registers  stack B  spill B  256-thread blocks/SM")
    for name, regs, stack, spill, blocks in sorted(rows):
        print(f"{name:<{width}}  {regs:>9}  {stack:>7}  {spill:>7}  {blocks:>20}")
    if failures:
        print("\n".join(["resource gate FAILED:", *failures]), file=sys.stderr)
        sys.exit(1)
    print(f"resource gate: {len(rows)} kernels, no spills, stack frames only in {', '.join(STACK_ALLOWED)}")


if __name__ == "__main__":
    main()
