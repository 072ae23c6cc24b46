"""Writing a synthetic dataset (``omnifast make-dataset``): images in batches, then the labels;
a folder is written under a temporary name and renamed when complete, a zip through
:func:`omnifast.runs.atomic_write`, so a crash never leaves something that looks like a dataset."""
import io
import json
import os
import shutil
import time
import zipfile

import torch

from ..runs import atomic_write
from .dataset import layout_dict


def make_dataset(out, flame_dir, count=1000, resolution=64, *, n_shape=100, n_expr=50, seed=0, batch=32,
                 as_zip=False, box_warp=1.0, device="cpu", progress=True, log=print):
    """Render ``count`` synthetic heads at ``resolution`` into the folder (or ``.zip``) ``out`` on
    ``device`` (the same images on any device, up to float rounding). Returns ``{"path",
    "count", "seconds", "images_per_second"}``."""
    from PIL import Image

    from ..flame import Flame
    from ..render.warp import world_frame
    from .synthetic import SyntheticHeads

    for name, value, low in (("count", count, 1), ("resolution", resolution, 8), ("batch", batch, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"make_dataset: {name} must be an integer >= {low}, got {value!r}")
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise FileExistsError(f"{out} already exists; choose a new folder or zip")
    flame = Flame(flame_dir, n_shape, n_expr).to(device)
    centre, scale = world_frame(flame, box_warp)
    heads = SyntheticHeads(flame, centre, scale)
    generator = torch.Generator().manual_seed(seed)
    files, labels = {}, []
    start = time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=count, desc="make-dataset", unit="img", dynamic_ncols=True, mininterval=1.0)
    for first in range(0, count, batch):
        images, rows = heads.render(min(batch, count - first), resolution, generator)
        for i, (image, row) in enumerate(zip(images, rows)):
            name = f"{(first + i) // 1000:05d}/img{first + i:08d}.png"
            buffer = io.BytesIO()
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, format="PNG")
            files[name] = buffer.getvalue()
            labels.append([name, [round(float(v), 7) for v in row]])
        if bar is not None:
            bar.update(len(rows))
    if bar is not None:
        bar.close()
    meta = {"labels": labels, "omnifast": {
        "flame_layout": layout_dict(flame.layout), "flame_dir": os.path.abspath(flame_dir),
        "flame_fingerprint": flame.fingerprint(), "resolution": resolution,
        "world": {"centre": centre.tolist(), "scale": scale, "box_warp": box_warp},
        "camera_pivot": list(heads.pivot), "camera_radius": heads.scene.radius, "seed": seed, "synthetic": True}}
    text = json.dumps(meta)
    if as_zip:
        def write_zip(f):
            with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as archive:
                for name, data in files.items():
                    archive.writestr(name, data)
                archive.writestr("dataset.json", text)
        atomic_write(out, write_zip)
    else:
        partial = f"{os.path.normpath(out)}.partial{os.getpid()}"
        try:
            for name, data in (*files.items(), ("dataset.json", text.encode())):
                os.makedirs(os.path.join(partial, os.path.dirname(name)), exist_ok=True)
                with open(os.path.join(partial, name), "wb") as f:
                    f.write(data)
            os.replace(partial, out)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    seconds = time.perf_counter() - start
    log(f"wrote {count} images at {resolution}^2 to {out} in {seconds:.1f} s ({count / seconds:.1f} images/s)")
    return {"path": out, "count": count, "seconds": seconds, "images_per_second": count / seconds}
