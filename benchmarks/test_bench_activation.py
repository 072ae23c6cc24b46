"""pytest-benchmark for the one-pass activations against their plain-PyTorch forms, taking turns,
with peak memory: EG3D's bias_act (leaky ReLU, conv_clamp 256) forward and backward on one
full-resolution activation (CPU: 64 channels at 256^2; CUDA: 4 x 128 at 512^2), and softplus
(beta 100) on one layer of the semantic SDF's MLP (4,096 points x 128). Floors on the CPU: 2x and
1.3x.

    python -m pytest benchmarks/test_bench_activation.py --benchmark-json=out.json
"""
import torch
import torch.nn.functional as F

import omnifast
from omnifast.bench import measure_peak_bytes, time_calls
from omnifast.gan.networks import bias_act, fused_activations

DEVICE = "cuda" if torch.cuda.is_available() and omnifast._C_loader.compiled_backends()["cuda"] else "cpu"
FLOORS_CPU = {"bias_act": 2.0, "softplus": 1.3}


def _compare(benchmark, name, ours, ref, **info):
    t_ours, t_ref = (t.median_s for t in time_calls([ours, ref], DEVICE, warmup=2, runs=9))
    speedup = t_ref / t_ours
    benchmark.extra_info.update(device=DEVICE, omnifast_ms=t_ours * 1e3, reference_ms=t_ref * 1e3,
                                speedup_vs_reference=speedup, omnifast_peak_bytes=measure_peak_bytes(ours, DEVICE),
                                reference_peak_bytes=measure_peak_bytes(ref, DEVICE), **info)
    benchmark.pedantic(ours, rounds=3, warmup_rounds=1)
    if DEVICE == "cpu":
        assert speedup >= FLOORS_CPU[name], f"{name}: {speedup:.2f}x < {FLOORS_CPU[name]}x"


def test_bias_act(benchmark):
    shape = (4, 128, 512, 512) if DEVICE == "cuda" else (1, 64, 256, 256)
    x = torch.randn(shape, device=DEVICE, requires_grad=True)
    bias = torch.randn(shape[1], device=DEVICE, requires_grad=True)
    upstream = torch.randn(shape, device=DEVICE)

    def step(fused):
        def run():
            with fused_activations(fused):
                y = bias_act(x, bias, 1.0, 256.0)
                return torch.autograd.grad(y, (x, bias), upstream)
        return run

    _compare(benchmark, "bias_act", step(True), step(False), shape=list(shape), passes="forward+backward")


def test_softplus(benchmark):
    h = torch.randn(4096, 128, device=DEVICE)
    with torch.no_grad():
        h = h @ (torch.randn(128, 128, device=DEVICE) / 128 ** 0.5)
    _compare(benchmark, "softplus", lambda: omnifast.softplus(h, 100.0), lambda: F.softplus(h, beta=100.0),
             shape=list(h.shape), passes="forward")
