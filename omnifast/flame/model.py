"""FLAME through ``smplx``: posed vertices, faces and landmarks for packed parameter vectors, the
canonical mesh, and a watertight face list (hole caps) for signed-distance queries."""
import math
import os
import pickle
import shutil
import tempfile
from dataclasses import dataclass

import numpy as np
import torch

MODEL_FILE = "FLAME_NEUTRAL.pkl"
EMBEDDING_FILE = "flame_static_embedding.pkl"
MODEL_KEYS = ("v_template", "f", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table")
EMBEDDING_KEYS = ("lmk_face_idx", "lmk_b_coords")
SHAPE_SPACE, EXPRESSION_SPACE = 300, 100  # FLAME's shapedirs hold 300 shape + 100 expression


class _ChumpyValue:
    """Stands in for a chumpy array in a FLAME pickle (FLAME 2017/2020 files were written with
    chumpy, which no longer installs on current numpy); its value is the pickled ``x``."""

    def __setstate__(self, state):
        self.__dict__.update(state if isinstance(state, dict) else {"x": state})


class _Unpickler(pickle.Unpickler):
    """Builds only what FLAME files hold (numpy arrays, scipy sparse matrices, chumpy values):
    a pickle naming any other class is refused, so a model file cannot run code."""

    NUMPY = {"_reconstruct", "ndarray", "dtype", "scalar"}

    def find_class(self, module, name):
        root = module.split(".")[0]
        if root == "chumpy":
            return _ChumpyValue
        if (root == "numpy" and name in self.NUMPY) or \
                (module.startswith("scipy.sparse") and name.endswith(("_matrix", "_array"))):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a FLAME file holds only "
                                     "numpy arrays, scipy sparse matrices and chumpy values")


def _plain(value, path, key):
    if isinstance(value, _ChumpyValue):
        if not hasattr(value, "x"):
            raise ValueError(f"{path}: key {key!r} is a chumpy expression without a stored value; "
                             "install chumpy or re-save the file with numpy arrays")
        value = value.x
    if "scipy.sparse" in type(value).__module__:
        value = value.toarray()
    return np.asarray(value)


def read_model_file(path, keys):
    """A FLAME pickle as ``{key: numpy array}`` (chumpy values and sparse matrices converted);
    a missing or malformed file or key raises an error naming the file and the key."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"FLAME model file not found: {path}")
    try:
        with open(path, "rb") as f:
            data = _Unpickler(f, encoding="latin1").load()
    except Exception as error:  # any unpickling failure is a malformed file
        raise ValueError(f"{path}: not a readable FLAME pickle ({type(error).__name__}: {error})") from error
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a dict of arrays, got {type(data).__name__}")
    missing = [k for k in keys if k not in data]
    if missing:
        raise ValueError(f"{path}: missing key {missing[0]!r} (a FLAME file needs {', '.join(keys)})")
    return {k: (_plain(v, path, k) if k in keys else v) for k, v in data.items()}


def _check_model(model, embedding, model_path, embedding_path):
    # The vertex count most arrays agree on, so that the one array that disagrees is blamed.
    counts = [model[k].shape[0] for k in ("v_template", "shapedirs", "posedirs", "weights")
              if model[k].ndim] + [model["J_regressor"].shape[-1]]
    V = max(counts, key=counts.count)
    expected = {"v_template": (V, 3), "shapedirs": (V, 3, SHAPE_SPACE + EXPRESSION_SPACE),
                "posedirs": (V, 3, 36), "J_regressor": (5, V), "weights": (V, 5), "kintree_table": (2, 5)}
    for key, shape in expected.items():
        if tuple(model[key].shape) != shape:
            raise ValueError(f"{model_path}: key {key!r} must have shape {list(shape)}, got "
                             f"{list(model[key].shape)}")
    f = model["f"]
    if f.ndim != 2 or f.shape[1] != 3 or not np.issubdtype(f.dtype, np.integer) or f.min() < 0 or f.max() >= V:
        raise ValueError(f"{model_path}: key 'f' must be integer [F, 3] indices into {V} vertices, "
                         f"got {f.dtype} {list(f.shape)}")
    lmk, bary = embedding["lmk_face_idx"], embedding["lmk_b_coords"]
    if lmk.ndim != 1 or bary.shape != (lmk.shape[0], 3) or lmk.max(initial=0) >= f.shape[0]:
        raise ValueError(f"{embedding_path}: 'lmk_face_idx' must be [L] face ids below {f.shape[0]} "
                         f"and 'lmk_b_coords' [L, 3], got {list(lmk.shape)} and {list(bary.shape)}")


@dataclass
class ParamLayout:
    """The order of a flat FLAME parameter vector: ``shape | expression | neck | jaw`` and, when
    ``global_pose``, ``| global`` (axis-angle, 3 each). With 100 shape and 100 expression
    coefficients this is OmniAvatar's 206-long conditioning vector."""
    n_shape: int
    n_expr: int
    global_pose: bool = False

    @property
    def slices(self):
        sizes = [("shape", self.n_shape), ("expression", self.n_expr), ("neck", 3), ("jaw", 3)]
        if self.global_pose:
            sizes.append(("global", 3))
        out, start = {}, 0
        for name, size in sizes:
            out[name] = slice(start, start + size)
            start += size
        return out

    @property
    def size(self):
        return self.n_shape + self.n_expr + 6 + 3 * self.global_pose

    def pack(self, batch=None, *, device=None, dtype=torch.float32, **parts):
        """``[B, size]`` from named parts (``shape``, ``expression``, ``neck``, ``jaw``,
        ``global``), each ``[B, n]`` or ``[n]``; missing parts are zeros."""
        unknown = set(parts) - set(self.slices)
        if unknown:
            raise ValueError(f"ParamLayout.pack: unknown part {sorted(unknown)[0]!r}; parts are "
                             f"{list(self.slices)}")
        given = [torch.as_tensor(v) for v in parts.values()]
        if batch is None:
            batch = max([v.shape[0] for v in given if v.dim() == 2], default=1)
        if given:
            device = device or given[0].device
        out = torch.zeros(batch, self.size, device=device, dtype=dtype)
        for name, value in parts.items():
            value = torch.as_tensor(value, dtype=dtype, device=out.device)
            width = self.slices[name].stop - self.slices[name].start
            if value.shape[-1] != width or value.dim() not in (1, 2):
                raise ValueError(f"ParamLayout.pack: {name} must be [B, {width}] or [{width}], "
                                 f"got {list(value.shape)}")
            out[:, self.slices[name]] = value
        return out

    def unpack(self, params):
        """``{part: [B, n]}`` views of a ``[B, size]`` vector."""
        if params.dim() != 2 or params.shape[1] != self.size:
            raise ValueError(f"ParamLayout.unpack: params must be [B, {self.size}] ({self.describe()}), "
                             f"got {list(params.shape)}")
        return {name: params[:, s] for name, s in self.slices.items()}

    def describe(self):
        return " | ".join(f"{name} {s.stop - s.start}" for name, s in self.slices.items())

    # Far outside anything FLAME describes: coefficients are in units of their basis' standard
    # deviation (fittings stay within a few), pose parts are axis-angle radians.
    LIMITS = {"shape": 10.0, "expression": 10.0, "neck": math.pi, "jaw": math.pi, "global": math.pi}

    def check(self, params, name="params", row_names=None):
        """Refuse ``params [B, size]`` that are not finite or lie outside :attr:`LIMITS`; the
        error names the part, the row and the value."""
        if params.dim() != 2 or params.shape[1] != self.size:
            self.unpack(params)  # the shape error
        limits = torch.empty(self.size, dtype=torch.float64)
        for part, columns in self.slices.items():
            limits[columns] = self.LIMITS[part]
        with torch.no_grad():
            bad = params.detach().abs().nan_to_num(nan=math.inf) > limits.to(params.device, params.dtype)
            if not bool(bad.any()):  # one check (one device sync) in the common case
                return
            row, column = (int(v) for v in bad.nonzero()[0])
        part = next(p for p, columns in self.slices.items() if columns.start <= column < columns.stop)
        value, limit = float(params[row, column]), self.LIMITS[part]
        unit = "axis-angle radians" if part in ("neck", "jaw", "global") else "standard deviations"
        where = f"row {row}" + (f" ({row_names[row]})" if row_names is not None else "")
        raise ValueError(f"{name}: FLAME {part}[{column - self.slices[part].start}] of {where} is {value:.6g}; "
                         f"expected a finite value in [-{limit:.4g}, {limit:.4g}] ({unit})")


def boundary_loops(faces, num_verts):
    """The closed boundary loops of an oriented face list, each as vertex ids in the order the
    faces traverse their open edges."""
    faces = faces.cpu().long()
    directed = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    key = directed[:, 0] * num_verts + directed[:, 1]
    reverse = directed[:, 1] * num_verts + directed[:, 0]
    open_edges = directed[~torch.isin(key, reverse)].tolist()
    following = {}
    for a, b in open_edges:
        if a in following:
            raise ValueError("boundary_loops: a vertex starts two open edges (a non-manifold boundary)")
        following[a] = b
    loops, seen = [], set()
    for start in sorted(following):
        if start in seen:
            continue
        loop, v = [], start
        while v not in seen:
            seen.add(v)
            loop.append(v)
            v = following.get(v)
            if v is None:
                raise ValueError("boundary_loops: an open boundary does not close into a loop")
        loops.append(loop)
    return loops


class HoleCaps:
    """Closes every boundary loop of a face list with a fan around a new vertex at the loop's
    centroid: the shared topology gets ``len(loops)`` vertices and one face per open edge, the
    same for every pose, so signed distances and winding numbers see a closed surface."""

    def __init__(self, faces, num_verts):
        self.loops = boundary_loops(faces, num_verts)
        self.num_verts, self.num_faces = num_verts, faces.shape[0]
        averaging = torch.zeros(len(self.loops), num_verts, dtype=torch.float64)
        caps = []
        for i, loop in enumerate(self.loops):
            averaging[i, loop] = 1.0 / len(loop)
            centre = num_verts + i
            # An open edge a -> b of the mesh is b -> a in the cap face that closes it.
            caps += [[loop[(k + 1) % len(loop)], loop[k], centre] for k in range(len(loop))]
        self._averaging = averaging
        cap_faces = torch.tensor(caps, dtype=torch.long).view(-1, 3)
        self.faces = torch.cat([faces.cpu().long(), cap_faces])  # watertight [F + caps, 3]

    def verts(self, verts):
        """``[B, V, 3]`` (or ``[V, 3]``) -> the same with the cap centres appended."""
        avg = self._averaging.to(verts.device, verts.dtype)
        return torch.cat([verts, torch.matmul(avg, verts)], -2)

    def on_cap(self, face):
        """Whether each face id of the watertight list lies on a cap."""
        return face >= self.num_faces


class Flame(torch.nn.Module):
    """FLAME loaded through ``smplx.FLAME`` from a model folder (``FLAME_NEUTRAL.pkl`` and
    ``flame_static_embedding.pkl``, real or made by ``omnifast make-flame``).

    Args:
        model_dir: the folder.
        n_shape, n_expr: shape (<= 300) and expression (<= 100) coefficients used.
        canonical: the canonical parameters ``[size]`` (default zeros: mean shape, neutral
            expression, closed jaw).
        global_pose: whether the flat vector ends with a global rotation (OmniAvatar leaves it to
            the camera).
    Calling the module with ``params [B, size]`` (see :class:`ParamLayout`) returns posed vertices
    ``[B, V, 3]``.
    """

    def __init__(self, model_dir, n_shape=100, n_expr=50, canonical=None, global_pose=False,
                 dtype=torch.float32):
        super().__init__()
        if not 0 < n_shape <= SHAPE_SPACE or not 0 <= n_expr <= EXPRESSION_SPACE:
            raise ValueError(f"Flame: n_shape must be in 1..{SHAPE_SPACE} and n_expr in 0..{EXPRESSION_SPACE}, "
                             f"got {n_shape} and {n_expr}")
        import smplx

        model_path, embedding_path = (os.path.join(model_dir, n) for n in (MODEL_FILE, EMBEDDING_FILE))
        model = read_model_file(model_path, MODEL_KEYS)
        embedding = read_model_file(embedding_path, EMBEDDING_KEYS)
        _check_model(model, embedding, model_path, embedding_path)
        # smplx unpickles the files itself: hand it plain numpy copies.
        clean = tempfile.mkdtemp(prefix="omnifast-flame-")
        try:
            for name, content in ((MODEL_FILE, model), (EMBEDDING_FILE, embedding)):
                with open(os.path.join(clean, name), "wb") as f:
                    pickle.dump(content, f, protocol=4)
            self.smplx = smplx.FLAME(model_path=clean, num_betas=n_shape, num_expression_coeffs=max(n_expr, 1),
                                     dtype=dtype, batch_size=1)
        finally:
            shutil.rmtree(clean, ignore_errors=True)
        for p in self.smplx.parameters():
            p.requires_grad_(False)
        self.layout = ParamLayout(n_shape, n_expr, global_pose)
        self.register_buffer("faces", self.smplx.faces_tensor.clone())
        self.caps = HoleCaps(self.faces, self.smplx.v_template.shape[0])
        canonical = torch.zeros(self.layout.size) if canonical is None else torch.as_tensor(canonical)
        if canonical.shape != (self.layout.size,):
            raise ValueError(f"Flame: canonical must be [{self.layout.size}] ({self.layout.describe()}), "
                             f"got {list(canonical.shape)}")
        self.register_buffer("canonical_params", canonical.to(dtype))

    def fingerprint(self):
        """A hash of the model itself (template, bases, joints, skinning, faces, as used): two
        FLAME folders give the same one only if their models are the same."""
        import hashlib

        digest = hashlib.sha256()
        model = self.smplx
        for tensor in (model.v_template, model.shapedirs, model.posedirs, model.J_regressor, model.lbs_weights,
                       model.faces_tensor):
            digest.update(tensor.detach().cpu().contiguous().float().numpy().tobytes())
        return digest.hexdigest()[:16]

    @property
    def num_verts(self):
        return self.smplx.v_template.shape[0]

    def _output(self, params):
        parts = self.layout.unpack(params)
        B, zeros = params.shape[0], params.new_zeros(params.shape[0], 3)
        expression = parts["expression"] if self.layout.n_expr else params.new_zeros(B, 1)
        return self.smplx(betas=parts["shape"], expression=expression, neck_pose=parts["neck"],
                          jaw_pose=parts["jaw"], global_orient=parts.get("global", zeros),
                          leye_pose=zeros, reye_pose=zeros, transl=zeros)

    def forward(self, params):
        return self._output(params.to(self.canonical_params.dtype)).vertices

    def landmarks(self, params):
        """FLAME's static landmarks ``[B, L, 3]`` for ``params``."""
        out = self._output(params.to(self.canonical_params.dtype))
        return out.joints[:, 5:]  # smplx appends the landmarks after the five joints

    def _joint_transforms(self, params):
        """smplx's per-joint rigid transforms ``[B, 5, 4, 4]`` (rest pose of the shaped mesh to
        the posed mesh)."""
        from smplx.lbs import batch_rigid_transform, batch_rodrigues

        layer, parts = self.smplx, self.layout.unpack(params)
        B = params.shape[0]
        rest = layer.v_template + torch.einsum("bl,vcl->bvc", parts["shape"], layer.shapedirs)
        joints = torch.einsum("jv,bvc->bjc", layer.J_regressor, rest)
        zeros = params.new_zeros(B, 3)
        pose = torch.stack([parts.get("global", zeros), parts["neck"], parts["jaw"], zeros, zeros], 1)
        rotations = batch_rodrigues(pose.reshape(-1, 3)).view(B, 5, 3, 3)
        return batch_rigid_transform(rotations, joints, layer.parents, dtype=params.dtype)[1]

    def head_frame(self, params):
        """``[B, 4, 4]``: the rigid motion of the head (everything the neck joint carries) from
        the canonical parameters to ``params``. Its inverse brings a posed head roughly back to
        canonical space, which leaves a semantic SDF only the non-rigid rest to learn."""
        params = params.to(self.canonical_params.dtype)
        posed = self._joint_transforms(params)[:, 1]
        canonical = self._joint_transforms(self.canonical_params.unsqueeze(0))[:, 1]
        return posed @ torch.linalg.inv(canonical)

    def canonical_verts(self):
        """The canonical mesh ``[V, 3]`` (the vertices for the canonical parameters)."""
        return self(self.canonical_params.unsqueeze(0))[0]
