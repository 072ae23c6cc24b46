"""Exporting a semantic SDF: the zero level set for given parameters (marching cubes, PLY) and PNG
previews (an SDF slice, and shaded renders through omnifast's importance sampler and
SDF-to-density compositing kernels)."""
import math

import numpy as np
import torch

from ..geometry import look_at_rays, ray_box_intersection
from ..ops.composite import composite, importance_sample
from ..runs import atomic_write


def parse_params(layout, items):
    """``["jaw=0.3", "expression=1.5,0,-1", ...]`` -> ``[1, layout.size]``; a part's values fill
    its leading entries, the rest stay zero."""
    parts = {}
    for item in items or ():
        name, sep, values = item.partition("=")
        name = name.strip()
        if not sep or name not in layout.slices:
            raise ValueError(f"--params: expected NAME=v1,v2,... with NAME one of {list(layout.slices)}, "
                             f"got {item!r}")
        try:
            numbers = [float(v) for v in values.split(",") if v.strip()]
        except ValueError:
            raise ValueError(f"--params: {name} takes comma-separated numbers, got {values!r}") from None
        if not all(math.isfinite(v) for v in numbers):
            raise ValueError(f"--params: {name} values must be finite numbers, got {values!r}")
        width = layout.slices[name].stop - layout.slices[name].start
        if len(numbers) > width:
            raise ValueError(f"--params: {name} takes at most {width} values, got {len(numbers)}")
        parts[name] = torch.tensor(numbers + [0.0] * (width - len(numbers)))
    params = layout.pack(1, **parts)
    layout.check(params, "--params")
    return params


def _grid(box_min, box_max, resolution):
    axes = [torch.linspace(float(box_min[i]), float(box_max[i]), resolution) for i in range(3)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), -1), axes


@torch.no_grad()
def sdf_grid(model, flame, params, resolution=128, chunk=65536):
    """The field on a ``resolution^3`` grid over the model's box: ``(values [R, R, R], axes)``."""
    device = model.centre.device
    box_min, box_max = model.centre - model.scale, model.centre + model.scale
    points, axes = _grid(box_min, box_max, resolution)
    flat = points.reshape(1, -1, 3).to(device)
    params = params.to(device)
    frames = flame.head_frame(params)
    values = torch.cat([model(flat[:, i:i + chunk], params, frames).sdf for i in range(0, flat.shape[1], chunk)], 1)
    return values.reshape(resolution, resolution, resolution).cpu(), axes


GRID_BYTES_PER_CELL = 48  # the points (12), the values (4) and marching cubes' own arrays


def check_grid_memory(resolution, flag="resolution", device="cpu"):
    """Refuse a marching cubes grid larger than the memory there is, before computing it."""
    from ..runs import check_memory

    check_memory(GRID_BYTES_PER_CELL * resolution ** 3, f"{flag} {resolution} (a {resolution}^3 grid)", device)


def extract_mesh(model, flame, params, resolution=128):
    """The zero level set: ``(verts [V, 3] float32 metres, faces [F, 3] int64)``, faces
    outward."""
    check_grid_memory(resolution)
    values, axes = sdf_grid(model, flame, params, resolution)
    return zero_level_set(values, axes, "export: the field", "the network is not a head (yet)")


def zero_level_set(values, axes, what, hint):
    """Marching cubes of signed distances ``values [X, Y, Z]`` sampled at the coordinates
    ``axes`` (three 1-D tensors): ``(verts [V, 3] float32, faces [F, 3] int64)``, faces outward;
    a field with no zero crossing is a ValueError naming ``what`` with the ``hint``."""
    from skimage.measure import marching_cubes

    v = values.numpy()
    if not (v.min() < 0 < v.max()):
        raise ValueError(f"{what} has no zero crossing in its box (min {v.min():.4g}, max {v.max():.4g}): {hint}")
    spacing = [float(a[1] - a[0]) for a in axes]
    verts, faces, _, _ = marching_cubes(v, level=0.0, spacing=spacing)
    verts = verts + np.array([float(a[0]) for a in axes])
    # marching_cubes orients faces towards increasing values; outward means towards s > 0.
    return torch.from_numpy(verts.astype(np.float32)), torch.from_numpy(faces[:, ::-1].astype(np.int64))


def write_ply(path, verts, faces):
    """A binary little-endian PLY with float vertices and int faces."""
    verts = verts.detach().cpu().float().numpy()
    faces = faces.detach().cpu().numpy().astype(np.int32)
    header = (f"ply\nformat binary_little_endian 1.0\nelement vertex {len(verts)}\n"
              "property float x\nproperty float y\nproperty float z\n"
              f"element face {len(faces)}\nproperty list uchar int vertex_indices\nend_header\n")
    rows = np.empty(len(faces), dtype=[("n", "u1"), ("i", "<i4", (3,))])
    rows["n"], rows["i"] = 3, faces
    atomic_write(path, lambda f: f.write(header.encode("ascii") + verts.astype("<f4").tobytes() + rows.tobytes()))


def read_ply(path):
    """Read back what :func:`write_ply` writes: ``(verts, faces)``."""
    with open(path, "rb") as f:
        header = b""
        while not header.endswith(b"end_header\n"):
            header += f.readline()
        counts = {line.split()[1]: int(line.split()[2]) for line in header.decode().splitlines()
                  if line.startswith("element")}
        verts = np.frombuffer(f.read(12 * counts["vertex"]), dtype="<f4").reshape(-1, 3)
        rows = np.frombuffer(f.read(13 * counts["face"]), dtype=[("n", "u1"), ("i", "<i4", (3,))])
    return torch.from_numpy(verts.copy()), torch.from_numpy(rows["i"].astype(np.int64))


@torch.no_grad()
def slice_image(model, flame, params, size=256, axis=0):
    """The SDF on the mid-plane across ``axis`` (0: the sagittal plane x = centre) as an RGB
    ``uint8 [size, size, 3]`` array: red outside, blue inside, bands every 5 mm, the zero level
    black."""
    device = model.centre.device
    other = [a for a in range(3) if a != axis]
    u = torch.linspace(-1, 1, size, device=device)
    grid_v, grid_u = torch.meshgrid(-u, u, indexing="ij")  # rows top to bottom
    points = model.centre.expand(size, size, 3).clone()
    # Show the plane with y up: the last in-plane axis across, y (axis 1) down the rows.
    across, down = (other[1], other[0]) if other[0] == 1 else (other[0], other[1])
    points[..., across] += grid_u * model.scale
    points[..., down] += grid_v * model.scale
    params = params.to(device)
    s = model(points.reshape(1, -1, 3), params, flame.head_frame(params)).sdf.reshape(size, size).cpu()
    magnitude = (s.abs() / 0.05).clamp(0, 1)
    bands = 0.85 + 0.15 * torch.cos(2 * math.pi * s / 0.005)
    red = torch.stack([torch.ones_like(s), 1 - magnitude, 1 - magnitude], -1)
    blue = torch.stack([1 - magnitude, 1 - magnitude, torch.ones_like(s)], -1)
    image = torch.where((s > 0).unsqueeze(-1), red, blue) * bands.unsqueeze(-1)
    image[s.abs() < 0.0012] = 0
    return (image.clamp(0, 1) * 255).byte().numpy()


def render_image(model, flame, params, size=128, coarse=32, fine=32, yaw=0.5, pitch=0.15, beta=0.0015):
    """A shaded render ``uint8 [size, size, 3]``: rays through the model's box, a coarse pass of
    the SDF composited by :func:`omnifast.composite` (``field_type="sdf"``), fine depths from
    :func:`omnifast.importance_sample`, and a final composite of Lambert-shaded normals
    (``grad s``) on white."""
    device = model.centre.device
    params = params.to(device)
    frames = flame.head_frame(params)
    origins, directions = look_at_rays(size, 0.75, yaw, pitch, 30, model.centre.detach())
    with torch.no_grad():
        near, far = ray_box_intersection(origins, directions, model.centre - model.scale,
                                         model.centre + model.scale)
    hit = far > near
    image = torch.ones(size * size, 3, device=device)
    if hit.any():
        o, d, n, f = origins[hit], directions[hit], near[hit], far[hit]
        beta_t = torch.tensor(beta, device=device)
        # The marcher's softplus(sigma - 1) leaves a density of 0.31 everywhere (EG3D's floor):
        # a constant correction of -30 removes that haze from the previews.
        no_floor = lambda field: torch.full_like(field, -30.0)  # noqa: E731
        steps = torch.linspace(0, 1, coarse, device=device)
        depths = (n.unsqueeze(-1) + (f - n).unsqueeze(-1) * steps).unsqueeze(-1)  # [R, S, 1]
        with torch.no_grad():
            sdf = _field_along(model, params, frames, o, d, depths).sdf
            weights = composite(torch.zeros_like(depths), sdf.unsqueeze(-1), depths, field_type="sdf",
                                beta=beta_t, density_delta=no_floor(depths), return_weights=True).weights
        fine_depths = importance_sample(depths, weights, fine, deterministic=True)
        out = _field_along(model, params, frames, o, d, fine_depths, with_gradient=True)
        normal = out.gradient / out.gradient.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        light = torch.tensor([0.4, 0.5, 0.75], device=device)
        light = light / light.norm()
        shade = 0.25 + 0.75 * (normal @ light).clamp_min(0).unsqueeze(-1)
        colour = shade * torch.tensor([0.85, 0.72, 0.62], device=device)
        with torch.no_grad():
            rendered = composite(colour.detach(), out.sdf.detach().unsqueeze(-1), fine_depths, field_type="sdf",
                                 beta=beta_t, density_delta=no_floor(fine_depths), white_back=True).features
        image[hit] = rendered.clamp(0, 1)
    return (image.reshape(size, size, 3).cpu() * 255).byte().numpy()


def _field_along(model, params, frames, origins, directions, depths, with_gradient=False):
    points = origins.unsqueeze(1) + directions.unsqueeze(1) * depths  # [R, S, 3]
    R, S = points.shape[:2]
    out = model(points.reshape(1, -1, 3), params, frames, with_gradient=with_gradient, create_graph=False)
    gradient = None if out.gradient is None else out.gradient.reshape(R, S, 3)
    return type(out)(out.sdf.reshape(R, S), out.canonical.reshape(R, S, 3), gradient)


PREVIEW_POSES = (("neutral", []), ("jaw open", ["jaw=0.3"]), ("smile", ["expression=0,2.5"]),
                 ("brows up, pucker", ["expression=0,0,2.5,2.5"]), ("neck turned", ["neck=0,0.3,0", "jaw=0.15"]))


def write_previews(model, flame, path, poses=PREVIEW_POSES, size=128):
    """One PNG: a row of shaded renders and a row of SDF slices, one column per pose."""
    from PIL import Image, ImageDraw

    columns = []
    for label, items in poses:
        params = parse_params(flame.layout, items)
        render = Image.fromarray(render_image(model, flame, params, size))
        cut = Image.fromarray(slice_image(model, flame, params, size))
        column = Image.new("RGB", (size, 2 * size + 14), "white")
        column.paste(render, (0, 14))
        column.paste(cut, (0, 14 + size))
        ImageDraw.Draw(column).text((3, 1), label, fill="black")
        columns.append(column)
    sheet = Image.new("RGB", (size * len(columns), 2 * size + 14), "white")
    for i, column in enumerate(columns):
        sheet.paste(column, (i * size, 0))
    atomic_write(path, lambda f: sheet.save(f, format="PNG"))
    return path
