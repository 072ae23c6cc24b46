"""FLAME loader, parameter packing, hole caps and the synthetic FLAME-format model."""
import os
import pickle
import sys
import types

import numpy as np
import pytest
import torch

smplx = pytest.importorskip("smplx", reason="the FLAME loader needs smplx (pip install -e '.[test]')")

from omnifast.flame import Flame, HoleCaps, ParamLayout, boundary_loops  # noqa: E402
from omnifast.flame.model import EMBEDDING_FILE, MODEL_FILE  # noqa: E402


@pytest.fixture(scope="module")
def flame(flame_dir):
    return Flame(flame_dir, n_shape=100, n_expr=50, dtype=torch.float64)


def test_synthetic_model_has_flame_traits(flame):
    V, F = flame.num_verts, flame.faces.shape[0]
    assert 4000 < V < 6000 and 8000 < F < 12000
    loops = flame.caps.loops
    assert len(loops) == 4  # neck, two eyes, mouth
    assert max(len(loop) for loop in loops) == 72  # the neck is the largest opening
    size = flame.canonical_verts().amax(0) - flame.canonical_verts().amin(0)
    assert 0.15 < float(size[0]) < 0.25 and 0.2 < float(size[1]) < 0.35  # metres, head-sized


def test_smplx_loads_the_synthetic_model_unchanged(flame_dir):
    layer = smplx.FLAME(model_path=flame_dir, num_betas=300, num_expression_coeffs=100, dtype=torch.float64)
    out = layer(betas=torch.zeros(1, 300, dtype=torch.float64))
    np.testing.assert_allclose(out.vertices[0].detach().numpy(), layer.v_template.numpy(), atol=1e-7)


def test_zero_parameters_give_the_template_and_blendshapes_are_linear(flame):
    zero = flame.layout.pack(1, dtype=torch.float64)
    template = flame.smplx.v_template
    torch.testing.assert_close(flame(zero)[0], template, atol=1e-7, rtol=0)  # smplx stores float32
    g = torch.Generator().manual_seed(0)
    shape = torch.randn(2, 100, generator=g, dtype=torch.float64)
    expression = torch.randn(2, 50, generator=g, dtype=torch.float64)
    verts = flame(flame.layout.pack(shape=shape, expression=expression, dtype=torch.float64))
    dirs = torch.cat([flame.smplx.shapedirs, flame.smplx.expr_dirs], -1)
    expected = template + torch.einsum("bl,vcl->bvc", torch.cat([shape, expression], -1), dirs)
    torch.testing.assert_close(verts, expected, atol=1e-7, rtol=0)
    moved = (verts - template).norm(dim=-1)
    assert 0.002 < float(moved.mean()) < 0.03  # plausible: millimetres to centimetres


def test_jaw_opens_the_mouth_and_leaves_the_skull(flame):
    closed = flame(flame.layout.pack(1, dtype=torch.float64))[0]
    opened = flame(flame.layout.pack(jaw=torch.tensor([0.35, 0.0, 0.0]), dtype=torch.float64))[0]
    moved = (opened - closed).norm(dim=-1)
    top = closed[:, 1].argmax()
    chin = moved.argmax()
    assert float(moved[top]) < 1e-9
    assert float(moved[chin]) > 0.01
    assert float(closed[chin, 2]) > 0.05  # at the front
    assert float(opened[chin, 1]) < float(closed[chin, 1]) - 0.005  # and it drops
    mouth = next(loop for loop in flame.caps.loops if 12 < len(loop) < 40 and
                 float(closed[loop, 1].mean()) < 0)
    height = lambda v: float(v[mouth, 1].max() - v[mouth, 1].min())  # noqa: E731
    assert height(opened) > height(closed) + 0.01


def test_neck_rotation_is_the_head_frame(flame):
    params = flame.layout.pack(neck=torch.tensor([0.2, 0.3, -0.1]), dtype=torch.float64)
    frame = flame.head_frame(params)[0]
    canonical, posed = flame.canonical_verts(), flame(params)[0]
    top = canonical[:, 1].argmax()
    moved = frame[:3, :3] @ canonical[top] + frame[:3, 3]
    torch.testing.assert_close(moved, posed[top], atol=1e-9, rtol=0)
    torch.testing.assert_close(frame[:3, :3] @ frame[:3, :3].T, torch.eye(3, dtype=torch.float64))


def test_landmarks_are_barycentric_points_of_the_mesh(flame):
    params = flame.layout.pack(jaw=torch.tensor([0.2, 0.0, 0.0]), dtype=torch.float64)
    landmarks = flame.landmarks(params)[0]
    verts = flame(params)[0]
    corners = verts[flame.faces[flame.smplx.lmk_faces_idx]]
    expected = (flame.smplx.lmk_bary_coords.unsqueeze(-1) * corners).sum(1)
    assert landmarks.shape == (51, 3)
    torch.testing.assert_close(landmarks, expected)


def test_caps_make_a_closed_outward_surface(flame):
    caps = flame.caps
    V = flame.num_verts
    assert boundary_loops(caps.faces, V + len(caps.loops)) == []
    # Closed and consistently oriented: every directed edge has its reverse exactly once.
    f = caps.faces
    directed = torch.cat([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    keys = directed[:, 0] * (V + 10) + directed[:, 1]
    reverse = directed[:, 1] * (V + 10) + directed[:, 0]
    assert torch.unique(keys).numel() == keys.numel()
    assert bool(torch.isin(reverse, keys).all())
    verts = caps.verts(flame.canonical_verts())
    tri = verts[f]
    volume = float(torch.linalg.det(tri).sum() / 6)
    assert volume > 0.001  # outward and head-sized (about 2 litres and more)
    assert caps.on_cap(torch.tensor([0, flame.faces.shape[0] - 1, flame.faces.shape[0]])).tolist() == [False, False, True]


def test_caps_follow_the_pose(flame):
    params = flame.layout.pack(jaw=torch.tensor([0.3, 0.0, 0.0]), neck=torch.tensor([0.0, 0.4, 0.0]),
                               dtype=torch.float64)
    verts = flame.caps.verts(flame(params))
    for i, loop in enumerate(flame.caps.loops):
        torch.testing.assert_close(verts[0, flame.num_verts + i], verts[0, loop].mean(0))


def test_boundary_loops_of_a_square_with_a_hole():
    # A 3 x 3 grid of quads without the middle one: an outer loop of 12 and an inner one of 4.
    faces = []
    for r in range(3):
        for c in range(3):
            if (r, c) == (1, 1):
                continue
            a, b, d, e = 4 * r + c, 4 * r + c + 1, 4 * (r + 1) + c, 4 * (r + 1) + c + 1
            faces += [[a, b, e], [a, e, d]]
    loops = boundary_loops(torch.tensor(faces), 16)
    assert sorted(len(loop) for loop in loops) == [4, 12]
    caps = HoleCaps(torch.tensor(faces), 16)
    assert caps.faces.shape[0] == len(faces) + 16


def test_param_layout_packs_omniavatar_ordering():
    layout = ParamLayout(100, 100)
    assert layout.size == 206 and layout.describe() == "shape 100 | expression 100 | neck 3 | jaw 3"
    shape, expression = torch.randn(2, 100), torch.randn(2, 100)
    neck, jaw = torch.randn(2, 3), torch.randn(2, 3)
    packed = layout.pack(shape=shape, expression=expression, neck=neck, jaw=jaw)
    torch.testing.assert_close(packed, torch.cat([shape, expression, neck, jaw], -1))
    parts = layout.unpack(packed)
    torch.testing.assert_close(parts["jaw"], jaw)
    with_global = ParamLayout(10, 5, global_pose=True)
    assert with_global.size == 24 and list(with_global.unpack(torch.zeros(1, 24))) == [
        "shape", "expression", "neck", "jaw", "global"]
    with pytest.raises(ValueError, match="jaw must be"):
        layout.pack(jaw=torch.zeros(4))
    with pytest.raises(ValueError, match="unknown part 'pose'"):
        layout.pack(pose=torch.zeros(3))
    with pytest.raises(ValueError, match=r"params must be \[B, 206\]"):
        layout.unpack(torch.zeros(2, 205))


def _write(path, content):
    with open(path, "wb") as f:
        pickle.dump(content, f)


def _read(path):
    with open(path, "rb") as f:
        return pickle.load(f)


@pytest.fixture
def broken_dir(flame_dir, tmp_path):
    for name in (MODEL_FILE, EMBEDDING_FILE):
        _write(tmp_path / name, _read(os.path.join(flame_dir, name)))
    return tmp_path


def test_missing_file_names_the_file(broken_dir):
    os.remove(broken_dir / EMBEDDING_FILE)
    with pytest.raises(FileNotFoundError, match=EMBEDDING_FILE):
        Flame(str(broken_dir))


@pytest.mark.parametrize("key", ["shapedirs", "J_regressor", "f"])
def test_missing_key_names_the_file_and_key(broken_dir, key):
    model = _read(broken_dir / MODEL_FILE)
    del model[key]
    _write(broken_dir / MODEL_FILE, model)
    with pytest.raises(ValueError, match=f"{MODEL_FILE}: missing key '{key}'"):
        Flame(str(broken_dir))


def test_missing_landmark_key_and_bad_shapes(broken_dir):
    embedding = _read(broken_dir / EMBEDDING_FILE)
    _write(broken_dir / EMBEDDING_FILE, {"lmk_face_idx": embedding["lmk_face_idx"]})
    with pytest.raises(ValueError, match=f"{EMBEDDING_FILE}: missing key 'lmk_b_coords'"):
        Flame(str(broken_dir))
    _write(broken_dir / EMBEDDING_FILE, embedding)
    model = _read(broken_dir / MODEL_FILE)
    model["posedirs"] = model["posedirs"][:, :, :30]
    _write(broken_dir / MODEL_FILE, model)
    with pytest.raises(ValueError, match=r"'posedirs' must have shape \[\d+, 3, 36\]"):
        Flame(str(broken_dir))


def test_garbage_file_is_named(broken_dir):
    (broken_dir / MODEL_FILE).write_bytes(b"not a pickle at all")
    with pytest.raises(ValueError, match=f"{MODEL_FILE}: not a readable FLAME pickle"):
        Flame(str(broken_dir))


def test_chumpy_arrays_load_without_chumpy(broken_dir, monkeypatch):
    """FLAME's released pickles hold chumpy arrays; the loader reads their stored values."""
    chumpy = types.ModuleType("chumpy")
    ch = types.ModuleType("chumpy.ch")

    class Ch:
        def __init__(self, x):
            self.x = x
    Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"
    ch.Ch = Ch
    monkeypatch.setitem(sys.modules, "chumpy", chumpy)
    monkeypatch.setitem(sys.modules, "chumpy.ch", ch)
    model = _read(broken_dir / MODEL_FILE)
    template = model["v_template"]
    model["v_template"], model["shapedirs"] = Ch(template), Ch(model["shapedirs"])
    _write(broken_dir / MODEL_FILE, model)
    monkeypatch.delitem(sys.modules, "chumpy.ch")
    monkeypatch.delitem(sys.modules, "chumpy")
    flame = Flame(str(broken_dir), dtype=torch.float64)
    np.testing.assert_allclose(flame.smplx.v_template.numpy(), template)


def test_bad_sizes_are_rejected(flame_dir):
    with pytest.raises(ValueError, match="n_shape must be in 1..300"):
        Flame(flame_dir, n_shape=301)
    with pytest.raises(ValueError, match=r"canonical must be \[156\]"):
        Flame(flame_dir, canonical=torch.zeros(3))


def test_canonical_parameters_are_configurable(flame_dir):
    layout = ParamLayout(100, 50)
    open_jaw = layout.pack(jaw=torch.tensor([0.2, 0.0, 0.0]))[0]
    flame = Flame(flame_dir, canonical=open_jaw, dtype=torch.float64)
    torch.testing.assert_close(flame.canonical_verts(), flame(open_jaw.unsqueeze(0).double())[0])
    assert float((flame.canonical_verts() - flame.smplx.v_template).norm(dim=-1).max()) > 0.01


def test_sparse_joint_regressor_loads(broken_dir):
    """FLAME's released J_regressor is a scipy sparse matrix."""
    sparse = pytest.importorskip("scipy.sparse")
    model = _read(broken_dir / MODEL_FILE)
    dense = model["J_regressor"]
    model["J_regressor"] = sparse.csc_matrix(dense)
    _write(broken_dir / MODEL_FILE, model)
    flame = Flame(str(broken_dir), dtype=torch.float64)
    np.testing.assert_allclose(flame.smplx.J_regressor.numpy(), dense, atol=1e-7)
