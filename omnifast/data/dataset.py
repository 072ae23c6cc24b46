"""EG3D's dataset format with OmniAvatar's labels: a folder or a zip of images and a
``dataset.json`` whose ``labels`` are ``[[file, [cam2world 16 | intrinsics 9 | FLAME P]], ...]``.
omnifast also stores what the labels mean under ``"omnifast"``: the FLAME parameter layout, the
world frame the cameras live in, and the cameras' pivot and radius."""
import io
import json
import os
import zipfile
import zlib

import numpy as np
import torch

from ..flame.model import ParamLayout
from ..geometry.cameras import LABEL_SIZE, check_camera_labels

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def layout_dict(layout):
    return {"n_shape": layout.n_shape, "n_expr": layout.n_expr, "global_pose": bool(layout.global_pose)}


class ImageDataset(torch.utils.data.Dataset):
    """Images ``uint8 [3, R, R]`` and labels ``float32 [25 + P]`` from an EG3D-format folder or zip.

    Args:
        path: the folder or ``.zip``.
        layout: the FLAME :class:`~omnifast.flame.ParamLayout` the labels must follow (the stage
            I run's); checked against the dataset's stored layout and every label's length.
        xflip: not offered: mirroring an image mirrors the camera and the jaw and neck poses
            (easy) but also the face, whose FLAME shape and expression coefficients have no
            mirror map in general; a flip would pair the mirrored image with the wrong shape and
            expression. It is refused with that reason rather than done wrong.
    Works with ``DataLoader`` worker processes (each opens the zip for itself).
    """

    def __init__(self, path, layout=None, xflip=False):
        if xflip:
            raise ValueError("ImageDataset: xflip is not supported: a mirrored face needs mirrored FLAME shape "
                             "and expression coefficients, which FLAME's bases do not define")
        self.path = os.fspath(path)
        self.is_zip = os.path.isfile(self.path) and zipfile.is_zipfile(self.path)
        if os.path.isfile(self.path) and not self.is_zip:
            raise ValueError(f"{self.path}: not a readable zip (truncated or damaged?); a dataset is a folder or "
                             "a .zip with dataset.json")
        if not self.is_zip and not os.path.isdir(self.path):
            raise FileNotFoundError(f"dataset not found: {self.path} (a folder or a .zip with dataset.json)")
        self._zip = None
        names = set(self._names())
        if "dataset.json" not in names:
            raise FileNotFoundError(f"{self.path}: no dataset.json (EG3D's labels file)")
        try:
            meta = json.loads(self._read("dataset.json"))
        except ValueError as error:
            raise ValueError(f"{self.path}/dataset.json: not valid JSON ({error})") from None
        labels = meta.get("labels") if isinstance(meta, dict) else None
        if not isinstance(labels, list) or not labels:
            raise ValueError(f"{self.path}/dataset.json: 'labels' must be a non-empty list of [file, [numbers]]")
        self.meta = meta.get("omnifast", {})
        stored = self.meta.get("flame_layout")
        if layout is not None and stored is not None and stored != layout_dict(layout):
            raise ValueError(f"{self.path}: the labels' FLAME layout is {stored}, the model's is "
                             f"{layout_dict(layout)} (make the dataset with the stage I run's FLAME settings)")
        size = LABEL_SIZE + (layout.size if layout is not None else
                             stored["n_shape"] + stored["n_expr"] + 6 + 3 * stored["global_pose"] if stored
                             else len(labels[0][1]) - LABEL_SIZE)
        self.files, rows = [], []
        for i, entry in enumerate(labels):
            if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)
                    and isinstance(entry[1], list)):
                raise ValueError(f"{self.path}/dataset.json: label {i} must be [file, [numbers]], got {entry!r:.80}")
            name, values = entry
            if len(values) != size:
                raise ValueError(f"{self.path}/dataset.json: label of {name} has {len(values)} numbers, expected "
                                 f"{size} (25 camera numbers and {size - LABEL_SIZE} FLAME parameters)")
            if name not in names:
                raise FileNotFoundError(f"{self.path}: image {name} (listed in dataset.json) is missing")
            self.files.append(name)
            rows.append(values)
        self.labels = torch.tensor(rows, dtype=torch.float32)
        if not torch.isfinite(self.labels).all():
            raise ValueError(f"{self.path}/dataset.json: labels must be finite numbers")
        where = f"{self.path}/dataset.json labels"
        check_camera_labels(self.labels, where, self.files)
        if layout is None and stored is not None:
            layout = ParamLayout(stored["n_shape"], stored["n_expr"], stored["global_pose"])
        if layout is not None:
            layout.check(self.labels[:, LABEL_SIZE:], where, self.files)
        self.resolution = None
        self.resolution = self[0][0].shape[-1]
        self._check_sizes()

    def _check_sizes(self):
        """Every image's size from its header (no decoding): a dataset of mixed sizes, or an
        image whose header cannot be read, is refused when the dataset is opened, by name."""
        from PIL import Image

        for name in self.files:
            try:
                if self.is_zip:
                    with self._zipfile().open(name) as f:
                        size = Image.open(f).size
                else:
                    with open(os.path.join(self.path, name), "rb") as f:
                        size = Image.open(f).size
            except (OSError, zipfile.BadZipFile, EOFError) as error:
                raise OSError(f"{self.path}: image {name} cannot be read ({error})") from None
            if size != (self.resolution, self.resolution):
                raise ValueError(f"{self.path}: image {name} is {size[0]}x{size[1]}, the dataset's images are "
                                 f"{self.resolution}x{self.resolution} (its first image's size): a dataset's images "
                                 "must all have one size")

    def _names(self):
        if self.is_zip:
            return self._zipfile().namelist()
        return [os.path.relpath(os.path.join(root, f), self.path).replace(os.sep, "/")
                for root, _, files in os.walk(self.path) for f in files]

    def _zipfile(self):
        if self._zip is None:
            self._zip = zipfile.ZipFile(self.path)
        return self._zip

    def _read(self, name):
        if self.is_zip:
            try:
                return self._zipfile().read(name)
            except (zipfile.BadZipFile, EOFError, zlib.error) as error:
                raise OSError(f"{self.path}: {name} cannot be read from the zip (damaged? {error})") from None
        with open(os.path.join(self.path, name), "rb") as f:
            return f.read()

    def __getstate__(self):
        return {**self.__dict__, "_zip": None}  # each worker process opens the zip itself

    def __len__(self):
        return len(self.files)

    def __getitem__(self, index):
        from PIL import Image

        name = self.files[index]
        try:
            image = np.asarray(Image.open(io.BytesIO(self._read(name))).convert("RGB"))
        except OSError as error:
            raise OSError(f"{self.path}: image {name} cannot be read ({error})") from None
        if image.shape[0] != image.shape[1]:
            raise ValueError(f"{self.path}: image {name} must be square, got {image.shape[1]}x{image.shape[0]}")
        if self.resolution is not None and image.shape[0] != self.resolution:
            raise ValueError(f"{self.path}: image {name} is {image.shape[1]}x{image.shape[0]}, the dataset's "
                             f"images are {self.resolution}x{self.resolution} (its first image's size): "
                             "a dataset's images must all have one size")
        return torch.from_numpy(image.copy()).permute(2, 0, 1), self.labels[index]
