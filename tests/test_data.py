"""Stage II data: the synthetic dataset maker (rendered by sphere tracing the posed FLAME mesh with
the closest-point kernel, a texture defined in canonical space) and the EG3D-format dataset
reader, with its errors."""
import json
import os
import subprocess
import sys
import zipfile

import pytest
import torch

from omnifast.data import CanonicalTexture, ImageDataset, make_dataset
from omnifast.data.synthetic import EYES, INNER_LIP, sphere_trace
from omnifast.flame import Flame
from omnifast.ops.mesh import MeshIndex

SMALL = dict(count=6, resolution=16, n_shape=10, n_expr=10, batch=4, progress=False, log=lambda *a: None)


@pytest.fixture(scope="module")
def flame(flame_dir):
    return Flame(flame_dir, n_shape=10, n_expr=10)


@pytest.fixture(scope="module")
def dataset_dir(flame_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "set"
    make_dataset(str(out), flame_dir, seed=3, **SMALL)
    return out


def test_made_dataset_reads_back(dataset_dir, flame):
    ds = ImageDataset(dataset_dir, flame.layout)
    assert len(ds) == 6 and ds.resolution == 16
    image, label = ds[2]
    assert image.dtype == torch.uint8 and image.shape == (3, 16, 16)
    assert label.shape == (25 + flame.layout.size,)
    cam2world = label[:16].reshape(4, 4)
    torch.testing.assert_close(cam2world[:3, :3] @ cam2world[:3, :3].T, torch.eye(3), atol=1e-5, rtol=0)
    assert abs(float(cam2world[:3, 3].norm()) - 2.7) < 0.3  # EG3D's radius about the face's centre
    assert ds.meta["flame_layout"] == {"n_shape": 10, "n_expr": 10, "global_pose": False}
    assert ds.meta["world"]["box_warp"] == 1.0
    images = torch.stack([ds[i][0] for i in range(len(ds))]).float()
    assert images.std() > 10  # not blank
    assert (images[:, :, 6:10, 6:10] - images[:, :, :2, :2].mean((2, 3), keepdim=True)).abs().mean() > 5  # a head


def test_dataset_is_reproducible_and_zip_equals_folder(dataset_dir, flame_dir, flame, tmp_path):
    zipped = tmp_path / "set.zip"
    make_dataset(str(zipped), flame_dir, seed=3, as_zip=True, **SMALL)
    a, b = ImageDataset(dataset_dir, flame.layout), ImageDataset(zipped, flame.layout)
    for i in range(len(a)):
        assert torch.equal(a[i][0], b[i][0]) and torch.equal(a[i][1], b[i][1])
    loader = torch.utils.data.DataLoader(b, batch_size=3, num_workers=2)
    images, labels = next(iter(loader))
    assert images.shape == (3, 3, 16, 16) and torch.equal(labels, a.labels[:3])


def test_texture_is_painted_in_canonical_space(flame):
    landmarks = flame.landmarks(flame.canonical_params.unsqueeze(0))[0]
    texture = CanonicalTexture(landmarks)
    colours = texture.identity_colours(2, torch.Generator().manual_seed(0))
    eye = landmarks[list(EYES[0])].mean(0)
    mouth = landmarks[list(INNER_LIP)].mean(0)
    cheek = (landmarks[list(EYES[0])].mean(0) + mouth) / 2 + torch.tensor([-0.3, 0, 0]) * texture.unit
    top = landmarks.mean(0) + torch.tensor([0.0, 2.0, 0.0]) * texture.unit
    albedo = texture.albedo(torch.stack([eye, mouth, cheek, top]).double().expand(2, 4, 3), colours)
    assert albedo[:, 0].max() < 0.05 and albedo[:, 1].max() < 0.3       # pupil, the mouth's inside
    torch.testing.assert_close(albedo[:, 3], colours["hair"])                # the hair cap
    assert (albedo[:, 2] - colours["skin"]).abs().max() < 0.1              # skin
    # Identities differ.
    assert not torch.allclose(colours["skin"][0], colours["skin"][1])


def test_sphere_trace_finds_the_surface(flame):
    verts = flame.caps.verts(flame(torch.zeros(1, flame.layout.size)))[0].double()
    index = MeshIndex(flame.caps.faces)
    bvh = index.build(verts)
    centre = verts.mean(0)
    directions = torch.nn.functional.normalize(torch.randn(50, 3, dtype=torch.float64), dim=-1)
    origins = centre + 0.5 * directions
    towards = -directions
    hit, face, bary, coverage = sphere_trace(bvh, origins, towards, torch.zeros(50, dtype=torch.float64),
                                             torch.ones(50, dtype=torch.float64), 1e-3)
    assert hit.all() and (coverage == 1).all()
    points = (verts[index.faces("cpu")[face]] * bary.unsqueeze(-1)).sum(1)
    assert bvh.closest_point(points).distance.abs().max() < 1e-4
    away = sphere_trace(bvh, origins, directions, torch.zeros(50, dtype=torch.float64),
                        torch.ones(50, dtype=torch.float64), 1e-3)
    assert not away[0].any()


def test_dataset_errors_name_the_problem(dataset_dir, flame, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(dataset_dir, broken)
    meta = json.loads((broken / "dataset.json").read_text())
    with pytest.raises(ValueError, match="xflip is not supported"):
        ImageDataset(broken, flame.layout, xflip=True)
    with pytest.raises(ValueError, match=r"FLAME layout is .*n_expr': 10.*the model's is .*n_expr': 20"):
        ImageDataset(broken, Flame(os.path.dirname(meta["omnifast"]["flame_dir"] + "/"), 10, 20).layout)
    meta["labels"][1][1] = meta["labels"][1][1][:-1]
    (broken / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"label of .*img00000001.png has 50 numbers, expected 51"):
        ImageDataset(broken, flame.layout)
    os.remove(broken / meta["labels"][4][0])
    meta["labels"][1][1].append(0.0)
    (broken / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(FileNotFoundError, match="image 00000/img00000004.png .* is missing"):
        ImageDataset(broken, flame.layout)
    (broken / "dataset.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        ImageDataset(broken, flame.layout)
    with pytest.raises(FileNotFoundError, match="dataset not found"):
        ImageDataset(tmp_path / "nowhere")
    with pytest.raises(FileExistsError, match="already exists"):
        make_dataset(str(dataset_dir), meta["omnifast"]["flame_dir"], **SMALL)
    with pytest.raises(ValueError, match="count must be an integer >= 1"):
        make_dataset(str(tmp_path / "new"), meta["omnifast"]["flame_dir"], **{**SMALL, "count": 0})


def test_make_dataset_command(flame_dir, tmp_path):
    out = tmp_path / "cli.zip"
    run = lambda *a: subprocess.run([sys.executable, "-m", "omnifast", *a], capture_output=True, text=True)  # noqa: E731
    result = run("make-dataset", str(out), "--flame-dir", flame_dir, "--count", "3", "--resolution", "8",
                 "--n-shape", "10", "--n-expr", "10", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "wrote 3 images at 8^2" in result.stdout
    assert zipfile.is_zipfile(out) and len(ImageDataset(out)) == 3
    again = run("make-dataset", str(out), "--flame-dir", flame_dir, "--count", "3", "--no-progress")
    assert again.returncode == 2 and "already exists" in again.stderr
