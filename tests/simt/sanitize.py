"""Calls every CUDA launcher of the SIMT build, forward and backward, on small inputs. CI runs it
on a build with AddressSanitizer and UndefinedBehaviorSanitizer (OMNIFAST_SIMT=1
OMNIFAST_SANITIZE=1, see .ci/run), where any report aborts the process."""
import sys

import torch

import omnifast
from omnifast import _C_loader


def triplane():
    for spatial in ((5, 6), (3, 4, 5)):  # planes and volumes
        for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
            for channels in (1, 5, 8):
                planes = torch.randn(2, 3, channels, *spatial).to(dtype).requires_grad_()
                coord_type = torch.float64 if dtype == torch.float64 else torch.float32
                coords = ((torch.rand(2, 37, 3) - 0.5) * 2.2).to(coord_type).requires_grad_()
                for reduce in ("mean", "none"):
                    out = omnifast.triplane_sample(planes, coords, reduce=reduce)
                    grads = torch.autograd.grad(out.float().square().sum(), (planes, coords),
                                                create_graph=True)
                    torch.autograd.grad(grads[1].sum(), (planes, coords))
                    torch.use_deterministic_algorithms(True)  # the row walk
                    try:
                        out = omnifast.triplane_sample(planes, coords, reduce=reduce)
                        torch.autograd.grad(out.float().sum(), planes)
                    finally:
                        torch.use_deterministic_algorithms(False)


def composite():
    for dtype in (torch.float32, torch.float64, torch.float16):
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        for field_type in ("sdf", "sdf_laplace", "density"):
            for mode in ("midpoint", "absorption"):
                features = torch.rand(3, 11, 9, 5).to(dtype).requires_grad_()
                field = (torch.randn(3, 11, 9, 1) * 0.1).to(acc).requires_grad_()
                depths = torch.sort(torch.rand(3, 11, 9, 1) + 1, dim=2).values.to(acc)
                beta = None if field_type == "density" else 0.05
                out = omnifast.composite(features, field, depths, field_type=field_type, beta=beta,
                                         density_delta=torch.zeros_like(field), mode=mode,
                                         return_weights=True)
                loss = out.features.float().sum() + out.depth.sum() + out.weights.sum()
                torch.autograd.grad(loss, (features, field))
                fine = omnifast.importance_sample(depths[..., 0], out.weights[..., 0], 6)
                omnifast.merge_samples(depths[..., 0], fine)


def mesh():
    for dtype in (torch.float32, torch.float64):
        verts = torch.rand(2, 30, 3, dtype=dtype)
        faces = torch.randint(0, 30, (50, 3), dtype=torch.int32)
        points = (torch.rand(2, 40, 3, dtype=dtype) - 0.2).requires_grad_()
        for sign in ("pseudonormal", "winding", "none"):
            result = omnifast.closest_point(points, verts, faces, sign=sign)
            torch.autograd.grad(result.distance.sum(), points)
        index = omnifast.MeshIndex(faces)
        tree = index.build(verts)
        tree.refit(verts + 0.01)
        index.vertex_normals(verts)


def softplus():
    for dtype in (torch.float32, torch.float64):
        for shape in ((0,), (7,), (3, 257)):
            x = (torch.randn(shape) * 30).to(dtype).requires_grad_()
            torch.autograd.grad(omnifast.softplus(x, 10.0).sum(), x)


def bias_act():
    for dtype in (torch.float32, torch.float64):
        for shape in ((0, 3), (2, 5), (2, 3, 7, 9)):
            x = (torch.randn(shape) * 3).to(dtype).requires_grad_()
            b = torch.randn(shape[1], dtype=dtype)
            for bias, clamp in ((b, 2.0), (None, None)):
                y = omnifast.bias_act(x, bias, act="lrelu", clamp=clamp)
                grad, = torch.autograd.grad(y.square().sum(), x, create_graph=True)
                torch.autograd.grad(grad.sum(), x)


if __name__ == "__main__":
    if not _C_loader.compiled_backends()["simt"]:
        sys.exit("sanitize.py needs the SIMT build (OMNIFAST_SIMT=1)")
    print(f"omnifast from {omnifast.__file__}")
    before = _C_loader.simt_stats()
    with _C_loader.simt_kernels():
        triplane()
        composite()
        mesh()
        softplus()
        bias_act()
    after = _C_loader.simt_stats()
    print("sanitizers: no report;", ", ".join(f"{k} {after[k] - before[k]}" for k in after))
