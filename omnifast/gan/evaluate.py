"""Control accuracy of a stage II run without downloaded networks: what the geometry guarantees.

- Geometry agreement: the generated head's depth against the posed FLAME mesh's depth from the
  same camera over the face, and the distance from the generated surface (``s + delta s`` by
  marching cubes) to the FLAME mesh, in millimetres.
- Control consistency: change only the expression, or only the jaw: the generated depth should
  move as the FLAME mesh's depth moves (the error in mm), and the image should stay where FLAME
  does not move (the upper head: the mean absolute pixel change, 0-255).
- Image quality: FID and KID with the Inception network's file the user provides, and a proxy
  that needs no weights (:mod:`omnifast.gan.metrics`)."""
import math

import torch
import torch.nn.functional as F

from ..geometry.cameras import camera_rays
from ..ops.mesh import barycentric_interpolate, mesh_index
from ..runs import check_memory
from ..sdf.data import ParamDistribution
from .generate import HeadGenerator


class FlameView:
    """Ray casts of the posed FLAME mesh (hole caps closed) in a run's world frame."""

    def __init__(self, warp):
        self.flame, self.warp = warp.flame, warp
        self.index = mesh_index(self.flame.caps.faces)
        with torch.no_grad():
            self.canonical_verts = self.flame.caps.verts(self.flame.canonical_verts()).double()
            landmarks = self.flame.landmarks(self.flame.canonical_params.unsqueeze(0))[0].double()
        lo, hi = landmarks.amin(0), landmarks.amax(0)
        width = float(hi[0] - lo[0])
        # The face: the landmarks' extent (brows to lips), widened to the cheeks and down to the chin.
        self.face_lo = torch.stack([lo[0] - 0.15 * width, lo[1] - 0.35 * width, lo[2] - 0.4 * width])
        self.face_hi = torch.stack([hi[0] + 0.15 * width, hi[1] + 0.1 * width, hi[2] + width])
        self.eye_height = float(landmarks[:, 1].max())  # above the brows FLAME's jaw and expression move little

    @torch.no_grad()
    def cast(self, params, labels, resolution):
        """``(depth in metres [R*R], hit [R*R], canonical hit points [R*R, 3])`` for one image."""
        from ..data.synthetic import sphere_trace
        from ..geometry import ray_box_intersection

        device = self.canonical_verts.device
        cam2world = labels[:, :16].reshape(1, 4, 4).double().to(device)
        intrinsics = labels[:, 16:25].reshape(1, 3, 3).double().to(device)
        origins, directions = camera_rays(cam2world, intrinsics, resolution)
        origins = self.warp.to_flame(origins[0])
        verts = self.flame.caps.verts(self.flame(params.to(device).float()))[0].double()
        lo, hi = verts.amin(0) - 0.01, verts.amax(0) + 0.01
        near, far = ray_box_intersection(origins, directions[0], lo, hi)
        footprint = 1.0 / (float(intrinsics[0, 0, 0]) * resolution)
        hit, face, bary, _ = sphere_trace(self.index.build(verts), origins, directions[0], near, far, footprint)
        canonical = torch.zeros_like(origins)
        if hit.any():
            canonical[hit] = barycentric_interpolate(self.canonical_verts, self.index.faces(device), face[hit],
                                                     bary[hit])
        points = torch.where(hit[:, None], barycentric_interpolate(verts, self.index.faces(device), face.clamp_min(0),
                                                                   bary), origins)
        depth = ((points - origins) * directions[0]).sum(-1)
        return depth, hit, canonical

    def in_face(self, canonical):
        lo, hi = self.face_lo.to(canonical.device), self.face_hi.to(canonical.device)
        return ((canonical >= lo) & (canonical <= hi)).all(-1)


def _stats(values):
    if values.numel() == 0:
        return {"mean": float("nan"), "p95": float("nan")}
    return {"mean": float(values.mean()), "p95": float(torch.quantile(values.float(), 0.95))}


@torch.no_grad()
def image_quality(generator, count=64, inception=None, seed=0):
    """``{fd_random, fid, kid}`` between ``count`` images of the run's dataset and as many
    generated ones for random latents and the dataset's labels (EG3D's metrics condition on
    them); FID and KID only with an :class:`omnifast.gan.metrics.InceptionFeatures`."""
    from ..data import ImageDataset
    from .metrics import RandomFeatures, frechet_distance, kernel_inception_distance

    dataset = ImageDataset(generator.config.dataset, generator.layout)
    g = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(len(dataset), generator=g)[:count]
    real = torch.stack([dataset[int(i)][0] for i in chosen])
    labels = dataset.labels[chosen].to(generator.device)
    z = torch.randn(len(chosen), generator.G.config.z_dim, generator=g).to(generator.device)
    fake = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for start in range(0, len(chosen), 8):
            image = generator.G(z[start:start + 8], labels[start:start + 8], backend=generator.backend)["image"]
            fake.append(((image.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu())
    fake = torch.cat(fake)
    random_features = RandomFeatures()
    result = {"images": len(chosen), "fd_random": frechet_distance(random_features(real.float() / 127.5 - 1),
                                                                  random_features(fake.float() / 127.5 - 1))}
    if inception is not None:
        ours, theirs = inception(fake), inception(real)
        result.update(fid=frechet_distance(ours, theirs), kid=kernel_inception_distance(ours, theirs))
    return result


@torch.no_grad()
def evaluate_gan(run_dir, samples=8, device="cpu", backend="omnifast", seed=0, mesh_resolution=64, log=print,
                 quality_images=64, inception=None):
    """The control-accuracy table of a run (see the module's description) over ``samples``
    random seeds, FLAME parameters and FFHQ cameras, every figure in millimetres but the
    identity's pixel change; and the image quality over ``quality_images`` (0: skipped) with
    FID and KID when ``inception`` (a path to the Inception network's file) is given."""
    from ..data import ImageDataset
    from .metrics import InceptionFeatures

    detector = InceptionFeatures(inception, device) if inception else None
    generator = HeadGenerator(run_dir, device, backend)
    # Each sample's per-pixel errors (a few float64 images at the neural resolution) are held
    # until the end, and the quality's real and generated images together.
    pixels = generator.G.neural_rendering_resolution ** 2
    check_memory(samples * pixels * 8 * 8 + quality_images * generator.G.image_resolution ** 2 * 3 * 4,
                 f"--samples {samples} and --quality-images {quality_images}")
    if quality_images:  # checked before the evaluation's work, not after it
        available = len(ImageDataset(generator.config.dataset, generator.layout))
        if min(quality_images, available) < 2:
            raise ValueError(f"--quality-images {quality_images}: a Frechet distance needs the covariance of at "
                             f"least 2 images (the dataset has {available}); pass 2 or more, or 0 to skip it")
    view = FlameView(generator.warp)
    layout, scale = generator.layout, generator.warp.world_scale
    g = torch.Generator().manual_seed(seed)
    params = ParamDistribution().sample(layout, samples, g)
    yaws, pitches = torch.randn(samples, generator=g) * 0.3, torch.randn(samples, generator=g) * 0.12
    # The changed expressions are draws of their own: another sample's would be the same one when
    # there is a single sample (an error of 0).
    new_expressions = ParamDistribution().sample(layout, samples, g)[:, layout.slices["expression"]]
    jaw_index = layout.slices["jaw"].start
    depth_errors, surface_errors, moved = [], [], {"expression": [], "jaw": []}
    identity = []
    for n in range(samples):
        base = params[n:n + 1]
        labels = generator.labels(base, float(yaws[n]), float(pitches[n]))
        out = generator.synthesize([n], labels)
        resolution = out["depth"].shape[-1]
        ours = (out["depth"].reshape(-1).double().cpu()) / scale  # world units -> metres
        seen = out["opacity"].reshape(-1).cpu() > 0.5
        theirs, hit, canonical = (t.cpu() for t in view.cast(base, labels, resolution))
        face = hit & seen & view.in_face(canonical)
        depth_errors.append((ours - theirs)[face].abs() * 1000)
        verts, _ = generator.mesh(n, base, mesh_resolution)
        flame_verts = view.flame.caps.verts(view.flame(base.to(view.canonical_verts.device)))[0]
        distance = view.index.closest_point(verts.to(flame_verts), flame_verts).distance.abs()
        surface_errors.append(distance.cpu().double() * 1000)
        # Control: only the expression (a new draw), or only the jaw (opened by 0.2 rad), changes.
        changed = {"expression": base.clone(), "jaw": base.clone()}
        changed["expression"][:, layout.slices["expression"]] = new_expressions[n]
        changed["jaw"][:, jaw_index] = (base[:, jaw_index] + 0.2).clamp(max=0.5)
        for kind, other in changed.items():
            other_labels = torch.cat([labels[:, :25], other.to(labels)], -1)
            out2 = generator.synthesize([n], other_labels)
            theirs2, hit2, _ = (t.cpu() for t in view.cast(other, other_labels, resolution))
            ours2 = out2["depth"].reshape(-1).double().cpu() / scale
            both = face & hit2 & (out2["opacity"].reshape(-1).cpu() > 0.5)
            moved[kind].append(((ours2 - ours) - (theirs2 - theirs))[both].abs() * 1000)
            if kind == "jaw":  # where FLAME did not move: the upper head keeps its pixels
                still = hit & hit2 & ((theirs2 - theirs).abs() < 1e-3) & (canonical[:, 1] > view.eye_height)
                a = F.interpolate(out["image"], size=(resolution, resolution), mode="area")
                b = F.interpolate(out2["image"], size=(resolution, resolution), mode="area")
                change = ((a - b).abs().mean(1).reshape(-1).cpu() * 127.5)[still]
                identity.append(change)
        log(f"eval-gan: sample {n + 1}/{samples}")
    result = {
        "samples": samples, "step": generator.step, "seed": seed,
        "geometry": {"depth_mm": _stats(torch.cat(depth_errors)), "surface_mm": _stats(torch.cat(surface_errors)),
                     "face_pixels": int(sum(e.numel() for e in depth_errors))},
        "control": {"expression_mm": _stats(torch.cat(moved["expression"])), "jaw_mm": _stats(torch.cat(moved["jaw"])),
                    "identity_pixel_change": _stats(torch.cat(identity))},
    }
    if quality_images:
        result["quality"] = image_quality(generator, quality_images, detector, seed)
    if not math.isfinite(result["geometry"]["depth_mm"]["mean"]):
        log("eval-gan: no face pixel was seen by both the generator and the FLAME mesh")
    return result
